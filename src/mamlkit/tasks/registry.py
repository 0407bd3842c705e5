"""The task names a config may use (``task.name``): each maps to its builder and to the
facts the rest of mamlkit needs about it (its metric, what its inputs are, RL or not).

Register a task with its builder, ``(config, split) -> TaskDistribution``::

    @register_task("linear", metric="mse", inputs="vector")
    def build_linear_tasks(config, split):
        return LinearTasks(config.task.k_support, config.task.k_query)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mamlkit.registry import Registry, resolve_builder

if TYPE_CHECKING:
    from mamlkit.config import Config
    from mamlkit.tasks.base import TaskDistribution

#: what a task's score is; the loss follows from it (mse: MSE, accuracy: cross-entropy)
METRICS = ("mse", "accuracy", "return")


@dataclass(frozen=True)
class TaskSpec:
    """A registered task. ``inputs`` is what its examples are (``vector``, ``image``): a
    model serves the tasks whose inputs it takes. ``channels`` is an image task's default
    (``task.channels`` overrides it); ``algorithms`` the algorithm names it can run (None:
    any); ``inverted``: its image files are stored 255 − grey (Omniglot); ``alphabets``:
    its test episodes can be drawn within one alphabet (``task.within_alphabet``)."""

    name: str
    builder: Callable[[Config, str], TaskDistribution] | str
    metric: str
    inputs: str
    channels: int | None = None
    rl: bool = False
    algorithms: tuple[str, ...] | None = None
    inverted: bool = False
    alphabets: bool = False
    #: its ``task:`` section (a :class:`mamlkit.settings.TaskSettings` subclass), or the
    #: ``"package.module:Class"`` that holds it (imported when a config names the task)
    settings: type | str | None = None
    #: old algorithm names a config may still give (``maml`` on an RL task: ``maml_trpo``)
    algorithm_aliases: tuple[tuple[str, str], ...] = ()

    @property
    def settings_class(self) -> type:
        """The settings class of its ``task:`` section. A task registered without one has
        its kind's: an RL task's (horizon, rollouts, ...), an image task's episodes
        (ways, shots, ...), a vector task's support and query points (as sine's)."""
        if self.settings is not None:
            return resolve_builder(self.settings)
        if self.rl:
            return resolve_builder("mamlkit.rl.settings:RLTaskSettings")
        if self.inputs == "image":
            return resolve_builder("mamlkit.tasks.episode_settings:EpisodeSettings")
        if self.inputs == "vector":
            return resolve_builder("mamlkit.tasks.sine:SineSettings")
        from mamlkit.settings import TaskSettings

        return TaskSettings

    def algorithm_name(self, name: str) -> str:
        """``name``, or the algorithm an alias of this task's stands for."""
        return dict(self.algorithm_aliases).get(name, name)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"task {self.name!r}: metric must be one of {METRICS}")
        if self.inputs == "image" and self.channels not in (1, 3):
            raise ValueError(f"task {self.name!r}: an image task needs channels=1 or 3")

    def build(self, config: Config, split: str) -> TaskDistribution:
        return resolve_builder(self.builder)(config, split)

    def image_channels(self, task: Any) -> int:
        """Channels of its images: ``task.channels`` if set, else this task's default."""
        if task.channels is not None:
            return task.channels
        if self.channels is None:
            raise ValueError(f"task {self.name!r} has no images")
        return self.channels


TASKS: Registry[TaskSpec] = Registry("task", "task.name")


def register_task(
    name: str,
    *,
    metric: str,
    inputs: str,
    channels: int | None = None,
    rl: bool = False,
    algorithms: tuple[str, ...] | None = None,
    inverted: bool = False,
    alphabets: bool = False,
    builder: str | None = None,
    settings: type | str | None = None,
    algorithm_aliases: dict[str, str] | None = None,
) -> Any:
    """Decorator: make ``task.name: NAME`` build its task distribution with the decorated
    ``(config, split) -> TaskDistribution`` (the fields: :class:`TaskSpec`; an image task
    gives its default ``channels``). With ``builder="package.module:function"`` the task
    is registered at once and that module is only imported when the task is built (a task
    with an optional dependency). ``settings``: the dataclass of its ``task:`` section
    (:class:`mamlkit.settings.TaskSettings` or a subclass; its own keys, validation and
    memory estimate), or the ``"package.module:Class"`` holding it. ``algorithm_aliases``:
    old algorithm names a config may give for this task, and the algorithm each means."""

    def add(fn: Callable[[Config, str], TaskDistribution] | str) -> Any:
        allowed = tuple(algorithms) if algorithms is not None else None
        aliases = tuple(sorted((algorithm_aliases or {}).items()))
        spec = TaskSpec(
            name, fn, metric, inputs, channels, rl, allowed, inverted, alphabets, settings, aliases
        )
        TASKS.add(spec)
        return fn

    return add(builder) if builder is not None else add


def task_spec(name: str) -> TaskSpec:
    """The registered task ``name``; an unknown one is a config error listing them all."""
    return TASKS.lookup(name)


def rl_task_names() -> tuple[str, ...]:
    """The reinforcement-learning tasks, in registration order."""
    return tuple(name for name, spec in TASKS.items() if spec.rl)
