"""Single tasks, no-grad contexts and impl="auto" on modules vmap cannot run (issue 11,
items 7 and 8)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mamlkit import MAML, PrototypicalNetwork
from mamlkit.models import MLP


def sine_task(gen, n=5):
    xs = torch.rand(n, 1, generator=gen) * 10 - 5
    return xs, torch.sin(xs)


def test_adapt_refuses_a_task_without_the_task_axis():
    learner = MAML(MLP((1, 8, 1)), F.mse_loss, 0.01)
    xs, ys = sine_task(torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="task axis"):
        learner.adapt(xs, ys)  # [5, 1]: five one-point tasks before the fix
    with pytest.raises(ValueError, match="support_y"):
        learner.adapt(xs.unsqueeze(0), ys[:3].unsqueeze(0))


def test_adapt_task_is_adapt_of_one_task():
    torch.manual_seed(0)
    learner = MAML(MLP((1, 8, 1)), F.mse_loss, 0.05)
    xs, ys = sine_task(torch.Generator().manual_seed(1))
    phi = learner.adapt_task(xs, ys, steps=3)
    batched = learner.adapt(xs.unsqueeze(0), ys.unsqueeze(0), steps=3)
    assert phi.keys() == batched.keys()
    for name, p in phi.items():
        assert p.shape == dict(learner.model.named_parameters())[name].shape
        torch.testing.assert_close(p, batched[name][0])


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_test_time_adaptation_under_no_grad_contexts(context):
    torch.manual_seed(0)
    learner = MAML(MLP((1, 8, 1)), F.mse_loss, 0.05)
    xs, ys = sine_task(torch.Generator().manual_seed(2))
    xq = torch.linspace(-5, 5, 7).unsqueeze(1)
    expected = learner.adapt(xs[None], ys[None], steps=2, first_order=True)
    expected_pred = learner.query_predictions(xs[None], ys[None], xq[None], 2)[-1][0]
    with context():
        phi = learner.adapt(xs[None], ys[None], steps=2)
        pred = learner.predict_task(xs, ys, xq, steps=2)
        pred_from_phi = learner.predict(phi, xq[None])[0]
    assert not any(p.requires_grad for p in phi.values())
    for name, p in phi.items():
        torch.testing.assert_close(p, expected[name].detach())
        assert not torch.equal(p, dict(learner.model.named_parameters())[name].detach())
    torch.testing.assert_close(pred, expected_pred)
    torch.testing.assert_close(pred_from_phi, expected_pred)


def test_predict_task_for_prototypical_networks_under_inference_mode():
    torch.manual_seed(0)
    net = PrototypicalNetwork(nn.Flatten(), channels_last=False)
    xs = torch.eye(3).view(3, 1, 1, 3)
    with torch.inference_mode():
        logits = net.predict_task(xs, torch.arange(3), xs.flip(0))
    assert logits.argmax(-1).tolist() == [2, 1, 0]


class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 1))

    def forward(self, x):
        return self.body(x)


def test_auto_runs_dropout_with_a_mask_per_task():
    torch.manual_seed(0)
    learner = MAML(DropoutNet(), F.mse_loss, 0.01)
    assert learner.impl == "vmap"
    x = torch.ones(4, 6, 1)
    learner.meta_loss(x, x, x, x).backward()  # failed in vmap's randomness error mode
    out = learner.predict(learner.adapt(x, x, steps=0), x)
    assert not torch.equal(out[0], out[1])  # same input and weights: only the masks differ


class LSTMRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(1, 8, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x):  # x [N, L, 1]
        return self.head(self.lstm(x)[0][:, -1])


def test_auto_runs_recurrent_models_as_a_loop():
    torch.manual_seed(0)
    learner = MAML(LSTMRegressor(), F.mse_loss, 0.01)
    assert learner.impl == "loop"
    x, y = torch.randn(2, 3, 4, 1), torch.randn(2, 3, 1)
    learner.meta_loss(x, y, x, y).backward()
    with pytest.raises(ValueError, match="LSTM"):
        MAML(LSTMRegressor(), F.mse_loss, 0.01, impl="vmap")


class DataDependentNet(nn.Module):
    """Branches on a tensor's value: no vmap batching rule, fine in a loop."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 1)

    def forward(self, x):
        h = self.fc(x)
        return h if h.sum() > 0 else -h


def test_auto_falls_back_to_loop_when_vmap_fails_and_says_so():
    torch.manual_seed(0)
    learner = MAML(DataDependentNet(), F.mse_loss, 0.01)
    x = torch.randn(3, 4, 1)
    with pytest.warns(UserWarning, match="loop"):
        loss = learner.meta_loss(x, x, x, x)
    loss.backward()
    assert learner.impl == "loop"
    reference = MAML(learner.model, F.mse_loss, 0.01, impl="loop")
    torch.testing.assert_close(reference.meta_loss(x, x, x, x), loss.detach())


class ShiftedMLP(MLP):
    """Overrides forward only: MLP.batched_forward would compute the unshifted network."""

    def forward(self, x):
        return super().forward(x) + 1.0


def test_subclass_overriding_forward_does_not_inherit_batched_forward():
    torch.manual_seed(0)
    model = ShiftedMLP((1, 8, 1))
    learner = MAML(model, F.mse_loss, 0.01)
    assert learner.impl == "vmap"
    x = torch.randn(2, 3, 1)
    out = learner.predict(learner.adapt(x, x, steps=0), x)
    torch.testing.assert_close(out, torch.stack([model(xt) for xt in x]))
    with pytest.raises(ValueError, match="inherits batched_forward"):
        MAML(ShiftedMLP((1, 8, 1)), F.mse_loss, 0.01, impl="batched")
