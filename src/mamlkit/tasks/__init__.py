"""Task distributions: each draws a :class:`TaskBatch` (or, for training without tasks,
an :class:`ExampleBatch`) on the generator's device."""

from mamlkit.tasks.base import ExampleBatch, TaskBatch, TaskDistribution
from mamlkit.tasks.episodes import ClassBatches, EpisodeTasks
from mamlkit.tasks.sine import SineTasks

__all__ = [
    "ClassBatches",
    "EpisodeTasks",
    "ExampleBatch",
    "SineTasks",
    "TaskBatch",
    "TaskDistribution",
]
