"""MAML's inner loop as a pure function of a parameter dict, for T tasks at once.

The parameters of T tasks are one dict whose tensors have a leading task axis
(``θ.expand(T, ...)`` at the start). Every task's loss depends only on its own slice, so
the gradient of ``Σᵢ Lᵢ(φᵢ)`` with respect to the stacked tensor holds each task's own
gradient ``∇Lᵢ(φᵢ)`` in slice i: one ``autograd.grad`` call adapts all tasks. Whether the
forward pass runs the tasks through ``torch.func.vmap``, a model's own batched kernel, or a
Python loop is a separate choice (:func:`task_forward`); differentiation is always ordinary
autograd outside any transform, which keeps second-order gradients exact even through
affine BatchNorm (``vmap`` over ``torch.func.grad`` is not, see docs/design.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

Params = dict[str, Tensor]
TaskForward = Callable[[Params, Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

IMPLS = ("auto", "batched", "vmap", "loop")


def adaptable_params(model: nn.Module) -> Params:
    """The parameters the inner loop adapts: all that require grad."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def stack_params(params: Mapping[str, Tensor], tasks: int) -> Params:
    """θ -> θ with a leading task axis of size T (a view; its backward sums over tasks)."""
    return {name: p.unsqueeze(0).expand(tasks, *p.shape) for name, p in params.items()}


def _has_running_stats(model: nn.Module) -> bool:
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for m in model.modules()
    )


def task_forward(model: nn.Module, impl: str = "auto") -> tuple[TaskForward, str]:
    """A function ``(params [T, ...], x [T, N, ...]) -> out [T, N, ...]`` running each task
    with its own parameters, and the name of the implementation chosen.

    ``batched``: the model's own ``batched_forward`` (fastest where a model has one);
    ``vmap``: ``torch.func.vmap`` over ``functional_call`` (any module);
    ``loop``: one ``functional_call`` per task (any module; the reference).
    ``auto`` picks ``batched`` if the model has it, else ``vmap``, else ``loop`` for models
    whose BatchNorm tracks running stats (an in-place update that vmap refuses).
    Which parameters are frozen is read when the function is made: make it again after
    changing ``requires_grad``.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        if hasattr(model, "batched_forward"):
            impl = "batched"
        else:
            impl = "loop" if _has_running_stats(model) else "vmap"

    # Buffers and frozen parameters are shared by all tasks. Most models have none; skip
    # the module-tree walk per call then (it costs ~10% of a sine meta-iteration).
    has_fixed = any(True for _ in model.buffers()) or any(
        not p.requires_grad for p in model.parameters()
    )

    def fixed() -> dict[str, Tensor]:
        if not has_fixed:
            return {}
        # read at call time, so that model.to(device) is seen
        out = dict(model.named_buffers())
        out.update({n: p for n, p in model.named_parameters() if not p.requires_grad})
        return out

    if impl == "batched":
        if not hasattr(model, "batched_forward"):
            raise ValueError(f"{type(model).__name__} has no batched_forward; use vmap or loop")

        def forward(params: Params, x: Tensor) -> Tensor:
            # batched kernels index every tensor by task: shared ones get the task axis too
            shared = {n: v.expand(x.shape[0], *v.shape) for n, v in fixed().items()}
            return model.batched_forward({**shared, **params}, x)

    elif impl == "vmap":

        def forward(params: Params, x: Tensor) -> Tensor:
            shared = fixed()
            return vmap(lambda p, xi: functional_call(model, {**shared, **p}, (xi,)))(params, x)

    else:

        def forward(params: Params, x: Tensor) -> Tensor:
            shared = fixed()
            return torch.stack(
                [
                    functional_call(
                        model, {**shared, **{n: p[t] for n, p in params.items()}}, (xt,)
                    )
                    for t, xt in enumerate(x)
                ]
            )

    return forward, impl


def task_mean_loss(loss_fn: LossFn, pred: Tensor, target: Tensor) -> Tensor:
    """``mean over tasks i of loss_fn(pred[i], target[i])`` for any per-task loss.

    MSE and cross-entropy with mean reduction take one fused call (all tasks hold equally
    many examples, so the mean of per-task means is the global mean); any other callable
    is vmapped over the task axis.
    """
    if loss_fn is F.mse_loss or (isinstance(loss_fn, nn.MSELoss) and loss_fn.reduction == "mean"):
        return F.mse_loss(pred, target)
    if loss_fn is F.cross_entropy or (
        type(loss_fn) is nn.CrossEntropyLoss
        and loss_fn.reduction == "mean"
        and loss_fn.weight is None
        and loss_fn.label_smoothing == 0.0
        and target.dtype == torch.long
    ):
        return F.cross_entropy(pred.flatten(0, 1), target.flatten())
    return vmap(loss_fn)(pred, target).mean()


def inner_loop(
    forward: TaskForward,
    params: Params,
    x: Tensor,
    y: Tensor,
    loss_fn: LossFn,
    lr: float | Sequence[float],
    steps: int,
    first_order: bool = False,
    on_step: Callable[[int, Params], None] | None = None,
    graph_to_start: bool = True,
) -> Params:
    """Adapt T tasks' parameters by ``steps`` steps of gradient descent on their support sets.

    Finn et al. (2017), Eq. 1, per task i and step s:  φᵢ ← φᵢ − α_s ∇_φᵢ L(φᵢ, Dᵢᵗʳ).
    Second order by default: the gradient is itself differentiable (``create_graph``), so
    an outer loss differentiated through φᵢ includes the Hessian terms. ``first_order``
    treats ∇L as a constant, which is exactly first-order MAML. ``lr`` is one α or one per
    step (the last one repeats when there are more steps than values, e.g. test-time
    adaptation past the training horizon). ``on_step(s, φ)`` sees the parameters after
    every step (``s = 0`` before any). ``graph_to_start=False`` (test-time adaptation, where
    nothing differentiates φ with respect to θ) starts every step from detached parameters,
    so no autograd history accumulates and memory does not grow with ``steps``.
    """
    lrs = [float(lr)] if isinstance(lr, (int, float)) else [float(a) for a in lr]
    if not lrs:
        raise ValueError("inner learning rate sequence is empty")
    lrs += [lrs[-1]] * max(0, steps - len(lrs))
    tasks = x.shape[0]
    if on_step is not None:
        on_step(0, params)
    for s in range(steps):
        # Σᵢ Lᵢ(φᵢ): its gradient w.r.t. the stacked φ is ∇Lᵢ(φᵢ) in slice i.
        support_loss = task_mean_loss(loss_fn, forward(params, x), y) * tasks
        grads = torch.autograd.grad(
            support_loss,
            tuple(params.values()),
            create_graph=not first_order,
            allow_unused=True,
        )
        # φ − α∇ as one op (p + (−α)·g): its backward is a single scaling of the incoming
        # gradient, where ``p - lr * g`` costs a negation and a multiplication per weight
        params = {
            name: p if g is None else torch.add(p, g, alpha=-lrs[s])
            for (name, p), g in zip(params.items(), grads, strict=True)
        }
        if not graph_to_start:
            params = {name: p.detach().requires_grad_() for name, p in params.items()}
        if on_step is not None:
            on_step(s + 1, params)
    return params
