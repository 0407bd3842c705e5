"""Hand-written forward- and reverse-mode derivatives of T task-stacked MLPs (Pearlmutter's
R-operator), for the Fisher-vector products of MAML-TRPO (:mod:`mamlkit.rl.fisher_rop`).

The MLP of layers W̃_l = [W_l, b_l] ``[T, out, in + 1]`` (weights with the bias as a last
column): z_l = x̃_{l−1} W̃_lᵀ with x̃ = [x, 1], x_l = σ(z_l) for the hidden layers, the
output z_L (the policy's mean). A :class:`Forward` keeps one pass's inputs x̃_{l−1} and
σ'(z_l) (ReLU: where z_l ≤ 0), σ''(z_l); then

- :func:`jvp`: the tangent R z_L of a direction Ṽ_l = [V_l, c_l] of the layers,
- :func:`vjp`: the gradients of ⟨g, z_L⟩ in every W̃_l (the bias's the last column),
- :class:`GaussianSurrogateHessian`: the exact Hessian-vector product of the policy-gradient
  surrogate Σ_t c_t (−log N(a_t; z_L(o_t), diag e^{2s})) in (W̃, s): a forward tangent pass
  and a tangent backward pass over the cached activations and backward signals,

each one or two batched matmuls per layer (the bias folded in by the column of ones), no
autograd graph, and the hidden layers' tangents written in place into buffers allocated once
(:class:`Workspace`). A direction's Ṽ_l is task-stacked ``[T, out, in + 1]`` or shared by
all tasks ``[out, in + 1]`` (one large matmul over all tasks' rows).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ACTIVATIONS",
    "Forward",
    "GaussianSurrogateHessian",
    "Workspace",
    "forward",
    "jvp",
    "vjp",
]

ACTIVATIONS = ("relu", "tanh")


def _with_ones(x: Tensor) -> Tensor:
    return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1)


def _times_t(x: Tensor, v: Tensor, out: Tensor | None = None) -> Tensor:
    """x ``[T, M, K]`` times vᵀ (v ``[T, N, K]`` per task or ``[N, K]`` shared)."""
    if v.dim() == 2:
        rows = x.reshape(-1, x.shape[-1])
        if out is None:
            return (rows @ v.t()).view(*x.shape[:-1], v.shape[0])
        torch.mm(rows, v.t(), out=out.view(-1, v.shape[0]))
        return out
    return torch.bmm(x, v.transpose(1, 2), out=out)


def _gram(dz: Tensor, x: Tensor, sum_tasks: bool) -> Tensor:
    """dzᵀ x per task ``[T, out, K]``, or summed over the tasks ``[out, K]``."""
    if sum_tasks:
        return dz.reshape(-1, dz.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
    return torch.bmm(dz.transpose(1, 2), x)


@dataclass
class Forward:
    """One forward pass of T task MLPs: ``layers[l]`` = W̃_l, ``inputs[l]`` = x̃_{l−1}
    (layer l's input with the column of ones), ``d1[l]``/``d2[l]`` = σ'(z_l)/σ''(z_l) of
    the hidden layers (ReLU: d1 the 0/1 mask of z_l > 0, d2 empty), ``out`` = z_L."""

    activation: str
    layers: list[Tensor]
    inputs: list[Tensor]
    d1: list[Tensor]
    d2: list[Tensor]
    out: Tensor

    def weight(self, layer: int) -> Tensor:
        """W_l, without the bias column."""
        return self.layers[layer][..., :-1]

    def tasks(self, rows: slice) -> Forward:
        """The same pass for the tasks ``rows`` only (views, no copies)."""
        return Forward(
            self.activation,
            [w[rows] for w in self.layers],
            [x[rows] for x in self.inputs],
            [d[rows] for d in self.d1],
            [d[rows] for d in self.d2],
            self.out[rows],
        )

    def derivative_(self, layer: int, t: Tensor) -> Tensor:
        """t ⊙ σ'(z_l), in place (for ReLU a multiplication by the 0/1 mask, many times
        faster than ``masked_fill_`` on CPU)."""
        return t.mul_(self.d1[layer])


def forward(layers: list[Tensor], x: Tensor, activation: str) -> Forward:
    """The MLP's forward pass on ``x [T, M, in]`` with what its derivatives need."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    inputs: list[Tensor] = []
    d1: list[Tensor] = []
    d2: list[Tensor] = []
    h = _with_ones(x)
    for layer, w in enumerate(layers):
        inputs.append(h)
        z = torch.bmm(h, w.transpose(1, 2))
        if layer == len(layers) - 1:
            return Forward(activation, list(layers), inputs, d1, d2, z)
        # the next input x̃ = [σ(z), 1], written in place (no concatenation)
        h = z.new_ones(*z.shape[:-1], z.shape[-1] + 1)
        if activation == "relu":
            d1.append(torch.gt(z, 0, out=torch.empty_like(z)))
            torch.mul(z, d1[-1], out=h[..., :-1])
        else:
            x_next = torch.tanh(z)
            h[..., :-1] = x_next
            d1.append(1 - x_next * x_next)
            d2.append(-2 * x_next * d1[-1])
    raise ValueError("an MLP needs at least one layer")


class Workspace:
    """Buffers for the hidden layers' tangents of one :class:`Forward` (``z[l]``: R z_l,
    ``x(l)``: R x_l, the same buffer for ReLU), reused by every product."""

    def __init__(self, fw: Forward):
        self.key = Workspace.key_of(fw)
        shapes = [inp.shape[:-1] + (w.shape[1],) for inp, w in zip(fw.inputs, fw.layers)][:-1]
        self.z = [fw.out.new_empty(s) for s in shapes]
        self._x = self.z if fw.activation == "relu" else [fw.out.new_empty(s) for s in shapes]

    def x(self, layer: int) -> Tensor:
        return self._x[layer]

    @staticmethod
    def key_of(fw: Forward) -> tuple:
        """The buffers' shapes, dtype and activation: passes with the same key can share
        one workspace (used one product at a time)."""
        return (fw.activation, fw.out.dtype, *(tuple(x.shape) for x in fw.inputs))


def jvp(fw: Forward, v: list[Tensor], ws: Workspace) -> Tensor:
    """The output's tangent R z_L ``[T, M, out]`` in the direction Ṽ; the hidden layers' R
    z_l and R x_l are left in ``ws``."""
    rx: Tensor | None = None
    last = len(fw.layers) - 1
    for layer in range(last + 1):
        rz = _times_t(fw.inputs[layer], v[layer], None if layer == last else ws.z[layer])
        if rx is not None:
            rz.baddbmm_(rx, fw.weight(layer).transpose(1, 2))
        if layer == last:
            return rz
        if fw.activation == "relu":
            rx = fw.derivative_(layer, rz)
        else:
            rx = torch.mul(rz, fw.d1[layer], out=ws.x(layer))
    raise ValueError("an MLP needs at least one layer")


def vjp(fw: Forward, grad_out: Tensor, ws: Workspace, sum_tasks: bool = False) -> list[Tensor]:
    """Gradients of ⟨``grad_out``, z_L⟩ in every W̃_l (task-stacked, or summed over the
    tasks with ``sum_tasks``); the backward signals pass through ``ws``."""
    grads: list[Tensor] = [grad_out] * len(fw.layers)
    dz = grad_out
    for layer in reversed(range(len(fw.layers))):
        grads[layer] = _gram(dz, fw.inputs[layer], sum_tasks)
        if layer:
            target = ws.x(layer - 1)
            torch.bmm(dz, fw.weight(layer), out=target)
            dz = fw.derivative_(layer - 1, target)
    return grads


class GaussianSurrogateHessian:
    """The support loss L = Σ_t c_t (½‖(a_t − μ_t)e^{−s}‖² + Σ s) of T tasks (μ_t = the MLP
    on o_t, s the task's log-std; task t's VPG surrogate up to a constant, c_t = mask·Â/n)
    at one point: its gradient (:attr:`grads`: per W̃_l, and s) and exact Hessian-vector
    products (:meth:`hvp`).

    ``layers`` W̃_l ``[T, out, in + 1]``, ``obs [T, M, O]``, ``actions [T, M, A]``,
    ``weight [T, M]`` = c_t, ``log_std [T, A]``.
    """

    def __init__(
        self,
        layers: list[Tensor],
        log_std: Tensor,
        obs: Tensor,
        actions: Tensor,
        weight: Tensor,
        activation: str,
    ):
        self.fw = fw = forward(layers, obs, activation)
        self._ws: Workspace | None = None  # allocated by the first product
        weight = weight.unsqueeze(-1)  # [T, M, 1]
        self.w_inv_var = weight * torch.exp(-2 * log_std).unsqueeze(1)  # [T, M, A]
        diff = fw.out - actions  # μ − a
        self.ce_diff = self.w_inv_var * diff  # ∂L/∂μ
        # ∂L/∂s = Σ_t c_t (1 − (a−μ)² e^{−2s}); its s-derivative 2 Σ_t c_t (a−μ)² e^{−2s}
        self.q = (self.ce_diff * diff).sum(1)  # [T, A]
        # backward signals ∂L/∂z_l (and for tanh ∂L/∂x_l ⊙ σ''(z_l)), kept
        self.dz: list[Tensor] = [self.ce_diff] * len(layers)
        self.dx_d2: list[Tensor] = []
        grads: list[Tensor] = [self.ce_diff] * len(layers)
        dz = self.ce_diff
        for layer in reversed(range(len(layers))):
            self.dz[layer] = dz
            grads[layer] = _gram(dz, fw.inputs[layer], False)
            if layer:
                dx = torch.bmm(dz, fw.weight(layer))
                if activation == "tanh":
                    self.dx_d2.insert(0, dx * fw.d2[layer - 1])
                dz = fw.derivative_(layer - 1, dx)
        self.grads = (grads, weight.sum(1) - self.q)

    def tasks(self, rows: slice) -> GaussianSurrogateHessian:
        """The same loss for the tasks ``rows`` only (views of the cached pieces)."""
        part = copy.copy(self)
        part.fw = self.fw.tasks(rows)
        part._ws = None
        part.w_inv_var, part.ce_diff, part.q = (
            self.w_inv_var[rows],
            self.ce_diff[rows],
            self.q[rows],
        )
        part.dz = [d[rows] for d in self.dz]
        part.dx_d2 = [d[rows] for d in self.dx_d2]
        part.grads = ([g[rows] for g in self.grads[0]], self.grads[1][rows])
        return part

    def hvp(
        self, v: list[Tensor], v_s: Tensor, ws: Workspace | None = None
    ) -> tuple[list[Tensor], Tensor]:
        """∇²L · (Ṽ, v_s), task-stacked; Ṽ_l ``[T, out, in + 1]`` or ``[out, in + 1]``
        (shared), v_s ``[T, A]`` or ``[A]``. ``ws``: the tangents' buffers (by default
        this loss's own, allocated by the first product)."""
        fw = self.fw
        if ws is None:
            if self._ws is None:
                self._ws = Workspace(fw)
            ws = self._ws
        r_mean = jvp(fw, v, ws)
        vs = v_s.unsqueeze(-2)  # [T, 1, A] or [1, A]
        # R(∂L/∂μ) = c e^{−2s} (Rμ − 2 (μ − a) v_s)
        r_dz = self.w_inv_var * r_mean - 2 * self.ce_diff * vs
        # R(∂L/∂s) = −2 Σ_t ∂L/∂μ · Rμ + 2 v_s Σ_t c_t (a−μ)² e^{−2s}
        r_gs = -2 * (self.ce_diff * r_mean).sum(1) + 2 * self.q * v_s
        last = len(fw.layers) - 1
        r_g: list[Tensor] = [r_dz] * (last + 1)
        for layer in reversed(range(last + 1)):
            g = _gram(r_dz, fw.inputs[layer], False)
            r_g[layer] = g
            if not layer:
                break
            dz, target = self.dz[layer], ws.x(layer - 1)
            g[..., :-1] += torch.bmm(dz.transpose(1, 2), target)  # dzᵀ R x_{l−1}
            v_w = v[layer][..., :-1]
            if layer == last:  # thin: [R dz, dz] [W; V] in one matmul
                v_w = v_w.expand_as(fw.weight(layer))
                torch.bmm(
                    torch.cat([r_dz, dz], -1), torch.cat([fw.weight(layer), v_w], 1), out=target
                )
            else:
                torch.bmm(r_dz, fw.weight(layer), out=target)
                if v_w.dim() == 2:
                    target.view(-1, v_w.shape[1]).addmm_(dz.reshape(-1, dz.shape[-1]), v_w)
                else:
                    target.baddbmm_(dz, v_w)
            r_dz = fw.derivative_(layer - 1, target)
            if fw.activation == "tanh":
                r_dz.addcmul_(self.dx_d2[layer - 1], ws.z[layer - 1])
        return r_g, r_gs
