"""A network adapted to each task by gradient steps on its support set (MAML and its
family, the pretrained baselines): adaptation, prediction and test-time predictions."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from mamlkit.algorithms.base import MetaLearner, check_task_batch
from mamlkit.errors import ConfigError
from mamlkit.functional import (
    FixedStepSize,
    InnerUpdate,
    LossFn,
    Params,
    Selection,
    adaptable_params,
    impl_problem,
    inner_loop,
    select,
    stack_params,
    supervised_support_loss,
    task_forward,
)


def check_impl(model: nn.Module, impl: str) -> nn.Module:
    """``model``, after refusing an ``algorithm.impl`` that cannot run it as a config error
    (``batched`` for a model without its own kernel, ``vmap`` for one vmap cannot batch),
    judged as the learner will run it: normalising with batch statistics."""
    _use_batch_statistics(model)
    problem = impl_problem(model, impl)
    if problem is not None:
        raise ConfigError(f"config key 'algorithm.impl': {problem}")
    return model


class GradientLearner(MetaLearner):
    """A network adapted to each task by gradient steps on its support set: what MAML and
    the pretrained baseline share (adaptation, prediction, test-time predictions), apart
    from how θ is trained (:meth:`meta_forward`).

    Args:
        model: any ``nn.Module``; BatchNorm running statistics are not used (adaptation
            normalises with the batch's own statistics), so tracking modules are switched
            to batch statistics.
        loss_fn: per-task loss ``loss_fn(pred, target) -> scalar`` (e.g. ``F.mse_loss``).
        inner_lr: α, one value or one per inner step.
        inner_steps: adaptation steps by default (MAML: in meta-training).
        first_order: adapt without the second-order graph.
        impl: how tasks run through the model: ``auto``, ``batched``, ``vmap`` or ``loop``
            (all compute the same numbers; tests pin them to a float64 reference).
        eval_inner_lr: α at test time (default: the training rule, learned ones included).
        adapt_only: which parameters adaptation changes: a name prefix, a list of prefixes
            or a predicate on parameter names (default: all). The others are still
            meta-learned unless frozen (``requires_grad=False``). Its old name ``adapt=``
            still works, with a ``DeprecationWarning``.
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
        adapt_only: str | Sequence[str] | Selection | None = None,
        **deprecated: str | Sequence[str] | Selection | None,
    ):
        super().__init__()
        adapt_only = _renamed_adapt(adapt_only, deprecated)
        if inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
        _use_batch_statistics(model)
        self.model = model
        self.loss_fn = loss_fn
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.eval_inner_lr = eval_inner_lr
        #: the selection of parameters adaptation changes (a predicate on their names)
        self.adapt_only: Selection = select(adapt_only)
        if not adaptable_params(model, self.adapt_only):
            raise ValueError(
                f"adapt_only={adapt_only!r} selects no trainable parameter of the model"
            )
        self._forward, self._impl = task_forward(model, impl, self.adapt_only)
        self.update = self.make_update()

    @property
    def adapted(self) -> Selection:
        """Deprecated: the old name of :attr:`adapt_only`."""
        warnings.warn(
            "GradientLearner.adapted is deprecated; use .adapt_only",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.adapt_only

    @property
    def impl(self) -> str:
        """How the tasks run through the model (``batched``, ``vmap`` or ``loop``): what
        ``impl="auto"`` chose, updated if vmap failed on the first call and it fell back."""
        return getattr(self._forward, "impl", self._impl)

    def make_update(self) -> InnerUpdate:
        """The inner update rule (a module: its parameters are meta-learned with θ)."""
        return FixedStepSize(self.inner_lr)

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
        theta = adaptable_params(self.model, self.adapt_only) if params is None else params
        update = self.update if lr is None else self.update.with_step_sizes(lr)
        first_order = self.first_order if first_order is None else first_order

        def steps_from(theta, x, y, first_order, keep_graph):
            loss = supervised_support_loss(self._forward, x, y, self.loss_fn)
            phi = stack_params(theta, x.shape[0])
            return inner_loop(phi, loss, update, steps, first_order, on_step, keep_graph)

        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            return steps_from(theta, support_x, support_y, first_order, keep_graph)
        # under no_grad / inference_mode: test-time steps, first order, φ detached
        with torch.inference_mode(False), torch.enable_grad():
            # inference tensors cannot enter an autograd graph: ordinary copies can
            theta = {n: p.detach().clone().requires_grad_() for n, p in theta.items()}
            phi = steps_from(theta, support_x.clone(), support_y.clone(), True, False)
        return {n: p.detach() for n, p in phi.items()}

    def adapt_task(
        self, support_x: Tensor, support_y: Tensor, steps: int | None = None, **kwargs
    ) -> Params:
        """:meth:`adapt` for ONE task without the task axis: ``support_x [N, ...]`` ->
        adapted parameters ``{name: tensor}`` shaped like the model's own, ready for
        ``torch.func.functional_call(learner.model, phi, (x,))``.

        Examples:
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

    def query_predictions(self, support_x, support_y, query_x, steps, lr=None, reduce=None):
        # Test time: the same update rule on detached θ, without the second-order graph.
        theta = {
            n: p.detach().requires_grad_()
            for n, p in adaptable_params(self.model, self.adapt_only).items()
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


def _renamed_adapt(
    adapt_only: str | Sequence[str] | Selection | None,
    deprecated: dict[str, str | Sequence[str] | Selection | None],
) -> str | Sequence[str] | Selection | None:
    """``adapt_only``, or the value of its old name ``adapt=`` (with a DeprecationWarning);
    any other unknown keyword is a TypeError as Python raises it."""
    unknown = sorted(set(deprecated) - {"adapt"})
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    if "adapt" not in deprecated:
        return adapt_only
    if adapt_only is not None:
        raise TypeError("pass adapt_only= only (adapt= is its deprecated old name)")
    # point the warning at the first caller outside mamlkit's algorithms (the user's line)
    frame, level = sys._getframe(0), 1
    while frame is not None and Path(frame.f_code.co_filename).parent == Path(__file__).parent:
        frame, level = frame.f_back, level + 1
    warnings.warn(
        "the keyword adapt= is deprecated; use adapt_only= (the same selection)",
        DeprecationWarning,
        stacklevel=level,
    )
    return deprecated["adapt"]


def _use_batch_statistics(model: nn.Module) -> None:
    """Make BatchNorm layers normalise with batch statistics and keep no running stats
    (MAML's convention; running-stat updates are also in-place writes vmap forbids)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
