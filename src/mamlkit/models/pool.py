"""2×2 max-pooling (stride 2) from four strided views, with derivatives of every order.

``F.max_pool2d(x, 2)`` on a contiguous (NCHW) CPU tensor scans every window through its
generic kernel, a branch per element, and writes int64 indices. For the 2×2 case the same
values come from three elementwise maxima of the windows' four corners
``x[..., i::2, j::2]``, which the CPU vectorises, and each window's winner from three
comparisons (bytes). The int64 indices that PyTorch's scatter kernel (the backward) takes
are built from them when a derivative first needs them; no-grad forward passes skip both.

* :class:`_MaxPool` -> values; the winner is the first maximum of the window in row-major
  order, as ``F.max_pool2d`` picks it, so gradients match it exactly (ties included);
* its backward puts each output gradient at its window's winner (zeros elsewhere), and the
  derivative of that takes the winner's entry of each window, whose derivative is the first
  again (:class:`_Route`, both ways): derivatives of every order, each one
  pass, none of them differentiating the winners (constant almost everywhere).

On another device than the CPU (not measured there), for a tensor that is not contiguous
(e.g. channels-last, where PyTorch's kernel is fast) and under a ``torch.func`` transform
(``vmap``, ``grad``) it is ``F.max_pool2d`` itself.
Like ``F.max_pool2d(x, 2)`` an odd height or width drops its last row or column. NaN
propagates to the output as in ``F.max_pool2d``. Checked against ``F.max_pool2d`` (values
and three orders of derivatives, exactly, ties included) and float64 ``gradgradcheck`` in
tests/test_pool.py. What it saves in training, with Conv4 pooling before its activation, is
measured by ``benchmarks/paired_commits.py --preset`` (docs/results.md, session 19).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import Function

__all__ = ["MaxPool2x2", "max_pool2x2"]


def _corners(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The windows' four corners (top-left, top-right, bottom-left, bottom-right) as views."""
    return x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]


def _crop(x: Tensor) -> Tensor:
    height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    return x[..., :height, :width]


class _Winners:
    """Which corner won each window of an input of ``shape``: ``right_top`` /
    ``right_bottom`` (the right column won in that row), ``bottom`` (the bottom row won).
    ``F.max_pool2d``'s flat indices into each plane are built from them when a derivative
    first needs them, and kept for the next one."""

    def __init__(self, right_top: Tensor, right_bottom: Tensor, bottom: Tensor, shape):
        self.right_top, self.right_bottom, self.bottom = right_top, right_bottom, bottom
        self.shape = torch.Size(shape)
        self._indices: Tensor | None = None

    def indices(self) -> Tensor:
        """int64 ``[..., h, w]``: the winner's offset ``row · W + column`` in its plane."""
        if self._indices is None:
            height, width = self.bottom.shape[-2:]
            row_width = self.shape[-1]
            device = self.bottom.device
            corner = (torch.arange(height, device=device) * (2 * row_width)).unsqueeze(1) + (
                torch.arange(width, device=device) * 2
            )
            right = torch.where(self.bottom, self.right_bottom, self.right_top)
            self._indices = (
                self.bottom.to(torch.int64).mul_(row_width).add_(right.to(torch.int64)).add_(corner)
            )
        return self._indices

    def gather(self, u: Tensor) -> Tensor:
        """Each window's winning entry of ``u`` (shaped like the pooled input)."""
        index = self.indices()
        flat = u.reshape(*u.shape[:-2], -1)
        return flat.gather(-1, index.reshape(*index.shape[:-2], -1)).view(index.shape)

    def scatter(self, g: Tensor) -> Tensor:
        """``g`` (pooled shape) placed at each window's winner, zeros elsewhere."""
        like = g.new_empty(()).expand(self.shape)  # the kernel reads only its shape
        return torch.ops.aten.max_pool2d_with_indices_backward(
            g, like, [2, 2], [2, 2], [0, 0], [1, 1], False, self.indices()
        )


class _MaxPool(Function):
    """x -> 2×2 maxima, remembering each window's winner.

    Replaces: ``aten::max_pool2d_with_indices`` and its derivatives
    (``max_pool2d_with_indices_backward``, whose derivative is a gather by the int64
    indices)."""

    @staticmethod
    def forward(ctx, x):
        a, b, c, d = _corners(_crop(x))
        top, bottom = torch.maximum(a, b), torch.maximum(c, d)
        ctx.winners = _Winners(b > a, d > c, bottom > top, x.shape)
        return torch.maximum(top, bottom)

    @staticmethod
    def backward(ctx, g):
        return _Route.apply(g, ctx.winners, False)


class _Route(Function):
    """Linear in ``t``: with ``gather`` each window's winning entry of ``t`` (input-shaped ->
    pooled shape), else each value of ``t`` at its window's winner, zeros elsewhere (pooled
    shape -> input-shaped). Each is the other's derivative."""

    @staticmethod
    def forward(ctx, t, winners, gather):
        ctx.winners, ctx.gather = winners, gather
        return winners.gather(t) if gather else winners.scatter(t)

    @staticmethod
    def backward(ctx, u):
        return _Route.apply(u, ctx.winners, not ctx.gather), None, None


def max_pool2x2(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 2)`` for ``x [N, C, H, W]`` or ``[C, H, W]`` (H, W >= 2): the same
    values and gradients (the first maximum of each window in row-major order gets the
    gradient), with derivatives of every order that are one pass each.

    >>> x = torch.tensor([[[[1.0, 3.0], [3.0, 2.0]]]], requires_grad=True)
    >>> y = max_pool2x2(x)
    >>> y.sum().backward()
    >>> y.tolist(), x.grad.tolist()
    ([[[[3.0]]]], [[[[0.0, 1.0], [0.0, 0.0]]]])
    """
    if x.shape[-2] < 2 or x.shape[-1] < 2:
        raise ValueError(f"max_pool2x2: needs height and width >= 2, got {tuple(x.shape)}")
    if (
        x.device.type != "cpu"
        or x.dim() not in (3, 4)  # as F.max_pool2d takes them (which refuses the others)
        or not x.is_contiguous()
        or torch._C._are_functorch_transforms_active()
    ):
        # measured on the CPU only; on channels-last (or another layout) F.max_pool2d's own
        # kernel runs along the contiguous channels already; vmap and torch.func.grad take
        # their own rules
        return F.max_pool2d(x, 2)
    if not torch.is_grad_enabled() or not x.requires_grad:
        a, b, c, d = _corners(_crop(x))
        return torch.maximum(torch.maximum(a, b), torch.maximum(c, d))
    return _MaxPool.apply(x)


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` computed by :func:`max_pool2x2` (same values and gradients)."""

    def __init__(self):
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        return max_pool2x2(x)
