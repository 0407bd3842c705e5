"""Models named in a config by import path (``model.target: "package.module:ClassName"``).

Importing a module runs its code, so a target named in somebody else's run directory is as
trusted as that person: :func:`is_builtin_target` tells mamlkit's own models apart, and
the callers ask for ``--trust-code`` before importing anything else (like Hugging Face's
``trust_remote_code``)."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

from torch import nn

from mamlkit.errors import ConfigError

TARGET_PATTERN = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


def is_builtin_target(target: str) -> bool:
    """A target inside mamlkit itself (importing it runs no code from elsewhere)."""
    module = target.split(":", 1)[0]
    return module == "mamlkit" or module.startswith("mamlkit.")


def import_target(target: str) -> Any:
    """The object ``package.module:Name`` names. The current directory is searched too, as
    ``python -m`` would, so a ``models.py`` beside the config works."""
    if not TARGET_PATTERN.fullmatch(target):
        raise ConfigError(
            f"config key 'model.target': {target!r} is not of the form 'package.module:ClassName'"
        )
    module_name, attr = target.split(":", 1)
    added = os.getcwd() not in sys.path
    if added:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises on import
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(
            f"config key 'model.target': cannot import {module_name!r} ({reason}); install "
            "the package or run from the folder that holds the module"
        ) from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(
                f"config key 'model.target': module {module_name!r} has no {attr!r}; "
                "check the name after the ':'"
            )
        obj = getattr(obj, part)
    return obj


def build_target_model(target: str, kwargs: dict[str, Any]) -> nn.Module:
    """``target(**kwargs)``, which must be an ``nn.Module`` (a class or a factory)."""
    factory = import_target(target)
    if isinstance(factory, type) and not issubclass(factory, nn.Module):
        raise ConfigError(
            f"config key 'model.target': {target} is a class but not an nn.Module subclass; "
            "name a torch.nn.Module or a function that returns one"
        )
    if not callable(factory):
        raise ConfigError(
            f"config key 'model.target': {target} is a {type(factory).__name__}, not an "
            "nn.Module class or a function that returns one"
        )
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"config key 'model.kwargs': {target}(**{kwargs}) failed ({exc}); fix the arguments"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"config key 'model.target': {target}(...) returned a {type(model).__name__}, "
            "not an nn.Module"
        )
    return model
