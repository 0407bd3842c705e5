"""Environments stepped for T tasks × N trajectories at once, and their task distributions.

An environment here is a pure function of tensors: ``reset(task, n, streams)`` gives the state
of ``n`` trajectories of each of T tasks, ``step(state, action)`` advances all ``[T, N]`` of
them by one tensor operation (on the device of the task tensor), so the simulation of a
whole meta-batch costs one call per time step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mamlkit.tasks.base import BatchOfTasks

#: seeds for the environment's own random numbers (policy noise) are drawn below this
SEED_BOUND = 2**62


@dataclass(frozen=True)
class Navigation2D:
    """2D point navigation (Finn et al. 2017, §5.3; maml_rl's ``PointEnvRandGoal``).

    A point starts at the origin and moves by at most ``max_action`` per coordinate; the
    reward is minus the L2 distance to the goal after the move, and the episode ends
    (``done``) once both coordinates are within ``tolerance`` of the goal, or after
    ``horizon`` steps. The observation is the position; with ``oracle`` the goal is
    appended (the "oracle" baseline that is told the task).

    ``normalized_actions`` (default): the policy acts in ``[−1, 1]²`` and the move is
    ``max_action`` × the action clipped to ``[−1, 1]``. This is rllab's ``normalize``
    wrapper, in which maml_rl's 2D-navigation experiments wrap ``PointEnvRandGoal`` (whose
    action space is ``[−0.1, 0.1]²``, the paper's "actions clipped to [−0.1, 0.1]"). It
    matters: a Gaussian policy starting at σ = 1 explores on the scale of the whole action
    range instead of saturating the clip on almost every step; an untrained policy's three
    test steps gain about twice as much (docs/results.md). ``normalized_actions=False``: the
    move is the action itself clipped to ``±max_action`` (pytorch-maml-rl's
    ``Navigation2DEnv``, and mamlkit's environment up to session 8).
    """

    horizon: int = 100
    max_action: float = 0.1
    tolerance: float = 0.01
    oracle: bool = False
    normalized_actions: bool = True

    task_dim = 2  # the goal
    act_dim = 2

    @property
    def obs_dim(self) -> int:
        return 4 if self.oracle else 2

    def reset(self, task: Tensor, n: int, streams=None) -> tuple[Tensor, Tensor]:
        """State and observation of ``n`` fresh trajectories per task; ``task [T, 2]``
        (the start is deterministic: ``streams`` are not used)."""
        position = task.new_zeros(task.shape[0], n, 2)
        state = (position, task.unsqueeze(1).expand(-1, n, -1))
        return state, self.observe(state)

    def observe(self, state) -> Tensor:
        position, goal = state
        return torch.cat([position, goal], -1) if self.oracle else position

    def step(self, state, action: Tensor):
        """``(state, obs, reward [T, N], done [T, N])`` after ``action [T, N, 2]``."""
        position, goal = state
        if self.normalized_actions:
            move = action.clamp(-1.0, 1.0) * self.max_action
        else:
            move = action.clamp(-self.max_action, self.max_action)
        position = position + move
        offset = position - goal
        reward = -offset.norm(dim=-1)
        done = (offset.abs() < self.tolerance).all(-1)
        state = (position, goal)
        return state, self.observe(state), reward, done


@dataclass(frozen=True)
class RLTaskBatch(BatchOfTasks):
    """T reinforcement-learning tasks: their parameters ``task [T, P]`` (a goal, a goal
    velocity, a direction) and ``seeds [T, 1]`` (int64) for the environment's randomness,
    drawn from the sampler's generator, so that a run that restores the generator (a
    resumed checkpoint) replays the same trajectories. An RL task has no given data: its
    support and query trajectories are sampled by the policy being adapted, so there is
    nothing to score predictions against (``targets`` is None)."""

    task: Tensor
    seeds: Tensor

    def __iter__(self):
        return iter((self.task, self.seeds))

    @property
    def targets(self) -> None:
        return None

    def map(self, fn: Callable[[Tensor], Tensor]) -> RLTaskBatch:
        return RLTaskBatch(fn(self.task), fn(self.seeds))


@dataclass(frozen=True)
class NavigationTasks:
    """Goals uniform in ``[low, high]²`` (``task [T, 2]``)."""

    low: float = -0.5
    high: float = 0.5

    def sample(self, tasks: int, generator: torch.Generator) -> RLTaskBatch:
        device = generator.device
        goal = torch.rand((tasks, 2), generator=generator, device=device)
        goal = goal * (self.high - self.low) + self.low
        return task_batch(goal, generator)


@dataclass(frozen=True)
class HeldOutTasks:
    """Validation tasks of a distribution that has no held-out part (goals, velocities and
    directions are drawn afresh for every task): every ``sample`` seeds a generator of its
    own from one draw of the given one, so the same evaluation seed gives tasks (and
    environment seeds) other than the test tasks'. Step sizes chosen with ``--split val``
    are then not chosen on the test tasks' draws."""

    tasks: Any

    def sample(self, tasks: int, generator: torch.Generator) -> RLTaskBatch:
        device = generator.device
        seed = torch.randint(0, SEED_BOUND, (1,), generator=generator, device=device)
        own = torch.Generator(device=device).manual_seed(int(seed))
        return self.tasks.sample(tasks, own)


def task_batch(task: Tensor, generator: torch.Generator) -> RLTaskBatch:
    """The tasks with parameters ``task [T, P]`` and their environment seeds."""
    seeds = torch.randint(
        0, SEED_BOUND, (task.shape[0], 1), generator=generator, device=generator.device
    )
    return RLTaskBatch(task, seeds)


class TaskStreams:
    """The environment's randomness (initial states, action noise), one stream per task,
    seeded by the task's seed (``seeds [T, 1]``, an :class:`RLTaskBatch`'s).

    A task's trajectories are then the same whichever tasks share its batch: the chunks of
    an evaluation, each rank's share under ``torchrun`` or the task alone give the numbers
    of the whole batch in one process. Every draw takes the same amount from each task's
    stream (:meth:`randn`, :meth:`rand`), and a sampling of varying length draws from
    streams of its own (:meth:`spawn`), so no task's later draws depend on the others.
    """

    def __init__(self, seeds: Tensor):
        self.device = seeds.device
        self.generators = [
            torch.Generator(device=self.device).manual_seed(int(s))
            for s in seeds.reshape(-1).tolist()
        ]

    @classmethod
    def seeded(cls, seed: int, tasks: int) -> TaskStreams:
        """``tasks`` streams drawn from one seed (for sampling outside a task batch)."""
        generator = torch.Generator().manual_seed(seed)
        return cls(torch.randint(0, SEED_BOUND, (tasks, 1), generator=generator))

    def __len__(self) -> int:
        return len(self.generators)

    def _draw(self, fn, shape: tuple[int, ...], dtype) -> Tensor:
        return torch.stack(
            [fn(shape, generator=g, device=self.device, dtype=dtype) for g in self.generators]
        )

    def randn(self, shape: tuple[int, ...], dtype=None) -> Tensor:
        """``[T, *shape]`` standard normals, task t's from its own stream."""
        return self._draw(torch.randn, shape, dtype)

    def rand(self, shape: tuple[int, ...], dtype=None) -> Tensor:
        """``[T, *shape]`` uniforms on [0, 1), task t's from its own stream."""
        return self._draw(torch.rand, shape, dtype)

    def spawn(self) -> TaskStreams:
        """New streams seeded by one draw from each task's: what a sampling of varying
        length (rounds until every task of the batch has its steps) draws from, so each
        task's own stream advances by one draw however many rounds its batch took."""
        seeds = [
            torch.randint(0, SEED_BOUND, (1,), generator=g, device=self.device)
            for g in self.generators
        ]
        return TaskStreams(torch.stack(seeds))


def environment_streams(batch: RLTaskBatch) -> TaskStreams:
    """The streams of a batch's environment randomness, one per task (its seed's)."""
    return TaskStreams(batch.seeds)
