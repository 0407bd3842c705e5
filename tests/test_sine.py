"""Sine tasks, reproducibility, evaluation, and that a short meta-training run learns."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mamlkit import MAML, SineTasks
from mamlkit.config import load_config
from mamlkit.evaluation import evaluate, mean_ci95
from mamlkit.models import MLP
from mamlkit.training import Trainer


def test_sampler_honours_ranges_and_shapes():
    tasks = SineTasks(k_support=7, k_query=9)
    batch = tasks.sample(4000, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (4000, 7, 1) and batch.query_x.shape == (4000, 9, 1)
    amp, phase = batch.info["amplitude"], batch.info["phase"]
    assert 0.1 <= amp.min() and amp.max() <= 5.0 and amp.min() < 0.2 and amp.max() > 4.9
    assert 0.0 <= phase.min() and phase.max() <= math.pi and phase.max() > 3.1
    for x in (batch.support_x, batch.query_x):
        assert -5.0 <= x.min() and x.max() <= 5.0 and x.min() < -4.99 and x.max() > 4.99
    expected = amp.view(-1, 1, 1) * torch.sin(batch.query_x - phase.view(-1, 1, 1))
    torch.testing.assert_close(batch.query_y, expected)
    # support and query points are drawn independently
    assert not torch.equal(batch.support_x[:, :7], batch.query_x[:, :7])


def test_same_seed_same_tasks_and_grid_queries():
    a = SineTasks(query_grid=50).sample(3, torch.Generator().manual_seed(5))
    b = SineTasks(query_grid=50).sample(3, torch.Generator().manual_seed(5))
    c = SineTasks(query_grid=50).sample(3, torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.support_x, c.support_x)
    torch.testing.assert_close(a.query_x[1, :, 0], torch.linspace(-5, 5, 50))


def test_mean_ci95():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mean, ci = mean_ci95(values)
    assert mean == 2.5
    assert abs(ci - 1.96 * values.double().std().item() / 2) < 1e-12


def _train(config_sets, seed=0):
    config = load_config("sine_maml", [f"train.seed={seed}", *config_sets])
    torch.manual_seed(seed)
    learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    Trainer(learner, SineTasks(), config, progress=False).fit()
    return learner


def test_same_seed_same_training_result():
    a = _train(["train.iterations=30"])
    b = _train(["train.iterations=30"])
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), n


def test_short_training_lowers_post_update_mse_on_held_out_tasks():
    torch.manual_seed(0)
    untrained = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    held_out = SineTasks(10, 10, query_grid=100)
    before = evaluate(untrained, held_out, 300, steps=1, metric="mse", seed=99)[1]["mse"]
    trained = _train(["train.iterations=1500"])
    after = evaluate(trained, held_out, 300, steps=1, metric="mse", seed=99)
    assert after[1]["mse"] < 0.6 * before, (before, after[1])
    assert after[1]["mse"] < after[0]["mse"]  # adaptation helps on new tasks
