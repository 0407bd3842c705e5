"""MAML++ (Antoniou, Edwards & Storkey, ICLR 2019): "How to train your MAML"."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from mamlkit.algorithms.base import MetaOutput, register
from mamlkit.algorithms.capabilities import capturable
from mamlkit.algorithms.maml import MAML
from mamlkit.functional import (
    FixedStepSize,
    InnerUpdate,
    LossFn,
    Params,
    PerLayerStepSchedule,
    PerStepParameters,
    adaptable_params,
    batch_norm_params,
)
from mamlkit.settings import AlgorithmSettings, require_at_least
from mamlkit.tasks.base import TaskBatch


def multi_step_loss_weights(steps: int, epoch: int, anneal_epochs: int) -> list[float]:
    """MAML++'s per-step query-loss weights at ``epoch``: uniform (1/S each) at first; over
    ``anneal_epochs`` epochs the weights of steps 1..S−1 fall linearly to a floor of
    0.03/S while the last step's rises to take their share; with ``anneal_epochs`` 0, only
    the last step counts (plain MAML)."""
    if anneal_epochs <= 0:
        return [0.0] * (steps - 1) + [1.0]
    uniform = 1.0 / steps
    decay = uniform / anneal_epochs
    floor = 0.03 / steps
    weights = [max(uniform - epoch * decay, floor) for _ in range(steps - 1)]
    last = min(uniform + epoch * (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return weights + [last]


@dataclass
class MAMLPlusPlusSettings(AlgorithmSettings):
    """``algorithm.name: mamlpp``."""

    name: str = "mamlpp"
    # mamlpp: LSLR, multi-step loss annealed over msl_epochs, first order for
    # first_order_epochs, per-step BatchNorm weights; an epoch is iterations_per_epoch
    # meta-iterations
    learned_step_sizes: bool = True
    per_step_bn: bool = True
    msl_epochs: int = 10
    first_order_epochs: int = 0
    iterations_per_epoch: int = 500

    def validate(self, config: Any) -> None:
        super().validate(config)
        require_at_least(0, "algorithm", self, "msl_epochs", "first_order_epochs")
        require_at_least(1, "algorithm", self, "iterations_per_epoch")


@register("mamlpp")
class MAMLPlusPlus(MAML):
    """MAML with the stabilisers of MAML++, each a constructor switch:

    - ``learned_step_sizes``: per-layer, per-step learned inner step sizes (LSLR),
      initialised to ``inner_lr``;
    - ``msl_epochs``: the multi-step loss — the query loss after every inner step, weighted
      by :func:`multi_step_loss_weights`, annealed toward the last step over this many
      epochs (0: the last step only);
    - ``first_order_epochs``: derivative-order annealing — first order for this many
      epochs, second order after;
    - ``per_step_bn``: per-step BatchNorm weights and biases — the inner loop does not
      adapt BatchNorm's affine parameters by gradient; after each step the network
      normalises with a meta-learned set of its own (:class:`PerStepParameters`);
    - ``iterations_per_epoch``: what an epoch is (the paper: 500 iterations).

    The outer learning rate's cosine annealing is the trainer's (``train.lr_schedule:
    cosine``). BatchNorm normalises with each batch's statistics at every step, in
    training and at test. MAML++'s per-step running statistics are not kept: its code
    (and learn2learn's ``MetaBatchNorm``) accumulates them but calls ``F.batch_norm``
    with ``training=True`` in training and at test alike, so they never change an output.

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> from mamlkit import MAMLPlusPlus, SineTasks
        >>> from mamlkit.models import MLP
        >>> learner = MAMLPlusPlus(MLP((1, 40, 40, 1)), F.mse_loss, inner_lr=0.01, inner_steps=3)
        >>> batch = SineTasks().sample(4, torch.Generator().manual_seed(0))
        >>> out = learner.meta_forward(batch, iteration=0)   # all three steps' losses count
        >>> out.loss.backward()
        >>> learner.update.alpha["net-0-weight"].shape   # one step size per step
        torch.Size([3])
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inner_lr: float | Sequence[float],
        inner_steps: int = 5,
        *,
        learned_step_sizes: bool = True,
        msl_epochs: int = 10,
        first_order_epochs: int = 0,
        iterations_per_epoch: int = 500,
        per_step_bn: bool = True,
        **kwargs,
    ):
        if inner_steps < 1:
            raise ValueError("MAML++ needs inner_steps >= 1")
        if iterations_per_epoch < 1:
            raise ValueError(f"iterations_per_epoch must be >= 1, got {iterations_per_epoch}")
        self.learned_step_sizes = learned_step_sizes
        self.per_step_bn = per_step_bn
        self.msl_epochs, self.first_order_epochs = msl_epochs, first_order_epochs
        self.iterations_per_epoch = iterations_per_epoch
        super().__init__(model, loss_fn, inner_lr, inner_steps, **kwargs)

    @classmethod
    def config_kwargs(cls, algorithm) -> dict:
        return {
            "learned_step_sizes": algorithm.learned_step_sizes,
            "msl_epochs": algorithm.msl_epochs,
            "first_order_epochs": algorithm.first_order_epochs,
            "iterations_per_epoch": algorithm.iterations_per_epoch,
            "per_step_bn": algorithm.per_step_bn,
        }

    settings_class = MAMLPlusPlusSettings

    def make_update(self) -> InnerUpdate:
        adapted = adaptable_params(self.model, self.adapt_only)
        per_step = {}
        if self.per_step_bn:
            per_step = {n: p for n, p in batch_norm_params(self.model).items() if n in adapted}
        if not self.learned_step_sizes:
            rule: InnerUpdate = FixedStepSize(self.inner_lr)
        elif not isinstance(self.inner_lr, (int, float)):
            raise ValueError("learned step sizes start from one inner_lr; give one number")
        else:
            by_gradient = {n: p for n, p in adapted.items() if n not in per_step}
            rule = PerLayerStepSchedule(by_gradient, self.inner_steps, self.inner_lr)
        return PerStepParameters(rule, per_step, self.inner_steps) if per_step else rule

    def _epoch(self, iteration: int) -> int:
        return iteration // self.iterations_per_epoch

    def capture_key(self, iteration: int):
        # the loss weights and the derivative order change only from epoch to epoch
        return min(self._epoch(iteration), max(self.msl_epochs, self.first_order_epochs))

    @capturable(key="capture_key")
    def meta_forward(self, batch: TaskBatch, iteration: int = 0) -> MetaOutput:
        epoch = self._epoch(iteration)
        weights = multi_step_loss_weights(self.inner_steps, epoch, self.msl_epochs)
        first_order = self.first_order or epoch < self.first_order_epochs
        losses: list[Tensor] = []
        last: list[Tensor] = []

        def query_loss(step: int, phi: Params) -> None:
            if step == 0 or weights[step - 1] == 0.0:
                return
            loss, pred = self.outer_loss(phi, batch.query_x, batch.query_y)
            losses.append(weights[step - 1] * loss)
            last[:] = [pred]

        self.adapt(batch.support_x, batch.support_y, first_order=first_order, on_step=query_loss)
        return MetaOutput(sum(losses[1:], losses[0]), last[0])
