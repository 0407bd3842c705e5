"""The MAML family on the one engine (learned step sizes, head-only adaptation) against
float64 references that loop over tasks with ``autograd.grad(create_graph=True)``: the
gradients with respect to θ *and* to the learned step sizes, on the MLP and on Conv4 with
BatchNorm, on every device the machine has."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mamlkit import ANIL, MAML, MetaSGD
from mamlkit.algorithms.anil import last_linear
from mamlkit.functional import InnerUpdate, PerLayerPerStepStepSize, adaptable_params
from mamlkit.models import MLP

from .conftest import DEVICES
from .test_meta_gradients import TASKS, make_case, rel_error


class LayerStepMAML(MAML):
    """MAML++'s per-layer, per-step learned step sizes (LSLR): an algorithm made by
    overriding one hook, as a user would."""

    def make_update(self) -> InnerUpdate:
        return PerLayerPerStepStepSize(
            adaptable_params(self.model, self.adapted), self.inner_steps, self.inner_lr
        )


def reference(model, loss_fn, data, steps, step_size, adapted=None):
    """Mean over tasks of the query loss after ``steps`` updates φ ← φ − α(name, s) ⊙ ∇,
    one task at a time; ``adapted``: names the inner loop adapts (default all)."""
    xs, ys, xq, yq = data
    theta = dict(model.named_parameters())
    names = [n for n in theta if adapted is None or n in adapted]
    total = 0.0
    for t in range(TASKS):
        phi = dict(theta)
        for s in range(steps):
            loss = loss_fn(functional_call(model, phi, (xs[t],)), ys[t])
            grads = torch.autograd.grad(loss, [phi[n] for n in names], create_graph=True)
            phi.update({n: phi[n] - step_size(n, s) * g for n, g in zip(names, grads)})
        total = total + loss_fn(functional_call(model, phi, (xq[t],)), yq[t]) / TASKS
    return total


def grads_of(loss, tensors: dict) -> dict:
    values = torch.autograd.grad(loss, list(tensors.values()), allow_unused=True)
    return {
        n: (torch.zeros_like(t) if g is None else g).cpu()
        for (n, t), g in zip(tensors.items(), values)
    }


def library(learner, data, device):
    learner = copy.deepcopy(learner).to(device)
    loss = learner.meta_loss(*(t.to(device) for t in data))
    return learner, grads_of(loss, dict(learner.named_parameters()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("case", ["mlp", "conv4-stride", "conv4-max"])
def test_meta_sgd_gradient_wrt_weights_and_step_sizes(float64, case, steps, device):
    gen = torch.Generator().manual_seed(21)
    torch.manual_seed(0)
    model, loss_fn, *data, lr = make_case(case, gen)
    learner = MetaSGD(model, loss_fn, lr, inner_steps=steps, impl="batched")
    with torch.no_grad():  # distinct step sizes, so that mixing two of them up is caught
        for alpha in learner.update.alpha.values():
            alpha.mul_(torch.rand(alpha.shape, generator=gen) + 0.5)
    alphas = learner.inner_lrs
    ref_loss = reference(model, loss_fn, data, steps, lambda n, s: alphas[n])
    ref = grads_of(ref_loss, dict(learner.named_parameters()))
    moved, ours = library(learner, data, device)
    assert rel_error(ours, ref) <= 1e-8
    alpha_names = [n for n in ref if n.startswith("update.")]
    assert alpha_names and all(ref[n].abs().sum() > 0 for n in alpha_names)
    for name in alpha_names:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-8, atol=1e-12)
    assert set(moved.inner_lrs) == {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize(
    "case,impl",
    [
        ("mlp", "batched"),
        ("conv4-stride", "batched"),
        ("conv4-max", "batched"),
        ("plain-conv-bn", "vmap"),
        ("plain-conv-bn", "loop"),
    ],
)
def test_anil_adapts_the_head_and_meta_learns_the_body(float64, case, impl, steps, device):
    gen = torch.Generator().manual_seed(22)
    torch.manual_seed(0)
    model, loss_fn, *data, lr = make_case(case, gen)
    learner = ANIL(model, loss_fn, lr, inner_steps=steps, impl=impl)
    head = last_linear(model)
    adapted = {n for n, _ in model.named_parameters() if n.startswith(head + ".")}
    phi = learner.adapt(data[0], data[1])
    assert set(phi) == adapted
    ref = grads_of(
        reference(model, loss_fn, data, steps, lambda n, s: lr, adapted),
        dict(model.named_parameters()),
    )
    _, ours = library(learner, data, device)
    ours = {n[len("model.") :]: g for n, g in ours.items()}
    assert rel_error(ours, ref) <= 1e-8
    body = [n for n in ref if n not in adapted and ref[n].abs().sum() > 0]
    assert body, "the body must get a meta-gradient"
    # and it is not MAML's: adapting everything gives another meta-gradient
    maml = grads_of(
        reference(model, loss_fn, data, steps, lambda n, s: lr), dict(model.named_parameters())
    )
    assert rel_error(ours, maml) > 1e-3


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["mlp", "conv4-stride"])
def test_per_layer_per_step_step_sizes(float64, case, device):
    gen = torch.Generator().manual_seed(23)
    torch.manual_seed(0)
    model, loss_fn, *data, lr = make_case(case, gen)
    learner = LayerStepMAML(model, loss_fn, lr, inner_steps=3, impl="batched")
    with torch.no_grad():
        for alpha in learner.update.alpha.values():
            alpha.mul_(torch.rand(alpha.shape, generator=gen) + 0.5)
    table = {n.replace("-", "."): a for n, a in learner.update.alpha.items()}
    ref_loss = reference(model, loss_fn, data, 3, lambda n, s: table[n][s])
    ref = grads_of(ref_loss, dict(learner.named_parameters()))
    _, ours = library(learner, data, device)
    assert rel_error(ours, ref) <= 1e-8
    # every step's step size gets its own gradient
    assert all((ref[n] != 0).all() for n in ref if n.startswith("update."))


def test_first_order_meta_sgd_still_learns_its_step_sizes(float64):
    gen = torch.Generator().manual_seed(24)
    torch.manual_seed(0)
    model, loss_fn, *data, lr = make_case("mlp", gen)
    learner = MetaSGD(model, loss_fn, lr, inner_steps=2, first_order=True)
    learner.meta_loss(*data).backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in learner.update.alpha.values())


def test_selection_errors_and_frozen_parameters():
    model = MLP((1, 8, 8, 1))
    with pytest.raises(ValueError, match="selects no trainable parameter"):
        MAML(model, F.mse_loss, 0.1, adapt="nothing")
    with pytest.raises(ValueError, match="one number"):
        MetaSGD(model, F.mse_loss, [0.1, 0.05], inner_steps=2)
    with pytest.raises(TypeError, match="head="):
        ANIL(model, F.mse_loss, 0.1, adapt="net.0")
    # a frozen head is neither adapted nor meta-learned
    model.net[0].weight.requires_grad_(False)
    learner = MAML(model, F.mse_loss, 0.1, adapt=["net.0", "net.2"])
    assert set(adaptable_params(model, learner.adapted)) == {
        "net.0.bias",
        "net.2.weight",
        "net.2.bias",
    }


def test_test_time_adaptation_memory_does_not_grow_with_steps():
    """query_predictions cuts the graph after every step: the adapted parameters of step s
    hold no reference to those of step s − 1."""
    import weakref

    learner = MAML(MLP((1, 8, 1)), F.mse_loss, 0.01)
    xs = torch.rand(3, 5, 1)
    seen = []

    def record(step, phi):
        seen.append(weakref.ref(phi["net.0.weight"]))

    theta = {n: p.detach().requires_grad_() for n, p in learner.model.named_parameters()}
    with torch.enable_grad():
        learner.adapt(xs, xs, 5, params=theta, first_order=True, on_step=record, keep_graph=False)
    import gc

    gc.collect()
    assert sum(ref() is not None for ref in seen[:-1]) == 0


def test_a_deep_copy_runs_its_own_model():
    """learn2learn-style cloning: the copy's forward must use the copy's weights."""
    learner = ANIL(MLP((1, 8, 1)), F.mse_loss, 0.1)
    twin = copy.deepcopy(learner)
    with torch.no_grad():
        for p in twin.model.parameters():
            p.add_(1.0)
    x = torch.rand(2, 4, 1)
    phi = {n: p.unsqueeze(0).expand(2, *p.shape) for n, p in twin.model.named_parameters()}
    head_only = {n: v for n, v in phi.items() if n.startswith("net.2")}
    expected = torch.stack([twin.model(xi) for xi in x])
    torch.testing.assert_close(twin.predict(head_only, x), expected)
    assert not torch.allclose(learner.predict(head_only, x), expected)
