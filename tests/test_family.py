"""The MAML family on the one engine (learned step sizes, head-only adaptation) against
float64 references that loop over tasks with ``autograd.grad(create_graph=True)``: the
gradients with respect to θ *and* to the learned step sizes, on the MLP and on Conv4 with
BatchNorm, on every device the machine has."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mamlkit import ANIL, MAML, MetaSGD
from mamlkit.algorithms.anil import last_linear
from mamlkit.functional import (
    InnerUpdate,
    PerLayerStepSchedule,
    adaptable_params,
    batch_norm_params,
)
from mamlkit.models import MLP

from .conftest import DEVICES
from .test_meta_gradients import TASKS, make_case, rel_error


class LayerStepMAML(MAML):
    """MAML++'s per-layer, per-step learned step sizes (LSLR): an algorithm made by
    overriding one hook, as a user would."""

    def make_update(self) -> InnerUpdate:
        return PerLayerStepSchedule(
            adaptable_params(self.model, self.adapt_only), self.inner_steps, self.inner_lr
        )


def reference(model, loss_fn, data, steps, step_size, adapted=None):
    """Mean over tasks of the query loss after ``steps`` updates φ ← φ − α(name, s) ⊙ ∇,
    one task at a time; ``adapted``: names the inner loop adapts (default all)."""
    xs, ys, xq, yq = data
    theta = dict(model.named_parameters())
    names = [n for n in theta if adapted is None or n in adapted]
    total = 0.0
    for t in range(TASKS):
        phi = dict(theta)
        for s in range(steps):
            loss = loss_fn(functional_call(model, phi, (xs[t],)), ys[t])
            grads = torch.autograd.grad(loss, [phi[n] for n in names], create_graph=True)
            phi.update({n: phi[n] - step_size(n, s) * g for n, g in zip(names, grads)})
        total = total + loss_fn(functional_call(model, phi, (xq[t],)), yq[t]) / TASKS
    return total


def grads_of(loss, tensors: dict) -> dict:
    values = torch.autograd.grad(loss, list(tensors.values()), allow_unused=True)
    return {
        n: (torch.zeros_like(t) if g is None else g).cpu()
        for (n, t), g in zip(tensors.items(), values)
    }


def library(learner, data, device):
    learner = copy.deepcopy(learner).to(device)
    loss = learner.meta_loss(*(t.to(device) for t in data))
    return learner, grads_of(loss, dict(learner.named_parameters()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("case", ["mlp", "conv4-stride", "conv4-max"])
def test_meta_sgd_gradient_wrt_weights_and_step_sizes(float64, case, steps, device):
    gen = torch.Generator().manual_seed(21)
    torch.manual_seed(0)
    model, loss_fn, *data, lr = make_case(case, gen)
    learner = MetaSGD(model, loss_fn, lr, inner_steps=steps, impl="batched")
    with torch.no_grad():  # distinct step sizes, so that mixing two of them up is caught
        for alpha in learner.update.alpha.values():
            alpha.mul_(torch.rand(alpha.shape, generator=gen) + 0.5)
    alphas = learner.inner_lrs
    ref_loss = reference(model, loss_fn, data, steps, lambda n, s: alphas[n])
    ref = grads_of(ref_loss, dict(learner.named_parameters()))
    moved, ours = library(learner, data, device)
    assert rel_error(ours, ref) <= 1e-8
    alpha_names = [n for n in ref if n.startswith("update.")]
    assert alpha_names and all(ref[n].abs().sum() > 0 for n in alpha_names)
    for name in alpha_names:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-8, atol=1e-12)
    assert set(moved.inner_lrs) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize(
    "case,impl",
    [
        ("mlp", "batched"),
        ("conv4-stride", "batched"),
        ("conv4-max", "batched"),
        ("plain-conv-bn", "vmap"),
        ("plain-conv-bn", "loop"),
    ],
)
def test_anil_adapts_the_head_and_meta_learns_the_body(float64, case, impl, steps, device):
    gen = torch.Generator().manual_seed(22)
    torch.manual_seed(0)
    model, loss_fn, *data, lr = make_case(case, gen)
    learner = ANIL(model, loss_fn, lr, inner_steps=steps, impl=impl)
    head = last_linear(model)
    adapted = {n for n, _ in model.named_parameters() if n.startswith(head + ".")}
    phi = learner.adapt(data[0], data[1])
    assert set(phi) == adapted
    ref = grads_of(
        reference(model, loss_fn, data, steps, lambda n, s: lr, adapted),
        dict(model.named_parameters()),
    )
    _, ours = library(learner, data, device)
    ours = {n[len("model.") :]: g for n, g in ours.items()}
    assert rel_error(ours, ref) <= 1e-8
    body = [n for n in ref if n not in adapted and ref[n].abs().sum() > 0]
    assert body, "the body must get a meta-gradient"
    # and it is not MAML's: adapting everything gives another meta-gradient
    maml = grads_of(
        reference(model, loss_fn, data, steps, lambda n, s: lr), dict(model.named_parameters())
    )
    assert rel_error(ours, maml) > 1e-3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["mlp", "conv4-stride"])
def test_per_layer_per_step_step_sizes(float64, case, device):
    gen = torch.Generator().manual_seed(23)
    torch.manual_seed(0)
    model, loss_fn, *data, lr = make_case(case, gen)
    learner = LayerStepMAML(model, loss_fn, lr, inner_steps=3, impl="batched")
    with torch.no_grad():
        for alpha in learner.update.alpha.values():
            alpha.mul_(torch.rand(alpha.shape, generator=gen) + 0.5)
    table = {n.replace("-", "."): a for n, a in learner.update.alpha.items()}
    ref_loss = reference(model, loss_fn, data, 3, lambda n, s: table[n][s])
    ref = grads_of(ref_loss, dict(learner.named_parameters()))
    _, ours = library(learner, data, device)
    assert rel_error(ours, ref) <= 1e-8
    # every step's step size gets its own gradient
    assert all((ref[n] != 0).all() for n in ref if n.startswith("update."))


def test_first_order_meta_sgd_still_learns_its_step_sizes(float64):
    gen = torch.Generator().manual_seed(24)
    torch.manual_seed(0)
    model, loss_fn, *data, lr = make_case("mlp", gen)
    learner = MetaSGD(model, loss_fn, lr, inner_steps=2, first_order=True)
    learner.meta_loss(*data).backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in learner.update.alpha.values())


def test_selection_errors_and_frozen_parameters():
    model = MLP((1, 8, 8, 1))
    with pytest.raises(ValueError, match="selects no trainable parameter"):
        MAML(model, F.mse_loss, 0.1, adapt_only="nothing")
    with pytest.raises(ValueError, match="one number"):
        MetaSGD(model, F.mse_loss, [0.1, 0.05], inner_steps=2)
    with pytest.raises(TypeError, match="head="):
        ANIL(model, F.mse_loss, 0.1, adapt="net.0")
    # a frozen head is neither adapted nor meta-learned
    model.net[0].weight.requires_grad_(False)
    learner = MAML(model, F.mse_loss, 0.1, adapt_only=["net.0", "net.2"])
    assert set(adaptable_params(model, learner.adapt_only)) == {
        "net.0.bias",
        "net.2.weight",
        "net.2.bias",
    }


def test_test_time_adaptation_memory_does_not_grow_with_steps():
    """query_predictions cuts the graph after every step: the adapted parameters of step s
    hold no reference to those of step s − 1."""
    import weakref

    learner = MAML(MLP((1, 8, 1)), F.mse_loss, 0.01)
    xs = torch.rand(3, 5, 1)
    seen = []

    def record(step, phi):
        seen.append(weakref.ref(phi["net.0.weight"]))

    theta = {n: p.detach().requires_grad_() for n, p in learner.model.named_parameters()}
    with torch.enable_grad():
        learner.adapt(xs, xs, 5, params=theta, first_order=True, on_step=record, keep_graph=False)
    import gc

    gc.collect()
    assert sum(ref() is not None for ref in seen[:-1]) == 0


def test_a_deep_copy_runs_its_own_model():
    """learn2learn-style cloning: the copy's forward must use the copy's weights."""
    learner = ANIL(MLP((1, 8, 1)), F.mse_loss, 0.1)
    twin = copy.deepcopy(learner)
    with torch.no_grad():
        for p in twin.model.parameters():
            p.add_(1.0)
    x = torch.rand(2, 4, 1)
    phi = {n: p.unsqueeze(0).expand(2, *p.shape) for n, p in twin.model.named_parameters()}
    head_only = {n: v for n, v in phi.items() if n.startswith("net.2")}
    expected = torch.stack([twin.model(xi) for xi in x])
    torch.testing.assert_close(twin.predict(head_only, x), expected)
    assert not torch.allclose(learner.predict(head_only, x), expected)


def test_every_preset_builds_its_learner_from_the_registry():
    from mamlkit.algorithms import learner_class
    from mamlkit.build import build_learner
    from mamlkit.config import load_config, shipped_presets
    from mamlkit.tasks import task_spec

    built = set()
    for name in shipped_presets():
        config = load_config(name)
        if config.task.name.startswith("cheetah"):
            continue  # needs MuJoCo; tests/test_rl*.py build them
        learner = build_learner(config, num_train_classes=10)
        # MAML-TRPO, named by the RL task (mamlkit.rl); pretrained: its class for the task
        rl = task_spec(config.task.name).rl and config.algorithm.name == "maml"
        assert rl or isinstance(learner, learner_class(config)), name
        built.add(config.algorithm.name)
    assert {"maml", "fomaml", "metasgd", "anil", "protonet", "pretrained"} <= built


def test_a_registered_algorithm_is_buildable_from_a_config():
    """Adding an algorithm: its class, one register line and a preset; nothing else."""
    from mamlkit.algorithms import ALGORITHMS, register
    from mamlkit.build import build_learner
    from mamlkit.config import load_config

    register("layer-step-maml")(LayerStepMAML)
    try:
        config = load_config("sine_maml", ["algorithm.name=layer-step-maml"])
        learner = build_learner(config)
        assert type(learner) is LayerStepMAML
        assert isinstance(learner.update, PerLayerStepSchedule)
    finally:
        del ALGORITHMS["layer-step-maml"]
    with pytest.raises(Exception, match="unknown algorithm 'layer-step-maml'"):
        load_config("sine_maml", ["algorithm.name=layer-step-maml"])


def test_multi_step_loss_weights():
    from mamlkit.algorithms.mamlpp import multi_step_loss_weights

    assert multi_step_loss_weights(5, 0, 10) == pytest.approx([0.2] * 5)
    for epoch in range(0, 15):
        w = multi_step_loss_weights(5, epoch, 10)
        assert sum(w) == pytest.approx(1.0) and min(w) >= 0.006 - 1e-12
    assert multi_step_loss_weights(5, 10, 10)[-1] == pytest.approx(0.976)
    assert multi_step_loss_weights(3, 4, 0) == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["mlp", "conv4-stride", "conv4-max-leaky"])
@pytest.mark.parametrize("iteration", [0, 1700])
@pytest.mark.parametrize("per_step_bn", [True, False])
def test_mamlpp_multi_step_loss_and_lslr_match_reference(
    float64, case, iteration, per_step_bn, device
):
    """The weighted sum of every step's query loss, through per-layer per-step step sizes
    and (Conv4) per-step BatchNorm weights: gradients w.r.t. θ, every step size and every
    step's BatchNorm set against the per-task float64 reference."""
    from mamlkit import MAMLPlusPlus
    from mamlkit.algorithms.mamlpp import multi_step_loss_weights
    from mamlkit.tasks.base import TaskBatch

    gen = torch.Generator().manual_seed(25)
    torch.manual_seed(0)
    model, loss_fn, xs, ys, xq, yq, lr = make_case(case, gen)
    steps = 3
    learner = MAMLPlusPlus(
        model,
        loss_fn,
        lr,
        steps,
        msl_epochs=10,
        iterations_per_epoch=500,
        per_step_bn=per_step_bn,
        impl="batched",
    )
    per_step = {}
    if per_step_bn and case != "mlp":
        per_step = {n.replace("-", "."): v for n, v in learner.update.values.items()}
        assert set(per_step) == set(batch_norm_params(model)) and len(per_step) == 8
    rule = learner.update.update if per_step else learner.update
    with torch.no_grad():  # away from their initial values, so that every set matters
        for value in [*rule.alpha.values(), *per_step.values()]:
            value.mul_(torch.rand(value.shape, generator=gen) + 0.5)
    table = {n.replace("-", "."): a for n, a in rule.alpha.items()}
    weights = multi_step_loss_weights(steps, iteration // 500, 10)
    theta = dict(model.named_parameters())
    total = 0.0
    for t in range(TASKS):
        phi = dict(theta)
        for s in range(steps):
            loss = loss_fn(functional_call(model, phi, (xs[t],)), ys[t])
            names = [n for n in phi if n not in per_step]
            grads = torch.autograd.grad(loss, [phi[n] for n in names], create_graph=True)
            phi = {n: phi[n] - table[n][s] * g for n, g in zip(names, grads)}
            phi.update({n: v[s] for n, v in per_step.items()})  # the set of state s+1
            query = loss_fn(functional_call(model, phi, (xq[t],)), yq[t])
            total = total + weights[s] * query / TASKS
    ref = grads_of(total, dict(learner.named_parameters()))
    moved = copy.deepcopy(learner).to(device)
    batch = TaskBatch(*(v.to(device) for v in (xs, ys, xq, yq)))
    ours = grads_of(moved.meta_forward(batch, iteration).loss, dict(moved.named_parameters()))
    assert rel_error(ours, ref) <= 1e-8
    if per_step:  # test time: the sets still replace BatchNorm, also with a given lr
        preds = learner.query_predictions(xs, ys, xq, steps=4, lr=0.3)
        phi = {n: p.detach().requires_grad_() for n, p in theta.items()}
        for s in range(4):
            loss = loss_fn(functional_call(model, phi, (xs[0],)), ys[0])
            names = [n for n in phi if n not in per_step]
            grads = torch.autograd.grad(loss, [phi[n] for n in names])
            phi = {n: (phi[n] - 0.3 * g).detach().requires_grad_() for n, g in zip(names, grads)}
            phi.update({n: v[min(s, steps - 1)].detach() for n, v in per_step.items()})
        expected = functional_call(model, phi, (xq[0],))
        torch.testing.assert_close(preds[4][0], expected.detach(), rtol=1e-9, atol=1e-10)


def test_mamlpp_derivative_order_annealing_and_capture_key(float64):
    from mamlkit import MAMLPlusPlus
    from mamlkit.tasks.base import TaskBatch

    gen = torch.Generator().manual_seed(26)
    torch.manual_seed(0)
    model, loss_fn, *data, lr = make_case("mlp", gen)
    batch = TaskBatch(*data)
    learner = MAMLPlusPlus(model, loss_fn, lr, 2, first_order_epochs=2, iterations_per_epoch=10)
    first = MAMLPlusPlus(
        copy.deepcopy(model), loss_fn, lr, 2, first_order=True, iterations_per_epoch=10
    )
    second = MAMLPlusPlus(copy.deepcopy(model), loss_fn, lr, 2, iterations_per_epoch=10)
    for it, twin in [(5, first), (25, second)]:
        ours = grads_of(learner.meta_forward(batch, it).loss, dict(learner.named_parameters()))
        theirs = grads_of(twin.meta_forward(batch, it).loss, dict(twin.named_parameters()))
        assert rel_error(ours, theirs) <= 1e-12, it
    keys = [learner.capture_key(i) for i in range(0, 200, 10)]
    assert keys[:11] == list(range(11)) and set(keys[10:]) == {10}


def test_cosine_outer_learning_rate(tmp_path):
    import json
    import math

    from mamlkit import SineTasks
    from mamlkit.config import load_config
    from mamlkit.training import Trainer

    sets = [
        "train.iterations=8",
        "train.log_every=1",
        "train.tensorboard=false",
        "train.lr_schedule=cosine",
        "train.min_lr=1e-5",
        "train.meta_batch=2",
    ]
    config = load_config("sine_maml", sets)
    learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    Trainer(learner, SineTasks(), config, tmp_path / "run", "mse", progress=False).fit()
    records = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    # the record of step s logs the rate its last update (at step s − 1) used
    expected = [
        1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * (s - 1) / 8)) for s in range(1, 9)
    ]
    assert [r["lr"] for r in records] == pytest.approx(expected)


def resumed_run_matches_uninterrupted(tmp_path, config, resume_at: int) -> str:
    """Train ``config`` on sine tasks twice, the second time cut back to its checkpoint of
    step ``resume_at`` and resumed: the weights and metrics.jsonl must be identical.
    Returns the log."""
    from mamlkit import SineTasks
    from mamlkit.build import build_learner
    from mamlkit.training import Trainer

    def run(path, resume=False):
        torch.manual_seed(0)
        learner = build_learner(config)
        Trainer(learner, SineTasks(), config, path, "mse", progress=False).fit(resume=resume)
        return learner.state_dict()

    whole = run(tmp_path / "whole")
    run(tmp_path / "part")
    for ckpt in (tmp_path / "part/checkpoints").glob("*.safetensors"):
        if not ckpt.name.endswith(f"{resume_at:08d}.safetensors"):
            ckpt.unlink()
    resumed = run(tmp_path / "part", resume=True)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    logs = [(tmp_path / r / "metrics.jsonl").read_text() for r in ("whole", "part")]
    assert logs[0] == logs[1]
    return logs[0]


def _minibatch_by_hand(x, y, size, step):
    """Step ``step``'s examples of one task: classes interleaved (classification), in turn."""
    order = list(range(len(y)))
    if not y.is_floating_point():
        seen: dict[int, int] = {}
        rank = []
        for label in y.tolist():
            rank.append(seen.get(label, 0))
            seen[label] = rank[-1] + 1
        order.sort(key=lambda i: (rank[i], int(y[i])))
    picks = [order[(step * size + j) % len(order)] for j in range(size)]
    return x[picks], y[picks]


@pytest.mark.parametrize("inner_batch", [0, 8])
@pytest.mark.parametrize("case", ["mlp", "conv4-stride"])
def test_reptile_update_is_its_definition(float64, case, inner_batch):
    """θ ← θ + ε(φ̄ − θ), φᵢ from k plain gradient steps on task i's support and query data
    (all of it, or minibatches of 8 in turn: with a wrap-around, classes interleaved), ε
    annealed linearly: against a per-task loop written out by hand."""
    from mamlkit import Reptile
    from mamlkit.tasks.base import TaskBatch

    gen = torch.Generator().manual_seed(27)
    torch.manual_seed(0)
    model, loss_fn, xs, ys, xq, yq, lr = make_case(case, gen)
    if not ys.is_floating_point():  # class after class, as the episode samplers give them
        blocked = ys[0].argsort(stable=True)
        xs, ys, xq, yq = xs[:, blocked], ys[:, blocked], xq[:, blocked], yq[:, blocked]
    learner = Reptile(
        model,
        loss_fn,
        lr,
        inner_steps=3,
        meta_step_size=0.8,
        meta_step_size_final=0.2,
        anneal_iterations=100,
        inner_batch=inner_batch,
    )
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    eps = 0.8 + (0.2 - 0.8) * 0.25  # at iteration 25 of 100
    mean = {n: torch.zeros_like(p) for n, p in theta.items()}
    logged_loss, targets = 0.0, []  # the steps' losses; the examples they saw
    for t in range(TASKS):
        x, y = torch.cat([xs[t], xq[t]]), torch.cat([ys[t], yq[t]])
        phi = {n: p.clone().requires_grad_() for n, p in theta.items()}
        targets.append([])
        for step in range(3):
            xb, yb = _minibatch_by_hand(x, y, inner_batch, step) if inner_batch else (x, y)
            loss = loss_fn(functional_call(model, phi, (xb,)), yb)
            logged_loss += loss.item() / (3 * TASKS)
            targets[-1].append(yb)
            grads = torch.autograd.grad(loss, list(phi.values()))
            phi = {
                n: (p - lr * g).detach().requires_grad_() for (n, p), g in zip(phi.items(), grads)
            }
        for n in mean:
            mean[n] += phi[n].detach() / TASKS
    out = learner.outer_step(TaskBatch(xs, ys, xq, yq), None, iteration=25)
    for n, p in model.named_parameters():
        torch.testing.assert_close(
            p.detach(), theta[n] + eps * (mean[n] - theta[n]), rtol=1e-10, atol=1e-12
        )
    # the log: the inner steps' own mean loss, their predictions and the examples' targets
    assert out.loss.item() == pytest.approx(logged_loss, rel=1e-10)
    expected_targets = torch.stack([torch.cat(steps) for steps in targets])
    assert torch.equal(out.targets, expected_targets)
    assert out.predictions.shape[:2] == expected_targets.shape[:2]


def test_reptile_makes_no_non_finite_update():
    """A NaN in the data makes φ NaN: θ is left as it was and the loss comes back NaN,
    which stops training (instead of a NaN θ that a checkpoint could save)."""
    from mamlkit import Reptile, SineTasks
    from mamlkit.models import MLP

    learner = Reptile(MLP((1, 8, 1)), F.mse_loss, inner_lr=0.01, inner_steps=2)
    batch = SineTasks().sample(3, torch.Generator().manual_seed(0))
    batch.support_x[1, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    out = learner.outer_step(batch, None, iteration=0)
    assert out.loss.isnan()
    assert all(torch.equal(p, before[n]) for n, p in learner.model.named_parameters())


@pytest.mark.parametrize("beta1", [0.0, 0.9])
@pytest.mark.parametrize("case", ["mlp", "conv4-stride"])
def test_reptile_inner_adam_is_its_definition(float64, case, beta1):
    """Inner Adam (TensorFlow's form, ε outside the bias correction) from a stored state
    that every task starts from; after the meta-iteration the state is the tasks' mean and
    t has advanced by the steps: two meta-iterations against a per-task loop by hand."""
    from mamlkit import Reptile
    from mamlkit.tasks.base import TaskBatch

    gen = torch.Generator().manual_seed(28)
    torch.manual_seed(0)
    model, loss_fn, xs, ys, xq, yq, _ = make_case(case, gen)
    lr, beta2, adam_eps, steps = 0.01, 0.99, 1e-8, 3
    learner = Reptile(
        model, loss_fn, lr, inner_steps=steps, meta_step_size=0.7, meta_step_size_final=0.7,
        inner_optimizer="adam", inner_betas=(beta1, beta2), inner_eps=adam_eps,
    )  # fmt: skip
    rule = learner.update
    with torch.no_grad():  # a state as training leaves it
        rule.t.fill_(7)
        for n in rule.names:
            m, v = rule.moments(n)
            v.copy_(torch.rand(v.shape, generator=gen, dtype=v.dtype) * 0.01)
            if m is not None:
                m.copy_(torch.randn(m.shape, generator=gen, dtype=m.dtype) * 0.01)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {n: [t.clone() if t is not None else None for t in rule.moments(n)] for n in theta}
    t0 = 7
    for iteration in range(2):
        mean = {n: torch.zeros_like(p) for n, p in theta.items()}
        new_state = {n: [None if m is None else torch.zeros_like(m), torch.zeros_like(v)]
                     for n, (m, v) in state.items()}  # fmt: skip
        for t in range(TASKS):
            x, y = torch.cat([xs[t], xq[t]]), torch.cat([ys[t], yq[t]])
            phi = {n: p.clone().requires_grad_() for n, p in theta.items()}
            run = {n: list(mv) for n, mv in state.items()}
            for k in range(steps):
                grads = torch.autograd.grad(
                    loss_fn(functional_call(model, phi, (x,)), y), list(phi.values())
                )
                count = t0 + k + 1
                scale = lr * (1 - beta2**count) ** 0.5 / (1 - beta1**count)
                for (n, p), g in zip(list(phi.items()), grads):
                    m, v = run[n]
                    v = beta2 * v + (1 - beta2) * g * g
                    m = g if beta1 == 0 else beta1 * m + (1 - beta1) * g
                    run[n] = [None if beta1 == 0 else m, v]
                    phi[n] = (p - scale * m / (v.sqrt() + adam_eps)).detach().requires_grad_()
            for n in mean:
                mean[n] += phi[n].detach() / TASKS
                new_state[n][1] += run[n][1] / TASKS
                if beta1:
                    new_state[n][0] += run[n][0] / TASKS
        learner.outer_step(TaskBatch(xs, ys, xq, yq), None, iteration=iteration)
        theta = {n: theta[n] + 0.7 * (mean[n] - theta[n]) for n in theta}
        state, t0 = new_state, t0 + steps
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), theta[n], rtol=1e-10, atol=1e-12)
            m, v = rule.moments(n)
            torch.testing.assert_close(v, state[n][1], rtol=1e-10, atol=1e-14)
            if beta1:
                torch.testing.assert_close(m, state[n][0], rtol=1e-10, atol=1e-14)
        assert int(rule.t) == t0
    # test time: the stored state, left as it is
    before = {k: b.clone() for k, b in rule.named_buffers()}
    with torch.no_grad():
        learner.adapt(xs, ys, steps=2)
    assert all(torch.equal(before[k], b) for k, b in rule.named_buffers())


def test_reptile_minibatches_see_every_class_alike():
    from mamlkit.algorithms.reptile import inner_minibatches

    y = torch.arange(5).repeat_interleave(10).expand(3, -1)  # 5 classes × 10, class after class
    x = torch.randn(3, 50, 2)
    batches = inner_minibatches(x, y, 10, 6)
    for xb, yb in batches:
        assert yb.shape == (3, 10) and (torch.bincount(yb[0], minlength=5) == 2).all()
        assert xb.shape == (3, 10, 2)
    seen = torch.cat([xb for xb, _ in batches[:5]], dim=1)  # 5 steps: one pass over the data
    assert torch.equal(seen.sort(dim=1).values, x.sort(dim=1).values)
    assert torch.equal(batches[5][0], batches[0][0])  # then from the start again
    with pytest.raises(ValueError, match="1 to 50 examples"):
        inner_minibatches(x, y, 51, 1)


def test_reptile_trains_and_resumes_exactly(tmp_path):
    """Through the Trainer's outer_step path: logs, checkpoints, and a resumed run ends
    bit-identical to an uninterrupted one."""
    from mamlkit.config import load_config

    sets = [
        "algorithm.name=reptile",
        "algorithm.inner_steps=3",
        "train.iterations=12",
        "train.checkpoint_every=4",
        "train.log_every=3",
        "train.tensorboard=false",
        "train.meta_batch=3",
    ]
    config = load_config("sine_maml", sets)

    log = resumed_run_matches_uninterrupted(tmp_path, config, resume_at=8)
    assert log.count("\n") == 4


def test_reptile_inner_adam_resumes_exactly(tmp_path):
    """Inner Adam's moments and step count live in the checkpoint: a resumed run ends
    bit-identical to an uninterrupted one."""
    from mamlkit.config import load_config

    sets = ["algorithm.name=reptile", "algorithm.inner_optimizer=adam", "algorithm.inner_lr=0.01",
            "algorithm.inner_steps=3", "train.iterations=12", "train.checkpoint_every=4",
            "train.log_every=3", "train.tensorboard=false", "train.meta_batch=3"]  # fmt: skip
    config = load_config("sine_maml", sets)
    resumed_run_matches_uninterrupted(tmp_path, config, resume_at=8)


@pytest.mark.parametrize(
    "schedule",
    [
        ["train.lr_halve_every=3"],
        ["train.lr_schedule=cosine", "train.min_lr=1e-5"],
        ["train.optimizer=sgd", "train.lr_halve_every=4"],
    ],
)
def test_schedules_resume_exactly(tmp_path, schedule):
    """The outer optimiser and schedule (torch objects built from the config) continue
    exactly after a resume: weights and the logged rates equal an uninterrupted run's."""
    import json

    from mamlkit.config import load_config

    sets = ["train.iterations=10", "train.log_every=1", "train.checkpoint_every=2",
            "train.tensorboard=false", "train.meta_batch=2", *schedule]  # fmt: skip
    config = load_config("sine_maml", sets)

    log = resumed_run_matches_uninterrupted(tmp_path, config, resume_at=6)
    rates = [json.loads(line)["lr"] for line in log.splitlines()]
    assert len(set(rates)) > 1  # the schedule moved within the run


def test_the_pretrained_baseline_is_not_a_maml():
    """It adapts by gradient steps like MAML (the shared GradientLearner) but is not
    meta-learned through them."""
    from mamlkit.algorithms import GradientLearner
    from mamlkit.build import build_learner
    from mamlkit.config import load_config

    learner = build_learner(load_config("sine_pretrained"))
    assert isinstance(learner, GradientLearner) and not isinstance(learner, MAML)
    assert issubclass(MAML, GradientLearner)


def test_reptile_inner_batch_is_a_setting_checked_against_the_task():
    from mamlkit import Reptile, load_config
    from mamlkit.build import build_learner
    from mamlkit.errors import ConfigError

    config = load_config("omniglot_reptile_5w1s", ["task.queries=3", "algorithm.inner_batch=20"])
    learner = build_learner(config, 10)
    assert isinstance(learner, Reptile) and learner.inner_batch == 20
    with pytest.raises(ConfigError, match=r"'algorithm\.inner_batch': a task has 20 labelled"):
        load_config("omniglot_reptile_5w1s", ["task.queries=3", "algorithm.inner_batch=21"])
    with pytest.raises(ConfigError, match=r"'algorithm\.inner_batch': must be >= 0"):
        load_config("sine_maml", ["algorithm.name=reptile", "algorithm.inner_batch=-1"])


@pytest.mark.parametrize(
    "preset,sets,message",
    [
        ("omniglot_reptile_5w1s", ["algorithm.inner_optimizer=rmsprop"],
         r"'algorithm\.inner_optimizer': must be 'sgd' or 'adam'"),
        ("omniglot_reptile_5w1s", ["algorithm.inner_betas=[0.9]"],
         r"'algorithm\.inner_betas': must be two numbers in \[0, 1\)"),
        ("omniglot_reptile_5w1s", ["algorithm.inner_betas=[0.0, 1.0]"],
         r"'algorithm\.inner_betas': must be two numbers in \[0, 1\)"),
        ("omniglot_reptile_5w1s", ["algorithm.inner_eps=0"],
         r"'algorithm\.inner_eps': must be > 0"),
        ("omniglot_mamlpp_5w1s", ["model.activation=tanh"],
         r"'model\.activation': must be one of 'relu', 'leaky_relu'"),
    ],
)  # fmt: skip
def test_inner_adam_and_activation_settings_are_checked(preset, sets, message):
    from mamlkit import load_config
    from mamlkit.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(preset, sets)


def test_the_presets_build_the_papers_networks_and_inner_optimisers():
    """MAML++'s presets build its released network (max-pooling, leaky ReLU); Reptile's
    adapt with inner Adam (β₁ = 0), whose state the learner's checkpoint holds."""
    from torch import nn

    from mamlkit import load_config
    from mamlkit.algorithms import InnerAdam
    from mamlkit.build import build_learner

    learner = build_learner(load_config("omniglot_mamlpp_5w1s"), 10)
    layers = list(learner.model.features)
    assert any(isinstance(m, nn.MaxPool2d) for m in layers)
    assert [m.negative_slope for m in layers if isinstance(m, nn.LeakyReLU)] == [0.01] * 4
    learner = build_learner(load_config("omniglot_reptile_5w1s"), 10)
    assert isinstance(learner.update, InnerAdam) and learner.update.beta1 == 0.0
    assert learner.update.lrs == [0.001]
    assert "update.t" in learner.state_dict()
