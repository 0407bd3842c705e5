"""A name -> spec table for one kind of thing a config names (algorithms, tasks, models), in
registration order. Kept free of torch: config validation reads the names."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar

from mamlkit.errors import ConfigError


class Spec(Protocol):
    name: str
    builder: Callable[..., Any] | str


S = TypeVar("S", bound=Spec)


def resolve_builder(builder: Callable[..., Any] | str) -> Callable[..., Any]:
    """A builder, or the one a ``"package.module:function"`` string names (imported on first
    use, so that an optional dependency such as MuJoCo is only needed by its own tasks)."""
    if callable(builder):
        return builder
    module, _, attr = builder.partition(":")
    return getattr(importlib.import_module(module), attr)


def _identity(builder: Callable[..., Any] | str) -> str:
    if isinstance(builder, str):
        return builder
    return f"{builder.__module__}:{builder.__qualname__}"


class Registry(Mapping[str, S], Generic[S]):
    """The specs of one kind by name. ``lookup`` refuses an unknown name as a config error
    naming ``key`` and every registered name."""

    def __init__(self, kind: str, key: str):
        self.kind = kind
        self.key = key
        self._specs: dict[str, S] = {}

    def add(self, spec: S) -> None:
        known = self._specs.get(spec.name)
        # a reloaded module registers its builder again: the same one is no conflict
        if known is not None and _identity(known.builder) != _identity(spec.builder):
            raise ValueError(
                f"{self.kind} {spec.name!r} is already registered to {_identity(known.builder)}"
            )
        self._specs[spec.name] = spec

    def replace(self, spec: S) -> None:
        """Register ``spec`` in place of its name's spec (a registration that extends the
        one before it and has checked it for conflicts itself)."""
        self._specs[spec.name] = spec

    def __delitem__(self, name: str) -> None:
        """Unregister ``name`` (a test undoing its registration)."""
        del self._specs[name]

    def lookup(self, name: str) -> S:
        if name not in self._specs:
            raise ConfigError(
                f"config key '{self.key}': unknown {self.kind} {name!r} ({', '.join(self)})"
            )
        return self._specs[name]

    def __getitem__(self, name: str) -> S:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


def import_modules(package: str, path: Iterable[str]) -> list[str]:
    """Import every module of ``package`` (whose ``__path__`` is ``path``) that is not
    imported yet, so that each registers what it defines: adding an algorithm, a task or a
    model to mamlkit is its own file (and a preset), with no import to add anywhere. Returns
    the modules it imported."""
    imported = []
    for info in pkgutil.iter_modules(list(path)):
        name = f"{package}.{info.name}"
        if name not in sys.modules and not info.name.startswith("_"):
            importlib.import_module(name)
            imported.append(name)
    return imported
