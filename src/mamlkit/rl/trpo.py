"""Trust-region policy optimisation's step (Schulman et al. 2015) on any differentiable
loss and KL of a list of parameters: conjugate gradient on Fisher-vector products (the
Hessian of the KL at the old policy, :mod:`mamlkit.rl.fisher`), the step scaled to the KL
bound, and a backtracking line search."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mamlkit.rl.fisher import FisherVector, flat, hessian_vector_product


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    iterations: int = 10,
    tol: float = 1e-10,
    with_product: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Approximately solve ``A x = b`` for a symmetric positive definite A given as a
    matrix-vector product (rllab's ``krylov.cg``: ``iterations`` steps from x = 0).

    ``with_product``: return ``(x, A x)``, A x = Σ_k α_k A p_k accumulated from the
    products conjugate gradient computed anyway (equal to ``matvec(x)`` up to rounding,
    for a linear ``matvec``, without another product)."""
    x = torch.zeros_like(b)
    ax = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iterations):
        ap = matvec(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        ax = ax + alpha * ap
        r = r - alpha * ap
        rr_new = r @ r
        if rr_new < tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return (x, ax) if with_product else x


@dataclass
class TRPOStep:
    """What one TRPO update did: losses and KL before/after, and the accepted fraction of
    the full step (0 when the line search rejected every candidate)."""

    loss_before: float
    loss_after: float
    kl_after: float
    step_fraction: float
    expected_improvement: float


def trpo_step(
    params: Sequence[Tensor],
    loss: Tensor,
    kl: Tensor | None,
    evaluate: Callable[[], tuple[Tensor, Tensor]],
    max_kl: float = 0.01,
    cg_iterations: int = 10,
    cg_damping: float = 1e-5,
    backtrack_ratio: float = 0.8,
    max_backtracks: int = 15,
    fisher_vector: FisherVector | None = None,
    mean_over_ranks: Callable[[list[Tensor]], None] | None = None,
    reuse_products: bool = False,
    gradient: Tensor | None = None,
) -> TRPOStep:
    """Update ``params`` (leaf tensors, in place) by one TRPO step.

    ``loss`` is the surrogate loss built from ``params`` with its graph. The Fisher-vector
    product F v is ``fisher_vector(v)`` when given (for MAML:
    :func:`~mamlkit.rl.fisher.gauss_newton_vector_product`), otherwise the Hessian of
    ``kl``, the mean KL from the old policy built from ``params`` with its full graph;
    conjugate gradient solves (F + ``cg_damping``·I) x = −∇loss. ``evaluate()`` recomputes
    loss and KL at the current values of ``params`` (no graph needed); a candidate is
    accepted when the loss decreased and the KL is within ``max_kl``, otherwise ``params``
    are restored.

    ``mean_over_ranks`` (data-parallel, each process holding an equal share of the tasks
    whose mean ``loss`` and KL are): averages tensors in place over the processes. The
    gradient, every Fisher-vector product and every loss and KL are averaged before use,
    so all processes take the same step and the same line-search decisions.

    ``reuse_products``: the step length's (F + λI)·x from conjugate gradient's own products
    (:func:`conjugate_gradient`'s ``with_product``: ``cg_iterations`` products instead of
    one more; equal up to float rounding). ``gradient``: the flat gradient of ``loss`` in
    ``params``, where the caller has it (``loss`` then needs no graph).
    """
    params = list(params)
    if fisher_vector is None and kl is None:
        raise ValueError("trpo_step needs kl or fisher_vector")
    fvp = fisher_vector or hessian_vector_product(kl, params)
    if gradient is None:
        gradient = flat(torch.autograd.grad(loss, params, retain_graph=True))

    def mean(*values: Tensor) -> list[Tensor]:
        values = [v.detach().clone() for v in values]
        if mean_over_ranks is not None:
            mean_over_ranks(values)
        return values

    def damped(v: Tensor) -> Tensor:
        return mean(fvp(v))[0] + cg_damping * v

    g = mean(gradient)[0]
    if reuse_products:
        direction, f_direction = conjugate_gradient(damped, -g, cg_iterations, with_product=True)
    else:
        direction = conjugate_gradient(damped, -g, cg_iterations)
        f_direction = damped(direction)
    shs = 0.5 * (direction @ f_direction)
    full_step = direction * torch.sqrt(max_kl / shs.clamp_min(1e-30))
    expected = float(-(g @ full_step))
    old = [p.detach().clone() for p in params]
    loss_before = float(mean(loss)[0])
    sizes = [p.numel() for p in params]
    with torch.no_grad():
        for k in range(max_backtracks):
            fraction = backtrack_ratio**k
            for p, p0, d in zip(params, old, full_step.split(sizes), strict=True):
                p.copy_(p0 + fraction * d.view_as(p))
            with torch.enable_grad():
                new_loss, new_kl = evaluate()
            both = mean(torch.stack([new_loss.double(), new_kl.double()]))[0]
            new_loss, new_kl = both.tolist()
            if new_loss < loss_before and new_kl <= max_kl:
                return TRPOStep(loss_before, new_loss, new_kl, fraction, expected)
        for p, p0 in zip(params, old, strict=True):
            p.copy_(p0)
    return TRPOStep(loss_before, loss_before, 0.0, 0.0, expected)
