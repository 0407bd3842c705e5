"""What a config may hold besides its typed keys. Its YAML is bounded: anchors and aliases
let a few hundred bytes stand for billions of values (an "anchor bomb"), so the size a
document would have once every alias is expanded is counted on the composed node graph,
before anything is built from it (:func:`load_yaml`). ``model.kwargs`` are plain data (what
JSON can say), so that a config can never hand a function, a set or a date to a model's
constructor. Kept free of torch: config validation uses it."""

from __future__ import annotations

from typing import Any

import yaml

from mamlkit.errors import ConfigError

__all__ = [
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "PLAIN_TYPES",
    "check_plain_data",
    "load_yaml",
]

#: the longest config text read (characters); presets are about 2,000
MAX_YAML_BYTES = 1_000_000
#: the most values (scalars, lists, mappings) a config may hold with every alias expanded;
#: mamlkit's presets hold about 150
MAX_YAML_NODES = 100_000
#: the deepest nesting of lists and mappings a config may have (presets: 3)
MAX_YAML_DEPTH = 50


def load_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load(text)``, refusing (a ConfigError naming ``what``) a document that
    would hold more than :data:`MAX_YAML_NODES` values once its aliases are expanded, nests
    deeper than :data:`MAX_YAML_DEPTH` or refers to itself. Counting takes one pass over
    the composed nodes (each anchored node is counted once, with its expanded size), so a
    bomb is refused in the time it takes to read it. Syntax errors raise yaml.YAMLError."""
    _check_nesting(text, what)  # before composing, which recurses once per level
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(
                f"{what}: nested deeper than {MAX_YAML_DEPTH} levels; a config is a few "
                "levels of mappings"
            ) from None
        if node is None:
            return None
        _check_expanded_size(node, what)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_nesting(text: str, what: str) -> None:
    """Refuse nesting deeper than :data:`MAX_YAML_DEPTH` from the parser's events (an
    iterative pass), before the composer would recurse that deep."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(
                    f"{what}: nested deeper than {MAX_YAML_DEPTH} levels; a config is a few "
                    "levels of mappings"
                )
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expanded_size(root: yaml.Node, what: str) -> None:
    """Refuse ``root`` if its alias-expanded tree is too large, too deep or cyclic: an
    iterative post-order walk with the expanded (size, depth) of each node remembered."""
    done: dict[int, tuple[int, int]] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if expanded:
            parts = [done[id(child)] for child in _children(node)]
            size = 1 + sum(p[0] for p in parts)
            depth = 1 + max((p[1] for p in parts), default=0)
            on_path.discard(key)
            if size > MAX_YAML_NODES:
                raise ConfigError(
                    f"{what}: holds more than {MAX_YAML_NODES} values once its YAML aliases "
                    "(*name) are expanded; a config needs far fewer: write the values out or "
                    "remove the repeated aliases"
                )
            if depth > MAX_YAML_DEPTH:
                raise ConfigError(
                    f"{what}: nested deeper than {MAX_YAML_DEPTH} levels; a config is a few "
                    "levels of mappings"
                )
            done[key] = (size, depth)
            continue
        if key in done:
            continue
        if key in on_path:
            raise ConfigError(
                f"{what}: a YAML alias (*name) refers to a value that contains it; a config "
                "cannot be recursive"
            )
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in done)

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
