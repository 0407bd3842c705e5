"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017) and its first-order variant."""

from __future__ import annotations

from torch import Tensor, nn

from mamlkit.algorithms.base import MetaOutput, register
from mamlkit.algorithms.capabilities import capturable
from mamlkit.algorithms.gradient import GradientLearner, check_impl
from mamlkit.functional import (
    LossFn,
    Params,
    task_mean_loss,
)
from mamlkit.tasks.base import TaskBatch


@register("maml")
@register("fomaml", first_order=True)
class MAML(GradientLearner):
    """Meta-learn an initialisation θ from which a few gradient steps fit a new task.

    Inner loop, per task i: φᵢ = θ − α ∇θ L(θ, Dᵢᵗʳ) (``inner_steps`` times);
    outer objective: mean over tasks of L(φᵢ, Dᵢᵗᵉˢᵗ), differentiated through the inner
    steps (second order) unless ``first_order``.

    Arguments are :class:`GradientLearner`'s (``inner_steps``: the inner loop's steps in
    meta-training; ``first_order``: first-order MAML).

    Variants override one hook: :meth:`make_update` (the inner update rule, e.g. learned
    step sizes) or :meth:`outer_loss` (the meta-objective from the adapted parameters).

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> from mamlkit import MAML, SineTasks
        >>> from mamlkit.models import MLP
        >>> learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, inner_lr=0.01)
        >>> batch = SineTasks().sample(4, torch.Generator().manual_seed(0))
        >>> learner.meta_loss(*batch).backward()
        >>> phi = learner.adapt(batch.support_x, batch.support_y, steps=3)
        >>> learner.predict(phi, batch.query_x).shape
        torch.Size([4, 10, 1])
    """

    @classmethod
    def from_config(cls, config, build_model, loss_fn, train_classes, **overrides) -> MAML:
        a = config.algorithm
        kwargs = dict(
            first_order=a.first_order,
            impl=a.impl,
            eval_inner_lr=a.eval_inner_lr,
            **cls.config_kwargs(a),
        )
        kwargs.update(overrides)
        model = check_impl(build_model(), kwargs["impl"])
        return cls(model, loss_fn, a.inner_lr, a.inner_steps, **kwargs)

    @classmethod
    def config_kwargs(cls, algorithm) -> dict:
        """Constructor arguments a variant reads from the ``algorithm`` config section."""
        return {}

    def outer_loss(self, phi: Params, query_x: Tensor, query_y: Tensor) -> tuple[Tensor, Tensor]:
        """The meta-objective from the adapted parameters, and the query predictions."""
        pred = self.predict(phi, query_x)
        return task_mean_loss(self.loss_fn, pred, query_y), pred

    @capturable
    def meta_forward(self, batch: TaskBatch, iteration: int = 0) -> MetaOutput:
        phi = self.adapt(batch.support_x, batch.support_y)
        loss, pred = self.outer_loss(phi, batch.query_x, batch.query_y)
        return MetaOutput(loss, pred)


def FOMAML(model: nn.Module, loss_fn: LossFn, inner_lr, inner_steps: int = 1, **kwargs) -> MAML:
    """First-order MAML: ``MAML(..., first_order=True)``."""
    return MAML(model, loss_fn, inner_lr, inner_steps, first_order=True, **kwargs)
