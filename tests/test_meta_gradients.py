"""Every meta-gradient path against a float64 reference that loops over tasks with
``torch.autograd.grad(create_graph=True)`` — the check that catches secretly first-order
or wrongly vectorised MAML (pitfalls 1 and 5)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mamlkit import MAML
from mamlkit.models import MLP, Conv4

from .conftest import DEVICES

TASKS = 4


class PlainConvBN(nn.Module):
    """A user-style conv net with affine BatchNorm and no batched_forward (vmap/loop only)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Conv2d(3, 3, 3, stride=2, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 4 * 4, 3),
        )

    def forward(self, x):
        return self.body(x)


def make_case(name: str, gen: torch.Generator):
    """(model, loss_fn, support_x, support_y, query_x, query_y, inner_lr) in float64."""
    if name == "mlp":
        model = MLP((1, 40, 40, 1))
        xs, xq = (
            torch.rand(TASKS, 10, 1, generator=gen) * 10 - 5,
            torch.rand(TASKS, 10, 1, generator=gen) * 10 - 5,
        )
        amp = torch.rand(TASKS, 1, 1, generator=gen) * 4.9 + 0.1
        return model, F.mse_loss, xs, amp * torch.sin(xs), xq, amp * torch.sin(xq), 0.01
    if name == "conv4-stride":
        model = Conv4(out_features=3, filters=4, image_size=8, pooling="stride")
    elif name == "conv4-max":
        model = Conv4(out_features=3, filters=4, image_size=16, pooling="max")
    elif name == "conv4-max-leaky":  # MAML++'s released network
        model = Conv4(3, filters=4, image_size=16, pooling="max", activation="leaky_relu")
    else:
        model = PlainConvBN()
    size = 16 if name.startswith("conv4-max") else 8
    xs = torch.randn(TASKS, 6, 1, size, size, generator=gen)
    xq = torch.randn(TASKS, 6, 1, size, size, generator=gen)
    ys = torch.arange(3).repeat(2).expand(TASKS, -1).contiguous()
    return model, F.cross_entropy, xs, ys, xq, ys.clone(), 0.4


def reference_meta_grad(model, loss_fn, xs, ys, xq, yq, lr, steps, first_order=False):
    """Mean over tasks of d L(φᵢ, Dᵢᵗᵉˢᵗ) / dθ, one task at a time, written out by hand."""
    theta = dict(model.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in theta.items()}
    for t in range(xs.shape[0]):
        phi = dict(theta)
        for _ in range(steps):
            loss = loss_fn(functional_call(model, phi, (xs[t],)), ys[t])
            grads = torch.autograd.grad(loss, list(phi.values()), create_graph=True)
            if first_order:
                grads = [g.detach() for g in grads]
            phi = {n: p - lr * g for (n, p), g in zip(phi.items(), grads)}
        query = loss_fn(functional_call(model, phi, (xq[t],)), yq[t]) / xs.shape[0]
        for n, g in zip(theta, torch.autograd.grad(query, list(theta.values()))):
            total[n] += g
    return total


def first_order_by_definition(model, loss_fn, xs, ys, xq, yq, lr, steps):
    """FOMAML by its definition: mean over tasks of ∇φ L(φᵢ, Dᵢᵗᵉˢᵗ) at the adapted φᵢ,
    with φᵢ reached by plain (non-differentiated) gradient steps."""
    theta = {n: p.detach() for n, p in model.named_parameters()}
    total = {n: torch.zeros_like(p) for n, p in theta.items()}
    for t in range(xs.shape[0]):
        phi = {n: p.clone().requires_grad_() for n, p in theta.items()}
        for _ in range(steps):
            loss = loss_fn(functional_call(model, phi, (xs[t],)), ys[t])
            grads = torch.autograd.grad(loss, list(phi.values()))
            phi = {
                n: (p - lr * g).detach().requires_grad_() for (n, p), g in zip(phi.items(), grads)
            }
        query = loss_fn(functional_call(model, phi, (xq[t],)), yq[t]) / xs.shape[0]
        for n, g in zip(phi, torch.autograd.grad(query, list(phi.values()))):
            total[n] += g
    return total


def library_meta_grad(
    model, loss_fn, xs, ys, xq, yq, lr, steps, impl, first_order=False, device="cpu"
):
    """The library's meta-gradient, computed on ``device`` (a copy of the model goes there)
    and returned on the CPU, so that it compares with the CPU reference."""
    if device != "cpu":
        model = copy.deepcopy(model).to(device)
        xs, ys, xq, yq = (t.to(device) for t in (xs, ys, xq, yq))
    learner = MAML(model, loss_fn, lr, inner_steps=steps, first_order=first_order, impl=impl)
    model.zero_grad(set_to_none=True)
    learner.meta_loss(xs, ys, xq, yq).backward()
    return {n: p.grad.cpu().clone() for n, p in model.named_parameters()}


def rel_error(a: dict, b: dict) -> float:
    va = torch.cat([a[n].flatten() for n in b])
    vb = torch.cat([b[n].flatten() for n in b])
    return ((va - vb).norm() / vb.norm()).item()


CASES = [
    ("mlp", "batched"),
    ("mlp", "vmap"),
    ("mlp", "loop"),
    ("conv4-stride", "batched"),
    ("conv4-stride", "vmap"),
    ("conv4-stride", "loop"),
    ("conv4-max", "batched"),
    ("conv4-max", "vmap"),
    ("conv4-max-leaky", "batched"),
    ("plain-conv-bn", "vmap"),
    ("plain-conv-bn", "loop"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("case,impl", CASES)
def test_second_order_meta_gradient_matches_reference(float64, case, impl, steps, device):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    model, loss_fn, *data, lr = make_case(case, gen)
    ref = reference_meta_grad(model, loss_fn, *data, lr, steps)
    ours = library_meta_grad(model, loss_fn, *data, lr, steps, impl, device=device)
    assert rel_error(ours, ref) <= 1e-8
    for name in ref:  # conv biases before BatchNorm have true gradient 0: absolute check too
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("case,impl", CASES)
def test_first_order_equals_its_definition_and_differs_from_second_order(
    float64, case, impl, steps, device
):
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    model, loss_fn, *data, lr = make_case(case, gen)
    fo = library_meta_grad(model, loss_fn, *data, lr, steps, impl, first_order=True, device=device)
    assert rel_error(fo, first_order_by_definition(model, loss_fn, *data, lr, steps)) <= 1e-8
    assert (
        rel_error(fo, reference_meta_grad(model, loss_fn, *data, lr, steps, first_order=True))
        <= 1e-8
    )
    second = reference_meta_grad(model, loss_fn, *data, lr, steps)
    assert rel_error(fo, second) > 1e-3, "first-order and second-order meta-gradients coincide"


@pytest.mark.parametrize("case", ["mlp", "conv4-stride"])
def test_adapted_params_have_task_axis_and_match_per_task_steps(float64, case):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    model, loss_fn, xs, ys, xq, yq, lr = make_case(case, gen)
    learner = MAML(model, loss_fn, lr, inner_steps=2)
    phi = learner.adapt(xs, ys)
    for name, p in model.named_parameters():
        assert phi[name].shape == (TASKS, *p.shape)
    # task 1 alone must give the same φ as in the batch (tasks do not leak into each other)
    alone = learner.adapt(xs[1:2], ys[1:2])
    for name in phi:
        torch.testing.assert_close(alone[name][0], phi[name][1], rtol=1e-10, atol=1e-12)
    preds = learner.predict(phi, xq)
    assert preds.shape[:2] == (TASKS, xq.shape[1])


def test_query_predictions_match_adapt(float64):
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(0)
    model, loss_fn, xs, ys, xq, yq, lr = make_case("mlp", gen)
    learner = MAML(model, loss_fn, lr)
    preds = learner.query_predictions(xs, ys, xq, steps=3)
    assert len(preds) == 4
    for s in range(4):
        expected = learner.predict(learner.adapt(xs, ys, steps=s), xq)
        torch.testing.assert_close(preds[s], expected.detach(), rtol=1e-10, atol=1e-12)


def test_custom_loss_callable_and_running_stats_model(float64):
    """Any loss callable (vmapped over tasks) and a BatchNorm that tracks running stats."""
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(0)
    model, _, xs, ys, xq, yq, lr = make_case("plain-conv-bn", gen)

    def loss_fn(pred, target):
        return F.cross_entropy(pred, target, label_smoothing=0.1)

    ref = reference_meta_grad(model, loss_fn, xs, ys, xq, yq, lr, 2)
    for impl in ("vmap", "loop"):
        torch.manual_seed(0)
        assert (
            rel_error(library_meta_grad(model, loss_fn, xs, ys, xq, yq, lr, 2, impl), ref) <= 1e-8
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pooling,size", [("stride", 28), ("max", 28)])
def test_omniglot_geometry_conv4_meta_gradient(float64, pooling, size, device):
    """The real Omniglot geometry (28×28, four blocks: 14-7-4-2 or 14-7-3-1), 5-way, two
    inner steps with α = 0.4, batched path against the per-task reference."""
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    model = Conv4(out_features=5, filters=8, image_size=size, pooling=pooling)
    xs = torch.rand(2, 5, 1, size, size, generator=gen)
    xq = torch.rand(2, 5, 1, size, size, generator=gen)
    ys = torch.arange(5).expand(2, -1).contiguous()
    ref = reference_meta_grad(model, F.cross_entropy, xs, ys, xq, ys, 0.4, 2)
    ours = library_meta_grad(
        model, F.cross_entropy, xs, ys, xq, ys, 0.4, 2, "batched", device=device
    )
    assert rel_error(ours, ref) <= 1e-8


@pytest.mark.parametrize("impl", ["batched", "vmap", "loop"])
def test_frozen_parameters_stay_shared_and_unadapted(float64, impl):
    """Parameters with requires_grad=False are not adapted and get no meta-gradient; the
    others' meta-gradient still matches the reference."""
    gen = torch.Generator().manual_seed(8)
    torch.manual_seed(0)
    model, loss_fn, xs, ys, xq, yq, lr = make_case("mlp", gen)
    model.net[0].weight.requires_grad_(False)
    model.net[2].bias.requires_grad_(False)
    learner = MAML(model, loss_fn, lr, inner_steps=2, impl=impl)
    phi = learner.adapt(xs, ys)
    assert "net.0.weight" not in phi and "net.2.bias" not in phi
    model.zero_grad(set_to_none=True)
    learner.meta_loss(xs, ys, xq, yq).backward()
    ours = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    theta = {n: p for n, p in model.named_parameters()}
    total = {n: torch.zeros_like(p) for n, p in ours.items()}
    for t in range(TASKS):
        phi_t = {n: theta[n] for n in ours}
        for _ in range(2):
            loss = loss_fn(functional_call(model, {**theta, **phi_t}, (xs[t],)), ys[t])
            grads = torch.autograd.grad(loss, list(phi_t.values()), create_graph=True)
            phi_t = {n: p - lr * g for (n, p), g in zip(phi_t.items(), grads)}
        q = loss_fn(functional_call(model, {**theta, **phi_t}, (xq[t],)), yq[t]) / TASKS
        for n, g in zip(ours, torch.autograd.grad(q, [theta[n] for n in ours])):
            total[n] += g
    assert rel_error(ours, total) <= 1e-8
    assert model.net[0].weight.grad is None
