"""The model names a config may use (``model.name``): each maps to its builder and to the
inputs it takes (``vector``, ``image``), which must be its task's (see
:mod:`mamlkit.tasks.registry`). ``model.target`` imports any other module instead.

Register a model with its builder, ``(config, out_features) -> nn.Module`` (``out_features``
None: the task's default, e.g. one logit per way)::

    @register_model("wide_mlp", inputs="vector")
    def build_wide_mlp(config, out_features):
        return MLP((1, 400, 400, 1))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mamlkit.registry import Registry, resolve_builder

if TYPE_CHECKING:
    from torch import nn

    from mamlkit.config import Config


@dataclass(frozen=True)
class ModelSpec:
    """A registered model; it serves the tasks whose ``inputs`` are its own."""

    name: str
    builder: Callable[[Config, int | None], nn.Module] | str
    inputs: str

    #: ``(config) -> None``, raising ConfigError for the keys only this model reads
    check: Callable[[Config], None] | None = None
    #: its ``model:`` section (a :class:`mamlkit.settings.ModelSettings` subclass)
    settings: type | None = None

    @property
    def settings_class(self) -> type:
        """The settings class of its ``model:`` section."""
        if self.settings is None:
            from mamlkit.settings import ModelSettings

            return ModelSettings
        return self.settings

    def build(self, config: Config, out_features: int | None = None) -> nn.Module:
        return resolve_builder(self.builder)(config, out_features)

    def check_config(self, config: Config) -> None:
        """Refuse the values of ``config`` this model cannot be built with (its own keys)."""
        if self.check is not None:
            self.check(config)


MODELS: Registry[ModelSpec] = Registry("model", "model.name")


def register_model(
    name: str,
    *,
    inputs: str,
    builder: str | None = None,
    check: Callable[[Config], None] | None = None,
    settings: type | None = None,
) -> Any:
    """Decorator: make ``model.name: NAME`` build the decorated ``(config, out_features) ->
    nn.Module`` for the tasks with ``inputs``. With ``builder="package.module:function"``
    the model is registered at once and that module imported when it is built. ``check``,
    ``(config) -> None``, validates the keys only this model reads when a config is loaded
    (raise :class:`mamlkit.errors.ConfigError` naming the key). ``settings``: the dataclass
    of its ``model:`` section (:class:`mamlkit.settings.ModelSettings` or a subclass, with
    its own keys, ``validate`` and ``largest_tensor_bytes``)."""

    def add(fn: Callable[[Config, int | None], nn.Module] | str) -> Any:
        MODELS.add(ModelSpec(name, fn, inputs, check, settings))
        return fn

    return add(builder) if builder is not None else add


def model_spec(name: str) -> ModelSpec:
    """The registered model ``name``; an unknown one is a config error listing them all."""
    return MODELS.lookup(name)
