"""MAML-TRPO's Gauss-Newton Fisher-vector products Jᵀ F_z J on pieces built once per
meta-iteration (:func:`inner_update_gauss_newton`): the same matrix as
:func:`~mamlkit.rl.fisher.gauss_newton_vector_product` through the inner update, in fewer
operations per product.

With φ₀ = θ stacked over the T tasks and φ_{s+1} = φ_s − α_s ∇L(φ_s) on the support
trajectories (``first_order``: ∇L a constant), z = the adapted policies' action
distributions on the query observations,

    J = J_q A_{k−1} ⋯ A₀ S,    A_s = I − α_s H_s,    H_s = ∇²L(φ_s) (block diagonal per task),

S the stacking of θ (Sᵀ sums over tasks) and J_q = ∂z/∂φ_k. Each A_s is symmetric, so
Jᵀ w = Sᵀ A₀ ⋯ A_{k−1} J_qᵀ w. The pieces: φ_s as leaves with ∇L(φ_s) and its graph (H_s u
is one backward through it), and the query distributions of the leaf φ_k with the graph of
J_qᵀ u (J_q a by the double-backward trick on that graph alone). The graph-through-the-
inner-update construction instead differentiates the whole chain at every product, and
differentiates it twice for J v; here no product goes back through the forward passes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mamlkit.functional import Params
from mamlkit.rl.fisher import FisherVector, flat

__all__ = ["inner_update_gauss_newton"]


def _leaves(params: Params) -> Params:
    return {n: p.detach().requires_grad_() for n, p in params.items()}


def inner_update_gauss_newton(
    theta: Params,
    tasks: int,
    support_loss: Callable[[Params], Tensor] | None,
    step_sizes: list[float],
    first_order: bool,
    distribution: Callable[[Params], tuple[Tensor, Tensor]],
    kl_of_z: Callable[[dict[str, Tensor]], Tensor],
) -> FisherVector:
    """``v ↦ Jᵀ F_z J v`` over the flat parameters ``theta`` (unstacked, in their order).

    ``support_loss`` maps task-stacked parameters to Σᵢ Lᵢ(φᵢ) (gradient in slice i is
    task i's), ``step_sizes`` are the inner steps' α (one per step: len = number of inner
    steps), ``distribution`` maps task-stacked parameters to the query action distributions
    (mean, log-std), ``kl_of_z`` maps ``{"mean", "log_std"}`` to the mean KL from the old
    policies (its Hessian F_z is taken at the adapted policies' distributions).
    """
    names = list(theta)
    stacked = {n: p.detach().unsqueeze(0).expand(tasks, *p.shape) for n, p in theta.items()}
    phis: list[Params] = []  # φ_s as leaves, for the steps whose Hessian matters
    grads: list[tuple[Tensor, ...]] = []
    phi = _leaves(stacked)
    for alpha in step_sizes:
        g = torch.autograd.grad(
            support_loss(phi), tuple(phi.values()), create_graph=not first_order
        )
        phis.append(phi)
        grads.append(g)
        phi = _leaves(
            {n: torch.add(phi[n], gn, alpha=-alpha) for n, gn in zip(names, g, strict=True)}
        )
    mean, log_std = distribution(phi)
    outputs = [mean, log_std]
    u = [torch.zeros_like(t, requires_grad=True) for t in outputs]
    query_leaves = tuple(phi.values())
    jt_u = torch.autograd.grad(outputs, query_leaves, u, create_graph=True)
    z_leaves = [t.detach().requires_grad_() for t in outputs]
    kl = kl_of_z({"mean": z_leaves[0], "log_std": z_leaves[1]})
    grad_kl = flat(torch.autograd.grad(kl, z_leaves, create_graph=True))
    shapes = [p.shape for p in theta.values()]
    sizes = [p.numel() for p in theta.values()]

    def apply_a(s: int, w: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """A_s w = w − α_s H_s w (A_s = I for a first-order step)."""
        if first_order:
            return w
        hw = torch.autograd.grad(grads[s], tuple(phis[s].values()), w, retain_graph=True)
        return tuple(torch.add(wi, hi, alpha=-step_sizes[s]) for wi, hi in zip(w, hw, strict=True))

    def product(v: Tensor) -> Tensor:
        a = tuple(
            p.reshape(shape).unsqueeze(0).expand(tasks, *shape)
            for p, shape in zip(v.split(sizes), shapes, strict=True)
        )
        for s in range(len(step_sizes)):
            a = apply_a(s, a)
        jt_u_a = sum((j * ai).sum() for j, ai in zip(jt_u, a, strict=True))
        jv = flat(torch.autograd.grad(jt_u_a, u, retain_graph=True))
        fjv = torch.autograd.grad(grad_kl @ jv, z_leaves, retain_graph=True)
        w = torch.autograd.grad(outputs, query_leaves, fjv, retain_graph=True)
        for s in reversed(range(len(step_sizes))):
            w = apply_a(s, w)
        return flat([wi.sum(0) for wi in w])

    return product
