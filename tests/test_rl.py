"""Reinforcement learning (issue 14): 2D navigation against its definition, the baseline and
advantages, the policy-gradient losses and the meta-gradient through the inner VPG step
against float64 per-task references, TRPO's KL bound, exact resume and a short run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.distributions import Normal, kl_divergence
from torch.func import functional_call

from mamlkit.cli import main
from mamlkit.config import load_config
from mamlkit.errors import ConfigError
from mamlkit.functional import stack_params
from mamlkit.rl import MAMLTRPO, GaussianMLPPolicy, Navigation2D, NavigationTasks
from mamlkit.rl.build import build_rl_tasks
from mamlkit.rl.envs import TaskStreams, environment_streams
from mamlkit.rl.returns import (
    Trajectories,
    advantages,
    baseline_features,
    discounted_cumsum,
    fit_linear_baseline,
    gae,
    normalise_per_task,
    old_policy,
    sample_steps,
    sample_trajectories,
    surrogate_and_kl,
    vpg_support_loss,
)
from mamlkit.rl.trpo import conjugate_gradient, flat, trpo_step
from mamlkit.runner import eval_run, list_runs, train_run

# ---- the environment ---------------------------------------------------------------------


def test_navigation_step_clips_moves_rewards_and_finishes():
    env = Navigation2D(normalized_actions=False)  # the action is the move
    goal = torch.tensor([[0.1, -0.05], [0.4, 0.4]])
    state, obs = env.reset(goal, 3)
    assert obs.shape == (2, 3, 2) and torch.equal(obs, torch.zeros(2, 3, 2))
    action = torch.tensor([0.3, -0.05]).expand(2, 3, 2)  # x clipped to 0.1, y as given
    state, obs, reward, done = env.step(state, action)
    assert torch.allclose(obs, torch.tensor([0.1, -0.05]).expand(2, 3, 2))
    expected = -(torch.tensor([0.1, -0.05]) - goal).norm(dim=-1)  # L2 distance after the move
    assert torch.allclose(reward, expected.unsqueeze(1).expand(2, 3))
    assert done[0].all() and not done[1].any()  # reached the first goal exactly
    # within 0.01 on both axes is done; 0.011 on one axis is not
    state = (torch.tensor([[[0.0, 0.0], [0.0, 0.0]]]), torch.tensor([[[0.009, -0.009]] * 2]))
    _, _, _, done = env.step(state, torch.tensor([[[0.0, 0.0], [0.0, 0.002]]]))
    assert done.tolist() == [[True, False]]
    # negative actions are clipped too
    state, _ = env.reset(torch.zeros(1, 2), 1)
    _, obs, _, _ = env.step(state, torch.tensor([[[-5.0, 0.05]]]))
    assert torch.allclose(obs, torch.tensor([[[-0.1, 0.05]]]))


def test_normalized_actions_scale_the_unit_box_to_the_move():
    """rllab's ``normalize`` (maml_rl's setting, the default): the policy acts in [−1, 1]²,
    an action a moves the point by lb + (a + 1)/2 · (ub − lb) = 0.1 a, clipped to ±0.1."""
    env = Navigation2D()
    assert env.normalized_actions
    goal = torch.tensor([[0.03, -0.5]])
    state, _ = env.reset(goal, 1)
    state, obs, reward, done = env.step(state, torch.tensor([[[0.3, -5.0]]]))
    assert torch.allclose(obs, torch.tensor([[[0.03, -0.1]]]))  # 0.1 × 0.3; −5 clipped to −1
    assert torch.allclose(reward, -torch.tensor([[0.4]]))
    assert not done.any()
    lb, ub = -env.max_action, env.max_action  # the rllab formula, for one random action
    a = torch.empty(2).uniform_(-1.5, 1.5)
    moved = (lb + (a + 1.0) * 0.5 * (ub - lb)).clamp(lb, ub)
    state, _ = env.reset(goal, 1)
    _, obs, _, _ = env.step(state, a.view(1, 1, 2))
    assert torch.allclose(obs.view(2), moved, atol=1e-7)


def test_oracle_observes_the_goal():
    env = Navigation2D(oracle=True)
    goal = torch.tensor([[0.3, -0.2]])
    state, obs = env.reset(goal, 2)
    assert env.obs_dim == 4 and torch.equal(obs[0, 0], torch.tensor([0.0, 0.0, 0.3, -0.2]))


def steering_policy(direction, log_std=-30.0):
    """A policy whose mean action is ``direction`` everywhere, with negligible noise."""
    policy = GaussianMLPPolicy(2, 2, (4,))
    with torch.no_grad():
        for p in policy.mean.parameters():
            p.zero_()
        policy.mean.net[-1].bias.copy_(torch.tensor(direction))
        policy.log_std.fill_(log_std)
    return policy


def test_trajectories_stop_at_done_and_are_padded():
    env = Navigation2D(horizon=10)
    policy = steering_policy([2.0, 0.0])  # clipped to 1, a move of 0.1 per step along x
    goal = torch.tensor([[0.3, 0.0], [-0.3, 0.0]])  # reached after 3 steps / never
    params = stack_params(dict(policy.named_parameters()), 2)
    traj = sample_trajectories(env, policy, params, goal, 2, TaskStreams.seeded(0, 2))
    assert traj.mask[0, 0].tolist() == [1, 1, 1] + [0] * 7
    assert traj.mask[1].sum().item() == 20
    assert torch.allclose(traj.rewards[0, 0, :3], torch.tensor([-0.2, -0.1, 0.0]), atol=1e-6)
    assert traj.rewards[0, :, 3:].abs().sum() == 0
    positions = 0.1 * torch.arange(10.0)  # observation before each step
    assert torch.allclose(traj.obs[1, 0, :, 0], positions, atol=1e-6)
    assert torch.allclose(traj.actions[0, 0, 0], torch.tensor([2.0, 0.0]))  # as sampled


def test_the_batch_seed_makes_sampling_reproducible():
    env, policy = Navigation2D(horizon=5), GaussianMLPPolicy(2, 2, (8,))
    batch = NavigationTasks().sample(3, torch.Generator().manual_seed(1))
    params = stack_params(dict(policy.named_parameters()), 3)
    a, b = (
        sample_trajectories(
            env, policy, params, batch.task, 4, environment_streams(batch)
        )
        for _ in range(2)
    )
    assert torch.equal(a.actions, b.actions) and torch.equal(a.rewards, b.rewards)
    assert batch.task.abs().max() <= 0.5 and batch.seeds.dtype == torch.int64


def test_sample_steps_keeps_trajectories_until_each_task_has_its_steps():
    """rllab's batch of samples: rounds of n trajectories until a task has min_steps
    steps, kept up to the trajectory that reaches them; the average return is over the
    kept trajectories only."""
    env = Navigation2D(horizon=20)
    policy = GaussianMLPPolicy(2, 2, (8,))
    task = torch.tensor([[0.5, 0.5], [0.0, 0.01]])
    params = stack_params(dict(policy.named_parameters()), 2)
    traj = sample_steps(env, policy, params, task, 3, 130, TaskStreams.seeded(0, 2))
    lengths = traj.mask.sum(-1)  # [T, N]
    kept = traj.mask[..., 0]
    assert traj.obs.shape[1] == 9  # three rounds of 3 trajectories of at most 20 steps
    for t in range(2):
        n = int(kept[t].sum())
        assert kept[t, :n].all() and not kept[t, n:].any()  # a prefix of the trajectories
        assert lengths[t, : n - 1].sum() < 130 <= lengths[t, :n].sum()  # the crossing one last
        assert traj.rewards[t, n:].abs().sum() == 0
        assert traj.average_return()[t] == pytest.approx(float(traj.rewards[t, :n].sum() / n))
    # a number of trajectories is the same as before: all kept, the plain mean
    plain = sample_trajectories(env, policy, params, task, 3, TaskStreams.seeded(0, 2))
    assert torch.equal(plain.average_return(), plain.returns().mean(1))


def test_a_tasks_trajectories_do_not_depend_on_the_tasks_beside_it():
    """Each task draws from its own stream: a slice of a batch (an evaluation's chunk, a
    rank's share under torchrun) samples what the whole batch samples for its tasks, also
    after a sampling by rounds whose number the slowest task of the batch decides."""
    env, policy = Navigation2D(horizon=20, tolerance=0.2), GaussianMLPPolicy(2, 2, (8,))
    batch = NavigationTasks().sample(4, torch.Generator().manual_seed(5))
    task = batch.task.clone()
    task[0] = torch.tensor([0.0, 0.05])  # reached in one step: many rounds for 50 steps

    def sample(part):
        params = stack_params(dict(policy.named_parameters()), part.num_tasks)
        streams = environment_streams(part)
        first = sample_steps(env, policy, params, part.task, 3, 50, streams)
        return first, sample_trajectories(env, policy, params, part.task, 3, streams)

    whole = sample(type(batch)(task, batch.seeds))
    rounds = []
    for start, stop in [(0, 1), (1, 3), (3, 4)]:
        alone = sample(type(batch)(task[start:stop], batch.seeds[start:stop]))
        rounds.append(alone[0].obs.shape[1])
        for w, a in zip(whole, alone, strict=True):
            kept = a.obs.shape[1]  # a slice may need fewer rounds than the batch
            for name in ("obs", "actions", "rewards", "mask"):
                assert torch.equal(getattr(w, name)[start:stop, :kept], getattr(a, name))
            assert torch.equal(w.average_return()[start:stop], a.average_return())
    assert min(rounds) < whole[0].obs.shape[1] == max(rounds)  # the rounds did differ


def test_rl_scores_do_not_depend_on_the_chunks_of_their_batch():
    from mamlkit.evaluation import per_task_metric_by_step

    torch.manual_seed(0)
    learner = MAMLTRPO(Navigation2D(horizon=10), GaussianMLPPolicy(2, 2, (8,)), eval_rollouts=4)
    batch = NavigationTasks().sample(6, torch.Generator().manual_seed(0))
    whole, *parts = (
        per_task_metric_by_step(learner, batch, 1, "return", chunk=chunk) for chunk in (6, 4, 1)
    )
    assert whole.shape == (2, 6) and all(torch.equal(whole, part) for part in parts)


# ---- returns, baseline, advantages ----------------------------------------------------


def random_trajectories(tasks=3, n=4, horizon=10, obs_dim=2, act_dim=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, horizon + 1, (tasks, n), generator=g)
    mask = (torch.arange(horizon) < lengths.unsqueeze(-1)).to(torch.get_default_dtype())
    obs = torch.randn(tasks, n, horizon, obs_dim, generator=g) * mask.unsqueeze(-1)
    act = torch.randn(tasks, n, horizon, act_dim, generator=g) * mask.unsqueeze(-1)
    return Trajectories(obs, act, torch.randn(tasks, n, horizon, generator=g) * mask, mask)


def test_discounted_cumsum_and_gae_against_their_definitions():
    traj = random_trajectories()
    gamma = 0.9
    ret = discounted_cumsum(traj.rewards, gamma)
    r = traj.rewards[1, 2]
    manual = torch.stack([sum(gamma**k * r[t + k] for k in range(10 - t)) for t in range(10)])
    assert torch.allclose(ret[1, 2], manual, atol=1e-6)
    values = torch.randn(traj.rewards.shape)
    # λ = 1: the discounted return minus the baseline (the value after the end is 0)
    adv1 = gae(traj, values, gamma, 1.0)
    assert torch.allclose(adv1, (ret - values) * traj.mask, atol=1e-5)
    # λ = 0: one-step TD errors
    adv0 = gae(traj, values, gamma, 0.0)
    v = values * traj.mask
    v_next = torch.cat([v[..., 1:], torch.zeros_like(v[..., :1])], -1)
    assert torch.allclose(adv0, (traj.rewards + gamma * v_next - v) * traj.mask, atol=1e-6)


def test_linear_baseline_fits_each_task_and_normalisation_is_per_task(float64):
    traj = random_trajectories(tasks=2, n=6, horizon=12)
    gamma = 0.99
    # returns that are exactly linear in task-specific features: the fit reproduces them
    o, m = traj.obs, traj.mask
    t = (torch.arange(12.0) / 100).view(1, 1, -1).expand_as(m)
    target = torch.stack([o[0, ..., 0] + 30 * t[0] - 1, 2 * o[1, ..., 1] ** 2 + 0.5])
    # rewards whose discounted return is `target` on valid steps (last step: itself)
    nxt = torch.cat([target[..., 1:] * m[..., 1:], torch.zeros_like(target[..., :1])], -1)
    rewards = (target - gamma * nxt) * m
    fitted = fit_linear_baseline(Trajectories(o, traj.actions, rewards, m), gamma)
    assert torch.allclose(fitted * m, target * m, atol=5e-3)  # up to the ridge's shrinkage
    # exactly the ridge solution, computed another way: least squares on [X; √λ·I]
    for i in range(2):
        x = baseline_features(o[i], m[i]).reshape(-1, 8)  # [o, o², t, t², t³, 1], o in R²
        y = (target[i] * m[i]).reshape(-1)
        x_aug = torch.cat([x, 1e-5**0.5 * torch.eye(8)])
        w = torch.linalg.lstsq(x_aug, torch.cat([y, torch.zeros(8)])).solution
        assert torch.allclose(fitted[i] * m[i], (x @ w).view_as(m[i]) * m[i], atol=1e-8)
    adv = normalise_per_task(torch.randn(m.shape) * 5 + 3, m)
    for i in range(2):
        valid = adv[i][m[i] > 0]
        assert abs(valid.mean()) < 1e-5 and abs(valid.std(unbiased=False) - 1) < 1e-4
        assert adv[i][m[i] == 0].abs().max() == 0


# ---- policy-gradient losses and the meta-gradient --------------------------------------


def test_vpg_surrogate_gradient_is_the_analytic_score_function(float64):
    """For a Gaussian policy, ∇μ log π = (a − μ)/σ² and ∇log σ log π = (a − μ)²/σ² − 1:
    the VPG surrogate's gradient with respect to the last bias (∂μ/∂b = I) and log σ is
    −mean_t of those times the advantage."""
    policy = GaussianMLPPolicy(2, 2, (5,))
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-0.3, 0.2]))
    traj = random_trajectories(tasks=2)
    adv = torch.randn(traj.mask.shape) * traj.mask
    params = {n: p.detach().clone().requires_grad_() for n, p in policy.named_parameters()}
    stacked = stack_params(params, 2)
    loss = vpg_support_loss(policy, traj, adv)(stacked)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))
    mean = policy.mean(traj.obs).detach()
    var = torch.exp(2 * params["log_std"].detach())
    n = traj.mask.sum((1, 2)).view(-1, 1, 1, 1)
    w = (adv * traj.mask).unsqueeze(-1) / n
    d_mean = -(w * (traj.actions - mean) / var).sum((0, 1, 2))
    d_log_std = -(w * ((traj.actions - mean) ** 2 / var - 1)).sum((0, 1, 2))
    last = f"mean.net.{len(policy.mean.net) - 1}.bias"
    assert torch.allclose(grads[last], d_mean, atol=1e-10)
    assert torch.allclose(grads["log_std"], d_log_std, atol=1e-10)


def per_task_reference(policy, theta, support, adv_s, query, adv_q, old, alpha, task):
    """Task ``task`` by hand: one VPG step with create_graph, then its TRPO surrogate and
    KL, written with torch.distributions (not mamlkit's Gaussian formulas)."""

    def dist(params, obs):
        mean_params = {n[5:]: p for n, p in params.items() if n.startswith("mean.")}
        mean = functional_call(policy.mean, mean_params, (obs,))
        return Normal(mean, torch.exp(params["log_std"]).expand_as(mean))

    def masked_mean(x, mask):
        return (x * mask).sum() / mask.sum()

    lp = dist(theta, support.obs[task]).log_prob(support.actions[task]).sum(-1)
    inner = -masked_mean(lp * adv_s[task], support.mask[task])
    grads = torch.autograd.grad(inner, list(theta.values()), create_graph=True)
    phi = {n: p - alpha * g for (n, p), g in zip(theta.items(), grads, strict=True)}
    new = dist(phi, query.obs[task])
    ratio = torch.exp(new.log_prob(query.actions[task]).sum(-1) - old.log_prob[task])
    surrogate = -masked_mean(ratio * adv_q[task], query.mask[task])
    old_dist = Normal(old.mean[task], torch.exp(old.log_std[task]))
    kl = masked_mean(kl_divergence(old_dist, new).sum(-1), query.mask[task])
    return surrogate, kl


def test_meta_gradient_and_fisher_vector_product_match_a_float64_per_task_reference(float64):
    torch.manual_seed(0)
    env = Navigation2D(horizon=12)
    policy = GaussianMLPPolicy(2, 2, (16, 16))
    learner = MAMLTRPO(env, policy, inner_lr=0.3, rollouts=5)
    batch = NavigationTasks().sample(3, torch.Generator().manual_seed(2))
    streams = environment_streams(batch)
    support, phi, query, adv_q = learner._rollout_and_adapt(batch, streams)
    adv_s = advantages(support, learner.discount, learner.gae_lambda)
    old = old_policy(policy, phi, query)
    # after a change of θ, φ(θ) moves away from the policy that sampled the query set
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    theta = dict(policy.named_parameters())
    phi = learner.adapt_on(stack_params(theta, 3), support, learner.update, 1, False)
    loss, kl = surrogate_and_kl(policy, phi, query, adv_q, old)
    grad = flat(torch.autograd.grad(loss, list(theta.values()), retain_graph=True))
    grad_kl = flat(torch.autograd.grad(kl, list(theta.values()), create_graph=True))
    v = torch.randn(grad.shape)
    fvp = flat(torch.autograd.grad(grad_kl @ v, list(theta.values())))

    ref_loss, ref_kl = 0.0, 0.0
    for t in range(3):
        s, k = per_task_reference(policy, theta, support, adv_s, query, adv_q, old, 0.3, t)
        ref_loss, ref_kl = ref_loss + s / 3, ref_kl + k / 3
    ref_grad = flat(torch.autograd.grad(ref_loss, list(theta.values()), retain_graph=True))
    ref_grad_kl = flat(torch.autograd.grad(ref_kl, list(theta.values()), create_graph=True))
    ref_fvp = flat(torch.autograd.grad(ref_grad_kl @ v, list(theta.values())))
    assert torch.allclose(loss, ref_loss, atol=1e-12) and torch.allclose(kl, ref_kl, atol=1e-12)
    assert torch.allclose(grad, ref_grad, atol=1e-10, rtol=1e-8)
    assert fvp.abs().max() > 0
    assert torch.allclose(fvp, ref_fvp, atol=1e-10, rtol=1e-8)
    # the second-order term matters: a first-order φ gives another gradient
    phi_fo = learner.adapt_on(stack_params(theta, 3), support, learner.update, 1, True)
    loss_fo, _ = surrogate_and_kl(policy, phi_fo, query, adv_q, old)
    grad_fo = flat(torch.autograd.grad(loss_fo, list(theta.values())))
    assert not torch.allclose(grad_fo, ref_grad, atol=1e-6)


# ---- TRPO --------------------------------------------------------------------------------


def test_conjugate_gradient_solves_a_positive_definite_system(float64):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g)
    a = a @ a.T + 0.5 * torch.eye(6)
    b = torch.randn(6, generator=g)
    x = conjugate_gradient(lambda v: a @ v, b, iterations=10)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trpo_step_respects_the_kl_bound_and_improves_or_rejects(seed):
    torch.manual_seed(seed)
    learner = MAMLTRPO(
        Navigation2D(horizon=15), GaussianMLPPolicy(2, 2, (16, 16)), rollouts=6, max_kl=0.01
    )
    batch = NavigationTasks().sample(4, torch.Generator().manual_seed(seed))
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    learner.outer_step(batch, None, 0)
    step = learner.last_step
    assert step.kl_after <= 0.01
    changed = any(not torch.equal(p, before[n]) for n, p in learner.named_parameters())
    if step.step_fraction > 0:
        assert step.loss_after < step.loss_before and changed
    else:
        assert not changed
    # what it accepted is what a fresh evaluation at the new θ gives
    out = learner.meta_forward(batch)  # KL 0 at the current θ by construction
    assert torch.isfinite(out.loss)


def test_trpo_step_rejects_a_step_that_does_not_improve():
    x = torch.zeros(3, requires_grad=True)
    target = torch.tensor([1.0, -2.0, 0.5])
    loss = ((x - target) ** 2).sum()
    kl = 0.5 * ((x - x.detach()) ** 2).sum() * 10
    step = trpo_step([x], loss, kl, lambda: (loss.detach() + 1, torch.tensor(0.0)))
    assert step.step_fraction == 0 and torch.equal(x.detach(), torch.zeros(3))
    # a step that is accepted lies within the bound and lowers the loss
    step = trpo_step(
        [x],
        loss,
        kl,
        lambda: (((x - target) ** 2).sum(), 0.5 * (x**2).sum() * 10),
        max_kl=0.01,
    )
    assert 0 < step.step_fraction <= 1 and step.kl_after <= 0.01
    assert step.loss_after < step.loss_before


# ---- runs ----------------------------------------------------------------------------------

TINY = [
    "task.horizon=10",
    "task.rollouts=3",
    "task.eval_rollouts=3",
    "model.hidden=[8,8]",
    "train.meta_batch=2",
    "train.checkpoint_every=2",
    "train.tensorboard=false",
    "eval.tasks=3",
]


def test_resume_is_bit_identical(tmp_path):
    straight = train_run(
        load_config("rl_nav2d_maml", [*TINY, "train.iterations=4"]), tmp_path / "a", progress=False
    )
    assert straight["step"] == 4
    train_run(load_config("rl_nav2d_maml", [*TINY, "train.iterations=2"]), tmp_path / "b")
    train_run(
        load_config("rl_nav2d_maml", [*TINY, "train.iterations=4"]),
        tmp_path / "b",
        resume=True,
        progress=False,
        update_config=True,
    )
    a, b = (load_file(tmp_path / run / "model.safetensors") for run in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (
        tmp_path / "b" / "metrics.jsonl"
    ).read_text()
    record = eval_run(tmp_path / "a")
    assert [s["steps"] for s in record["by_step"]] == [0, 1, 2, 3]
    assert record["return"] == record["by_step"][-1]["return"] and record["tasks"] == 3
    assert json.loads((tmp_path / "a" / "eval.json").read_text()) == record
    rows = {r["run"]: r for r in list_runs(tmp_path)}
    assert rows[str(tmp_path / "a")]["best"].startswith("eval return ")
    assert main(["adapt", str(tmp_path / "a"), "--support", str(tmp_path), "--query", "0"]) == 2
    assert main(["plot", str(tmp_path / "a")]) == 0
    for figure in ("learning_curves.png", "returns.png", "trajectories.png"):
        assert (tmp_path / "a" / figure).stat().st_size > 0


def test_eval_inner_lr_replaces_the_test_step_sizes(tmp_path):
    run = tmp_path / "run"
    train_run(load_config("rl_nav2d_maml", [*TINY, "train.iterations=1"]), run)
    record = eval_run(run)  # the preset's 0.5, then 0.1 (chosen on validation tasks)
    assert eval_run(run, inner_lr=[0.5, 0.1])["by_step"] == record["by_step"]
    other = eval_run(run, inner_lr=[0.1, 0.05])
    assert other["by_step"][0] == record["by_step"][0]  # before adapting: the same
    assert other["by_step"][1]["return"] != record["by_step"][1]["return"]
    assert other["inner_lr"] == [0.1, 0.05]
    saved = json.loads((run / "eval-inner-lr-0.1-0.05.json").read_text())
    assert saved == other and json.loads((run / "eval.json").read_text()) == record
    # validation tasks are other draws than the test tasks, in a file of their own
    val = eval_run(run, split="val", inner_lr=[0.1, 0.05])
    assert val["split"] == "val" and val["by_step"][0] != other["by_step"][0]
    assert json.loads((run / "eval-inner-lr-0.1-0.05-val.json").read_text()) == val
    assert json.loads((run / "eval.json").read_text()) == record
    # test steps of a number of environment steps (maml_rl's batch_size): a horizon-100 round
    # of 3 trajectories has at most 300, so 350 take more trajectories than the plain 3
    by_samples = eval_run(run, samples=350)
    assert by_samples["samples_per_step"] == 350 and "samples_per_step" not in record
    assert len(by_samples["by_step"]) == 4
    assert by_samples["by_step"][0]["return"] != record["by_step"][0]["return"]
    assert json.loads((run / "eval-samples-350.json").read_text()) == by_samples
    assert eval_run(run, samples=0)["by_step"] == record["by_step"]  # 0: trajectories alone
    assert main(["eval", str(run), "--samples", "-1"]) == 2


def test_validation_tasks_are_reproducible_and_not_the_test_tasks():
    for name in ("rl_nav2d_maml", "rl_cheetah_vel_maml"):
        config = load_config(name)
        test, val = build_rl_tasks(config, "test"), build_rl_tasks(config, "val")
        a, b, c = (
            tasks.sample(5, torch.Generator().manual_seed(7)) for tasks in (val, val, test)
        )
        assert torch.equal(a.task, b.task) and torch.equal(a.seeds, b.seeds)
        assert not torch.isin(a.task, c.task).any() and not torch.isin(a.seeds, c.seeds).any()


def test_a_run_saved_before_normalized_actions_keeps_its_environment(tmp_path):
    """A run directory whose config.yaml predates ``task.normalized_actions`` resumes and
    evaluates on the environment it trained on (raw actions), not on today's default."""
    from mamlkit.build import build_learner
    from mamlkit.runner import load_run_config

    train_run(load_config("rl_nav2d_maml", [*TINY, "train.iterations=1"]), tmp_path / "new")
    saved = (tmp_path / "new" / "config.yaml").read_text()
    assert "normalized_actions: true" in saved
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.yaml").write_text(saved.replace("  normalized_actions: true\n", ""))
    assert not load_run_config(old).task.normalized_actions
    assert not build_learner(load_run_config(old)).env.normalized_actions
    assert build_learner(load_run_config(tmp_path / "new")).env.normalized_actions
    assert load_config("rl_nav2d_maml").task.normalized_actions  # new runs: maml_rl's


@pytest.mark.parametrize(
    "override, key",
    [
        ("task.horizon=0", "task.horizon"),
        ("task.name=cartpole", "task.name"),
        ("algorithm.name=protonet", "algorithm.name"),
        ("algorithm.max_kl=0", "algorithm.max_kl"),
        ("task.rollouts=0", "task.rollouts"),
        ("algorithm.fisher=newton", "algorithm.fisher"),
        ("task.eval_samples=-1", "task.eval_samples"),
    ],
)
def test_bad_rl_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config("rl_nav2d_maml", [override])


@pytest.mark.slow
def test_short_run_adapts(tmp_path):
    """A short MAML-TRPO run: one policy-gradient step raises the return of new tasks."""
    config = load_config(
        "rl_nav2d_maml",
        [
            "train.iterations=6",
            "train.meta_batch=10",
            "task.rollouts=10",
            "model.hidden=[32,32]",
            "train.tensorboard=false",
            "train.checkpoint_every=100",
            "eval.tasks=20",
            "eval.steps=1",
        ],
    )
    train_run(config, tmp_path / "run", progress=False)
    record = eval_run(tmp_path / "run")
    before, after = record["by_step"]
    # better by more than the 95% interval of the pre-adaptation mean
    assert after["return"] - before["return"] > before["ci95"], record


def test_a_nan_policy_stops_training():
    from mamlkit.build import build_learner, build_tasks
    from mamlkit.errors import DivergenceError
    from mamlkit.training import Trainer

    config = load_config("rl_nav2d_maml", [*TINY, "train.iterations=3"])
    learner = build_learner(config)
    with torch.no_grad():
        learner.policy.log_std.fill_(float("nan"))
    trainer = Trainer(learner, build_tasks(config), config, progress=False, metric="return")
    with pytest.raises(DivergenceError, match="NaN"):
        trainer.fit()
    assert trainer.step == 0
