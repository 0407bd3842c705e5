"""The trainer's three ways to run a meta-training iteration, behind one interface.

Each is called as ``step(batch, iteration)``, adds ``[loss, metric, 1]`` to its logging
``window`` (a float64 ``[3]`` tensor the trainer owns), and raises the divergence error of
:func:`mamlkit.iteration.divergence_error`: the eager steps at once, the device step at
:meth:`check` (the trainer calls it where it logs, validates or checkpoints).

- :class:`EagerStep`: :func:`~mamlkit.iteration.meta_gradient`, one read of the numbers
  back to the host, :func:`~mamlkit.iteration.apply_update`;
- :class:`OwnOuterStep`: a learner's own :meth:`~mamlkit.algorithms.base.MetaLearner.outer_step`
  (Reptile, TRPO), or the eager step where it returns None;
- :class:`~mamlkit.device_step.DeviceStep`: the iteration on device buffers, captured as
  a CUDA graph where it can be.

:func:`make_step` picks one as ``train.cuda_graphs`` and the learner's hooks allow.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Protocol

import torch
from torch import Tensor

from mamlkit.algorithms.base import MetaLearner, MetaOutput
from mamlkit.algorithms.capabilities import outer_step_distributes, owns_outer_step
from mamlkit.device_step import CaptureUnsupported, DeviceStep
from mamlkit.errors import UserError
from mamlkit.evaluation import METRICS
from mamlkit.iteration import (
    Health,
    MeanFn,
    MetricFn,
    apply_update,
    divergence_error,
    meta_gradient,
)

__all__ = [
    "EagerStep",
    "OwnOuterStep",
    "Step",
    "capture_failed",
    "make_step",
    "refuse_undistributed",
]


class Step(Protocol):
    """What the trainer's loop calls, whichever way the iteration runs."""

    window: Tensor
    name: str

    def __call__(self, batch: Any, iteration: int) -> None: ...

    def check(self) -> None: ...


class EagerStep:
    """The iteration run eagerly, its loss, metric and health read back to the host in
    one copy (one GPU sync) per iteration; a non-finite one stops training before its
    update. ``mean``: a distributed job's mean over its ranks (None: one process)."""

    name = "eager"

    def __init__(
        self,
        learner: MetaLearner,
        optimizer: torch.optim.Optimizer,
        metric_fn: MetricFn | None,
        window: Tensor,
        grad_clip: float | None = None,
        mean: MeanFn | None = None,
    ):
        self.learner, self.optimizer, self.metric_fn = learner, optimizer, metric_fn
        self.window, self.grad_clip, self.mean = window, grad_clip, mean
        self.params = [p for p in learner.parameters() if p.requires_grad]

    def __call__(self, batch: Any, iteration: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        value, metric, health = meta_gradient(
            self.learner, batch, iteration, self.params, self.metric_fn, self.mean
        )
        with torch.no_grad():
            # one device-to-host copy (one GPU sync) per iteration for all three numbers
            health, loss_value, metric_value = (
                torch.stack([health, value, metric]).double().cpu().tolist()
            )
        if not math.isfinite(health):
            raise divergence_error(Health(iteration + 1, not math.isfinite(loss_value)))
        apply_update(self.params, self.optimizer, self.grad_clip)
        self.window += torch.tensor([loss_value, metric_value, 1.0], dtype=torch.float64)

    def check(self) -> None:
        """Nothing to do: a non-finite iteration has already stopped training."""


class OwnOuterStep:
    """A learner's own outer update (:meth:`MetaLearner.outer_step`), with the trainer's
    bookkeeping of what it returns: the loss, and the metric ``metric`` from its
    ``metrics`` or ``metric_fn`` of its predictions (else the loss). Where it returns
    None the usual step (``eager``) runs."""

    name = "eager"

    def __init__(
        self,
        learner: MetaLearner,
        optimizer: torch.optim.Optimizer,
        metric: str | None,
        metric_fn: MetricFn | None,
        eager: EagerStep,
        mean: MeanFn | None = None,
    ):
        self.learner, self.optimizer, self.eager, self.mean = learner, optimizer, eager, mean
        self.metric, self.metric_fn = metric, metric_fn

    @property
    def window(self) -> Tensor:
        return self.eager.window

    def __call__(self, batch: Any, iteration: int) -> None:
        out = self.learner.outer_step(batch, self.optimizer, iteration)
        if out is None:
            self.eager(batch, iteration)
            return
        loss_value, metric_value = self._numbers(out, batch)
        if not math.isfinite(loss_value):
            raise divergence_error(Health(iteration + 1, True), grad_clip_helps=False)
        self.window.add_(torch.tensor([loss_value, metric_value, 1.0], dtype=torch.float64))

    def _numbers(self, out: MetaOutput, batch: Any) -> tuple[float, float]:
        with torch.no_grad():
            value = out.loss.detach()
            metric = out.metrics.get(self.metric) if self.metric else None
            if metric is None:
                fn_ok = self.metric_fn is not None and out.predictions is not None
                targets = batch.targets if out.targets is None else out.targets
                metric = self.metric_fn(out.predictions, targets).mean() if fn_ok else value
            both = torch.stack([value.double(), metric.double()])
            if self.mean is not None:  # the whole batch's: every rank logs and decides alike
                self.mean([both])
            loss_value, metric_value = both.tolist()
        return loss_value, metric_value

    def check(self) -> None:
        """Nothing to do: a non-finite iteration has already stopped training."""


def make_step(
    learner: MetaLearner,
    optimizer: torch.optim.Optimizer,
    train: Any,
    metric: str | None,
    window: Tensor,
    start: int,
    mean: MeanFn | None = None,
    on_device: bool = False,
    capture: bool = False,
    describe: str = "meta-train",
) -> Step:
    """The step for ``learner``, as ``train`` (a config's train section) asks. The device
    step where ``on_device`` (a CUDA device in one process, or the tests' CPU run of its
    code) unless ``train.cuda_graphs`` is ``off``, captured as a CUDA graph where
    ``capture``; else (and where the learner or optimiser does not allow it, with a line on
    stderr under ``auto``, a refusal under ``on``) the learner's own outer step where its
    class has one, else the eager step. ``window`` and ``start``: the trainer's logging
    window and the iteration it starts at; ``metric`` (a name in
    :data:`mamlkit.evaluation.METRICS`) is logged beside the loss."""
    metric_fn = METRICS.get(metric) if metric else None
    eager = EagerStep(learner, optimizer, metric_fn, window, train.grad_clip, mean)
    fallback: Step = eager
    if owns_outer_step(learner):
        fallback = OwnOuterStep(learner, optimizer, metric, metric_fn, eager, mean)
    if train.cuda_graphs == "off" or not on_device:
        return fallback
    try:
        return DeviceStep(
            learner,
            optimizer,
            metric_fn,
            grad_clip=train.grad_clip,
            capture=capture,
            start=start,
            window=window.to(next(learner.parameters()).device),
            fallback=train.cuda_graphs == "auto",
        )
    except CaptureUnsupported as exc:
        if train.cuda_graphs == "on":
            raise UserError(
                f"train.cuda_graphs=on: {exc}; use train.cuda_graphs=auto or off"
            ) from None
        print(f"{describe}: training eagerly: {exc}", file=sys.stderr)
        return fallback


def capture_failed(step: Any, describe: str) -> str:
    """The line that says a device step's CUDA-graph capture failed and why (training goes
    on with the same code uncaptured)."""
    return (
        f"{describe}: CUDA graph capture failed, training continues eagerly "
        f"({step.capture_error.splitlines()[0][:200]}); set train.cuda_graphs=off to skip "
        "the attempt"
    )


def refuse_undistributed(learner: MetaLearner) -> None:
    """Refuse, in a distributed job, a learner whose own outer step does not average its
    update over the processes (:func:`~mamlkit.algorithms.capabilities.averages_over_ranks`):
    its ranks would drift apart."""
    if owns_outer_step(learner) and not outer_step_distributes(learner):
        raise UserError(
            f"{type(learner).__name__} makes its own outer update and does not say that it "
            "averages it over processes (@averages_over_ranks on its outer_step); train it "
            "in one process"
        )
