"""MAML-TRPO's Gauss-Newton Fisher-vector products Jᵀ F_z J by hand-written derivatives of
the Gaussian MLP policy (:mod:`mamlkit.rl.rop`): the matrix of
:func:`~mamlkit.rl.gauss_newton.inner_update_gauss_newton` (``algorithm.fisher:
gauss_newton``), equal to float rounding, with no autograd graph.

J = J_q A_{k−1} ⋯ A₀ S, A_s = I − α_s H_s (:mod:`mamlkit.rl.gauss_newton`). Built once per
meta-iteration: for every inner step s the support loss's cached forward pass and backward
signals at φ_s (H_s u is then a forward tangent pass and a tangent backward pass, exact:
Pearlmutter's R-operator), and at the adapted φ_k the query forward pass with the KL's
Hessian in the action distribution z = (mean, log-std) as three elementwise factors (for the
diagonal Gaussian KL: 1/σ² for the mean, 2(σ₀² + (μ − μ₀)²)/σ² for the log-std, the
cross term −2(μ − μ₀)/σ², each times the step's weight in the mean KL). A product is then
S v (shared by the tasks: one large matmul per layer), the A_s, J_q v, F_z, J_qᵀ, the A_s
backwards and Sᵀ (the task sum folded into the last matmuls where no A_s follows), one chunk
of tasks after the other (:data:`CHUNK_ROWS`) through one set of tangent buffers, which then
stay in the CPU's cache, the chunks' sums added at the end.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mamlkit.functional import Params
from mamlkit.rl.policy import MEAN, GaussianMLPPolicy, gaussian_log_prob
from mamlkit.rl.returns import OldPolicy, Trajectories, masked_task_mean
from mamlkit.rl.rop import GaussianSurrogateHessian, Workspace, forward, jvp, vjp

__all__ = ["CHUNK_ROWS", "RopGaussNewton", "policy_activation", "rop_gauss_newton"]

#: About how many time steps of support or query data one chunk of tasks holds in a
#: product on the CPU: the chunk's tangents (rows × hidden units) then stay in the CPU's
#: cache between the product's passes instead of going to memory and back.
CHUNK_ROWS = 8192

Direction = tuple[list[Tensor], Tensor]  # ([V_l, c_l] per layer, v_s)


def policy_activation(policy: GaussianMLPPolicy) -> str | None:
    """``relu`` where the hand-written derivatives cover the policy's mean network (Linear
    layers with ReLU between them, what :meth:`~mamlkit.models.mlp.MLP.batched_forward`
    computes), else None (the products then fall back to autograd). :mod:`mamlkit.rl.rop`
    also covers tanh networks, which this policy does not build."""
    for module in policy.mean.net:
        if not isinstance(module, (nn.Linear, nn.ReLU)):
            return None
    return "relu"


def _layer_names(policy: GaussianMLPPolicy) -> list[str]:
    return [f"{MEAN}net.{i}" for i, m in enumerate(policy.mean.net) if isinstance(m, nn.Linear)]


def _flat_rows(t: Tensor) -> Tensor:
    """``[T, N, H, X]`` -> ``[T, N·H, X]``."""
    return t.reshape(t.shape[0], -1, t.shape[-1])


def _minus(a: Direction, alpha: float, h: Direction) -> Direction:
    """a − α h, piece by piece (a shared or task-stacked, h task-stacked)."""
    return (
        [torch.add(x, y, alpha=-alpha) for x, y in zip(a[0], h[0], strict=True)],
        torch.add(a[1], h[1], alpha=-alpha),
    )


def rop_gauss_newton(
    policy: GaussianMLPPolicy,
    theta: Params,
    support: Trajectories | None,
    support_adv: Tensor | None,
    step_sizes: list[float],
    first_order: bool,
    query: Trajectories,
    old: OldPolicy,
    fisher_query: tuple[Trajectories, OldPolicy] | None = None,
    chunk_rows: int | None = None,
) -> RopGaussNewton | None:
    """``v ↦ Jᵀ F_z J v`` over the flat parameters ``theta`` (the policy's, in their order)
    for ``len(step_sizes)`` inner VPG steps on ``support`` (advantages ``support_adv``) and
    the mean KL from ``old`` on ``query``; None where the policy's network is not covered
    (:func:`policy_activation`). ``fisher_query``: other query trajectories and their old
    policies for the KL of the products (a subsample of ``query``'s,
    :mod:`mamlkit.rl.subsample`); the surrogate keeps ``query``. ``chunk_rows``: about how
    many support or query rows (time steps) one chunk of tasks holds, whose product is
    computed from S v to Sᵀ before the next chunk's (by default :data:`CHUNK_ROWS` on the
    CPU and all tasks at once on other devices, whose parallelism wants large operations)."""
    activation = policy_activation(policy)
    if activation is None:
        return None
    names = _layer_names(policy)
    index = {f"{n}.weight": ("w", i) for i, n in enumerate(names)}
    index.update({f"{n}.bias": ("b", i) for i, n in enumerate(names)})
    index["log_std"] = ("s", 0)
    if set(index) != set(theta):
        return None
    tasks = query.obs.shape[0]
    with torch.no_grad():
        layers = [
            torch.cat([theta[f"{n}.weight"], theta[f"{n}.bias"].unsqueeze(-1)], -1)
            .detach()
            .expand(tasks, -1, -1)
            for n in names
        ]
        log_std = theta["log_std"].detach().expand(tasks, -1)
        hessians: list[GaussianSurrogateHessian] = []
        if step_sizes:
            obs, actions = _flat_rows(support.obs), _flat_rows(support.actions)
            mask = support.mask
            weight = (support_adv * mask / mask.sum((1, 2), keepdim=True)).reshape(tasks, -1)
        for alpha in step_sizes:
            h = GaussianSurrogateHessian(layers, log_std, obs, actions, weight, activation)
            hessians.append(h)
            grads, g_s = h.grads
            layers = [torch.add(w, g, alpha=-alpha) for w, g in zip(layers, grads, strict=True)]
            log_std = torch.add(log_std, g_s, alpha=-alpha)
        pieces = _QueryPieces(layers, log_std, query, old, activation)
        # the products' pieces: the same (all data), or on a subsample of the trajectories
        kl_pieces = pieces
        if fisher_query is not None:
            kl_pieces = _QueryPieces(layers, log_std, *fisher_query, activation)
        fw, w = pieces.fw, pieces.w
    shapes = [p.shape for p in theta.values()]
    sizes = [p.numel() for p in theta.values()]
    order = [index[n] for n in theta]
    steps = [] if first_order else list(zip(step_sizes, hessians, strict=True))
    chunks = _chunks(tasks, pieces, kl_pieces, steps, chunk_rows)
    sum_in_vjp = not steps
    spaces: dict[tuple, Workspace] = {}

    def space(fw) -> Workspace:
        """The tangent buffers for a pass of this shape, shared by all chunks (one chunk's
        product at a time): the same few MB every time, warm in the cache."""
        key = Workspace.key_of(fw)
        if key not in spaces:
            spaces[key] = Workspace(fw)
        return spaces[key]

    def transpose(
        f_mean: Tensor, f_s: Tensor, q: _QueryPieces, hessian_steps: list
    ) -> tuple[list[Tensor], Tensor]:
        """Jᵀ (f_mean, f_s) of one chunk of tasks, summed over them: J_qᵀ on the query
        data ``q``, the A_s backwards, Sᵀ."""
        out: Direction = (vjp(q.fw, f_mean, space(q.fw), sum_tasks=sum_in_vjp), f_s)
        for alpha, h in reversed(hessian_steps):
            out = _minus(out, alpha, h.hvp(*out, space(h.fw)))
        grads = out[0] if sum_in_vjp else [g.sum(0) for g in out[0]]
        return grads, out[1].sum(0)

    def flat(total: list[tuple[list[Tensor], Tensor]]) -> Tensor:
        """The chunks' sums, added (in chunk order), as one flat vector in θ's order."""
        grads = [torch.stack(g).sum(0) for g in zip(*(t[0] for t in total), strict=True)]
        by_key = {("s", 0): torch.stack([t[1] for t in total]).sum(0)}
        by_key.update({("w", i): g[..., :-1] for i, g in enumerate(grads)})
        by_key.update({("b", i): g[..., -1] for i, g in enumerate(grads)})
        return torch.cat([by_key[key].reshape(-1) for key in order])

    def product(v: Tensor) -> Tensor:
        pieces = {key: p.view(shape) for key, p, shape in zip(order, v.split(sizes), shapes)}
        shared: Direction = (
            [
                torch.cat([pieces[("w", i)], pieces[("b", i)].unsqueeze(-1)], -1)
                for i in range(len(names))
            ],
            pieces[("s", 0)],
        )
        total = []
        for chunk in chunks:  # each chunk of tasks from S v to its Sᵀ, then the next
            a = shared
            for alpha, h in chunk.steps:
                a = _minus(a, alpha, h.hvp(*a, space(h.fw)))
            q = chunk.kl
            r_mean = jvp(q.fw, a[0], space(q.fw))
            f_mean = q.f_mm * r_mean + q.f_ms * a[1].unsqueeze(-2)
            f_s = (q.f_ms * r_mean).sum(1) + q.f_ss * a[1]
            total.append(transpose(f_mean, f_s, q, chunk.steps))
        return flat(total)

    def surrogate(adv: Tensor) -> tuple[Tensor, Tensor]:
        """TRPO's surrogate −mean_i mean_t (π/π_old)·Â at the adapted policies and its
        gradient in θ (flat) through the inner steps: Jᵀ ∂loss/∂z."""
        with torch.no_grad():
            std_log = log_std.unsqueeze(1).expand_as(fw.out)
            log_prob = gaussian_log_prob(fw.out, std_log, _flat_rows(query.actions))
            ratio = torch.exp(log_prob - old.log_prob.reshape(tasks, -1))
            weighted = ratio * adv.reshape(tasks, -1)
            loss = -masked_task_mean(weighted.view_as(query.mask), query.mask).mean()
            c = -w * weighted.unsqueeze(-1)  # ∂loss/∂log π per step  [T, M, 1]
            z = (_flat_rows(query.actions) - fw.out) * torch.exp(-std_log)  # (a − μ)/σ
            g_mean = c * z * torch.exp(-std_log)  # ∂log π/∂μ = (a − μ)/σ²
            g_s = (c * (z * z - 1)).sum(1)  # ∂log π/∂s = (a − μ)²/σ² − 1
            total = [transpose(g_mean[ch.rows], g_s[ch.rows], ch.pieces, ch.steps) for ch in chunks]
            return loss, flat(total)

    return RopGaussNewton(product, surrogate)


@dataclass
class _Chunk:
    """One chunk of tasks (``rows``): views of the support losses' pieces per inner step
    (with their step sizes), of the query pieces and of the products' KL pieces."""

    rows: slice
    steps: list[tuple[float, GaussianSurrogateHessian]]
    pieces: _QueryPieces
    kl: _QueryPieces


def _chunks(
    tasks: int,
    pieces: _QueryPieces,
    kl_pieces: _QueryPieces,
    steps: list[tuple[float, GaussianSurrogateHessian]],
    chunk_rows: int | None,
) -> list[_Chunk]:
    """The tasks in chunks of about ``chunk_rows`` rows each (the larger of the support's
    and the query's rows per task decides), at least one task a chunk; by default
    :data:`CHUNK_ROWS` on the CPU, all tasks in one chunk elsewhere."""
    per_task = max(
        [pieces.fw.out.shape[1], kl_pieces.fw.out.shape[1]] + [h.fw.out.shape[1] for _, h in steps]
    )
    if chunk_rows is None:  # a GPU gets all tasks in one launch per operation
        chunk_rows = CHUNK_ROWS if pieces.fw.out.device.type == "cpu" else tasks * per_task
    size = max(1, chunk_rows // per_task)
    out = []
    for start in range(0, tasks, size):
        rows = slice(start, min(start + size, tasks))
        part = pieces.tasks(rows)
        out.append(
            _Chunk(
                rows,
                [(alpha, h.tasks(rows)) for alpha, h in steps],
                part,
                part if kl_pieces is pieces else kl_pieces.tasks(rows),
            )
        )
    return out


class _QueryPieces:
    """The query forward pass at the adapted policies (``layers``, ``log_std``), each step's
    weight ``w`` in the mean over the tasks' steps, and the KL's Hessian in (mean, log-std)
    as three elementwise factors (module docstring)."""

    def __init__(
        self,
        layers: list[Tensor],
        log_std: Tensor,
        query: Trajectories,
        old: OldPolicy,
        activation: str,
    ):
        tasks = query.obs.shape[0]
        self.fw = forward(layers, _flat_rows(query.obs), activation)
        mask = query.mask
        self.w = (mask / (mask.sum((1, 2), keepdim=True) * tasks)).reshape(tasks, -1, 1)
        shift = self.fw.out - _flat_rows(old.mean)
        self.f_mm = self.w * torch.exp(-2 * log_std).unsqueeze(1)  # [T, M, A]
        self.f_ms = -2 * self.f_mm * shift
        f_ss = 2 * self.f_mm * (torch.exp(2 * _flat_rows(old.log_std)) + shift * shift)
        self.f_ss = f_ss.sum(1)

    def tasks(self, rows: slice) -> _QueryPieces:
        """The same pieces for the tasks ``rows`` only (views)."""
        part = copy.copy(self)
        part.fw = self.fw.tasks(rows)
        part.w, part.f_mm, part.f_ms, part.f_ss = (
            self.w[rows],
            self.f_mm[rows],
            self.f_ms[rows],
            self.f_ss[rows],
        )
        return part


class RopGaussNewton:
    """``v ↦ Jᵀ F_z J v`` (called), and :meth:`surrogate`: TRPO's surrogate loss and its
    gradient in θ through the inner steps, on the same pieces (no autograd graph)."""

    def __init__(
        self,
        product: Callable[[Tensor], Tensor],
        surrogate: Callable[[Tensor], tuple[Tensor, Tensor]],
    ):
        self._product, self._surrogate = product, surrogate

    def __call__(self, v: Tensor) -> Tensor:
        return self._product(v)

    def surrogate(self, adv: Tensor) -> tuple[Tensor, Tensor]:
        """The surrogate loss for the query advantages ``adv [T, N, H]`` (those of the
        ``query`` the products were built on) and its flat gradient in θ."""
        return self._surrogate(adv)
