"""The rules of a whole config that no component owns: the ``train`` and ``eval``
sections' values, and the resources a run asks for (integers beyond 64 bits, absurd sizes,
a batch larger than this machine's memory: the task's and the model's own estimate).
Called by :func:`mamlkit.config.validate`; kept free of torch."""

from __future__ import annotations

import dataclasses
import math
import os
from typing import TYPE_CHECKING, Any

from mamlkit.errors import ConfigError, UserError
from mamlkit.limits import MAX_EVAL_SAMPLES, MAX_EVAL_TASKS, MAX_STEPS, check_eval_work
from mamlkit.settings import require

if TYPE_CHECKING:
    from mamlkit.config import Config

__all__ = ["check_train_eval", "largest_tensor_bytes", "validate_resources"]


def check_train_eval(c: Config) -> None:
    """The rules of the ``train`` and ``eval`` sections."""
    require(c.train.threads >= 0, "train.threads", f"must be >= 0, got {c.train.threads}")
    if c.train.max_time is not None:
        from mamlkit.budget import parse_duration

        parse_duration(c.train.max_time, "train.max_time")
    for key, value in [
        ("train.meta_batch", c.train.meta_batch),
        ("train.log_every", c.train.log_every),
        ("train.checkpoint_every", c.train.checkpoint_every),
        ("train.keep_checkpoints", c.train.keep_checkpoints),
        ("train.val_tasks", c.train.val_tasks),
        ("eval.tasks", c.eval.tasks),
        ("eval.chunk", c.eval.chunk),
        ("eval.ensemble", c.eval.ensemble),
    ]:
        require(value >= 1, key, f"must be >= 1, got {value}")
    # 0: a run that holds its initialisation (the "random init" baseline), evaluable as any
    require(c.train.iterations >= 0, "train.iterations", f"must be >= 0, got {c.train.iterations}")
    for key, value in [
        ("eval.steps", c.eval.steps),
        ("train.val_every", c.train.val_every),
        ("train.lr_halve_every", c.train.lr_halve_every),
    ]:
        require(value >= 0, key, f"must be >= 0, got {value}")
    for key, value in [
        ("train.outer_lr", c.train.outer_lr),
        ("train.grad_clip", c.train.grad_clip),
    ]:
        require(
            value is None or (math.isfinite(value) and value > 0),
            key,
            f"must be a positive number, got {value}",
        )
    require(
        c.train.device == "cpu" or c.train.device.startswith("cuda"),
        "train.device",
        f"must be cpu or cuda[:n], got {c.train.device!r}",
    )
    require(c.eval.split in ("train", "val", "test"), "eval.split", "must be train, val or test")
    require(
        c.eval.ensemble == 1 or c.train.val_every > 0,
        "eval.ensemble",
        "picks the best validation checkpoints; set train.val_every too (or eval.ensemble=1)",
    )
    if isinstance(c.train.cuda_graphs, bool):
        c.train.cuda_graphs = "on" if c.train.cuda_graphs else "off"
    require(
        c.train.cuda_graphs in ("auto", "on", "off"), "train.cuda_graphs", "must be auto, on or off"
    )
    require(
        c.train.cuda_graphs != "on" or c.train.device.startswith("cuda"),
        "train.cuda_graphs",
        "on needs train.device=cuda; use auto (graphs wherever CUDA is used) or off",
    )
    require(c.train.precision in ("fp32", "tf32"), "train.precision", "must be fp32 or tf32")
    require(c.train.optimizer in ("adam", "sgd"), "train.optimizer", "must be adam or sgd")
    require(
        c.train.lr_schedule in ("constant", "cosine"),
        "train.lr_schedule",
        f"must be constant or cosine, got {c.train.lr_schedule!r}",
    )
    require(
        not (c.train.lr_schedule == "cosine" and c.train.lr_halve_every),
        "train.lr_schedule",
        "cosine and train.lr_halve_every are two schedules; set one of them",
    )
    require(
        math.isfinite(c.train.min_lr) and 0 <= c.train.min_lr <= c.train.outer_lr,
        "train.min_lr",
        f"must be between 0 and train.outer_lr, got {c.train.min_lr}",
    )


# Ceilings far above any sensible run, each with the reason a user reads when refused.
_CEILINGS = [
    (
        "train.threads",
        1024,
        "each is an operating-system thread; more than the CPU cores only slows training down",
    ),
    ("task.image_size", 1024, "Conv4 is made for small images (Omniglot 28, MiniImagenet 84)"),
    ("model.filters", 4096, "the paper's nets use 32 or 64"),
    ("eval.chunk", 10000, "tasks evaluated at once; more only needs more memory"),
    # mamlkit.limits: the same ceilings as eval's --tasks, --steps and --samples
    ("eval.tasks", MAX_EVAL_TASKS, "the papers use 600; more only narrows the interval"),
    ("train.val_tasks", MAX_EVAL_TASKS, "validation tasks; the presets use 100-600"),
    ("eval.steps", MAX_STEPS, "test-time adaptation steps; the papers use 10"),
    ("task.eval_samples", MAX_EVAL_SAMPLES, "environment steps per task and test step"),
]
_SEEDS = ("train.seed", "eval.seed", "task.split_seed")
_INT64 = 2**63 - 1


def _get(c: Config, key: str) -> Any:
    """The value of ``section.name``; None where the section's component lacks it."""
    section, name = key.split(".")
    return getattr(getattr(c, section), name, None)


def _int_fields(c: Config) -> list[tuple[str, int]]:
    out = []
    for section in dataclasses.fields(c):
        for f in dataclasses.fields(getattr(c, section.name)):
            value = getattr(getattr(c, section.name), f.name)
            values = value if isinstance(value, list) else [value]
            out += [(f"{section.name}.{f.name}", v) for v in values if type(v) is int]
    return out


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def largest_tensor_bytes(c: Config) -> tuple[int, str]:
    """A lower bound on the largest float32 tensor of one meta-training batch, and the keys
    it grows with: the model's estimate from the task's batch (see
    :meth:`mamlkit.settings.ModelSettings.largest_tensor_bytes`). (Evaluation runs in
    ``eval.chunk``-sized pieces; lowering that helps.)"""
    return c.model.largest_tensor_bytes(c)


def validate_resources(c: Config) -> None:
    """Refuse requests no machine can serve (they would crash deep inside torch or the OS):
    integers beyond 64 bits, absurd sizes, a batch larger than this machine's memory."""
    for key, value in _int_fields(c):
        require(abs(value) <= _INT64, key, f"{value} does not fit in a 64-bit integer")
    for key in _SEEDS:
        value = _get(c, key)
        require(
            value is None or 0 <= value, key, f"seeds are non-negative 63-bit integers, got {value}"
        )
    for key, ceiling, reason in _CEILINGS:
        value = _get(c, key)
        require(
            value is None or value <= ceiling, key, f"{value} is more than {ceiling} ({reason})"
        )
    from mamlkit.tasks.registry import task_spec

    try:
        check_eval_work(
            c,
            c.eval.tasks,
            c.eval.steps,
            {"tasks": "eval.tasks", "steps": "eval.steps", "samples": "task.eval_samples"},
            rl=task_spec(c.task.name).rl,
        )
    except UserError as exc:
        raise ConfigError(f"config keys {exc}") from None
    needed, keys = largest_tensor_bytes(c)
    memory = _memory_bytes()
    if memory and needed > memory:
        raise ConfigError(
            f"config keys {keys}: one batch needs at least {needed / 2**30:.0f} GiB, more than "
            f"this machine's {memory / 2**30:.0f} GiB of memory; lower them"
        )
