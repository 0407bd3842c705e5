"""ResNet-12 as ``model.name: resnet12`` (issue 26, item 12): exact second-order
meta-gradients against the float64 per-task reference, DropBlock, config keys and their
validation, the memory estimate, the preset, a tiny run through the CLI and the benchmark
workload. Channel counts are tiny so that the file runs in seconds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from mamlkit import MAML, load_config
from mamlkit.build import build_learner
from mamlkit.config import largest_tensor_bytes, shipped_presets
from mamlkit.errors import ConfigError
from mamlkit.functional import stack_params, task_forward
from mamlkit.models import ResNet12
from mamlkit.models.resnet import DropBlock
from mamlkit.tasks.base import TaskBatch

from .imagefolders import write_image_folder
from .test_cli_bad_input import assert_user_error, run_cli
from .test_meta_gradients import library_meta_grad, reference_meta_grad, rel_error

CHANNELS = (2, 3, 3, 4)
TINY = ["model.name=resnet12", "model.channels=[2,2,2,2]"]


def make_case(seed: int, tasks: int = 2, **kwargs):
    """(model, loss_fn, support_x, support_y, query_x, query_y, inner_lr): 3-way tasks of
    16×16 grey images, two per class, on a ResNet-12 of ``CHANNELS``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(0)
    model = ResNet12(3, in_channels=1, channels=CHANNELS, **kwargs)
    xs = torch.randn(tasks, 6, 1, 16, 16, generator=gen)
    xq = torch.randn(tasks, 6, 1, 16, 16, generator=gen)
    ys = torch.arange(3).repeat(2).expand(tasks, -1).contiguous()
    return model, F.cross_entropy, xs, ys, xq, ys.clone(), 0.4


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("impl", ["vmap", "loop"])
def test_second_order_meta_gradient_matches_float64_reference(float64, impl, steps):
    model, loss_fn, *data, lr = make_case(1)
    ref = reference_meta_grad(model, loss_fn, *data, lr, steps)
    ours = library_meta_grad(model, loss_fn, *data, lr, steps, impl)
    assert rel_error(ours, ref) <= 1e-8
    for name in ref:  # every tensor on its own (the shortcut's and the head's included)
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-8, atol=1e-12)
    first = library_meta_grad(model, loss_fn, *data, lr, steps, impl, first_order=True)
    assert rel_error(first, ref) > 1e-3, "second order equals first order: Hessian terms lost"


def test_auto_runs_vmap_even_with_running_statistics_asked_for(float64):
    model, loss_fn, *_ = make_case(2)
    assert MAML(model, loss_fn, 0.4).impl == "vmap"
    # MAML normalises with batch statistics: running ones are dropped, vmap still runs
    tracked, *_ = make_case(2, bn_running_stats=True)
    assert MAML(tracked, loss_fn, 0.4).impl == "vmap"
    with pytest.raises(ValueError, match="no batched_forward"):
        MAML(model, loss_fn, 0.4, impl="batched")


def test_dropblock_drops_whole_squares_and_keeps_the_mean_scale():
    torch.manual_seed(0)
    block = DropBlock(0.3, 3)
    x = torch.ones(2, 4, 9, 9)
    out = block(x)
    dropped = (out == 0).to(x.dtype)
    kept = out[out != 0]
    assert 0 < dropped.mean() < 1
    # the kept values are scaled by (all / kept), so the map's sum is unchanged
    torch.testing.assert_close(kept, torch.full_like(kept, x.numel() / kept.numel()))
    # every dropped pixel lies in a dropped 3×3 square inside the map (an opening)
    inside = (F.avg_pool2d(dropped, 3, stride=1) > 1 - 1e-6).to(x.dtype)
    torch.testing.assert_close(F.max_pool2d(F.pad(inside, [2] * 4), 3, stride=1), dropped)
    block.eval()
    assert torch.equal(block(x), x)
    assert torch.equal(DropBlock(0.0, 3)(x), x)  # off: the identity in training too
    # a block larger than the map is cut to it: each channel is dropped whole or kept
    whole = DropBlock(0.5, 20)(torch.ones(1, 16, 4, 4)).flatten(2)
    assert torch.equal(whole.amax(2), whole.amin(2)) and (whole == 0).any()


def test_dropblock_is_off_by_default_and_draws_a_mask_per_task_under_vmap():
    model, *_ = make_case(3)
    assert all(block.dropblock.drop_prob == 0 for block in model.blocks)
    dropping = ResNet12(3, in_channels=1, channels=CHANNELS, dropblock=0.5, dropblock_size=2)
    assert [b.dropblock.drop_prob for b in dropping.blocks] == [0, 0, 0.5, 0.5]
    x = torch.randn(1, 6, 1, 32, 32).expand(2, -1, -1, -1, -1)  # the same images twice
    for net, differ in ((model, False), (dropping, True)):
        forward, impl = task_forward(net, "vmap")
        params = stack_params(dict(net.named_parameters()), 2)
        out = forward(params, x)
        assert impl == "vmap" and (not torch.allclose(out[0], out[1])) == differ
    dropping.eval()
    torch.testing.assert_close(dropping(x[0]), dropping(x[0]))


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "metasgd", "anil", "mamlpp", "reptile"])
def test_the_maml_family_builds_and_steps_on_resnet12(algorithm):
    config = load_config(
        "omniglot_maml_5w1s", [*TINY, f"algorithm.name={algorithm}", "task.image_size=16"]
    )
    learner = build_learner(config)
    assert isinstance(learner.model, ResNet12) and learner.model.head.out_features == 5
    gen = torch.Generator().manual_seed(0)
    xs = torch.rand(2, 5, 1, 16, 16, generator=gen)
    ys = torch.arange(5).expand(2, -1)
    batch = TaskBatch(xs, ys, xs, ys)
    result = learner.outer_step(batch, torch.optim.SGD(learner.parameters(), 1e-3), 0)
    if result is None:  # the trainer's usual step: backward the meta-loss
        result = learner.meta_forward(batch)
        result.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in learner.model.parameters())
    assert torch.isfinite(result.loss)


def test_protonet_preset_uses_the_embedding_and_says_it_is_unmeasured():
    assert "omniglot_protonet_resnet12_20w1s" in shipped_presets()
    text = shipped_presets()["omniglot_protonet_resnet12_20w1s"].read_text()
    assert text.startswith("# ") and "ResNet-12" in text.splitlines()[0]
    assert "no accuracy" in text.splitlines()[0].lower()
    config = load_config("omniglot_protonet_resnet12_20w1s")
    assert config.model.name == "resnet12" and config.model.channels == [64, 160, 320, 640]
    assert config.model.dropblock == 0 and config.algorithm.name == "protonet"
    tiny = load_config("omniglot_protonet_resnet12_20w1s", ["model.channels=[2,3,3,5]"])
    learner = build_learner(tiny)
    assert learner.model.head is None
    x = torch.rand(2, 4, 1, 28, 28)
    support, query = learner.embed(x, x)
    assert support.shape == (2, 4, 5) and query.shape == (2, 4, 5)
    learner.eval()  # running statistics, as ProtoNets are evaluated
    torch.testing.assert_close(learner.embed(x, x)[0][0, :1], learner.model(x[0, :1]))


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    return write_image_folder(tmp_path / "data", classes=16, per_class=3)


def _write_config(tmp_path, folder, algorithm: str = "maml", **model) -> Path:
    data = {
        "task": {
            "name": "imagefolder",
            "data_dir": str(folder),
            "ways": 3,
            "shots": 1,
            "queries": 1,
            "image_size": 16,
            "channels": 1,
        },
        "model": {"name": "resnet12", "channels": [2, 2, 3, 3], **model},
        "algorithm": {"name": algorithm, "inner_lr": 0.1},
        "train": {"iterations": 2, "meta_batch": 2, "tensorboard": False, "checkpoint_every": 2},
        "eval": {"tasks": 3, "steps": 1},
    }
    path = tmp_path / f"{algorithm}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_cli_trains_and_evaluates_resnet12(capsys, tmp_path, folder, algorithm):
    extra = {"bn_running_stats": True} if algorithm == "protonet" else {"dropblock": 0.1}
    config = _write_config(tmp_path, folder, algorithm, **extra)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", config, "--out", run, "--no-progress")
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", run, "--json")
    assert code == 0, err
    assert json.loads(out)["ways"] == 3


@pytest.mark.parametrize(
    "settings,key",
    [
        (["model.channels=[8,8,8]"], "model.channels"),
        (["model.channels=[8,0,8,8]"], "model.channels"),
        (["model.channels=[8,8,8,5000]"], "model.channels"),
        (["model.dropblock=1.0"], "model.dropblock"),
        (["model.dropblock=-0.1"], "model.dropblock"),
        (["model.dropblock_size=0"], "model.dropblock_size"),
        (["task.image_size=12"], "task.image_size"),
        (["algorithm.impl=batched"], "algorithm.impl"),
    ],
)
def test_bad_resnet12_settings_are_one_line_errors(capsys, tmp_path, folder, settings, key):
    config = _write_config(tmp_path, folder)
    sets = [arg for s in settings for arg in ("--set", s)]
    run = tmp_path / "run"
    assert_user_error(capsys, "train", config, *sets, "--out", run, match=key)
    assert not run.exists()


@pytest.mark.parametrize("preset", ["sine_maml", "sine_pretrained"])
def test_an_impl_the_model_cannot_run_is_a_config_error(capsys, tmp_path, preset):
    """The same fault for any model: ``impl=batched`` without a kernel of its own was a
    ValueError traceback from deep inside the learner."""
    run = tmp_path / "run"
    assert_user_error(
        capsys,
        "train",
        preset,
        "--set",
        "model.target=tests.custom_models:TinyRegressor",
        "--set",
        "algorithm.impl=batched",
        "--out",
        run,
        match="algorithm.impl",
    )
    assert not run.exists()


def test_memory_estimate_grows_with_the_channels():
    small = load_config("omniglot_maml_5w1s", TINY)
    wide = load_config("omniglot_maml_5w1s", ["model.name=resnet12"])
    (small_bytes, keys), (wide_bytes, _) = largest_tensor_bytes(small), largest_tensor_bytes(wide)
    assert "model.channels" in keys and wide_bytes > small_bytes
    # the widest conv (640·640·3·3 per task) dominates the full-width net's estimate
    assert wide_bytes >= 4 * 9 * 640 * 640 * wide.train.meta_batch
    with pytest.raises(ConfigError, match="model.channels"):
        load_config(
            "omniglot_maml_5w1s",
            [
                "model.name=resnet12",
                "model.channels=[4096,4096,4096,4096]",
                "train.meta_batch=10000000",
            ],
        )


def test_benchmark_workload_runs(capsys, monkeypatch):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "meta_iteration.py"
    spec = importlib.util.spec_from_file_location("meta_iteration_resnet12", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for workload in ("omniglot-5w1s-resnet12", "protonet-omniglot-60w1s-resnet12"):
        argv = ["meta_iteration.py", "--workload", workload, "--channels", "2,2,2,2"]
        argv += ["--iters", "1", "--warmup", "0", "--no-tune-allocator"]
        monkeypatch.setattr(sys, "argv", argv)
        module.main()
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["workload"] == workload and result["model"] == "ResNet12"
        assert result["resnet12_channels"] == [2, 2, 2, 2] and result["ms_per_iter_median"] > 0
