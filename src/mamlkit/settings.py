"""The settings every registered component starts from: a small dataclass per algorithm,
task and model, with its own validation (and, for tasks and models, its own estimate of
a training batch's memory). A component's config section (``algorithm:``, ``task:``,
``model:``) is an instance of its own class, so a run's ``config.yaml`` records only the
keys its components have.

An algorithm attaches its class as ``settings_class`` of the learner; a task or a model
passes it as ``settings=`` to :func:`mamlkit.tasks.register_task` /
:func:`mamlkit.models.register_model`. A field's trailing comment (or the comment block
above it) is its meaning in ``mamlkit presets show``. Kept free of torch: config
validation uses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from mamlkit.config_data import check_plain_data
from mamlkit.errors import ConfigError

if TYPE_CHECKING:
    from mamlkit.config import Config

__all__ = [
    "AlgorithmSettings",
    "ModelSettings",
    "TaskSettings",
    "require",
    "require_at_least",
    "require_positive",
]


def require(ok: bool, key: str, message: str) -> None:
    """Raise a :class:`ConfigError` ``config key 'KEY': MESSAGE`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def require_at_least(minimum: int, section: str, settings: Any, *names: str) -> None:
    """Each of ``settings``' fields ``names`` is an integer >= ``minimum`` (None passes)."""
    for name in names:
        value = getattr(settings, name)
        require(
            value is None or value >= minimum,
            f"{section}.{name}",
            f"must be >= {minimum}, got {value}",
        )


def require_positive(section: str, settings: Any, *names: str) -> None:
    """Each of ``settings``' fields ``names`` is a finite number > 0 (None passes)."""
    for name in names:
        value = getattr(settings, name)
        require(
            value is None or (math.isfinite(value) and value > 0),
            f"{section}.{name}",
            f"must be a positive number, got {value}",
        )


@dataclass
class AlgorithmSettings:
    """What every algorithm has: the ``algorithm:`` section of a config. A learner with
    settings of its own subclasses it (``settings_class`` of the learner)."""

    # a registered algorithm (mamlkit.algorithms.register): maml, fomaml, metasgd, anil,
    # mamlpp, reptile, protonet, pretrained; on RL tasks maml_trpo, trpo
    name: str = "maml"
    inner_lr: float = 0.01
    inner_steps: int = 1
    first_order: bool = False
    impl: str = "auto"  # auto | batched | vmap | loop
    eval_inner_lr: float | None = None

    #: True where the algorithm trains on other episodes than it tests on
    #: (``task.train_ways``, ``task.train_queries``: Prototypical Networks)
    other_train_episodes: ClassVar[bool] = False

    def validate(self, config: Config) -> None:
        """Refuse values no run can use, naming the key (``config`` is the whole config,
        for the rules that read another section)."""
        require(
            self.impl in ("auto", "batched", "vmap", "loop"),
            "algorithm.impl",
            "must be auto, batched, vmap or loop",
        )
        require_at_least(0, "algorithm", self, "inner_steps")
        require_positive("algorithm", self, "inner_lr", "eval_inner_lr")


@dataclass
class TaskSettings:
    """What every task has: the ``task:`` section of a config."""

    # a registered task (mamlkit.tasks.register_task): sine, omniglot, miniimagenet,
    # imagefolder, and the RL tasks nav2d, cheetah_vel, cheetah_dir
    name: str = "sine"

    def validate(self, config: Config) -> None:
        """Refuse values this task cannot be built with, naming the key."""

    def batch_examples(self, config: Config) -> tuple[int, int, str]:
        """The examples of one meta-training batch, the numbers each input holds, and the
        keys they grow with (for :meth:`ModelSettings.largest_tensor_bytes`)."""
        return 0, 1, ""


@dataclass
class ModelSettings:
    """What every model has: the ``model:`` section of a config. ``target`` (any
    importable module) replaces the registered model ``name``."""

    name: str = "mlp"  # a registered model (mamlkit.models.register_model): mlp, conv4, resnet12
    # any importable nn.Module ("package.module:ClassName" built with kwargs); replaces name
    target: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self, config: Config) -> None:
        """Refuse values this model cannot be built with, naming the key."""
        require(
            self.target is not None or not self.kwargs,
            "model.kwargs",
            "only used with model.target; set model.target='package.module:ClassName'",
        )
        check_plain_data(self.kwargs, "model.kwargs")

    def largest_tensor_bytes(self, config: Config) -> tuple[int, str]:
        """A lower bound on the largest float32 tensor of one meta-training batch, and the
        keys it grows with (the task's inputs, for a model mamlkit knows nothing about)."""
        examples, features, keys = config.task.batch_examples(config)
        return 4 * examples * features, keys
