"""A subsample of the post-update (query) trajectories for TRPO's Fisher-vector products
(``algorithm.fisher_subsample``, rllab's ``subsample_factor``): each task keeps
⌊fraction · N⌋ (at least one) of its N trajectories, chosen from the task's own stream of
the iteration's randomness (:class:`~mamlkit.rl.envs.TaskStreams`, seeded by the batch's
seeds, which the checkpointed task generator draws: a resumed run chooses the same ones,
and a task's choice does not depend on the tasks beside it). The surrogate, its gradient
and the line search keep all trajectories."""

from __future__ import annotations

from dataclasses import fields, replace

import torch
from torch import Tensor

from mamlkit.rl.envs import TaskStreams
from mamlkit.rl.returns import OldPolicy, Trajectories

__all__ = ["choose_trajectories", "kept_count", "select_old", "select_trajectories"]


def kept_count(n: int, fraction: float) -> int:
    """How many of ``n`` trajectories a ``fraction`` keeps: ⌊fraction · n⌋, at least 1."""
    return max(1, min(n, int(fraction * n + 1e-9)))


def choose_trajectories(streams: TaskStreams, n: int, fraction: float) -> Tensor:
    """``[T, k]`` indices (ascending) of the kept trajectories of each task, k =
    :func:`kept_count`: a uniformly random subset, from one draw of ``n`` uniforms from
    each task's stream."""
    keys = streams.rand((n,), dtype=torch.float64)
    chosen = keys.argsort(dim=1, stable=True)[:, : kept_count(n, fraction)]
    return chosen.sort(dim=1).values


def _take(t: Tensor, index: Tensor) -> Tensor:
    rows = torch.arange(t.shape[0], device=t.device).unsqueeze(1)
    return t[rows, index]


def select_trajectories(traj: Trajectories, index: Tensor) -> Trajectories:
    """The trajectories ``index [T, k]`` of each task (dimension 1 of every field)."""
    return replace(traj, **{f.name: _take(getattr(traj, f.name), index) for f in fields(traj)})


def select_old(old: OldPolicy, index: Tensor) -> OldPolicy:
    """The old policies' distributions on the trajectories ``index [T, k]``."""
    return OldPolicy(*(_take(getattr(old, f.name), index) for f in fields(old)))
