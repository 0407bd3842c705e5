"""Task distributions: each draws a :class:`TaskBatch` (or, for training without tasks,
an :class:`ExampleBatch`) on the generator's device. A config names one through
:data:`TASKS` (see :func:`register_task`)."""

from mamlkit.registry import import_modules
from mamlkit.tasks import builtin as _builtin  # noqa: F401  (registers mamlkit's own tasks)
from mamlkit.tasks.base import ExampleBatch, TaskBatch, TaskDistribution
from mamlkit.tasks.episodes import ClassBatches, EpisodeTasks
from mamlkit.tasks.registry import BATCHES, TASKS, TaskSpec, register_task, task_spec
from mamlkit.tasks.sine import SineTasks

# any other module of this package registers its task when imported: a new task is its
# own file (and a preset), with no import to add here
import_modules(__name__, __path__)

__all__ = [
    "BATCHES",
    "TASKS",
    "ClassBatches",
    "EpisodeTasks",
    "ExampleBatch",
    "SineTasks",
    "TaskBatch",
    "TaskDistribution",
    "TaskSpec",
    "register_task",
    "task_spec",
]
