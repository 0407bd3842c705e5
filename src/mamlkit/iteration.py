"""The one body of a meta-training iteration, shared by every way the trainer runs it.

:func:`meta_gradient` is the iteration up to the outer update: the learner's objective, its
backward pass, the logged numbers and the health sum (NaN/Inf anywhere in the loss or the
meta-gradient makes it non-finite); :func:`apply_update` clips and steps the optimiser.
The eager step (:class:`mamlkit.steps.EagerStep`) reads the numbers back to the host every
iteration; the device step (:class:`mamlkit.device_step.DeviceStep`) keeps them on the
device; a learner's own outer step (:class:`mamlkit.steps.OwnOuterStep`) replaces both.
All of them stop training with the message of :func:`divergence_error`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mamlkit.errors import DivergenceError

__all__ = [
    "Health",
    "MeanFn",
    "MetricFn",
    "apply_update",
    "divergence_error",
    "meta_gradient",
]

MetricFn = Callable[[Tensor, Tensor], Tensor]
#: a distributed job's in-place mean over its processes
MeanFn = Callable[[list[Tensor]], None]


@dataclass
class Health:
    """The first iteration (1-based, counted from the start of training) whose loss or
    meta-gradient was not finite (0: none so far), and whether the loss itself was."""

    first_nonfinite: int
    loss_was_nonfinite: bool


def divergence_error(
    health: Health, *, updates_skipped: bool = False, grad_clip_helps: bool = True
) -> DivergenceError:
    """The one error that stops a diverged run: which number became NaN/Inf and when, that
    the last checkpoint is intact (``updates_skipped``: and that no update was applied from
    then on, where the device step found out later), and what to change.

    Examples:
        >>> print(divergence_error(Health(8, True)))
        the loss became NaN/Inf at iteration 8; training stopped (the last checkpoint is intact); lower the learning rates or set train.grad_clip
    """  # noqa: E501
    what = "loss" if health.loss_was_nonfinite else "meta-gradient"
    kept = "the last checkpoint is intact"
    if updates_skipped:
        kept = "no update was applied from then on, and " + kept
    fix = "lower the learning rates" + (" or set train.grad_clip" if grad_clip_helps else "")
    return DivergenceError(
        f"the {what} became NaN/Inf at iteration {health.first_nonfinite}; training stopped "
        f"({kept}); {fix}"
    )


def meta_gradient(
    learner: Any,
    batch: Any,
    iteration: int,
    params: list[Tensor],
    metric_fn: MetricFn | None,
    mean: MeanFn | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``learner.meta_forward`` on ``batch`` at training ``iteration`` and backward its
    loss into ``params``' gradients; return ``(loss, metric, health)`` as device scalars
    (``metric``: ``metric_fn``'s mean over tasks, else the loss; ``health`` is non-finite
    where the loss or the meta-gradient is). ``mean`` (distributed): the meta-gradient,
    loss and metric become the means of the ranks' equal shares of the batch, so that
    every rank sees the same numbers and decides alike. Gradients must be zero (or None)
    before."""
    out = learner.meta_forward(batch, iteration)
    loss, pred = out.loss, out.predictions
    loss.backward()
    grads = [p.grad for p in params if p.grad is not None]
    with torch.no_grad():
        value = loss.detach()
        targets = batch.targets if out.targets is None else out.targets
        metric = value if metric_fn is None else metric_fn(pred, targets).mean()
        if mean is not None:
            mean(grads)
            both = torch.stack([value.double(), metric.double()])
            mean([both])
            value, metric = both[0], both[1]
        # NaN/Inf anywhere in the loss or the meta-gradient makes this sum non-finite
        health = value + torch.stack(torch._foreach_norm(grads)).sum()
    return value, metric, health


def apply_update(
    params: list[Tensor], optimizer: torch.optim.Optimizer, grad_clip: float | None
) -> None:
    """The outer update: clip the meta-gradient's values to ``[-grad_clip, grad_clip]``
    (where set), then step the optimiser."""
    if grad_clip:
        torch.nn.utils.clip_grad_value_(params, grad_clip)
    optimizer.step()
