"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017) and its first-order variant."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mamlkit.algorithms.base import MetaLearner, MetaOutput, check_task_batch, register
from mamlkit.functional import (
    FixedStepSize,
    InnerUpdate,
    LossFn,
    Params,
    Selection,
    adaptable_params,
    inner_loop,
    select,
    stack_params,
    supervised_support_loss,
    task_forward,
    task_mean_loss,
)
from mamlkit.tasks.base import TaskBatch


@register("maml")
@register("fomaml", first_order=True)
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
        eval_inner_lr: α at test time (default: the training rule, learned ones included).
        adapt: which parameters the inner loop adapts: a name prefix, a list of prefixes
            or a predicate on parameter names (default: all). The others are still
            meta-learned unless frozen (``requires_grad=False``).

    Variants override one hook: :meth:`make_update` (the inner update rule, e.g. learned
    step sizes) or :meth:`outer_loss` (the meta-objective from the adapted parameters).

    Example::

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

    capturable = True

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inner_lr: float | Sequence[float],
        inner_steps: int = 1,
        first_order: bool = False,
        impl: str = "auto",
        eval_inner_lr: float | None = None,
        adapt: str | Sequence[str] | Selection | None = None,
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
        self.adapted = select(adapt)
        if not adaptable_params(model, self.adapted):
            raise ValueError(f"adapt={adapt!r} selects no trainable parameter of the model")
        self._forward, self._impl = task_forward(model, impl, self.adapted)
        self.update = self.make_update()

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
        return cls(build_model(), loss_fn, a.inner_lr, a.inner_steps, **kwargs)

    @classmethod
    def config_kwargs(cls, algorithm) -> dict:
        """Constructor arguments a variant reads from the ``algorithm`` config section."""
        return {}

    @property
    def impl(self) -> str:
        """How the tasks run through the model (``batched``, ``vmap`` or ``loop``): what
        ``impl="auto"`` chose, updated if vmap failed on the first call and it fell back."""
        return getattr(self._forward, "impl", self._impl)

    def make_update(self) -> InnerUpdate:
        """The inner update rule (a module: its parameters are meta-learned with θ)."""
        return FixedStepSize(self.inner_lr)

    def outer_loss(self, phi: Params, query_x: Tensor, query_y: Tensor) -> tuple[Tensor, Tensor]:
        """The meta-objective from the adapted parameters, and the query predictions."""
        pred = self.predict(phi, query_x)
        return task_mean_loss(self.loss_fn, pred, query_y), pred

    def adapt(
        self,
        support_x: Tensor,
        support_y: Tensor,
        steps: int | None = None,
        *,
        lr: float | Sequence[float] | None = None,
        first_order: bool | None = None,
        params: Params | None = None,
        on_step: Callable[[int, Params], None] | None = None,
        keep_graph: bool = True,
    ) -> Params:
        """Adapted parameters φ with a leading task dimension T (differentiable w.r.t. θ and
        any learned step sizes); ``lr`` replaces the update rule by fixed step sizes.

        ``support_x [T, N, ...]`` and ``support_y [T, N, ...]``: T tasks of N examples each
        (one task without the task axis: :meth:`adapt_task`). Under ``torch.no_grad()`` or
        ``torch.inference_mode()`` this is test-time adaptation: the steps still take
        gradients (first order, with respect to φ only) and φ comes back detached.
        """
        check_task_batch(support_x, support_y, "adapt")
        steps = self.inner_steps if steps is None else steps
        theta = adaptable_params(self.model, self.adapted) if params is None else params
        update = self.update if lr is None else FixedStepSize(lr)
        first_order = self.first_order if first_order is None else first_order
        grad_mode = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        with contextlib.ExitStack() as test_time:
            if not grad_mode:  # under no_grad / inference_mode: first-order test-time steps
                test_time.enter_context(torch.inference_mode(False))
                test_time.enter_context(torch.enable_grad())
                # inference tensors cannot enter an autograd graph: ordinary copies can
                support_x, support_y = support_x.clone(), support_y.clone()
                theta = {n: p.detach().clone().requires_grad_() for n, p in theta.items()}
                first_order, keep_graph = True, False
            phi = inner_loop(
                stack_params(theta, support_x.shape[0]),
                supervised_support_loss(self._forward, support_x, support_y, self.loss_fn),
                update,
                steps,
                first_order=first_order,
                on_step=on_step,
                keep_graph=keep_graph,
            )
        return phi if grad_mode else {n: p.detach() for n, p in phi.items()}

    def adapt_task(
        self, support_x: Tensor, support_y: Tensor, steps: int | None = None, **kwargs
    ) -> Params:
        """:meth:`adapt` for ONE task without the task axis: ``support_x [N, ...]`` ->
        adapted parameters ``{name: tensor}`` shaped like the model's own, ready for
        ``torch.func.functional_call(learner.model, phi, (x,))``.

        Example:
            >>> import torch, torch.nn.functional as F
            >>> from mamlkit import MAML
            >>> from mamlkit.models import MLP
            >>> learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, inner_lr=0.01)
            >>> xs = torch.linspace(-5, 5, 10).unsqueeze(1)
            >>> with torch.no_grad():
            ...     phi = learner.adapt_task(xs, torch.sin(xs), steps=5)
            >>> phi["net.0.weight"].shape
            torch.Size([40, 1])
        """
        phi = self.adapt(support_x.unsqueeze(0), support_y.unsqueeze(0), steps, **kwargs)
        return {name: p[0] for name, p in phi.items()}

    def predict(self, params: Params, x: Tensor) -> Tensor:
        """Run the model on ``x [T, N, ...]`` with per-task parameters ``params [T, ...]``."""
        return self._forward(params, x)

    def meta_forward(self, batch: TaskBatch, iteration: int = 0) -> MetaOutput:
        phi = self.adapt(batch.support_x, batch.support_y)
        loss, pred = self.outer_loss(phi, batch.query_x, batch.query_y)
        return MetaOutput(loss, pred)

    def query_predictions(self, support_x, support_y, query_x, steps, lr=None, reduce=None):
        # Test time: the same update rule on detached θ, without the second-order graph.
        theta = {
            n: p.detach().requires_grad_()
            for n, p in adaptable_params(self.model, self.adapted).items()
        }
        preds: list[Tensor] = []

        def record(_step: int, phi: Params) -> None:
            with torch.no_grad():
                pred = self._forward(phi, query_x)
                preds.append(pred if reduce is None else reduce(pred))

        with torch.enable_grad():
            self.adapt(
                support_x,
                support_y,
                steps,
                lr=self.eval_inner_lr if lr is None else lr,
                first_order=True,
                params=theta,
                on_step=record,
                keep_graph=False,
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
