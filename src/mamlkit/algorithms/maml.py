"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017) and its first-order variant."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mamlkit.algorithms.base import MetaLearner
from mamlkit.functional import (
    LossFn,
    Params,
    adaptable_params,
    inner_loop,
    stack_params,
    task_forward,
    task_mean_loss,
)


class MAML(MetaLearner):
    """Meta-learn an initialisation θ from which a few gradient steps fit a new task.

    Inner loop, per task i: φᵢ = θ − α ∇θ L(θ, Dᵢᵗʳ) (``inner_steps`` times);
    outer objective: mean over tasks of L(φᵢ, Dᵢᵗᵉˢᵗ), differentiated through the inner
    steps (second order) unless ``first_order``.

    Args:
        model: any ``nn.Module``; BatchNorm running statistics are not used (MAML
            normalises with the batch's own statistics), so tracking modules are switched
            to batch statistics.
        loss_fn: per-task loss ``loss_fn(pred, target) -> scalar`` (e.g. ``F.mse_loss``).
        inner_lr: α, one value or one per inner step.
        inner_steps: gradient steps in the inner loop during meta-training.
        first_order: drop the second-order term (first-order MAML).
        impl: how tasks run through the model: ``auto``, ``batched``, ``vmap`` or ``loop``
            (all compute the same numbers; tests pin them to a float64 reference).
        eval_inner_lr: α at test time (default: ``inner_lr``).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inner_lr: float | Sequence[float],
        inner_steps: int = 1,
        first_order: bool = False,
        impl: str = "auto",
        eval_inner_lr: float | None = None,
    ):
        super().__init__()
        if inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
        _use_batch_statistics(model)
        self.model = model
        self.loss_fn = loss_fn
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.eval_inner_lr = eval_inner_lr
        self._forward, self.impl = task_forward(model, impl)

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        steps: int | None = None,
        *,
        lr: float | Sequence[float] | None = None,
        first_order: bool | None = None,
        params: Params | None = None,
    ) -> Params:
        """Adapted parameters φ with a leading task dimension T (differentiable w.r.t. θ)."""
        steps = self.inner_steps if steps is None else steps
        theta = adaptable_params(self.model) if params is None else params
        return inner_loop(
            self._forward,
            stack_params(theta, support_x.shape[0]),
            support_x,
            support_y,
            self.loss_fn,
            self.inner_lr if lr is None else lr,
            steps,
            first_order=self.first_order if first_order is None else first_order,
        )

    def predict(self, params: Params, x: Tensor) -> Tensor:
        """Run the model on ``x [T, N, ...]`` with per-task parameters ``params [T, ...]``."""
        return self._forward(params, x)

    def meta_forward(self, support_x, support_y, query_x, query_y):
        phi = self.adapt(support_x, support_y)
        pred = self.predict(phi, query_x)
        return task_mean_loss(self.loss_fn, pred, query_y), pred

    def query_predictions(self, support_x, support_y, query_x, steps, reduce=None):
        # Test time: the same update rule on detached θ, without the second-order graph.
        theta = {n: p.detach().requires_grad_() for n, p in adaptable_params(self.model).items()}
        preds: list[Tensor] = []

        def record(_step: int, phi: Params) -> None:
            with torch.no_grad():
                pred = self._forward(phi, query_x)
                preds.append(pred if reduce is None else reduce(pred))

        with torch.enable_grad():
            inner_loop(
                self._forward,
                stack_params(theta, support_x.shape[0]),
                support_x,
                support_y,
                self.loss_fn,
                self.eval_inner_lr if self.eval_inner_lr is not None else self.inner_lr,
                steps,
                first_order=True,
                on_step=record,
                graph_to_start=False,
            )
        return preds


def FOMAML(model: nn.Module, loss_fn: LossFn, inner_lr, inner_steps: int = 1, **kwargs) -> MAML:
    """First-order MAML: ``MAML(..., first_order=True)``."""
    return MAML(model, loss_fn, inner_lr, inner_steps, first_order=True, **kwargs)


def _use_batch_statistics(model: nn.Module) -> None:
    """Make BatchNorm layers normalise with batch statistics and keep no running stats
    (MAML's convention; running-stat updates are also in-place writes vmap forbids)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
