"""Configs saved before each component owned its settings (mamlkit up to 6555a70): their
``task``, ``model`` and ``algorithm`` sections hold every key of every component, with the
defaults of one flat dataclass each. :func:`mamlkit.config.load_config` leaves out a key
the run's component does not have where it holds that old default (the run never read it)
and refuses it, naming it, where it holds another value. The RL tasks' old algorithm
names (``maml``, ``pretrained``) are aliases their tasks declare
(``register_task(..., algorithm_aliases=...)``). Kept free of torch."""

from __future__ import annotations

from typing import Any

__all__ = ["OLD_DEFAULTS", "is_old_default"]

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
