"""What a task distribution draws and a learner trains on: a batch of tasks with a leading
task axis (:class:`TaskBatch`), or, for a baseline trained without tasks, plain labelled
minibatches in the same layout (:class:`ExampleBatch`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor


class BatchOfTasks:
    """What every kind of batch offers the trainer, evaluation, distributed sharding and
    the device step, given its own ``__iter__`` (its tensors, each with the leading task
    axis) and ``map`` (the batch with a function applied to every tensor)."""

    def __iter__(self):
        raise NotImplementedError

    def map(self, fn: Callable[[Tensor], Tensor]) -> Any:
        raise NotImplementedError

    @property
    def num_tasks(self) -> int:
        return next(iter(self)).shape[0]

    def to(self, device: torch.device | str) -> Any:
        return self.map(lambda t: t.to(device))

    def slice(self, start: int, stop: int) -> Any:
        """Tasks ``start:stop`` (used to evaluate many tasks in memory-bounded chunks)."""
        return self.map(lambda t: t[start:stop] if t.dim() > 0 else t)


@dataclass(frozen=True)
class TaskBatch(BatchOfTasks):
    """T tasks, each with a support set (Dᵗʳ, used to adapt) and a query set (Dᵗᵉˢᵗ, to score).

    Every tensor has a leading task dimension T: ``support_x [T, N_s, ...]``,
    ``support_y [T, N_s, ...]``, ``query_x [T, N_q, ...]``, ``query_y [T, N_q, ...]``.
    ``info`` carries task parameters a plot or a test may want (e.g. sine amplitude).
    The batch unpacks like a tuple: ``learner.meta_loss(*batch)``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):
        return iter((self.support_x, self.support_y, self.query_x, self.query_y))

    @property
    def targets(self) -> Tensor:
        """What the query predictions are scored against."""
        return self.query_y

    def map(self, fn: Callable[[Tensor], Tensor]) -> TaskBatch:
        """The batch with ``fn`` applied to every tensor (``info``'s included)."""

        def apply(v: Any) -> Any:
            return fn(v) if isinstance(v, Tensor) else v

        info = {k: apply(v) for k, v in self.info.items()}
        return TaskBatch(*(apply(t) for t in self), info=info)


@dataclass(frozen=True)
class ExampleBatch(BatchOfTasks):
    """B minibatches of N labelled examples, ``x [B, N, ...]`` and ``y [B, N, ...]``, with
    no support/query split: what a baseline trained by ordinary supervised learning over
    all training classes draws (:class:`~mamlkit.tasks.ClassBatches`). The leading axis
    plays the task axis's part for the trainer (sharding across ranks, device buffers);
    the predictions are scored against ``y``."""

    x: Tensor
    y: Tensor

    def __iter__(self):
        return iter((self.x, self.y))

    @property
    def targets(self) -> Tensor:
        return self.y

    def map(self, fn: Callable[[Tensor], Tensor]) -> ExampleBatch:
        return ExampleBatch(fn(self.x), fn(self.y))


class TaskDistribution(Protocol):
    """Anything that draws task batches; sampling happens on ``generator.device``."""

    def sample(self, tasks: int, generator: torch.Generator) -> TaskBatch | ExampleBatch: ...
