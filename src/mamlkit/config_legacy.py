"""Configs saved before each component owned its settings (mamlkit up to 6555a70): their
``task``, ``model`` and ``algorithm`` sections hold every key of every component, with the
defaults of one flat dataclass each. :func:`mamlkit.config.load_config` leaves out a key
the run's component does not have where it holds that old default (the run never read it)
and refuses it, naming it, where it holds another value. The RL tasks' old algorithm
names (``maml``, ``pretrained``) are aliases their tasks declare
(``register_task(..., algorithm_aliases=...)``). Kept free of torch."""

from __future__ import annotations

import dataclasses
from typing import Any

from mamlkit.errors import ConfigError

__all__ = ["OLD_DEFAULTS", "is_old_default", "own_keys", "with_current_names"]

#: section -> key -> the default every saved config of an older mamlkit recorded
OLD_DEFAULTS: dict[str, dict[str, Any]] = {
    "task": {
        "k_support": 10,
        "k_query": 10,
        "ways": 5,
        "shots": 1,
        "queries": 1,
        "train_ways": None,
        "train_queries": None,
        "data_dir": None,
        "split": "maml",
        "split_seed": 0,
        "val_classes": 0,
        "rotations": None,
        "image_size": 28,
        "within_alphabet": False,
        "channels": None,
        "split_fractions": [0.64, 0.16, 0.2],
        "batch_size": 64,
        "horizon": 100,
        "rollouts": 20,
        "eval_rollouts": 40,
        "eval_samples": 0,
        "oracle": False,
        "normalized_actions": True,
    },
    "model": {
        "hidden": [40, 40],
        "filters": 64,
        "pooling": "stride",
        "init": "torch",
        "global_pool": False,
        "bn_running_stats": False,
        "channels": [64, 160, 320, 640],
        "dropblock": 0.0,
        "dropblock_size": 5,
        "target": None,
        "kwargs": {},
    },
    "algorithm": {
        "inner_lr": 0.01,
        "inner_steps": 1,
        "first_order": False,
        "impl": "auto",
        "eval_inner_lr": None,
        "head": None,
        "learned_step_sizes": True,
        "per_step_bn": True,
        "msl_epochs": 10,
        "first_order_epochs": 0,
        "iterations_per_epoch": 500,
        "meta_step_size": 1.0,
        "meta_step_size_final": 0.0,
        "eval_inner_lrs": [],
        "discount": 0.99,
        "gae_lambda": 1.0,
        "max_kl": 0.01,
        "cg_iterations": 10,
        "cg_damping": 1e-5,
        "backtrack_ratio": 0.8,
        "max_backtracks": 15,
        "fisher": "gauss_newton",
    },
}


def is_old_default(section: str, key: str, value: Any) -> bool:
    """Whether ``value`` (as YAML read it) is the old default of ``section.key``."""
    default = OLD_DEFAULTS[section][key]
    if isinstance(default, float) and isinstance(value, str):
        try:
            return float(value) == default
        except ValueError:
            return False
    return (
        type(value) is type(default)
        and value == default
        or (isinstance(default, float) and type(value) is int and value == default)
    )


def with_current_names(data: dict[str, Any]) -> dict[str, Any]:
    """``data``, a saved config's mapping (a checkpoint's), with an old algorithm name its
    task declares an alias of (``maml`` on ``nav2d``) replaced by the algorithm's name, so
    that it compares equal with the config it loads as."""
    task, algorithm = data.get("task"), data.get("algorithm")
    if not (isinstance(task, dict) and isinstance(algorithm, dict)):
        return data
    name, task_name = algorithm.get("name"), task.get("name")
    if not (isinstance(name, str) and isinstance(task_name, str)):
        return data
    from mamlkit.tasks.registry import TASKS

    spec = TASKS.get(task_name)
    if spec is None:
        return data
    return {**data, "algorithm": {**algorithm, "name": spec.algorithm_name(name)}}


def own_keys(
    section: str,
    name: str,
    cls: type,
    given: dict,
    explicit: Any,
    updates: Any,
    replaced: bool = False,
) -> dict[str, Any]:
    """``given`` without the keys ``cls`` lacks that may be left out: a value from
    ``updates``, the source's keys of a component an override ``replaced``, or the
    source's old default of a key all components once had."""
    own = {f.name for f in dataclasses.fields(cls)}
    explicit = explicit if isinstance(explicit, dict) else {}
    updates = updates if isinstance(updates, dict) else {}
    out = {}
    for key, value in given.items():
        if key in own:
            out[key] = value
        elif key in updates and key not in explicit:
            continue  # e.g. --data-dir for a task without data
        elif replaced and key not in explicit:
            continue  # the keys of the component the source named
        elif key in OLD_DEFAULTS[section] and key not in explicit:
            if not is_old_default(section, key, value):
                raise ConfigError(
                    f"config key '{section}.{key}': {value!r}, but {section} {name!r} has no "
                    f"such setting; remove the key (the keys of {name!r}: "
                    f"{', '.join(sorted(own))})"
                )
        else:  # a --set, or a key no component of an older mamlkit had either (a typo)
            raise ConfigError(
                f"config key '{section}.{key}': {section} {name!r} has no such setting; "
                f"remove it (the keys of {name!r}: {', '.join(sorted(own))})"
            )
    return out
