"""Fisher-vector products for TRPO's conjugate gradient: v ↦ F v on flat vectors over a
list of parameters θ, where F is the Hessian of the mean KL from the old policy at θ_old.

Two constructions of the same matrix. Write the KL as K(z(θ)) for any intermediate z the
KL depends on θ through (for MAML: the adapted parameters φ(θ), or the adapted policies'
action distributions on the query observations). Then

    ∇²_θ K = Jᵀ ∇²_z K J + Σ_k (∂K/∂z_k) ∇²_θ z_k,     J = ∂z/∂θ.

At θ_old, z is the old policy's, which minimises K (K = 0 there), so ∂K/∂z = 0 and the
second term vanishes: the Hessian is exactly the Gauss-Newton matrix Jᵀ F_z J, F_z = ∇²_z K.
:func:`hessian_vector_product` differentiates the KL twice through z(θ) (with a
second-order inner step: third derivatives of the support loss);
:func:`gauss_newton_vector_product` needs only J v, F_z w and Jᵀ w (first and second
derivatives of the support loss, second derivatives of K in z).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

FisherVector = Callable[[Tensor], Tensor]


def flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def hessian_vector_product(kl: Tensor, params: Sequence[Tensor]) -> FisherVector:
    """``v ↦ ∇²_θ kl · v`` by double backward through ``kl``'s whole graph to ``params``
    (valid at any θ; the Fisher at θ_old)."""
    params = list(params)
    grad_kl = flat(torch.autograd.grad(kl, params, create_graph=True))

    def product(v: Tensor) -> Tensor:
        return flat(torch.autograd.grad(grad_kl @ v, params, retain_graph=True))

    return product


def gauss_newton_vector_product(
    params: Sequence[Tensor],
    z: Mapping[str, Tensor],
    kl_of_z: Callable[[dict[str, Tensor]], Tensor],
) -> FisherVector:
    """``v ↦ Jᵀ F_z J v``, J = ∂z/∂θ, F_z = ∇²_z kl_of_z at the current z: the Hessian of
    ``kl_of_z(z(θ))`` with respect to ``params`` θ wherever ∂kl/∂z = 0 (at θ_old).

    ``z`` holds z(θ) with its graph to ``params`` (kept: every product reuses it);
    ``kl_of_z`` maps tensors like ``z`` to the scalar KL. J v is the double-backward trick,
    J v = ∂/∂u ⟨Jᵀu, v⟩ (Jᵀu is linear in u, so u = 0 serves), F_z w a Hessian-vector
    product with z as leaves, Jᵀ w one backward through z's graph.
    """
    params, names = list(params), list(z)
    outputs = [z[n] for n in names]
    # the graph of Jᵀu, built once; differentiating it in u touches no third derivative
    u = [torch.zeros_like(t, requires_grad=True) for t in outputs]
    jt_u = flat(torch.autograd.grad(outputs, params, u, create_graph=True))
    leaves = [t.detach().requires_grad_() for t in outputs]
    kl = kl_of_z(dict(zip(names, leaves, strict=True)))
    grad_kl = flat(torch.autograd.grad(kl, leaves, create_graph=True))

    def product(v: Tensor) -> Tensor:
        jv = flat(torch.autograd.grad(jt_u @ v, u, retain_graph=True))
        fjv = torch.autograd.grad(grad_kl @ jv, leaves, retain_graph=True)
        return flat(torch.autograd.grad(outputs, params, fjv, retain_graph=True))

    return product
