"""``max_pool2x2`` (mamlkit.models.pool) against ``F.max_pool2d(x, 2)``: values, gradients of
the first three orders (ties and odd sizes included), torch.func transforms, and Conv4 /
ResNet-12 pooling before their activation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from mamlkit.models import Conv4, ResNet12
from mamlkit.models.pool import MaxPool2x2, max_pool2x2


def _three_derivatives(pool, x: torch.Tensor) -> list[torch.Tensor]:
    """The value, then d/dx of a cubic of the pooled map, of its square, of that's square."""
    value = pool(x)
    g1 = torch.autograd.grad((value**3).sum(), x, create_graph=True)[0]
    g2 = torch.autograd.grad((g1**2).sum(), x, create_graph=True)[0]
    g3 = torch.autograd.grad((g2**2).sum(), x)[0]
    return [value.detach(), g1.detach(), g2.detach(), g3]


@pytest.mark.parametrize("shape", [(2, 3, 8, 6), (1, 2, 7, 9), (4, 5, 3, 2), (3, 8, 6)])
@pytest.mark.parametrize("values", ["ties", "random"])
def test_values_and_derivatives_equal_max_pool2d(shape, values):
    """Exactly equal, in float32: with ties (small integers) the first maximum of each
    window in row-major order gets the gradient, as in F.max_pool2d; an odd row or
    column is dropped and gets zeros."""
    gen = torch.Generator().manual_seed(0)
    if values == "ties":
        x = torch.randint(-1, 2, shape, generator=gen).float()
    else:
        x = torch.randn(shape, generator=gen)
    ours = _three_derivatives(max_pool2x2, x.clone().requires_grad_())
    theirs = _three_derivatives(lambda t: F.max_pool2d(t, 2), x.clone().requires_grad_())
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(max_pool2x2(x), F.max_pool2d(x, 2))


def test_gradcheck_and_gradgradcheck_float64():
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    assert gradcheck(max_pool2x2, (x,))
    assert gradgradcheck(max_pool2x2, (x,))


def test_nan_propagates_and_small_inputs_are_refused():
    x = torch.tensor([[[[1.0, float("nan")], [0.0, 2.0]]]], requires_grad=True)
    assert torch.isnan(max_pool2x2(x)).all()
    with pytest.raises(ValueError, match="height and width >= 2"):
        max_pool2x2(torch.zeros(1, 1, 1, 4))


def test_torch_func_transforms_channels_last_and_other_devices_take_max_pool2d():
    """Under vmap/torch.func.grad (which a custom autograd.Function without a vmap rule
    cannot join), on channels-last tensors and off the CPU it is F.max_pool2d itself."""
    x = torch.randint(-1, 2, (3, 2, 4, 6, 6)).float()
    grad = torch.func.vmap(torch.func.grad(lambda t: (max_pool2x2(t) ** 2).sum()))(x)
    ref = torch.func.vmap(torch.func.grad(lambda t: (F.max_pool2d(t, 2) ** 2).sum()))(x)
    assert torch.equal(grad, ref)
    last = x[0].contiguous(memory_format=torch.channels_last).requires_grad_()
    out = max_pool2x2(last)
    assert out.grad_fn is not None and "MaxPool2DWithIndices" in type(out.grad_fn).__name__
    # another device than the CPU (here PyTorch's shape-only "meta" device): not measured
    # there, so PyTorch's own kernel
    elsewhere = max_pool2x2(torch.empty(1, 2, 4, 4, device="meta", requires_grad=True))
    assert "MaxPool2DWithIndices" in type(elsewhere.grad_fn).__name__


def _relu_then_pool(model: Conv4, x: torch.Tensor) -> torch.Tensor:
    """Conv4's features in their declared order (each activation before its max-pool)."""
    h = x
    for layer in model.features:
        h = F.max_pool2d(h, 2) if isinstance(layer, torch.nn.MaxPool2d) else layer(h)
    return model.head(h.flatten(1))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_conv4_pools_before_its_activation_with_the_same_result(activation):
    """forward() and batched_forward() pool before the (monotone) activation: the same
    values as activation-then-pool and, in float64, the same gradients."""
    torch.manual_seed(0)
    model = Conv4(3, filters=4, image_size=16, pooling="max", activation=activation).double()
    assert isinstance(model.features[3], MaxPool2x2)
    x = torch.randn(5, 1, 16, 16, dtype=torch.float64)
    params = list(model.parameters())
    ours, theirs = model(x), _relu_then_pool(model, x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    g_ours = torch.autograd.grad((ours**2).sum(), params)
    g_theirs = torch.autograd.grad((theirs**2).sum(), params)
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    order = [type(layer).__name__ for _, layer in model._layers()[:4]]
    assert order[2] == "MaxPool2x2" and order[3] in ("ReLU", "LeakyReLU")
    batched = model.batched_forward(
        {n: p.unsqueeze(0) for n, p in model.named_parameters()}, x.unsqueeze(0)
    )
    torch.testing.assert_close(batched[0], theirs, rtol=1e-10, atol=1e-12)


def test_resnet12_block_pools_before_its_activation():
    torch.manual_seed(0)
    model = ResNet12(3, 1, channels=(4, 4, 4, 4)).double()
    block = model.blocks[0]
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    h = block.bn3(
        block.conv3(
            F.leaky_relu(block.bn2(block.conv2(F.leaky_relu(block.bn1(block.conv1(x)), 0.1))), 0.1)
        )
    )
    expected = F.max_pool2d(F.leaky_relu(h + block.shortcut(x), 0.1), 2)  # fmt: skip
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-12)


def test_conv4_keeps_the_order_of_an_activation_that_is_not_monotone():
    """A layer put in place of the ReLU that max-pooling does not commute with (GELU, a
    negative slope) runs before the pool, as declared."""
    torch.manual_seed(0)
    for swapped in (torch.nn.GELU(), torch.nn.LeakyReLU(-0.5)):
        model = Conv4(3, filters=4, image_size=16, pooling="max").double()
        model.features[2] = swapped
        assert model._layers()[2][1] is swapped
        x = torch.randn(5, 1, 16, 16, dtype=torch.float64)
        torch.testing.assert_close(model(x), _relu_then_pool(model, x), rtol=0, atol=0)
