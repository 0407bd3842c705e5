"""Convolution and BatchNorm for task-batched models, with cheap exact second derivatives.

Second-order MAML differentiates the gradient of the support loss once more. PyTorch's own
derivatives are exact but slow on that path for the layout ``Conv4.batched_forward`` uses
(tasks stacked on the channel axis):

* the double backward of a grouped convolution runs one convolution *per group* (per task),
* the double backward of ``batch_norm`` is a long composite of elementwise passes over the
  activations, several times slower than the closed form below.

The functions below compute the same values with the same fused kernels
(``F.conv2d``, ``convolution_backward``, ``native_batch_norm(_backward)``) and write the
derivatives of the backward pass out by hand:

* a convolution is bilinear in (input, weight), so its input gradient and weight gradient are
  convolutions of the same kind again. :class:`_Conv`, :class:`_ConvInputGrad` and
  :class:`_ConvWeightGrad` differentiate into each other — derivatives of any order, every
  one a single grouped kernel call.
* :func:`task_conv2d` takes the weights with their task axis. Where all tasks hold one
  weight (``θ.expand(T, ...)``, MAML's first inner step) :class:`_SharedConv` runs the
  convolution and the input gradients as one dense convolution over all B·T images, which
  oneDNN runs faster than T groups; weight gradients stay per task.
* :class:`_BatchNormGrad` gives the second derivative of training-mode BatchNorm in closed
  form from per-channel moments. When it is not differentiated again, the moments and the
  largest term come from ``native_batch_norm_backward`` itself (fused passes); under
  ``create_graph`` it is written in differentiable operations, so a third derivative is
  exact too.
* :func:`relu` treats the mask of its backward as a constant; PyTorch's double backward
  of ReLU materialises a tensor of zeros for it and adds it in.
* :func:`task_conv_batch_norm` runs a first convolution and its BatchNorm as one matrix
  product when the input is data (no gradient): BatchNorm's statistics of w·p + b are
  w·mean(p) + b and wᵀ cov(p) w, with the windows' moments computed once, so no full-size
  pass for the statistics or their derivatives remains.

All are checked against float64 finite differences (``gradcheck``/``gradgradcheck``) and,
inside MAML, against the per-task float64 reference (tests/test_meta_gradients.py).
What each saves is measured by benchmarks/ops_ablation.py, which swaps one piece at a time
for the plain op with autograd's derivatives; the numbers are in docs/results.md ("Hand-written
derivatives, one at a time"), and each docstring below names the derivative it replaces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

__all__ = ["conv2d", "task_conv2d", "batch_norm", "relu", "image_patches", "task_conv_batch_norm"]


# ---------------------------------------------------------------------------- convolution


def _conv_input_grad(g: Tensor, w: Tensor, x_shape, stride, padding, groups) -> Tensor:
    # only the shape (and memory format) of the input is read
    x = g.new_empty(x_shape)
    return torch.ops.aten.convolution_backward(
        g, x, w, None, stride, padding, [1, 1], False, [0, 0], groups, [True, False, False]
    )[0]


def _conv_weight_grad(x: Tensor, g: Tensor, w_shape, stride, padding, groups) -> Tensor:
    w = g.new_empty(w_shape)  # only its shape is read
    return torch.ops.aten.convolution_backward(
        g, x, w, None, stride, padding, [1, 1], False, [0, 0], groups, [False, True, False]
    )[1]


class _Conv(Function):
    """y = conv(x, w) + b.

    Replaces: ``aten::convolution``'s derivative (``convolution_backward``, whose own
    derivative ``_convolution_double_backward`` runs one convolution per group for the
    weight term of the input gradient's derivative). Measured, with the two classes below:
    no measurable gain on omniglot-5w1s (within noise; :class:`_SharedConv` covers the same
    double backward), a gain on omniglot-20w1s (benchmarks/ops_ablation.py, see
    docs/results.md).
    """

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, groups):
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, groups)
        return F.conv2d(x, w, b, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        stride, padding, groups = ctx.conf
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _ConvInputGrad.apply(g, w, x.shape, stride, padding, groups)
        if ctx.needs_input_grad[1]:
            gw = _ConvWeightGrad.apply(x, g, w.shape, stride, padding, groups)
        if ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3))
        return gx, gw, gb, None, None, None


class _ConvInputGrad(Function):
    """A(g, w) = ∂/∂x ⟨g, conv(x, w)⟩. Since ⟨u, A(g, w)⟩ = ⟨g, conv(u, w)⟩, its derivatives
    are conv(u, w) for g and the weight gradient W(u, g) for w.

    Replaces: the derivative of ``convolution_backward``'s input gradient
    (``_convolution_double_backward``, per group for w). Measured: as :class:`_Conv`
    (benchmarks/ops_ablation.py, see docs/results.md).
    """

    @staticmethod
    def forward(ctx, g, w, x_shape, stride, padding, groups):
        ctx.save_for_backward(g, w)
        ctx.conf = (stride, padding, groups)
        return _conv_input_grad(g, w, x_shape, stride, padding, groups)

    @staticmethod
    def backward(ctx, u):
        g, w = ctx.saved_tensors
        stride, padding, groups = ctx.conf
        gg = gw = None
        if ctx.needs_input_grad[0]:
            gg = _Conv.apply(u, w, None, stride, padding, groups)
        if ctx.needs_input_grad[1]:
            gw = _ConvWeightGrad.apply(u, g, w.shape, stride, padding, groups)
        return gg, gw, None, None, None, None


class _ConvWeightGrad(Function):
    """W(x, g) = ∂/∂w ⟨g, conv(x, w)⟩. Since ⟨v, W(x, g)⟩ = ⟨g, conv(x, v)⟩, its derivatives
    are the input gradient A(g, v) for x and conv(x, v) for g.

    Replaces: the derivative of ``convolution_backward``'s weight gradient
    (``_convolution_double_backward``). Measured: as :class:`_Conv`
    (benchmarks/ops_ablation.py, see docs/results.md).
    """

    @staticmethod
    def forward(ctx, x, g, w_shape, stride, padding, groups):
        ctx.save_for_backward(x, g)
        ctx.conf = (stride, padding, groups)
        return _conv_weight_grad(x, g, w_shape, stride, padding, groups)

    @staticmethod
    def backward(ctx, v):
        x, g = ctx.saved_tensors
        stride, padding, groups = ctx.conf
        gx = gg = None
        if ctx.needs_input_grad[0]:
            gx = _ConvInputGrad.apply(g, v, x.shape, stride, padding, groups)
        if ctx.needs_input_grad[1]:
            gg = _Conv.apply(x, v, None, stride, padding, groups)
        return gx, gg, None, None, None, None


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> Tensor:
    """``F.conv2d`` (square stride and padding, no dilation) whose derivatives of every
    order are single convolution kernels, also for ``groups > 1``.

    Replaces: ``F.conv2d``'s derivatives (``convolution_backward``,
    ``_convolution_double_backward``). Measured: as :class:`_Conv`
    (benchmarks/ops_ablation.py, see docs/results.md).
    """
    s, p = [stride, stride], [padding, padding]
    return _Conv.apply(x, weight, bias, s, p, groups)


class _SharedConv(Function):
    """y = conv(x, w) for T tasks that hold one weight: ``w = θ.expand(T, ...)``, as at MAML's
    first inner step. Layout as :func:`task_conv2d`. Forward and input gradient are one dense
    convolution over the B·T images instead of T small ones; the weight gradient is still
    per task (the inner loop adapts each task's copy separately).

    Replaces: the grouped (``groups=T``) ``aten::convolution`` and its derivatives while θ
    is shared. Measured: a gain on omniglot-5w1s at 1 thread; no measurable gain at 2
    threads on the busy machine, nor on omniglot-20w1s (noisy) (benchmarks/ops_ablation.py,
    see docs/results.md).
    """

    @staticmethod
    def forward(ctx, x, w, b, stride, padding):
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding)
        tasks, c_out = w.shape[:2]
        y = F.conv2d(_images(x, tasks), w[0], None if b is None else b[0], stride, padding)
        return y.reshape(x.shape[0], tasks * c_out, *y.shape[2:])

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        stride, padding = ctx.conf
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _SharedConvInputGrad.apply(g, w, x.shape, stride, padding)
        if ctx.needs_input_grad[1]:
            gw = _task_weight_grad(x, g, w, stride, padding)
        if ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3)).view(w.shape[:2])
        return gx, gw, gb, None, None


class _SharedConvInputGrad(Function):
    """A(g, w) of :class:`_SharedConv`: one dense input gradient. Derivatives as
    :class:`_ConvInputGrad`: the shared convolution for g, per-task weight gradients for w.

    Replaces: grouped ``convolution_backward``'s input gradient and its derivative
    (``_convolution_double_backward``). Measured: as :class:`_SharedConv`
    (benchmarks/ops_ablation.py, see docs/results.md).
    """

    @staticmethod
    def forward(ctx, g, w, x_shape, stride, padding):
        ctx.save_for_backward(g, w)
        ctx.conf = (stride, padding)
        tasks = w.shape[0]
        x_images = (x_shape[0] * tasks, x_shape[1] // tasks, *x_shape[2:])
        gx = _conv_input_grad(_images(g, tasks), w[0], x_images, stride, padding, 1)
        return gx.reshape(x_shape)

    @staticmethod
    def backward(ctx, u):
        g, w = ctx.saved_tensors
        stride, padding = ctx.conf
        gg = gw = None
        if ctx.needs_input_grad[0]:
            gg = _SharedConv.apply(u, w, None, stride, padding)
        if ctx.needs_input_grad[1]:
            gw = _task_weight_grad(u, g, w, stride, padding)
        return gg, gw, None, None, None


def _images(t: Tensor, tasks: int) -> Tensor:
    """``[B, T·C, H, W] -> [B·T, C, H, W]``: the same memory, one image per (example, task)."""
    return t.reshape(t.shape[0] * tasks, t.shape[1] // tasks, *t.shape[2:])


def _task_weight_grad(x: Tensor, g: Tensor, w: Tensor, stride, padding) -> Tensor:
    """Per-task weight gradients ``[T, C_out, C_in, k, k]`` (a grouped weight gradient)."""
    tasks = w.shape[0]
    flat = (tasks * w.shape[1], *w.shape[2:])
    return _ConvWeightGrad.apply(x, g, flat, stride, padding, tasks).reshape(w.shape)


def task_conv2d(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: int = 1, padding: int = 0
) -> Tensor:
    """T tasks' convolutions at once, each with its own weights.

    ``x [B, T·C_in, H, W]`` (tasks stacked on the channel axis), ``weight [T, C_out, C_in,
    k, k]``, ``bias [T, C_out]`` -> ``[B, T·C_out, H', W']``. A grouped convolution
    (``groups=T``), except where the weight is an expanded view holding one tensor for all
    tasks (stride 0 on the task axis, as ``θ.expand(T, ...)``): then the tasks' weights are
    equal by construction and forward and input gradients run as one dense convolution.

    Replaces: ``F.conv2d(..., groups=T)``'s derivatives (``convolution_backward``,
    ``_convolution_double_backward``). Measured: a gain on omniglot-5w1s (1 and 2 threads;
    not resolved on omniglot-20w1s, noisy) (benchmarks/ops_ablation.py, see
    docs/results.md).
    """
    tasks = weight.shape[0]
    s, p = [stride, stride], [padding, padding]
    if tasks > 1 and weight.stride(0) == 0 and (bias is None or bias.stride(0) == 0):
        return _SharedConv.apply(x, weight, bias, s, p)
    flat_bias = None if bias is None else bias.reshape(-1)
    return _Conv.apply(x, weight.reshape(-1, *weight.shape[2:]), flat_bias, s, p, tasks)


# ----------------------------------------------------------------------------------- ReLU


class _ReLU(Function):
    """y = max(x, 0), or with ``slope`` > 0 the leaky y = x for x > 0, slope·x otherwise.
    PyTorch's double backward of ReLU materialises a zero tensor for the mask's derivative
    and adds it in; here the mask (y > 0, the same as x > 0 for a positive slope) is a
    constant.

    Replaces: ``aten::relu``'s derivative (``threshold_backward``, whose derivative for the
    input is ``zeros_like``) and ``aten::leaky_relu``'s. Measured (the ReLU; the leaky one
    not measured): no measurable gain on omniglot-5w1s at 1 thread (within noise); small
    gains at 2 threads on the busy machine and on omniglot-20w1s
    (benchmarks/ops_ablation.py, see docs/results.md).
    """

    @staticmethod
    def forward(ctx, x, slope):
        y = torch.relu(x) if slope == 0.0 else F.leaky_relu(x, slope)
        ctx.save_for_backward(y)
        ctx.slope = slope
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return _ReLUGrad.apply(g, y, ctx.slope), None


class _ReLUGrad(Function):
    """(g, y) -> g · [y > 0] (or g · slope where y <= 0), linear in g; its derivative w.r.t.
    y is zero almost everywhere.

    Replaces: ``threshold_backward``'s and ``leaky_relu_backward``'s derivatives (the same
    op for g, a zero tensor for y). Measured: as :class:`_ReLU`
    (benchmarks/ops_ablation.py, see docs/results.md).
    """

    @staticmethod
    def forward(ctx, g, y, slope):
        ctx.save_for_backward(y)
        ctx.slope = slope
        if slope == 0.0:
            return torch.ops.aten.threshold_backward(g, y, 0)
        return torch.ops.aten.leaky_relu_backward(g, y, slope, True)

    @staticmethod
    def backward(ctx, u):
        (y,) = ctx.saved_tensors
        return _ReLUGrad.apply(u, y, ctx.slope), None, None


def relu(x: Tensor, slope: float = 0.0) -> Tensor:
    """``torch.relu`` (or, with ``slope`` > 0, ``F.leaky_relu(x, slope)``) whose derivatives
    of every order are one masking pass each.

    Replaces: ``torch.relu``'s and ``F.leaky_relu``'s derivatives. Measured: as
    :class:`_ReLU` (benchmarks/ops_ablation.py, see docs/results.md).
    """
    if slope < 0.0:
        raise ValueError(f"relu: slope must be >= 0, got {slope}")
    return _ReLU.apply(x, float(slope))


# ------------------------------------------------------------------------------ BatchNorm


def _channel_mean(t: Tensor) -> Tensor:
    """Per-channel mean of ``[B, C, *]``, shaped ``[1, C, 1, ...]``."""
    return t.mean([0, *range(2, t.dim())], keepdim=True)


def _channel_dot(u: Tensor, v: Tensor) -> Tensor:
    """Per-channel ``Σ u·v`` of ``[B, C, *]`` in one fused pass, without forming ``u·v``:
    BatchNorm's backward with mean 0 and invstd 1 computes exactly this as its γ gradient.
    (γ itself does not enter that gradient, but the CUDA kernel needs a defined tensor.)"""
    zeros, ones = u.new_zeros(u.shape[1]), u.new_ones(u.shape[1])
    return torch.ops.aten.native_batch_norm_backward(
        u, v, ones, None, None, zeros, ones, True, 0.0, [False, True, False]
    )[1]


def _per_channel(v: Tensor, like: Tensor) -> Tensor:
    return v.view(1, -1, *([1] * (like.dim() - 2)))


class _BatchNorm(Function):
    """y = γ x̂ + β with x̂ = (x − mean) r, r = (var + eps)^-½, batch statistics per channel.

    Replaces: ``aten::native_batch_norm``'s derivative (``native_batch_norm_backward``, as a
    differentiable :class:`_BatchNormGrad`). Measured: as :func:`batch_norm`
    (benchmarks/ops_ablation.py, see docs/results.md).
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, eps):
        y, mean, invstd = torch.native_batch_norm(x, gamma, beta, None, None, True, 0.0, eps)
        ctx.save_for_backward(x, gamma, mean, invstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, g):
        x, gamma, mean, invstd = ctx.saved_tensors
        gx, ggamma, gbeta = _BatchNormGrad.apply(g, x, gamma, mean, invstd, ctx.eps)
        return gx, ggamma, gbeta, None


class _BatchNormGrad(Function):
    """(g, x, γ) -> (∂/∂x, ∂/∂γ, ∂/∂β) of BatchNorm: with N values per channel,

        ∂/∂x = γ r (g − m(g) − x̂ m(g x̂)),   ∂/∂γ = Σ g x̂,   ∂/∂β = Σ g,

    where m(·) is the per-channel mean. ``mean`` and ``invstd`` are the forward's statistics;
    their dependence on x is part of the derivative w.r.t. x below.

    Replaces: ``native_batch_norm_backward``'s derivative (``batchnorm_double_backward``).
    Measured: as :func:`batch_norm` (benchmarks/ops_ablation.py, see docs/results.md).
    """

    @staticmethod
    def forward(ctx, g, x, gamma, mean, invstd, eps):
        gx, sum_gxh, sum_g = torch.ops.aten.native_batch_norm_backward(
            g, x, gamma, None, None, mean, invstd, True, eps, [True, True, True]
        )
        ctx.save_for_backward(g, x, gamma, mean, invstd)
        # Σ g x̂ and Σ g are the moments the second derivative needs: keep copies (the
        # outputs themselves belong to the caller)
        ctx.sums = (sum_gxh.detach().clone(), sum_g.detach().clone())
        ctx.eps = eps
        return gx, sum_gxh, sum_g

    @staticmethod
    def backward(ctx, u, a, b):
        # S = ⟨u, ∂/∂x⟩ + ⟨a, ∂/∂γ⟩ + ⟨b, ∂/∂β⟩; returns ∂S/∂g, ∂S/∂x, ∂S/∂γ. Every
        # full-size result is a per-channel combination of g, x and u, so x̂ is never
        # materialised: x̂ = r x − r mean.
        g, x, gamma, mean, invstd = ctx.saved_tensors
        n = x.numel() // x.shape[1]
        differentiable = torch.is_grad_enabled()
        if differentiable:
            # create_graph: this result will be differentiated again, so the statistics
            # must carry their dependence on x (the saved ones are constants)
            var, mean = torch.var_mean(x, [0, *range(2, x.dim())], correction=0)
            invstd = torch.rsqrt(var + ctx.eps)
        r, gam, mu_x = (_per_channel(v, x) for v in (invstd, gamma, mean))
        gr = gam * r
        zero = torch.zeros_like(r)
        a_ = _per_channel(a, x) if a is not None else zero
        b_ = _per_channel(b, x) if b is not None else zero
        if differentiable:
            m_g = _channel_mean(g)
            m_gxh = r * (_channel_mean(g * x) - mu_x * m_g)  # m(g x̂)
            if u is not None:
                m_u = _channel_mean(u)
                m_uxh = r * (_channel_mean(u * x) - mu_x * m_u)  # m(u x̂)
                cov = _channel_mean(u * g) - m_u * m_g - m_uxh * m_gxh
            else:
                m_u = m_uxh = cov = zero
            # ∂S/∂g = γr (u − m(u) − x̂ m(u x̂)) + a x̂ + b
            k_x = r * (a_ - gr * m_uxh)
            k_0 = b_ - gr * m_u - k_x * mu_x
            grad_g = torch.addcmul(k_0, x, k_x)
            if u is not None:
                grad_g.addcmul_(u, gr)
        else:
            # The same quantities from fused kernels: m(g), m(g x̂) were computed by the
            # forward; BatchNorm's own backward gives γr (u − m(u) − x̂ m(u x̂)) with Σ u x̂
            # and Σ u in one call, and Σ u g in another (_channel_dot).
            sum_gxh, sum_g = ctx.sums
            m_g, m_gxh = _per_channel(sum_g / n, x), _per_channel(sum_gxh / n, x)
            if u is not None:
                grad_g, sum_uxh, sum_u = torch.ops.aten.native_batch_norm_backward(
                    u, x, gamma, None, None, mean, invstd, True, ctx.eps, [True, True, True]
                )
                sum_ug = _channel_dot(u, g)
                m_u, m_uxh = _per_channel(sum_u / n, x), _per_channel(sum_uxh / n, x)
                cov = _per_channel(sum_ug / n, x) - m_u * m_g - m_uxh * m_gxh
            else:
                m_u = m_uxh = cov = zero
            # ∂S/∂g = [γr (u − m(u) − x̂ m(u x̂))] + a x̂ + b
            if u is None:
                grad_g = torch.addcmul(b_ - a_ * r * mu_x, x, a_ * r)
            elif a is not None or b is not None:
                grad_g.addcmul_(x, a_ * r).add_(b_ - a_ * r * mu_x)
        # explicit dependence on x̂ and r: ∂S/∂x̂ = αu + βg, ∂S/∂r = γ n cov
        alpha, beta = -gr * m_gxh, a_ - gr * m_uxh
        grad_r = gam * n * cov
        # through x̂(x) and r(x): ∂S/∂x = r (G − m(G) − x̂ m(G x̂)) − x̂ r² ∂S/∂r / n, G = ∂S/∂x̂
        m_G = alpha * m_u + beta * m_g
        m_Gxh = alpha * m_uxh + beta * m_gxh
        c_x = r * (-r * m_Gxh - grad_r * r * r / n)
        grad_x = torch.addcmul(-r * m_G - c_x * mu_x, g, r * beta)
        grad_x.addcmul_(x, c_x)
        if u is not None:
            grad_x.addcmul_(u, r * alpha)
        grad_gamma = (n * r * cov).view(-1)
        return grad_g, grad_x, grad_gamma, None, None, None


def batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """``F.batch_norm(x, None, None, weight, bias, training=True, eps=eps)`` for ``[B, C, *]``
    with a closed-form second derivative, itself differentiable.

    Replaces: ``F.batch_norm``'s second derivative (``batchnorm_double_backward``).
    Measured: a gain on omniglot-5w1s (1 and 2 threads) and omniglot-20w1s
    (benchmarks/ops_ablation.py, see docs/results.md).
    """
    return _BatchNorm.apply(x, weight, bias, eps)


# ------------------------------------------------- first layer: convolution + BatchNorm


def image_patches(x: Tensor, tasks: int, kernel: int, stride: int, padding: int) -> Tensor:
    """The convolution windows of an input that needs no gradient (the images themselves):
    ``x [B, T·C, H, W]`` -> ``[B, T, C·k·k + 1, H'·W']``, each window flattened in the order of
    a ``[C, k, k]`` weight, with a row of ones appended for the bias.

    Replaces: no derivative itself (the input needs none); it feeds
    :func:`task_conv_batch_norm`. Measured: as that (benchmarks/ops_ablation.py, see
    docs/results.md).
    """
    batch, channels = x.shape[0], x.shape[1] // tasks
    xp = F.pad(x, [padding] * 4)
    out_h = (xp.shape[2] - kernel) // stride + 1
    out_w = (xp.shape[3] - kernel) // stride + 1
    s0, s1, s2, s3 = xp.stride()
    windows = xp.as_strided(
        (batch, tasks, channels, kernel, kernel, out_h, out_w),
        (s0, channels * s1, s1, s2, s3, stride * s2, stride * s3),
    )
    k = channels * kernel * kernel
    patches = x.new_empty(batch, tasks, k + 1, out_h * out_w)
    patches[:, :, :k].view(batch, tasks, channels, kernel, kernel, out_h, out_w).copy_(windows)
    patches[:, :, k].fill_(1.0)
    return patches


def task_conv_batch_norm(
    patches: Tensor,
    out_hw: tuple[int, int],
    weight: Tensor,
    bias: Tensor,
    gamma: Tensor,
    beta: Tensor,
    eps: float = 1e-5,
) -> Tensor:
    """``batch_norm(task_conv2d(x, weight, bias), γ, β)`` (batch statistics) from the input's
    windows (:func:`image_patches`), for a first layer whose input needs no gradient.

    With z = w·p + b for a window p, the statistics BatchNorm needs are linear and quadratic
    in w: mean(z) = w·m + b and var(z) = wᵀ S w, with m and S the mean and covariance of the
    task's windows (a few numbers per task, computed once from the data). So
    BN(z) = s (z − mean(z)) + β with s = γ (wᵀ S w + eps)^-½ is one matrix product with the
    per-task weights [s w | β + s (b − mean(z))]: the full-size activation is written once,
    and no full-size pass for BatchNorm's statistics, nor for its first and second
    derivatives, is needed. The small per-task algebra is ordinary autograd (exact to any
    order); ``b`` gets its exact gradient, zero.

    ``weight [T, O, C, k, k]``, ``bias``/``gamma``/``beta [T, O]`` -> ``[B, T·O, H', W']``.

    Replaces: the first layer's ``convolution`` + ``native_batch_norm`` and their first and
    second derivatives. Measured (``Conv4(fold_batch_norm=False)``, which also keeps the
    convolution biases): a gain on omniglot-5w1s (1 and 2 threads); not resolved on
    omniglot-20w1s (noisy) (benchmarks/ops_ablation.py, see docs/results.md).
    """
    batch, tasks, k1, positions = patches.shape
    k = k1 - 1
    windows = patches[:, :, :k]
    n = batch * positions
    with torch.no_grad():
        mean = windows.mean((0, 3))  # [T, k]
        centred = (windows - mean[None, :, :, None]).permute(1, 2, 0, 3).reshape(tasks, k, n)
        cov = torch.bmm(centred, centred.transpose(1, 2)) / n  # [T, k, k]
    w = weight.reshape(tasks, -1, k)
    var = (torch.bmm(w, cov) * w).sum(-1)  # wᵀ S w, [T, O]
    scale = gamma * torch.rsqrt(var + eps)
    z_mean = (w * mean[:, None, :]).sum(-1) + bias
    w_eff = torch.cat([w * scale[..., None], (beta + scale * (bias - z_mean))[..., None]], -1)
    out = torch.matmul(w_eff, patches)  # [B, T, O, H'·W']
    return out.view(batch, -1, *out_hw)
