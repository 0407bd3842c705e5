"""The one data structure every algorithm sees: a batch of tasks with a leading task axis."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class TaskBatch:
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
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str) -> TaskBatch:
        def move(v: Any) -> Any:
            return v.to(device) if isinstance(v, Tensor) else v

        return TaskBatch(*(move(t) for t in self), info={k: move(v) for k, v in self.info.items()})

    def slice(self, start: int, stop: int) -> TaskBatch:
        """Tasks ``start:stop`` (used to evaluate many tasks in memory-bounded chunks)."""

        def cut(v: Any) -> Any:
            return v[start:stop] if isinstance(v, Tensor) and v.dim() > 0 else v

        return TaskBatch(*(cut(t) for t in self), info={k: cut(v) for k, v in self.info.items()})


class TaskDistribution(Protocol):
    """Anything that draws task batches; sampling happens on ``generator.device``."""

    def sample(self, tasks: int, generator: torch.Generator) -> TaskBatch: ...
