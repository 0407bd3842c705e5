"""2×2 max-pooling for :meth:`Conv4.batched_forward`, computed channels-last on the CPU.

On the CPU, PyTorch's max-pooling kernel for channels-first (NCHW) tensors is several times
slower than its channels-last one, even counting the copy into channels-last: a MAML++
Omniglot meta-batch's first-block maps (``[5, 512, 28, 28]``) are pooled about 4× faster
that way on the 2-core sandbox (one thread, ad-hoc timing; the training speed it buys is
measured in docs/results.md, session 18). Both kernels scan a window in the same order and
keep its first maximum, so values and indices are the same, ties included (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

__all__ = ["max_pool2d"]

_K = [2, 2]


class _MaxPool(Function):
    """y = max_pool2d(x, 2), pooled channels-last; y and x's gradient stay channels-first."""

    @staticmethod
    def forward(ctx, x):
        y, idx = torch.ops.aten.max_pool2d_with_indices(
            x.contiguous(memory_format=torch.channels_last), _K, _K
        )
        ctx.save_for_backward(x, idx)
        return y.contiguous()

    @staticmethod
    def backward(ctx, g):
        x, idx = ctx.saved_tensors
        return _MaxPoolGrad.apply(g, x, idx)


class _MaxPoolGrad(Function):
    """(g, x) -> g scattered to the window maxima of x: linear in g, zero derivative in x.
    Its derivative for g is a gather at the same indices (which autograd differentiates
    again as a scatter)."""

    @staticmethod
    def forward(ctx, g, x, idx):
        ctx.save_for_backward(idx)
        return torch.ops.aten.max_pool2d_with_indices_backward(
            g.contiguous(), x, _K, _K, [0, 0], [1, 1], False, idx
        )

    @staticmethod
    def backward(ctx, u):
        (idx,) = ctx.saved_tensors
        flat = idx.reshape(*idx.shape[:2], -1)
        picked = torch.gather(u.reshape(*u.shape[:2], -1), 2, flat)
        return picked.view(idx.shape), None, None


def max_pool2d(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 2)`` for a 4-d channels-first CPU tensor, faster, with the same
    values and derivatives of every order; elsewhere ``F.max_pool2d`` itself.

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> x = torch.randn(2, 3, 7, 7, requires_grad=True)
        >>> torch.equal(max_pool2d(x), F.max_pool2d(x, 2))
        True
    """
    if x.device.type != "cpu" or x.dim() != 4 or x.is_contiguous(memory_format=torch.channels_last):
        return F.max_pool2d(x, 2)
    return _MaxPool.apply(x)
