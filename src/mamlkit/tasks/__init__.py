"""Task distributions: each draws a :class:`TaskBatch` on the generator's device."""

from mamlkit.tasks.base import TaskBatch, TaskDistribution
from mamlkit.tasks.episodes import ClassBatches, EpisodeTasks
from mamlkit.tasks.sine import SineTasks

__all__ = ["ClassBatches", "EpisodeTasks", "SineTasks", "TaskBatch", "TaskDistribution"]
