"""What a config may hold besides its typed keys: ``model.kwargs`` are plain data (what
JSON can say), so that a config can never hand a function, a set or a date to a model's
constructor. Kept free of torch: config validation uses it."""

from __future__ import annotations

from typing import Any

from mamlkit.errors import ConfigError

__all__ = ["PLAIN_TYPES", "check_plain_data"]

#: the types a value of ``model.kwargs`` may have, at any depth (dict keys: str)
PLAIN_TYPES = (str, int, float, bool, type(None), list, dict)


def check_plain_data(value: Any, key: str) -> None:
    """Refuse, naming the key (``model.kwargs.sizes[1]``), anything in ``value`` that is not
    str, int, float, bool, None, a list of those or a mapping with str keys of those."""
    stack = [(value, key)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise ConfigError(
                        f"config key '{where}': the key {k!r} is a {type(k).__name__}; "
                        "argument names are strings"
                    )
                stack.append((v, f"{where}.{k}"))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
        elif type(item) not in PLAIN_TYPES:
            raise ConfigError(
                f"config key '{where}': {item!r} is a {type(item).__name__}; model arguments "
                "are plain data (str, int, float, bool, null, lists and mappings of them)"
            )
