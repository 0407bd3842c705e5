"""Sine-wave regression tasks (Finn et al. 2017, §5.1): y = A·sin(x − φ)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mamlkit.settings import TaskSettings, require_at_least
from mamlkit.tasks.base import TaskBatch

if TYPE_CHECKING:
    from mamlkit.config import Config


@dataclass
class SineSettings(TaskSettings):
    """``task.name: sine``."""

    # sine: K support and K query points per task
    k_support: int = 10
    k_query: int = 10

    def validate(self, config: Config) -> None:
        require_at_least(1, "task", self, "k_support", "k_query")

    def batch_examples(self, config: Config) -> tuple[int, int, str]:
        examples = config.train.meta_batch * (self.k_support + self.k_query)
        return examples, 1, "train.meta_batch, task.k_support/k_query"


def _uniform(low: float, high: float, shape: tuple[int, ...], generator: torch.Generator):
    return torch.rand(shape, generator=generator, device=generator.device) * (high - low) + low


@dataclass(frozen=True)
class SineTasks:
    """A ~ U[amplitude], φ ~ U[phase], x ~ U[x_range]; K support and K query points, drawn
    independently. ``query_grid=n`` replaces the random query points by n evenly spaced
    points over ``x_range`` (evaluation: "MSE on points across [−5, 5]")."""

    k_support: int = 10
    k_query: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    query_grid: int | None = None

    def sample(self, tasks: int, generator: torch.Generator) -> TaskBatch:
        amplitude = _uniform(*self.amplitude, (tasks, 1, 1), generator)
        phase = _uniform(*self.phase, (tasks, 1, 1), generator)
        support_x = _uniform(*self.x_range, (tasks, self.k_support, 1), generator)
        if self.query_grid:
            grid = torch.linspace(*self.x_range, self.query_grid, device=generator.device)
            query_x = grid.view(1, -1, 1).expand(tasks, -1, -1)
        else:
            query_x = _uniform(*self.x_range, (tasks, self.k_query, 1), generator)
        return TaskBatch(
            support_x,
            amplitude * torch.sin(support_x - phase),
            query_x,
            amplitude * torch.sin(query_x - phase),
            info={"amplitude": amplitude.view(-1), "phase": phase.view(-1)},
        )
