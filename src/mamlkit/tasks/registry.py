"""The task names a config may use (``task.name``): each maps to its builder and to the
facts the rest of mamlkit needs about it (its metric, what its inputs are, what its batches
are and so which algorithms take them), and to what only it does: an RL task's environment,
its figures, the entries and file names of its evaluation records.

Register a task with its builder, ``(config, split) -> TaskDistribution``::

    @register_task("linear", metric="mse", inputs="vector")
    def build_linear_tasks(config, split):
        return LinearTasks(config.task.k_support, config.task.k_query)

An RL task's settings build its environment (a subclass of
:class:`mamlkit.rl.settings.RLTaskSettings` with ``build_env``), or it names an
``(config) -> env`` builder::

    register_task("far_nav2d", metric="return", inputs="vector", batches="trajectories",
                  algorithms=("maml_trpo", "trpo"), env=build_env)(build_far_goals)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mamlkit.errors import UserError
from mamlkit.registry import Registry, resolve_builder

if TYPE_CHECKING:
    from mamlkit.config import Config
    from mamlkit.tasks.base import TaskDistribution

#: what a task's score is; the loss follows from it (mse: MSE, accuracy: cross-entropy)
METRICS = ("mse", "accuracy", "return")

#: what a task's batches are: support and query ``points`` of a regression, N-way K-shot
#: ``episodes`` of a classification, or ``trajectories`` an RL policy samples from the
#: task's environment (nothing given: a batch holds the tasks' parameters)
BATCHES = ("points", "episodes", "trajectories")

#: ``(run_dir, task name, load) -> written paths``: a task's own figures of a run;
#: ``load()`` gives ``(config, learner, step)`` of its latest weights (None: it has none)
PlotRun = Callable[[Path, str, Callable[[], Any]], list[Path]]


@dataclass(frozen=True)
class TaskSpec:
    """A registered task. ``inputs`` is what its examples are (``vector``, ``image``): a
    model serves the tasks whose inputs it takes. ``channels`` is an image task's default
    (``task.channels`` overrides it); ``algorithms`` the algorithm names it can run (None:
    any); ``inverted``: its image files are stored 255 − grey (Omniglot); ``alphabets``:
    its test episodes can be drawn within one alphabet (``task.within_alphabet``).
    ``batches``: one of :data:`BATCHES` (default: ``trajectories`` for an RL task,
    ``episodes`` for an accuracy task, else ``points``); it picks the class of an algorithm
    with one per kind (``pretrained``). ``env``, ``(config) -> env``: an RL task's
    environment. ``plots``: its own figures of a run (:data:`PlotRun`), drawn by
    ``mamlkit plot``."""

    name: str
    builder: Callable[[Config, str], TaskDistribution] | str
    metric: str
    inputs: str
    channels: int | None = None
    rl: bool = False
    algorithms: tuple[str, ...] | None = None
    inverted: bool = False
    alphabets: bool = False
    batches: str | None = None
    env: Callable[[Config], Any] | str | None = None
    plots: PlotRun | str | None = None
    #: config keys (``section.key``) only this task reads (shown by ``presets show``)
    reads: tuple[str, ...] = ()
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
        if self.rl and self.batches not in (None, "trajectories"):
            raise ValueError(f"task {self.name!r}: an RL task's batches are trajectories")
        if self.batches is None:
            default = "trajectories" if self.rl else "episodes"
            object.__setattr__(self, "batches", "points" if self.metric == "mse" else default)
        if self.batches not in BATCHES:
            raise ValueError(f"task {self.name!r}: batches must be one of {BATCHES}")
        object.__setattr__(self, "rl", self.batches == "trajectories")
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

    def build_env(self, config: Config) -> Any:
        """The environment of an RL task: its registered ``env`` builder, else the one its
        settings build (:meth:`mamlkit.rl.settings.RLTaskSettings.build_env`)."""
        if self.env is not None:
            return resolve_builder(self.env)(config)
        build = getattr(config.task, "build_env", None)
        if build is None:
            raise ValueError(f"task {self.name!r} has no environment")
        return build()

    def write_plots(self, run_dir: Path, load: Callable[[], Any]) -> list[Path]:
        """Draw this task's own figures of ``run_dir`` (see :data:`PlotRun`); the paths
        written (none for a task without figures of its own)."""
        if self.plots is None:
            return []
        return list(resolve_builder(self.plots)(run_dir, self.name, load))

    def check_eval_options(self, samples: int | None, inner_lr: Sequence[float]) -> None:
        """Refuse evaluation options this task's runs have no use for: ``--samples``
        (environment steps) and one step size per step are for tasks sampled from an
        environment."""
        if samples is not None and not self.rl:
            raise UserError(
                f"--samples: {self.name} runs have no environment steps; it is for RL runs"
            )
        if len(inner_lr) > 1 and not self.rl:
            raise UserError(
                f"--inner-lr: {self.name} runs take one test-time step size, got "
                f"{len(inner_lr)}; give one (per-step sizes are for RL runs)"
            )

    def eval_lr(self, inner_lr: Sequence[float]) -> float | list[float] | None:
        """The test-time step size(s) to evaluate with: None (the learner's own), one per
        step for trajectories (the last repeating), else the one given."""
        if not inner_lr:
            return None
        return list(inner_lr) if self.rl else inner_lr[0]

    def eval_record(self, config: Config, by_step: list[dict[str, Any]]) -> dict[str, Any]:
        """What an evaluation record of this task holds besides its score: RL, the return
        after every step (the paper's figures) and the trajectories per step; episodes,
        ways and shots; points, the support size."""
        t = config.task
        if self.rl:
            out: dict[str, Any] = {"by_step": by_step, "trajectories_per_step": t.eval_rollouts}
            if t.eval_samples:  # rounds of them until each task has this many steps
                out["samples_per_step"] = t.eval_samples
            return out
        if self.batches == "episodes":
            return {"ways": t.ways, "shots": t.shots}
        return {"k_shot": t.k_support}

    def eval_file_name(
        self,
        *,
        step: int | None = None,
        alphabet: str | None = None,
        split: str | None = None,
        tasks: int | None = None,
        steps: int | None = None,
        samples: int | None = None,
        inner_lr: Sequence[float] = (),
    ) -> str:
        """The file of an evaluation of this task's run: ``eval.json`` for the run's
        protocol on its final weights; each setting other than the protocol's (given, not
        None) names itself (:func:`mamlkit.eval_files.eval_file_name`). Only tasks with
        alphabets have an alphabet protocol, only RL tasks environment ``samples``."""
        from mamlkit.eval_files import eval_file_name

        if alphabet is not None and not self.alphabets:
            raise ValueError(f"task {self.name!r} has no alphabets")
        if samples is not None and not self.rl:
            raise ValueError(f"task {self.name!r} has no environment samples")
        return eval_file_name(
            step=step,
            alphabet=alphabet,
            split=split,
            tasks=tasks,
            steps=steps,
            samples=samples,
            inner_lr=inner_lr,
        )


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
    batches: str | None = None,
    env: Callable[[Config], Any] | str | None = None,
    plots: PlotRun | str | None = None,
    reads: tuple[str, ...] = (),
    settings: type | str | None = None,
    algorithm_aliases: dict[str, str] | None = None,
) -> Any:
    """Decorator: make ``task.name: NAME`` build its task distribution with the decorated
    ``(config, split) -> TaskDistribution`` (the fields: :class:`TaskSpec`; an image task
    gives its default ``channels``). With ``builder="package.module:function"`` the task
    is registered at once and that module is only imported when the task is built (a task
    with an optional dependency); ``env`` and ``plots`` may be named so too. ``settings``:
    the dataclass of its ``task:`` section (:class:`mamlkit.settings.TaskSettings` or a
    subclass; its own keys, validation and memory estimate), or the
    ``"package.module:Class"`` holding it. ``algorithm_aliases``: old algorithm names a
    config may give for this task, and the algorithm each means."""

    def add(fn: Callable[[Config, str], TaskDistribution] | str) -> Any:
        allowed = tuple(algorithms) if algorithms is not None else None
        aliases = tuple(sorted((algorithm_aliases or {}).items()))
        spec = TaskSpec(
            name, fn, metric, inputs, channels, rl, allowed, inverted, alphabets,
            batches, env, plots, tuple(reads), settings, aliases,
        )  # fmt: skip
        TASKS.add(spec)
        return fn

    return add(builder) if builder is not None else add


def task_spec(name: str) -> TaskSpec:
    """The registered task ``name``; an unknown one is a config error listing them all."""
    return TASKS.lookup(name)


def rl_task_names() -> tuple[str, ...]:
    """The reinforcement-learning tasks, in registration order."""
    return tuple(name for name, spec in TASKS.items() if spec.rl)
