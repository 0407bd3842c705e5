"""The device-resident training step (mamlkit.device_step): uncaptured on the CPU it must
compute exactly what the eager loop computes; captured on CUDA (the ``cuda`` cases, run
wherever a GPU exists) its meta-gradient must match the float64 per-task reference and its
training must agree with eager training to float tolerance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mamlkit import MAML, SineTasks
from mamlkit.algorithms.protonet import PrototypicalNetwork
from mamlkit.checkpoint import load_checkpoint
from mamlkit.config import load_config
from mamlkit.device_step import CaptureUnsupported, DeviceStep, check_capturable
from mamlkit.errors import ConfigError, DivergenceError
from mamlkit.models import MLP, Conv4
from mamlkit.tasks import EpisodeTasks
from mamlkit.tasks.base import TaskBatch
from mamlkit.training import Trainer

from .conftest import DEVICES
from .test_meta_gradients import make_case, reference_meta_grad, rel_error

CUDA = [d for d in DEVICES if d == "cuda"]


def fused_adam(learner, lr):
    return torch.optim.Adam(learner.parameters(), lr=lr, fused=True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("case", ["mlp", "conv4-stride", "conv4-max"])
def test_device_step_meta_gradient_matches_reference(float64, case, steps, device):
    """The gradient the (captured, on CUDA) step leaves in ``.grad`` is the exact
    second-order meta-gradient (Adam with lr 0 keeps θ fixed across the calls)."""
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(0)
    model, loss_fn, xs, ys, xq, yq, lr = make_case(case, gen)
    ref = reference_meta_grad(model, loss_fn, xs, ys, xq, yq, lr, steps)
    model = model.to(device)
    learner = MAML(model, loss_fn, lr, inner_steps=steps, impl="batched")
    step = DeviceStep(learner, fused_adam(learner, 0.0), None, capture=device == "cuda", warmup=1)
    batch = TaskBatch(*(t.to(device) for t in (xs, ys, xq, yq)))
    for _ in range(3):  # warm-up, capture + replay, replay
        step(batch)
    assert step.capture_error is None
    assert (step.graph is not None) == (device == "cuda")
    ours = {n: p.grad.cpu() for n, p in model.named_parameters()}
    assert rel_error(ours, ref) <= 1e-8
    assert step.window[2].item() == 3


class NaNQueryAt:
    """Sine tasks whose ``at``-th batch has a NaN query target (a stand-in for divergence
    that a captured graph sees as data, as it would see a real one)."""

    def __init__(self, at: int):
        self.tasks, self.at, self.calls = SineTasks(), at, 0

    def sample(self, tasks, generator):
        self.calls += 1
        batch = self.tasks.sample(tasks, generator)
        if self.calls == self.at:
            batch.query_y[0, 0] = float("nan")
        return batch


def sine_config(iterations, device="cpu", preset="sine_maml", extra=(), **train):
    sets = [*extra,
        f"train.iterations={iterations}",
        "train.meta_batch=4",
        "train.tensorboard=false",
        f"train.device={device}",
        "train.log_every=7",
        "train.checkpoint_every=5",
    ]
    sets += [f"train.{k}={v}" for k, v in train.items()]
    return load_config(preset, sets)


def conv_config(iterations, device="cpu", **train):
    """The Omniglot 5w1s preset with 8 filters (the model the conv tests build)."""
    return sine_config(iterations, device, "omniglot_maml_5w1s", ["model.filters=8"], **train)


def conv_tasks(device):
    images = torch.randint(0, 256, (40, 4, 28, 28), generator=torch.Generator().manual_seed(0))
    return EpisodeTasks(images.to(torch.uint8), 5, 1, 1, rotations=True, device=device)


def train_run(run: Path, kind: str, device: str, device_step: bool, monkeypatch, **train):
    """Train a small sine or Conv4 run; returns the final weights."""
    monkeypatch.setattr(Trainer, "_device_step_on_cpu", device_step)
    torch.manual_seed(0)
    if kind == "sine":
        learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
        tasks, config, metric = SineTasks(), sine_config(23, device, **train), "mse"
    else:
        learner = MAML(Conv4(5, filters=8, global_pool=True), F.cross_entropy, 0.4)
        tasks, config, metric = conv_tasks(device), conv_config(12, device, **train), "accuracy"
    mode = "auto" if device_step else "off"
    config.train.cuda_graphs = mode
    trainer = Trainer(learner, tasks, config, run, metric=metric, progress=False)
    trainer.fit()
    assert trainer.engine == ("eager" if not device_step else "device-eager"), trainer.engine
    return {k: v.cpu() for k, v in learner.state_dict().items()}


@pytest.mark.parametrize("kind", ["sine", "conv4"])
def test_device_step_trains_exactly_like_the_eager_loop(tmp_path, kind, monkeypatch):
    """Same logged numbers and bit-identical weights: the device step changes where the
    health check and the sums live, not what is computed."""
    eager = train_run(tmp_path / "eager", kind, "cpu", False, monkeypatch)
    device = train_run(tmp_path / "device", kind, "cpu", True, monkeypatch)
    for name in eager:
        assert torch.equal(eager[name], device[name]), name
    logs = [(tmp_path / r / "metrics.jsonl").read_text() for r in ("eager", "device")]
    assert logs[0] == logs[1] and logs[0].count("\n") >= 2
    names = sorted(p.name for p in (tmp_path / "eager/checkpoints").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "device/checkpoints").iterdir())
    for name in names:  # weights, optimiser and RNG states and the logging window
        a, _ = load_checkpoint(tmp_path / "eager/checkpoints" / name)
        b, _ = load_checkpoint(tmp_path / "device/checkpoints" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_device_step_resume_is_bit_identical(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "_device_step_on_cpu", True)
    whole = train_run(tmp_path / "whole", "sine", "cpu", True, monkeypatch)
    torch.manual_seed(0)
    learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    config = sine_config(23)
    Trainer(learner, SineTasks(), config, tmp_path / "parts", metric="mse", progress=False).fit()
    # cut the finished run back to its step-15 checkpoint, then resume it
    for ckpt in (tmp_path / "parts/checkpoints").glob("*.safetensors"):
        if ckpt.name != "step-00000015.safetensors":
            ckpt.unlink()
    torch.manual_seed(1)  # the resume must not depend on the global RNG
    learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    trainer = Trainer(learner, SineTasks(), config, tmp_path / "parts", "mse", progress=False)
    trainer.fit(resume=True)
    assert trainer.step == 23
    for name, value in learner.state_dict().items():
        assert torch.equal(whole[name], value), name
    logs = [(tmp_path / r / "metrics.jsonl").read_text() for r in ("whole", "parts")]
    assert logs[0] == logs[1]


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_iteration_is_skipped_and_reported_at_the_next_read(
    tmp_path, device, monkeypatch
):
    """A NaN at iteration 8 (no host sync to catch it there): Adam skips that update and
    every later one, the run stops at the next logging/checkpoint step naming iteration 8,
    and the weights are those after iteration 7 — as the eager loop leaves them."""
    monkeypatch.setattr(Trainer, "_device_step_on_cpu", True)
    torch.manual_seed(0)
    learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    config = sine_config(20, device)
    trainer = Trainer(learner, NaNQueryAt(8), config, tmp_path / "run", "mse", progress=False)
    with pytest.raises(DivergenceError, match="loss became NaN/Inf at iteration 8"):
        trainer.fit()
    assert trainer.engine == ("cuda-graph" if device == "cuda" else "device-eager")
    assert trainer.step == 10  # the next checkpoint step, where the host looked
    status = json.loads((tmp_path / "run/status.json").read_text())
    assert status["status"] == "diverged"
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir()) == [
        "step-00000005.safetensors"
    ]
    # the weights after 7 good iterations, by the eager loop
    monkeypatch.setattr(Trainer, "_device_step_on_cpu", False)
    torch.manual_seed(0)
    reference = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    config = sine_config(7, device, cuda_graphs="off")
    Trainer(reference, NaNQueryAt(8), config, tmp_path / "ref", "mse", progress=False).fit()
    for (name, ours), theirs in zip(learner.state_dict().items(), reference.state_dict().values()):
        if device == "cpu":
            assert torch.equal(ours, theirs), name
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
        assert torch.isfinite(ours).all()


def test_what_cannot_be_captured_says_why():
    model = Conv4(out_features=0, filters=4, pooling="max", bn_running_stats=True)
    protonet = PrototypicalNetwork(model)
    with pytest.raises(CaptureUnsupported, match="reads values back to the host"):
        check_capturable(protonet, fused_adam(protonet, 1e-3))
    maml = MAML(MLP((1, 8, 1)), F.mse_loss, 0.01)
    with pytest.raises(CaptureUnsupported, match="not fused Adam"):
        check_capturable(maml, torch.optim.Adam(maml.parameters(), 1e-3, foreach=True))
    with pytest.raises(CaptureUnsupported, match="need a CUDA device"):
        DeviceStep(maml, fused_adam(maml, 1e-3), None, capture=True)


def test_cuda_graphs_config_is_validated():
    with pytest.raises(ConfigError, match="train.cuda_graphs"):
        load_config("sine_maml", ["train.cuda_graphs=sometimes"])
    with pytest.raises(ConfigError, match="on needs train.device=cuda"):
        load_config("sine_maml", ["train.cuda_graphs=on"])
    assert load_config("sine_maml", ["train.cuda_graphs=off"]).train.cuda_graphs == "off"
    with pytest.raises(ConfigError, match="train.precision"):
        load_config("sine_maml", ["train.precision=fp8"])
    assert load_config("sine_maml", []).train.cuda_graphs == "auto"


def test_protonet_under_auto_trains_eagerly(tmp_path):
    """``auto`` falls back to the eager loop for a learner that cannot be captured."""
    config = load_config(
        "omniglot_protonet_5w1s",
        ["train.iterations=3", "train.tensorboard=false", "train.log_every=1"],
    )
    model = Conv4(out_features=0, filters=4, pooling="max", bn_running_stats=True)
    trainer = Trainer(PrototypicalNetwork(model), conv_tasks("cpu"), config, progress=False)
    trainer._device_step_on_cpu = True
    trainer.fit()
    assert trainer.engine == "eager" and trainer.step == 3


@pytest.mark.skipif(not CUDA, reason="needs a GPU")
@pytest.mark.parametrize("kind", ["sine", "conv4"])
def test_cuda_graph_training_agrees_with_eager(tmp_path, kind, monkeypatch):
    """Captured and eager training on the GPU: the same numbers to float tolerance (the
    kernels are the same; only their launching differs)."""
    eager = train_run(tmp_path / "eager", kind, "cuda", False, monkeypatch)
    graph = train_run_graph(tmp_path / "graph", kind, "cuda")
    for name in eager:
        torch.testing.assert_close(graph[name], eager[name], rtol=1e-4, atol=1e-5)
    logs = [
        [json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for r in ("eager", "graph")
    ]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]]
    for a, b in zip(*logs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)


def train_run_graph(run: Path, kind: str, device: str):
    torch.manual_seed(0)
    if kind == "sine":
        learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
        tasks, config, metric = SineTasks(), sine_config(23, device), "mse"
    else:
        learner = MAML(Conv4(5, filters=8, global_pool=True), F.cross_entropy, 0.4)
        tasks, config, metric = conv_tasks(device), conv_config(12, device), "accuracy"
    trainer = Trainer(learner, tasks, config, run, metric=metric, progress=False)
    trainer.fit()
    assert trainer.engine == "cuda-graph"
    return {k: v.cpu() for k, v in learner.state_dict().items()}
