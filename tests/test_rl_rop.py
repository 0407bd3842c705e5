"""Issue 27: MAML-TRPO's Fisher-vector products by hand-written derivatives of the policy MLP
(``algorithm.fisher: rop``) equal the autograd Gauss-Newton products in float64, for 0, 1, 2
inner steps and first order; the R-operator's Hessian-vector products, jvp and vjp equal
autograd's for ReLU and tanh networks; TRPO takes the same step; conjugate gradient's last
product serves for the step length."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mamlkit.config import ConfigError, load_config
from mamlkit.rl import MAMLTRPO, GaussianMLPPolicy, Navigation2D, fisher_rop
from mamlkit.rl.envs import environment_streams
from mamlkit.rl.fisher_rop import policy_activation, rop_gauss_newton
from mamlkit.rl.returns import old_policy, surrogate_and_kl
from mamlkit.rl.rop import GaussianSurrogateHessian, Workspace, forward, jvp, vjp
from mamlkit.rl.trpo import conjugate_gradient, trpo_step
from tests.test_rl_speed import learner_and_batch  # the same tiny MAML-TRPO and tasks


def products(learner, batch, fishers):
    support, phi, query, adv, adv_s = learner._sample_and_adapt(batch, environment_streams(batch))
    old = old_policy(learner.policy, phi, query)
    _, kl = surrogate_and_kl(learner.policy, phi, query, adv, old)
    out = {}
    for fisher in fishers:
        learner.fisher = fisher
        out[fisher] = learner.fisher_vector_product(phi, query, old, kl, support, adv_s)
    return out


# rows a chunk of tasks holds in a product (3 tasks of 32 rows): one task a chunk, chunks of
# 2 and 1 tasks, all 3 tasks at once (the default at this size)
CHUNKS = [1, 64, None]


@pytest.fixture(params=CHUNKS, ids=["1-task-chunks", "2+1-task-chunks", "one-chunk"])
def chunk_rows(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setattr(fisher_rop, "CHUNK_ROWS", request.param)
    return request.param


@pytest.mark.parametrize(
    ("inner_steps", "first_order"), [(0, False), (1, False), (2, False), (1, True)]
)
def test_rop_products_equal_the_autograd_gauss_newton_ones(
    float64, chunk_rows, inner_steps, first_order
):
    learner, batch = learner_and_batch(inner_steps, first_order)
    fvp = products(learner, batch, ("rop", "gauss_newton"))
    for _ in range(2):
        v = torch.randn(sum(p.numel() for p in learner.policy.parameters()))
        expected = fvp["gauss_newton"](v)
        assert expected.abs().max() > 0
        torch.testing.assert_close(fvp["rop"](v), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("inner_steps", "first_order"), [(0, False), (1, False), (2, False), (1, True)]
)
def test_rop_surrogate_and_gradient_equal_autograd_through_the_inner_update(
    float64, chunk_rows, inner_steps, first_order
):
    learner, batch = learner_and_batch(inner_steps, first_order)
    support, phi, query, adv, adv_s = learner._sample_and_adapt(batch, environment_streams(batch))
    old = old_policy(learner.policy, phi, query)
    loss, _ = surrogate_and_kl(learner.policy, phi, query, adv, old)
    params = list(learner.policy.parameters())
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    product = learner.fisher_vector_product(phi, query, old, None, support, adv_s)
    got_loss, got = product.surrogate(adv)
    assert expected.abs().max() > 0
    torch.testing.assert_close(got_loss, loss.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_rop_is_the_default_and_accepted_by_the_config():
    assert MAMLTRPO(Navigation2D(), GaussianMLPPolicy(2, 2, (4,))).fisher == "rop"
    assert load_config("rl_nav2d_maml").algorithm.fisher == "rop"
    assert load_config("rl_nav2d_maml", ["algorithm.fisher=gauss_newton"])
    with pytest.raises(ConfigError, match="rop"):
        load_config("rl_nav2d_maml", ["algorithm.fisher=newton"])


def tanh_or_relu_mlp(activation: str, tasks: int = 3, sizes=(3, 5, 4, 2)):
    layers = [
        torch.randn(tasks, n_out, n_in + 1) / n_in**0.5
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
    ]
    act = torch.relu if activation == "relu" else torch.tanh

    def mean(ls, x):
        h = x
        for i, w in enumerate(ls):
            h = h @ w[..., :-1].transpose(1, 2) + w[..., -1].unsqueeze(1)
            if i < len(ls) - 1:
                h = act(h)
        return h

    return layers, mean


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_the_r_operator_equals_autograd(float64, activation):
    torch.manual_seed(1)
    tasks, rows, act_dim = 3, 7, 2
    layers, mean = tanh_or_relu_mlp(activation, tasks)
    obs, actions = torch.randn(tasks, rows, 3), torch.randn(tasks, rows, act_dim)
    weight, log_std = torch.randn(tasks, rows), 0.3 * torch.randn(tasks, act_dim)

    def loss(ls, s):
        z = (actions - mean(ls, obs)) * torch.exp(-s).unsqueeze(1)
        return (weight * (0.5 * z.pow(2).sum(-1) + s.sum(-1).unsqueeze(1))).sum()

    leaves = [w.clone().requires_grad_() for w in layers] + [log_std.clone().requires_grad_()]
    grads = torch.autograd.grad(loss(leaves[:-1], leaves[-1]), leaves, create_graph=True)
    h = GaussianSurrogateHessian(layers, log_std, obs, actions, weight, activation)
    for g, expected in zip([*h.grads[0], h.grads[1]], grads, strict=True):
        torch.testing.assert_close(g, expected.detach(), rtol=1e-10, atol=1e-12)
    for shared in (True, False):
        direction = [torch.randn(w.shape[1:] if shared else w.shape) for w in layers]
        v_s = torch.randn(act_dim if shared else (tasks, act_dim))
        v = [d.expand_as(w) for d, w in zip(direction, layers, strict=True)]
        v.append(v_s.expand_as(log_std))
        expected = torch.autograd.grad(grads, leaves, v, retain_graph=True)
        r_g, r_s = h.hvp(direction, v_s)
        for got, want in zip([*r_g, r_s], expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # jvp and vjp of the mean alone, at the same point
    fw = forward(layers, obs, activation)
    ws = Workspace(fw)
    direction = [torch.randn(w.shape) for w in layers]
    _, tangent = torch.autograd.functional.jvp(
        lambda *ls: mean(ls, obs), tuple(layers), tuple(direction)
    )
    torch.testing.assert_close(jvp(fw, direction, ws), tangent, rtol=1e-10, atol=1e-12)
    g_out = torch.randn(tasks, rows, act_dim)
    leaves = [w.clone().requires_grad_() for w in layers]
    expected = torch.autograd.grad(mean(leaves, obs), leaves, g_out)
    for got, want in zip(vjp(fw, g_out, ws), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for got, want in zip(vjp(fw, g_out, ws, sum_tasks=True), expected, strict=True):
        torch.testing.assert_close(got, want.sum(0), rtol=1e-10, atol=1e-12)


def test_an_uncovered_policy_network_falls_back_to_autograd():
    policy = GaussianMLPPolicy(2, 2, (4, 4))
    assert policy_activation(policy) == "relu"
    for other in (nn.ELU(), nn.Tanh()):  # (the policy's batched forward computes ReLU)
        policy.mean.net[1] = other
        assert policy_activation(policy) is None
    learner, batch = learner_and_batch(1)
    learner.policy.mean.net[1] = nn.ELU()  # (its batched forward still uses ReLU)
    fvp = products(learner, batch, ("rop",))["rop"]
    assert fvp.__qualname__.startswith("inner_update_gauss_newton")
    assert rop_gauss_newton(learner.policy, {}, None, None, [], False, None, None) is None


def test_the_trpo_step_is_the_same_with_the_rop_products(float64):
    learner, batch = learner_and_batch(1, cg_damping=0.1, fisher="rop")
    reference = copy.deepcopy(learner)
    reference.fisher = "gauss_newton"
    out, ref = learner.outer_step(batch, None, 0), reference.outer_step(batch, None, 0)
    assert learner.last_step.step_fraction > 0
    assert learner.last_step.step_fraction == reference.last_step.step_fraction
    for p, q in zip(learner.policy.parameters(), reference.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-10, atol=1e-12)


def test_conjugate_gradient_returns_the_product_of_its_solution(float64):
    torch.manual_seed(3)
    m = torch.randn(12, 12)
    a = m @ m.T + 0.1 * torch.eye(12)
    b = torch.randn(12)
    for iterations in (1, 5, 12):
        x, ax = conjugate_gradient(lambda p: a @ p, b, iterations, with_product=True)
        torch.testing.assert_close(x, conjugate_gradient(lambda p: a @ p, b, iterations))
        torch.testing.assert_close(ax, a @ x, rtol=1e-10, atol=1e-12)


def test_a_trpo_step_takes_one_product_per_conjugate_gradient_iteration(float64, monkeypatch):
    torch.manual_seed(4)
    w = torch.randn(6, requires_grad=True)
    m = torch.randn(6, 6)
    f = m @ m.T + torch.eye(6)
    calls = []

    def fvp(v):
        calls.append(v)
        return f @ v

    def evaluate():
        return (w - 1).pow(2).sum(), torch.zeros(())

    loss = (w - 1).pow(2).sum()
    step = trpo_step(
        [w], loss, None, evaluate, cg_iterations=4, fisher_vector=fvp, reuse_products=True
    )
    assert step.step_fraction > 0
    assert len(calls) == 4  # conjugate gradient's; the step length reuses them
    learner, batch = learner_and_batch(1)
    assert learner.fisher == "rop"
    counted = []

    def counting(*args, **kwargs):
        counted.append(kwargs["reuse_products"])
        return trpo_step(*args, **kwargs)

    monkeypatch.setattr("mamlkit.rl.learner.trpo_step", counting)
    learner.outer_step(batch, None, 0)
    learner.fisher = "gauss_newton"  # the previous setting: one more product, as before
    learner.outer_step(batch, None, 0)
    assert counted == [True, False]


def test_a_run_saved_before_the_rop_default_keeps_the_autograd_products(tmp_path):
    """A run directory whose config.yaml predates ``algorithm.fisher`` resumes with the
    autograd products it had (rounding, which conjugate gradient amplifies, stays as it was);
    one that names its products keeps them."""
    import dataclasses

    import yaml

    from mamlkit.runner import load_run_config

    data = dataclasses.asdict(load_config("rl_nav2d_maml"))
    for fisher in (None, "rop", "hessian"):
        run = tmp_path / str(fisher)
        run.mkdir()
        saved = copy.deepcopy(data)
        if fisher is None:
            del saved["algorithm"]["fisher"]
        else:
            saved["algorithm"]["fisher"] = fisher
        (run / "config.yaml").write_text(yaml.safe_dump(saved))
        assert load_run_config(run).algorithm.fisher == (fisher or "gauss_newton")


def test_the_fisher_benchmark_prints_both_constructions(monkeypatch, capsys):
    """benchmarks/rl_fisher.py at a tiny size, in process (its numbers are measured by hand)."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "rl_fisher.py"
    spec = importlib.util.spec_from_file_location("rl_fisher", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["rl_fisher.py", "--env", "nav2d", "--tasks", "2", "--rollouts", "2", "--reps", "2"]
    monkeypatch.setattr("sys.argv", [*argv, "--products", "1"])
    threads = torch.get_num_threads()
    try:
        module.main()
    finally:
        torch.set_num_threads(threads)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["product_s"]) == {"rop", "gauss_newton"}
    assert result["max_rel_difference_vs_gauss_newton"]["rop"] < 1e-4
    # --chunk-rows: the rop products in chunks of one task against all tasks at once
    monkeypatch.setattr("sys.argv", [*argv, "--chunk-rows", "1", "100000", "--clock", "wall"])
    default = fisher_rop.CHUNK_ROWS
    try:
        module.main()
    finally:
        torch.set_num_threads(threads)
        fisher_rop.CHUNK_ROWS = default
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["product_s"]) == {"rop@1", "rop@100000"}
    assert result["clock"] == "wall"
    assert 0 < result["max_rel_difference_vs_rop@100000"]["rop@1"] < 1e-4


def test_products_run_in_chunks_of_tasks_on_the_cpu_and_at_once_elsewhere(monkeypatch):
    from types import SimpleNamespace

    def pieces(device):
        out = torch.empty(5, 32, 2, device=device)  # 5 tasks of 32 rows
        return SimpleNamespace(fw=SimpleNamespace(out=out), tasks=lambda rows: rows)

    monkeypatch.setattr(fisher_rop, "CHUNK_ROWS", 64)
    cpu, meta = pieces("cpu"), pieces("meta")
    assert [c.rows for c in fisher_rop._chunks(5, cpu, cpu, [], None)] == [
        slice(0, 2),
        slice(2, 4),
        slice(4, 5),
    ]
    assert [c.rows for c in fisher_rop._chunks(5, meta, meta, [], None)] == [slice(0, 5)]
    assert [c.rows for c in fisher_rop._chunks(5, meta, meta, [], 32)] == [
        slice(i, i + 1) for i in range(5)
    ]
