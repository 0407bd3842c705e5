"""The layer kernels of the batched Conv4 path against PyTorch and finite differences (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from mamlkit.models import Conv4, ops


def _leaf(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()


@pytest.mark.parametrize("stride,groups,size", [(1, 1, 5), (2, 1, 6), (2, 3, 7), (1, 2, 4)])
def test_conv2d_values_and_derivatives(stride, groups, size):
    gen = torch.Generator().manual_seed(0)
    x = _leaf(2, 2 * groups, size, size, gen=gen)
    w = _leaf(3 * groups, 2, 3, 3, gen=gen)
    b = _leaf(3 * groups, gen=gen)

    def ours(x, w, b):
        return ops.conv2d(x, w, b, stride=stride, padding=1, groups=groups)

    torch.testing.assert_close(ours(x, w, b), F.conv2d(x, w, b, stride, 1, 1, groups))
    assert gradcheck(ours, (x, w, b))
    assert gradgradcheck(ours, (x, w, b))

    # third order: the three convolution functions differentiate into each other
    def first_derivatives(x, w, b):
        y = ours(x, w, b)
        return torch.autograd.grad((y**2).sum(), (x, w), create_graph=True)

    assert gradgradcheck(first_derivatives, (x, w, b))


@pytest.mark.parametrize("shape", [(4, 3, 2, 3), (6, 5)])
def test_batch_norm_values_and_second_derivatives(shape):
    gen = torch.Generator().manual_seed(1)
    x = _leaf(*shape, gen=gen)
    gamma = _leaf(shape[1], gen=gen)
    beta = _leaf(shape[1], gen=gen)
    torch.testing.assert_close(
        ops.batch_norm(x, gamma, beta), F.batch_norm(x, None, None, gamma, beta, training=True)
    )
    assert gradcheck(ops.batch_norm, (x, gamma, beta))
    assert gradgradcheck(ops.batch_norm, (x, gamma, beta))


@pytest.mark.parametrize("used", ["x", "gamma", "beta", "gamma+beta"])
def test_batch_norm_second_derivative_with_some_first_derivatives_unused(used):
    """The double backward receives None for the unused first derivatives."""
    gen = torch.Generator().manual_seed(2)
    x, gamma, beta = _leaf(3, 4, 5, gen=gen), _leaf(4, gen=gen), _leaf(4, gen=gen)
    v = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)

    def objective(bn):
        y = bn(x, gamma, beta)
        gx, gg, gb = torch.autograd.grad(
            (y * v).sum() + (y**2).sum(), (x, gamma, beta), create_graph=True
        )
        parts = {"x": (gx**2).sum(), "gamma": (gg**3).sum(), "beta": (gb**3).sum()}
        total = sum(parts[k] for k in used.split("+"))
        return torch.autograd.grad(total, (x, gamma, beta), allow_unused=True)

    def reference(x, gamma, beta):
        return F.batch_norm(x, None, None, gamma, beta, training=True)

    wanted = objective(reference)
    scale = max(float(w.abs().max()) for w in wanted if w is not None)
    for got, want in zip(objective(ops.batch_norm), wanted, strict=True):
        if want is None:
            assert got is None or torch.count_nonzero(got) == 0
        else:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12 * scale)


def test_batch_norm_third_derivative():
    """create_graph on the second derivative (e.g. meta-learning the outer loop) stays exact."""
    gen = torch.Generator().manual_seed(3)
    x, gamma, beta = _leaf(3, 2, 4, gen=gen), _leaf(2, gen=gen), _leaf(2, gen=gen)

    def first_derivatives(x, gamma, beta):
        y = ops.batch_norm(x, gamma, beta)
        return torch.autograd.grad((y**3).sum(), (x, gamma, beta), create_graph=True)

    assert gradgradcheck(first_derivatives, (x, gamma, beta))


@pytest.mark.parametrize("stride,size", [(1, 5), (2, 6), (2, 7)])
def test_task_conv2d_shared_weights_match_per_task_copies(stride, size):
    """θ.expand(T, ...) takes the dense path, a copy of it (same values, each task its own
    memory) the grouped one. Values, per-task first derivatives and second derivatives agree."""
    tasks, batch = 3, 2
    gen = torch.Generator().manual_seed(3)
    x = _leaf(batch, tasks * 2, size, size, gen=gen)
    theta_w, theta_b = _leaf(4, 2, 3, 3, gen=gen), _leaf(4, gen=gen)
    out = (size - 1) // stride + 1
    cot = torch.randn(batch, tasks * 4, out, out, generator=gen, dtype=torch.float64)

    def derivatives(copy: bool):
        w, b = theta_w.expand(tasks, -1, -1, -1, -1), theta_b.expand(tasks, -1)
        if copy:
            w, b = w.clone(), b.clone()
        y = ops.task_conv2d(x, w, b, stride=stride, padding=1)
        assert type(y.grad_fn).__name__.startswith("_Conv" if copy else "_SharedConv")
        gx, gw, gb = torch.autograd.grad(
            (y * cot).sum() + (y**2).sum(), (x, w, b), create_graph=True
        )
        s = (gx**2).sum() + (gw**3).sum() + (gb**3).sum()
        return (y, gx, gw, gb, *torch.autograd.grad(s, (x, theta_w, theta_b)))

    for grouped, dense in zip(derivatives(copy=True), derivatives(copy=False), strict=True):
        torch.testing.assert_close(dense, grouped)


def test_task_conv2d_shared_path_gradgradcheck():
    gen = torch.Generator().manual_seed(4)
    tasks = 3
    x = _leaf(2, tasks * 2, 6, 6, gen=gen)
    w, b = _leaf(4, 2, 3, 3, gen=gen), _leaf(4, gen=gen)

    def f(x, w, b):
        return ops.task_conv2d(
            x, w.expand(tasks, -1, -1, -1, -1), b.expand(tasks, -1), stride=2, padding=1
        )

    assert gradcheck(f, (x, w, b))
    assert gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize("channels,stride,size", [(1, 2, 7), (3, 1, 5), (2, 2, 8)])
def test_task_conv_batch_norm_equals_conv_then_batch_norm(channels, stride, size):
    """The first layer folded into one product from the image windows: same values as
    F.conv2d + F.batch_norm (batch statistics per task and channel), exact first, second and
    third derivatives, and the conv bias gets its exact gradient, zero."""
    tasks, batch, out_ch = 3, 4, 5
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(batch, tasks * channels, size, size, generator=gen, dtype=torch.float64)
    w = _leaf(tasks, out_ch, channels, 3, 3, gen=gen)
    b, gamma, beta = (_leaf(tasks, out_ch, gen=gen) for _ in range(3))
    out = (size - 1) // stride + 1

    def ours(w, b, gamma, beta):
        patches = ops.image_patches(x, tasks, 3, stride, 1)
        return ops.task_conv_batch_norm(patches, (out, out), w, b, gamma, beta)

    def reference(w, b, gamma, beta):
        z = F.conv2d(x, w.flatten(0, 1), b.flatten(), stride, 1, 1, tasks)
        return F.batch_norm(z, None, None, gamma.flatten(), beta.flatten(), training=True)

    args = (w, b, gamma, beta)
    torch.testing.assert_close(ours(*args), reference(*args))
    cot = torch.randn(batch, tasks * out_ch, out, out, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((ours(*args) * cot).sum(), args)
    for g, r in zip(grads, torch.autograd.grad((reference(*args) * cot).sum(), args)):
        torch.testing.assert_close(g, r)
    assert torch.equal(grads[1], torch.zeros_like(b))
    assert gradcheck(ours, args)
    assert gradgradcheck(ours, args)

    def first_derivatives(w, b, gamma, beta):
        y = ours(w, b, gamma, beta)
        return torch.autograd.grad((y**3).sum(), (w, gamma, beta), create_graph=True)

    assert gradgradcheck(first_derivatives, args)


def test_conv4_batched_forward_folds_batch_norm():
    """With fold_batch_norm (the default) the convolutions run without their bias and, for
    images that need no gradient, the first layer is folded; an input that needs a gradient
    (an adversarial perturbation, say) takes the plain first layer. Values and gradients
    agree with fold_batch_norm=False and with forward(); conv biases get exact zeros."""
    model = Conv4(out_features=3, filters=4, image_size=8).double()
    params = {n: p.unsqueeze(0).expand(2, *p.shape) for n, p in model.named_parameters()}
    x = torch.randn(2, 5, 1, 8, 8, dtype=torch.float64)
    folded = model.batched_forward(params, x)
    plain_first = model.batched_forward(params, x.clone().requires_grad_())
    model.fold_batch_norm = False
    unfolded = model.batched_forward(params, x)
    assert _count_nodes(folded.grad_fn, "_BatchNormBackward") == 3
    assert _count_nodes(plain_first.grad_fn, "_BatchNormBackward") == 4
    assert _count_nodes(unfolded.grad_fn, "_BatchNormBackward") == 4
    for other in (plain_first, unfolded):
        torch.testing.assert_close(folded, other)
    for t in range(2):
        torch.testing.assert_close(folded[t], model(x[t]))
    theta = dict(model.named_parameters())
    g_folded = torch.autograd.grad((folded**2).sum(), list(theta.values()))
    g_unfolded = torch.autograd.grad((unfolded**2).sum(), list(theta.values()))
    conv_biases = {
        f"features.{i}.bias"
        for i, layer in enumerate(model.features)
        if isinstance(layer, torch.nn.Conv2d)
    }
    assert len(conv_biases) == 4
    for name, a, b in zip(theta, g_folded, g_unfolded, strict=True):
        if name in conv_biases:
            assert torch.equal(a, torch.zeros_like(a)), name
        torch.testing.assert_close(a, b)


def _count_nodes(fn, name: str) -> int:
    seen, stack, count = set(), [fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += type(node).__name__ == name
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return count
