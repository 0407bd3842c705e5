"""Models named in a config by import path (``model.target: "package.module:ClassName"``).

Importing a module runs its code, and calling what it holds runs more, so a target named in
somebody else's run directory is as trusted as that person. :func:`untrusted_reason` decides
by what the target *resolves to*, never by its name: only an ``nn.Module`` subclass defined
in mamlkit's own modules counts as mamlkit's, found by importing nothing but mamlkit's public
modules and walking module namespaces without calling anything. Everything else (any
outside module, and any object a mamlkit module merely imported, such as ``os.system``)
needs ``--trust-code`` (like Hugging Face's ``trust_remote_code``)."""

from __future__ import annotations

import importlib
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

from torch import nn

from mamlkit.errors import ConfigError

TARGET_PATTERN = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")

#: the folder of mamlkit's own modules
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _is_mamlkit_name(module: str) -> bool:
    return module == "mamlkit" or module.startswith("mamlkit.")


def _is_mamlkit_module(obj: Any) -> bool:
    """A module of mamlkit itself: its name and its file both inside the package."""
    if not isinstance(obj, types.ModuleType) or not _is_mamlkit_name(obj.__name__):
        return False
    file = getattr(obj, "__file__", None)
    return file is not None and Path(file).resolve().is_relative_to(PACKAGE_DIR)


def _defined_in_mamlkit(cls: type) -> bool:
    module = sys.modules.get(getattr(cls, "__module__", ""))
    return _is_mamlkit_module(module) and vars(module).get(cls.__qualname__) is cls


def untrusted_reason(target: str) -> str | None:
    """None when ``target`` names an ``nn.Module`` subclass defined in mamlkit (building it
    runs only mamlkit's code), else why it needs ``--trust-code``. Only a public module of
    mamlkit is imported (never ``__main__``, which would run the command line); the path
    after ':' is looked up in module namespaces (``vars``), never by ``getattr``, so no
    module ``__getattr__`` or descriptor runs. A misspelt mamlkit name is a ConfigError."""
    if not TARGET_PATTERN.fullmatch(target):
        return None  # import_target refuses it before anything is imported
    module_name, attr = target.split(":", 1)
    if not _is_mamlkit_name(module_name):
        return f"it imports {module_name!r}, which is not part of mamlkit"
    if any(part.startswith("_") for part in module_name.split(".")):
        return f"{module_name!r} is not a public module of mamlkit"
    obj: Any = _import(module_name)
    walked, sep = module_name, ":"
    for part in attr.split("."):
        if not _is_mamlkit_module(obj):
            return f"{walked} is {_describe(obj)}, not a module of mamlkit"
        if part not in vars(obj):
            raise ConfigError(
                f"config key 'model.target': module {walked!r} has no {part!r}; check the "
                "name after the ':'"
            )
        obj, walked, sep = vars(obj)[part], f"{walked}{sep}{part}", "."
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        return f"it resolves to {_describe(obj)}, not an nn.Module class of mamlkit"
    if not _defined_in_mamlkit(obj):
        return f"it resolves to {_describe(obj)}, which is defined outside mamlkit"
    return None


def _describe(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return f"the module {obj.__name__}"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    module = getattr(obj, "__module__", None)
    if isinstance(name, str):
        where = f"{module}." if isinstance(module, str) else ""
        return f"{where}{name} (a {type(obj).__name__})"
    return f"a {type(obj).__name__}"


def _import(module_name: str) -> types.ModuleType:
    """Import ``module_name``; whatever it raises, or a ``sys.exit`` while it is imported,
    is a ConfigError naming it."""
    try:
        return importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # ImportError, or anything the module raises
        if isinstance(exc, SystemExit):
            reason = f"it called sys.exit({exc.code!r}) while being imported"
        else:
            reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(
            f"config key 'model.target': cannot import {module_name!r} ({reason}); install "
            "the package or run from the folder that holds the module"
        ) from None


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
        module = _import(module_name)
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
            f"config key 'model.kwargs': {target}(**{kwargs}) failed ({_one_line(exc)}); fix "
            "the arguments"
        ) from None
    except (Exception, SystemExit) as exc:  # the model's own check of its arguments
        what = (
            f"called sys.exit({exc.code!r})"
            if isinstance(exc, SystemExit)
            else f"raised {type(exc).__name__}: {_one_line(exc)}"
        )
        raise ConfigError(
            f"config key 'model.target': {target}(**{kwargs}) {what}; fix model.kwargs or "
            "the model"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"config key 'model.target': {target}(...) returned a {type(model).__name__}, "
            "not an nn.Module"
        )
    return model


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
