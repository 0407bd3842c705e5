"""The algorithm names a config may use (``algorithm.name``): each maps to the learner
class it builds, with constructor overrides, in the same :class:`~mamlkit.registry.Registry`
as tasks and models.

One name may build a different class for each kind of batch a task draws (see
:data:`mamlkit.tasks.registry.BATCHES`): ``pretrained`` is a regression network on
``points``, a classifier over all training classes on ``episodes`` tasks, and TRPO without
inner steps on ``trajectories``. Each class registers itself for its kind::

    @register("pretrained", batches="points")
    class PretrainedRegression(GradientLearner): ...

A registration without ``batches`` serves every kind that has no class of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mamlkit.registry import Registry, resolve_builder

if TYPE_CHECKING:
    from mamlkit.algorithms.base import MetaLearner
    from mamlkit.config import Config

__all__ = ["ALGORITHMS", "AlgorithmSpec", "learner_class", "register"]


@dataclass(frozen=True)
class AlgorithmSpec:
    """A registered algorithm: ``builder`` is the learner class (or a
    ``"package.module:Class"`` string, imported when built) with ``overrides`` fixed in
    its :meth:`~mamlkit.algorithms.MetaLearner.from_config` (e.g. ``first_order=True`` for
    ``fomaml``); ``variants`` maps a batch kind to the ``(class, overrides)`` that kind
    gets instead. Unpacks as ``cls, overrides = ALGORITHMS[name]`` (kept for older code)."""

    name: str
    builder: type[MetaLearner] | str | None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    variants: Mapping[str, tuple[type[MetaLearner] | str, Mapping[str, Any]]] = field(
        default_factory=dict
    )

    def __iter__(self) -> Iterator[Any]:
        cls, overrides = self.learner(None)
        return iter((cls, dict(overrides)))

    @property
    def cls(self) -> type[MetaLearner]:
        """The class a task without a variant of its own gets."""
        return self.learner(None)[0]

    def serves(self, batches: str) -> bool:
        """Whether a task whose batches are ``batches`` has a class here."""
        return self.builder is not None or batches in self.variants

    def learner(self, batches: str | None) -> tuple[type[MetaLearner], dict[str, Any]]:
        """The class (imported if named by a string) and overrides for tasks whose
        batches are ``batches`` (None: the default class)."""
        if batches in self.variants:
            builder, overrides = self.variants[batches]  # type: ignore[index]
        elif self.builder is not None:
            builder, overrides = self.builder, self.overrides
        else:
            builder, overrides = next(iter(self.variants.values()))
        return resolve_builder(builder), dict(overrides)  # type: ignore[return-value]

    def overrides_for(self, batches: str) -> dict[str, Any]:
        """The overrides of the class tasks with ``batches`` get, without importing it."""
        if batches in self.variants:
            return dict(self.variants[batches][1])
        return dict(self.overrides)


#: algorithm name (``algorithm.name`` in a config) -> :class:`AlgorithmSpec`
ALGORITHMS: Registry[AlgorithmSpec] = Registry("algorithm", "algorithm.name")


def _identity(builder: Any) -> str:
    if builder is None or isinstance(builder, str):
        return str(builder)
    return f"{builder.__module__}:{builder.__qualname__}"


def register(
    name: str, *, batches: str | None = None, builder: str | None = None, **overrides: Any
) -> Callable[[type[MetaLearner]], type[MetaLearner]]:
    """Class decorator: make the learner buildable from a config as ``algorithm.name:
    NAME`` (through its :meth:`MetaLearner.from_config`), with ``overrides`` fixed (e.g.
    ``first_order=True`` for ``fomaml``). Adding an algorithm is this line, its class and
    a preset. ``batches`` (``points``, ``episodes``, ``trajectories``): the class serves only
    the tasks whose batches are these, beside the name's other classes. With
    ``builder="package.module:Class"`` the class is registered at once and its module
    imported when it is built (a learner with an optional dependency)."""

    def decorate(cls: type[MetaLearner] | str) -> Any:
        known = ALGORITHMS.get(name)
        if batches is None:
            if known is not None and known.builder is not None:
                if _identity(known.builder) != _identity(cls):  # a reload: the same class
                    raise ValueError(
                        f"algorithm {name!r} is already registered to {_identity(known.builder)}"
                    )
            variants = dict(known.variants) if known is not None else {}
            spec = AlgorithmSpec(name, cls, dict(overrides), variants)
        else:
            variants = dict(known.variants) if known is not None else {}
            if batches in variants and _identity(variants[batches][0]) != _identity(cls):
                raise ValueError(
                    f"algorithm {name!r} is already registered for {batches} to "
                    f"{_identity(variants[batches][0])}"
                )
            variants[batches] = (cls, dict(overrides))
            if known is None:
                spec = AlgorithmSpec(name, None, {}, variants)
            else:
                spec = AlgorithmSpec(name, known.builder, known.overrides, variants)
        ALGORITHMS.replace(spec)
        return cls

    return decorate(builder) if builder is not None else decorate


def learner_class(config: Config) -> type[MetaLearner]:
    """The class ``config``'s ``algorithm.name`` builds for its task's batches."""
    from mamlkit.tasks.registry import task_spec

    batches = task_spec(config.task.name).batches
    return ALGORITHMS.lookup(config.algorithm.name).learner(batches)[0]
