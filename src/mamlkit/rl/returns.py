"""Sampled trajectories, the linear feature baseline, GAE and the policy-gradient losses.

Every tensor has the layout ``[T, N, H, ...]`` (tasks, trajectories, time); ``mask`` is 1
for the time steps that happened (a trajectory that is done stops contributing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mamlkit.functional import Params
from mamlkit.rl.envs import TaskStreams
from mamlkit.rl.policy import GaussianMLPPolicy, gaussian_kl, gaussian_log_prob


@dataclass
class Trajectories:
    obs: Tensor  # [T, N, H, O], 0 after done
    actions: Tensor  # [T, N, H, A], as sampled (before the environment clips them); 0 after done
    rewards: Tensor  # [T, N, H], 0 after done
    mask: Tensor  # [T, N, H], 1 where the step happened

    def returns(self) -> Tensor:
        """Undiscounted return of every trajectory ``[T, N]``."""
        return self.rewards.sum(-1)

    def average_return(self) -> Tensor:
        """Mean undiscounted return per task ``[T]`` (what the paper's figures report), over
        the trajectories that happened (a trajectory masked out from its first step on, as
        :func:`sample_steps` leaves them, does not count)."""
        return self.returns().sum(1) / self.mask[..., 0].sum(1)


@torch.no_grad()
def sample_trajectories(
    env, policy: GaussianMLPPolicy, params: Params, task: Tensor, n: int, streams: TaskStreams
) -> Trajectories:
    """``n`` trajectories per task of T policies ``params [T, ...]`` on tasks ``task [T, P]``,
    all stepped at once; task t's initial states and action noise from ``streams``' t-th
    stream (a whole horizon of noise is drawn, used or not: each task's stream advances by
    the same amount whatever the others do)."""
    if len(streams) != task.shape[0]:
        raise ValueError(f"{len(streams)} random streams for {task.shape[0]} tasks")
    state, obs = env.reset(task, n, streams)
    alive = torch.ones(obs.shape[:2], dtype=obs.dtype, device=obs.device)
    observations, actions, rewards, masks = [], [], [], []
    noise = None
    for t in range(env.horizon):
        mean, log_std = policy.distribution(params, obs)
        if noise is None:  # [T, N, H, A]
            noise = streams.randn((n, env.horizon, mean.shape[-1]), dtype=mean.dtype)
        action = mean + torch.exp(log_std) * noise[:, :, t]
        state, next_obs, reward, done = env.step(state, action)
        # what happened after done is 0, as after a batch's last step: a task's trajectories
        # do not depend on how long the other tasks of its batch keep stepping
        observations.append(obs * alive.unsqueeze(-1))
        actions.append(action * alive.unsqueeze(-1))
        rewards.append(reward * alive)
        masks.append(alive)
        alive = alive * (~done).to(alive.dtype)
        obs = next_obs
        if not alive.any():  # every trajectory is done: the rest is padding
            break
    steps = len(masks)
    pad = env.horizon - steps

    def stack(items: list[Tensor]) -> Tensor:
        out = torch.stack(items, 2)
        if pad:
            out = torch.cat([out, out.new_zeros(*out.shape[:2], pad, *out.shape[3:])], 2)
        return out

    return Trajectories(stack(observations), stack(actions), stack(rewards), stack(masks))


def sample_steps(
    env,
    policy: GaussianMLPPolicy,
    params: Params,
    task: Tensor,
    n: int,
    min_steps: int,
    streams: TaskStreams,
) -> Trajectories:
    """At least ``min_steps`` environment steps per task, as rllab's samplers collect a
    batch (maml_rl's test scripts: ``batch_size=4000`` samples, not a number of
    trajectories): rounds of ``n`` trajectories per task until every task has
    ``min_steps``; each task keeps its trajectories up to the one that reaches
    ``min_steps`` and the later ones are masked out. A policy whose trajectories end early
    (done at the goal) is so judged and adapted on more trajectories than one that wanders
    to the horizon. Every trajectory has a step, so ``ceil(min_steps / n)`` rounds suffice.
    The rounds draw from streams spawned from ``streams``: how many rounds the batch took
    does not change a task's later draws."""
    streams = streams.spawn()
    parts = [sample_trajectories(env, policy, params, task, n, streams)]
    steps = parts[0].mask.sum(-1)  # [T, N]: each trajectory's length
    while bool((steps.sum(1) < min_steps).any()):
        parts.append(sample_trajectories(env, policy, params, task, n, streams))
        steps = torch.cat([steps, parts[-1].mask.sum(-1)], 1)
    keep = (steps.cumsum(1) - steps < min_steps).to(steps.dtype)  # [T, N]
    obs, actions, rewards, mask = (
        torch.cat([getattr(p, name) for p in parts], 1)
        for name in ("obs", "actions", "rewards", "mask")
    )
    return Trajectories(
        obs * keep[..., None, None],
        actions * keep[..., None, None],
        rewards * keep[..., None],
        mask * keep[..., None],
    )


def discounted_cumsum(x: Tensor, discount: float) -> Tensor:
    """``y_t = Σ_{l≥0} discount^l x_{t+l}`` along the last axis."""
    out = torch.empty_like(x)
    running = torch.zeros_like(x[..., 0])
    for t in range(x.shape[-1] - 1, -1, -1):
        running = x[..., t] + discount * running
        out[..., t] = running
    return out


def baseline_features(obs: Tensor, mask: Tensor) -> Tensor:
    """rllab's ``LinearFeatureBaseline`` features ``[o, o², t, t², t³, 1]`` (o clipped to
    ±10, t = step / 100), zero where ``mask`` is 0, so those rows drop out of the fit."""
    o = obs.clamp(-10, 10)
    t = torch.arange(obs.shape[-2], dtype=obs.dtype, device=obs.device) / 100.0
    t = t.view(*([1] * (obs.dim() - 2)), -1, 1).expand(*obs.shape[:-1], 1)
    ones = torch.ones_like(t)
    return torch.cat([o, o * o, t, t * t, t**3, ones], -1) * mask.unsqueeze(-1)


def fit_linear_baseline(
    traj: Trajectories, discount: float, reg: float = 1e-5, attempts: int = 5
) -> Tensor:
    """Values ``[T, N, H]`` of a linear baseline fit to each task's own discounted returns
    by ridge regression (float64 normal equations; the regulariser is raised ×10 while the
    solution is not finite, as rllab does)."""
    features = baseline_features(traj.obs, traj.mask).double()
    target = discounted_cumsum(traj.rewards, discount).double() * traj.mask.double()
    x = features.flatten(1, 2)  # [T, N·H, F]
    y = target.flatten(1, 2).unsqueeze(-1)
    gram, rhs = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    for _ in range(attempts):
        weights = torch.linalg.solve(gram + reg * eye, rhs)
        if torch.isfinite(weights).all():
            break
        reg *= 10
    return (features @ weights.unsqueeze(1)).squeeze(-1).to(traj.rewards.dtype)


def gae(traj: Trajectories, values: Tensor, discount: float, lam: float) -> Tensor:
    """Generalised advantage estimates ``[T, N, H]`` (Schulman et al. 2016); the value after
    a trajectory's last step is 0 (rllab's convention, also at the horizon)."""
    values = values * traj.mask
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], -1)
    deltas = (traj.rewards + discount * next_values - values) * traj.mask
    return discounted_cumsum(deltas, discount * lam) * traj.mask


def normalise_per_task(adv: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Each task's advantages centred and scaled over its valid steps (maml_rl's
    ``center_adv``; the standard deviation with n, as numpy's)."""
    n = mask.sum((1, 2), keepdim=True)
    mean = (adv * mask).sum((1, 2), keepdim=True) / n
    var = ((adv - mean).pow(2) * mask).sum((1, 2), keepdim=True) / n
    return (adv - mean) / (var.sqrt() + eps) * mask


def advantages(traj: Trajectories, discount: float, lam: float) -> Tensor:
    """Baseline, GAE and per-task normalisation: the advantages the losses use."""
    values = fit_linear_baseline(traj, discount)
    return normalise_per_task(gae(traj, values, discount, lam), traj.mask)


def masked_task_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over each task's valid steps ``[T]``."""
    return (x * mask).sum((1, 2)) / mask.sum((1, 2))


def log_probs(policy: GaussianMLPPolicy, params: Params, traj: Trajectories) -> Tensor:
    mean, log_std = policy.distribution(params, traj.obs)
    return gaussian_log_prob(mean, log_std, traj.actions)


def vpg_support_loss(policy: GaussianMLPPolicy, traj: Trajectories, adv: Tensor):
    """``params -> Σᵢ Lᵢ(φᵢ)`` with Lᵢ = −mean_t log πᵢ(a|o)·Â, task i's vanilla
    policy-gradient surrogate (REINFORCE with a baseline): the engine's support loss."""

    def support_loss(params: Params) -> Tensor:
        return -masked_task_mean(log_probs(policy, params, traj) * adv, traj.mask).sum()

    return support_loss


@dataclass
class OldPolicy:
    """What TRPO keeps of the policies that sampled the query trajectories."""

    log_prob: Tensor
    mean: Tensor
    log_std: Tensor


def old_policy(policy: GaussianMLPPolicy, params: Params, traj: Trajectories) -> OldPolicy:
    with torch.no_grad():
        mean, log_std = policy.distribution(params, traj.obs)
        return OldPolicy(gaussian_log_prob(mean, log_std, traj.actions), mean, log_std)


def surrogate_and_kl(
    policy: GaussianMLPPolicy, params: Params, traj: Trajectories, adv: Tensor, old: OldPolicy
) -> tuple[Tensor, Tensor]:
    """TRPO's surrogate loss −mean_i mean_t (π/π_old)·Â and mean_i mean_t KL(π_old ‖ π)."""
    mean, log_std = policy.distribution(params, traj.obs)
    ratio = torch.exp(gaussian_log_prob(mean, log_std, traj.actions) - old.log_prob)
    loss = -masked_task_mean(ratio * adv, traj.mask).mean()
    return loss, mean_kl(old, mean, log_std, traj.mask)


def mean_kl(old: OldPolicy, mean: Tensor, log_std: Tensor, mask: Tensor) -> Tensor:
    """mean_i mean_t KL(π_old ‖ N(mean, diag exp(log_std)²)) from the new policies' action
    distributions ``[T, N, H, A]`` on the old policies' observations."""
    return masked_task_mean(gaussian_kl(old.mean, old.log_std, mean, log_std), mask).mean()
