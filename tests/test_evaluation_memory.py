"""Test-time adaptation runs in memory independent of the number of steps: no step's
autograd history and no step's predictions outlive the step."""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn.functional as F

from mamlkit import MAML, SineTasks
from mamlkit.algorithms import PretrainedRegression
from mamlkit.evaluation import evaluate
from mamlkit.models import MLP

STEPS = 12


class Spy:
    """Wraps a learner's task forward: sees the parameters of every prediction and keeps
    weak references to every prediction made without autograd (the recorded ones)."""

    def __init__(self, learner):
        self.forward, self.learner = learner._forward, learner
        self.histories, self.predictions, self.alive_at_reduce = [], [], []
        learner._forward = self

    def __call__(self, params, x):
        out = self.forward(params, x)
        if not torch.is_grad_enabled():
            self.histories.append([p.grad_fn is not None for p in params.values()])
            self.predictions.append(weakref.ref(out))
        return out


@pytest.mark.parametrize("kind", ["maml", "pretrained"])
def test_test_time_adaptation_keeps_no_history_and_no_old_predictions(kind, monkeypatch):
    torch.manual_seed(0)
    model = MLP((1, 16, 1))
    learner = (
        MAML(model, F.mse_loss, 0.01)
        if kind == "maml"
        else PretrainedRegression(model, F.mse_loss, 0.01)
    )
    spy = Spy(learner)
    from mamlkit import evaluation

    mse = evaluation.METRICS["mse"]

    def metric(pred, target):
        spy.alive_at_reduce.append(sum(r() is not None for r in spy.predictions))
        return mse(pred, target)

    monkeypatch.setitem(evaluation.METRICS, "mse", metric)
    result = evaluate(learner, SineTasks(5, 5), num_tasks=6, steps=STEPS, metric="mse")
    assert [r["steps"] for r in result] == list(range(STEPS + 1))
    # φ after step s is a fresh leaf: no chain of s additions back to θ
    assert len(spy.histories) == STEPS + 1 and not any(any(h) for h in spy.histories[1:])
    # each step's predictions are reduced to per-task metrics before the next step
    assert spy.alive_at_reduce and max(spy.alive_at_reduce) == 1
