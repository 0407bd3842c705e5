"""The outer optimiser ``train.optimizer`` names, and its learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["make_optimizer", "make_scheduler"]


def make_optimizer(params: Any, cfg: Any) -> torch.optim.Optimizer:
    """The outer optimiser ``train.optimizer`` names, at ``train.outer_lr``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.outer_lr)
    try:  # the fused kernel is fastest; older torch on CPU lacks it
        return torch.optim.Adam(params, lr=cfg.outer_lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=cfg.outer_lr, foreach=True)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Any) -> torch.optim.lr_scheduler.LambdaLR:
    """The outer learning-rate schedule as a ``LambdaLR`` of the closed form — halved every
    ``lr_halve_every`` steps (StepLR's), or cosine from ``outer_lr`` to ``min_lr`` over
    ``iterations`` — so that it depends on the step alone: a resumed run needs no scheduler
    state, and a run extended with ``--set train.iterations`` continues its schedule."""

    def factor(step: int) -> float:
        if cfg.lr_halve_every:
            return 0.5 ** (step // cfg.lr_halve_every)
        if cfg.lr_schedule == "cosine":
            cos = 0.5 * (1 + math.cos(math.pi * min(step / cfg.iterations, 1.0)))
            return (cfg.min_lr + (cfg.outer_lr - cfg.min_lr) * cos) / cfg.outer_lr
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
