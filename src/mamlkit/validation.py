"""Validation during meta-training: the metric on fixed validation tasks, and the best
result so far (what ``status.json`` and ``mamlkit runs`` report)."""

from __future__ import annotations

from typing import Any

import torch

from mamlkit.evaluation import HIGHER_IS_BETTER, evaluate

__all__ = ["improves", "validate"]


def validate(
    learner: torch.nn.Module,
    tasks: Any,
    config: Any,
    metric: str,
    device: torch.device,
    dist: Any = None,
    progress: bool | None = False,
) -> dict[str, Any]:
    """``metric`` on ``config.train.val_tasks`` fixed tasks of ``tasks`` after the test-time
    number of steps (``config.eval``), in evaluation mode (e.g. ProtoNets' BatchNorm: the
    running statistics); the learner is back in training mode after."""
    learner.eval()
    try:
        return evaluate(
            learner,
            tasks,
            config.train.val_tasks,
            steps=config.eval.steps,
            metric=metric,
            seed=config.eval.seed + 1,
            device=device,
            chunk=config.eval.chunk,
            dist=dist,
            progress="validation" if progress is not None else None,
        )[-1]
    finally:
        learner.train()


def improves(best: dict[str, Any] | None, value: float, metric: str) -> bool:
    """Whether ``value`` of ``metric`` beats the ``best`` record so far (None: nothing yet)."""
    return best is None or (value > best["value"]) == (metric in HIGHER_IS_BETTER)
