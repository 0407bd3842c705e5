"""Gradient paths of the non-MAML algorithms against float64 per-task references, on an
MLP and on a conv net with affine BatchNorm, for every task-forward implementation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mamlkit.algorithms import PretrainedClassifier, PretrainedRegression, PrototypicalNetwork
from mamlkit.models import MLP, Conv4

from .conftest import DEVICES
from .test_meta_gradients import rel_error

TASKS, WAYS, SHOTS, QUERIES = 3, 3, 2, 2


def episode(gen, image: bool):
    shape = (1, 8, 8) if image else (5,)
    xs = torch.randn(TASKS, WAYS * SHOTS, *shape, generator=gen)
    xq = torch.randn(TASKS, WAYS * QUERIES, *shape, generator=gen)
    ys = torch.arange(WAYS).repeat_interleave(SHOTS).expand(TASKS, -1).contiguous()
    yq = torch.arange(WAYS).repeat_interleave(QUERIES).expand(TASKS, -1).contiguous()
    return xs, ys, xq, yq


def protonet_reference(model, xs, ys, xq, yq):
    """Per task: embed support+query together, class means, −squared distances, CE."""
    params = dict(model.named_parameters())
    total = 0.0
    for t in range(TASKS):
        z = functional_call(model, params, (torch.cat([xs[t], xq[t]]),))
        zs, zq = z[: xs.shape[1]], z[xs.shape[1] :]
        protos = torch.stack([zs[ys[t] == k].mean(0) for k in range(WAYS)])
        logits = -((zq.unsqueeze(1) - protos.unsqueeze(0)) ** 2).sum(-1)
        total = total + F.cross_entropy(logits, yq[t]) / TASKS
    grads = torch.autograd.grad(total, list(params.values()), create_graph=True)
    return dict(zip(params, grads))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("image", [False, True])
def test_protonet_gradient_matches_reference(float64, image, device):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = (
        Conv4(0, filters=4, image_size=8, pooling="max", blocks=2, bn_running_stats=True)
        if image
        else MLP((5, 16, 8))
    )
    data = episode(gen, image)
    ref = protonet_reference(model, *data)  # on the CPU
    model.to(device)
    learner = PrototypicalNetwork(model)
    if image:  # the reference ran the default layout; the learner runs channels-last
        assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    model.zero_grad()
    learner.meta_loss(*(t.to(device) for t in data)).backward()
    ours = {n: p.grad.cpu() for n, p in model.named_parameters()}
    assert rel_error(ours, ref) <= 1e-8


def test_protonet_channels_last_matches_default_layout_in_float32():
    """The oneDNN kernels differ between layouts; the float32 results must agree to rounding."""
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = Conv4(0, filters=16, image_size=28, pooling="max", bn_running_stats=True)
    twin = Conv4(0, filters=16, image_size=28, pooling="max", bn_running_stats=True)
    twin.load_state_dict(model.state_dict())
    xs, xq = (
        torch.rand(2, 10, 1, 28, 28, generator=gen),
        torch.rand(2, 15, 1, 28, 28, generator=gen),
    )
    ys = torch.arange(5).repeat_interleave(2).expand(2, -1)
    yq = torch.arange(5).repeat_interleave(3).expand(2, -1)
    grads = []
    for m, cl in ((model, True), (twin, False)):
        loss = PrototypicalNetwork(m, channels_last=cl).meta_loss(xs, ys, xq, yq)
        grads.append(
            dict(zip(dict(m.named_parameters()), torch.autograd.grad(loss, list(m.parameters()))))
        )
    # the whole gradient (the conv biases' own are ~0, BatchNorm cancels them: only rounding)
    assert rel_error(grads[0], grads[1]) <= 1e-4


@pytest.mark.parametrize("impl", ["batched", "vmap", "loop"])
def test_pretrained_regression_gradient_is_plain_regression(float64, impl):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    model = MLP((1, 40, 40, 1))
    xs, xq = torch.randn(TASKS, 10, 1, generator=gen), torch.randn(TASKS, 10, 1, generator=gen)
    ys, yq = torch.sin(xs), torch.sin(xq)
    params = dict(model.named_parameters())
    loss = (
        sum(
            F.mse_loss(
                functional_call(model, params, (torch.cat([xs[t], xq[t]]),)),
                torch.cat([ys[t], yq[t]]),
            )
            for t in range(TASKS)
        )
        / TASKS
    )
    ref = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    learner = PretrainedRegression(model, F.mse_loss, 0.01, impl=impl)
    model.zero_grad()
    learner.meta_loss(xs, ys, xq, yq).backward()
    assert rel_error({n: p.grad for n, p in model.named_parameters()}, ref) <= 1e-8


@pytest.mark.parametrize("impl", ["batched", "vmap", "loop"])
def test_pretrained_classifier_gradient_and_fine_tuning(float64, impl):
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    model = Conv4(7, filters=4, image_size=8, blocks=2)
    x = torch.randn(1, 12, 1, 8, 8, generator=gen)
    y = torch.randint(0, 7, (1, 12), generator=gen)
    params = dict(model.named_parameters())
    ref_loss = F.cross_entropy(functional_call(model, params, (x[0],)), y[0])
    ref = dict(zip(params, torch.autograd.grad(ref_loss, list(params.values()))))
    learner = PretrainedClassifier(model, eval_inner_lr=0.5, impl=impl)
    model.zero_grad()
    learner.meta_loss(x, y).backward()
    assert rel_error({n: p.grad for n, p in model.named_parameters()}, ref) <= 1e-8

    # fine-tuning: a new zero-initialised 3-way head, then plain SGD on the support set
    xs, ys, xq, _ = episode(gen, image=True)
    preds = learner.query_predictions(xs, ys, xq, steps=2)
    assert len(preds) == 3 and preds[0].shape == (TASKS, WAYS * QUERIES, WAYS)
    assert torch.all(preds[0] == 0)  # zero head before any step
    for t in range(TASKS):  # per-task reference of the two SGD steps
        phi = {
            n: p.detach().clone().requires_grad_()
            for n, p in params.items()
            if not n.startswith("head.")
        }
        phi["head.weight"] = torch.zeros(WAYS, model.head.in_features, requires_grad=True)
        phi["head.bias"] = torch.zeros(WAYS, requires_grad=True)
        twin = Conv4(WAYS, filters=4, image_size=8, blocks=2)
        for _ in range(2):
            loss = F.cross_entropy(functional_call(twin, phi, (xs[t],)), ys[t])
            grads = torch.autograd.grad(loss, list(phi.values()))
            phi = {
                n: (p - 0.5 * g).detach().requires_grad_() for (n, p), g in zip(phi.items(), grads)
            }
        expected = functional_call(twin, phi, (xq[t],))
        torch.testing.assert_close(preds[2][t], expected.detach(), rtol=1e-9, atol=1e-10)


def test_protonet_evaluates_with_running_statistics(float64):
    """In eval mode the embedding of a query must not depend on the rest of the episode."""
    torch.manual_seed(0)
    model = Conv4(0, filters=4, image_size=8, pooling="max", blocks=2, bn_running_stats=True)
    learner = PrototypicalNetwork(model)
    xs, ys, xq, yq = episode(torch.Generator().manual_seed(3), image=True)
    learner.meta_loss(xs, ys, xq, yq)  # one training episode updates the running stats
    learner.eval()
    _, q_all = learner.embed(xs, xq)
    _, q_one = learner.embed(xs[:, :1], xq[:, :1])
    torch.testing.assert_close(q_one[:, 0], q_all[:, 0])


def test_protonet_logits_are_negative_squared_distances(float64):
    from mamlkit.algorithms.protonet import prototype_logits

    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]])
    labels = torch.tensor([[0, 0, 1]])
    query = torch.tensor([[[1.0, 1.0]]])
    logits = prototype_logits(support, labels, query, 2)
    torch.testing.assert_close(logits, torch.tensor([[[-1.0, -10.0]]]))
