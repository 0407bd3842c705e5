"""Omniglot episodes, splits and short training runs on the real data ($MAMLKIT_DATA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mamlkit.build import build_learner, build_tasks
from mamlkit.config import load_config
from mamlkit.data import load_omniglot, omniglot_splits
from mamlkit.errors import ConfigError
from mamlkit.evaluation import evaluate
from mamlkit.tasks import EpisodeTasks
from mamlkit.tasks.builtin import _omniglot_split_images
from mamlkit.training import Trainer

from .conftest import data_root


@pytest.fixture(scope="module")
def omniglot_config():
    root = data_root()
    return lambda preset, *sets: load_config(preset, [f"task.data_dir={root}/omniglot", *sets])


def test_episode_shapes_labels_and_distinct_classes(omniglot_config):
    config = omniglot_config("omniglot_maml_5w1s", "task.shots=2", "task.queries=3")
    tasks = build_tasks(config, "train")
    batch = tasks.sample(8, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (8, 10, 1, 28, 28)
    assert batch.query_x.shape == (8, 15, 1, 28, 28)
    assert batch.support_x.dtype == torch.float32
    assert 0.0 <= batch.support_x.min() and batch.support_x.max() <= 1.0
    assert batch.support_y.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]] * 8
    assert batch.query_y.tolist() == [[0] * 3 + [1] * 3 + [2] * 3 + [3] * 3 + [4] * 3] * 8
    classes = batch.info["classes"]
    assert all(len(set(row.tolist())) == 5 for row in classes)
    # the 2 + 3 images of a class are distinct drawings
    x = torch.cat([batch.support_x.view(8, 5, 2, -1), batch.query_x.view(8, 5, 3, -1)], 2)
    for t in range(8):
        for c in range(5):
            imgs = x[t, c]
            assert all(not torch.equal(imgs[i], imgs[j]) for i in range(5) for j in range(i))
    # same seed -> same episodes; labels vary in which class they denote
    again = tasks.sample(8, torch.Generator().manual_seed(0))
    assert torch.equal(again.support_x, batch.support_x)
    assert classes[:, 0].unique().numel() > 1


def test_rotations_only_in_training(omniglot_config):
    config = omniglot_config("omniglot_maml_5w1s")
    train, test = build_tasks(config, "train"), build_tasks(config, "test")
    assert train.rotations and not test.rotations
    assert train.num_classes == 4 * 1100 and test.num_classes == 423


def test_rotated_class_is_a_rotation():
    images = torch.arange(2 * 20 * 4 * 4, dtype=torch.uint8).view(2, 20, 4, 4)
    tasks = EpisodeTasks(images, ways=2, shots=1, queries=0, rotations=True)
    batch = tasks.sample(64, torch.Generator().manual_seed(1))
    for t in range(64):
        for c in range(2):
            cls = int(batch.info["classes"][t, c])
            img = (batch.support_x[t, c, 0] * 255).round().to(torch.uint8)
            candidates = [
                torch.rot90(images[cls % 2, i], cls // 2, dims=(-2, -1)) for i in range(20)
            ]
            assert any(torch.equal(img, cand) for cand in candidates)


def test_splits_are_disjoint_including_rotations():
    root = data_root()
    data = load_omniglot(f"{root}/omniglot")
    for scheme in ("maml", "lake"):
        s = omniglot_splits(data, scheme=scheme, n_val=100)
        train, val, test = (set(s[k].tolist()) for k in ("train", "val", "test"))
        # rotations are classes (character, k·90°): disjoint characters imply disjoint classes
        assert not (train & test) and not (train & val) and not (val & test)
        assert len(train) + len(val) + len(test) == 1623
        images = _omniglot_split_images(f"{root}/omniglot", 28, scheme, 0, 100)
        assert len(images["train"]) == len(train) and len(images["test"]) == len(test)
    # the same character never appears on both sides, even up to rotation: compare pixels
    s = omniglot_splits(data, "maml", n_val=0)
    test_imgs = data.images[s["test"], 0].reshape(len(s["test"]), -1)
    train_first = data.images[s["train"], 0]
    rotated = np.concatenate([np.rot90(train_first, k, axes=(1, 2)) for k in range(4)])
    train_set = {img.tobytes() for img in rotated.reshape(len(rotated), -1)}
    assert not any(img.tobytes() in train_set for img in test_imgs)


@pytest.mark.parametrize(
    "sets,key",
    [
        (["task.ways=500"], "task.ways"),
        (["task.shots=15", "task.queries=6"], "task.shots"),
        (["task.train_ways=5000"], "task.train_ways"),
    ],
)
def test_impossible_episodes_are_refused(omniglot_config, sets, key):
    preset = "omniglot_protonet_5w1s" if "train_ways" in key else "omniglot_maml_5w1s"
    config = omniglot_config(preset, *sets)
    with pytest.raises(ConfigError, match=key):
        build_tasks(config, "test" if key == "task.ways" else "train")


def _short_run(config, iterations):
    torch.manual_seed(0)
    learner = build_learner(config)
    Trainer(
        learner,
        build_tasks(config, "train"),
        config,
        run_dir=None,
        metric="accuracy",
        progress=False,
    ).fit()
    result = evaluate(
        learner.eval(),
        build_tasks(config, "test"),
        num_tasks=200,
        steps=config.eval.steps,
        metric="accuracy",
        seed=123,
    )
    return result[-1]["accuracy"]


@pytest.mark.slow
def test_short_protonet_run_reaches_90_percent_5w1s(omniglot_config):
    config = omniglot_config(
        "omniglot_protonet_5w1s", "task.train_ways=20", "train.iterations=300", "task.val_classes=0"
    )
    accuracy = _short_run(config, 300)
    print(f"ProtoNets 5w1s after 300 iterations: {accuracy:.2f}%")
    assert accuracy >= 90.0, accuracy


@pytest.mark.slow
def test_short_maml_run_reaches_70_percent_5w1s(omniglot_config):
    config = omniglot_config(
        "omniglot_maml_5w1s",
        "train.meta_batch=8",
        "train.iterations=400",
        "task.val_classes=0",
        "eval.steps=3",
    )
    accuracy = _short_run(config, 400)
    print(f"MAML 5w1s after 400 iterations (meta-batch 8): {accuracy:.2f}%")
    assert accuracy >= 70.0, accuracy


@pytest.mark.parametrize(
    "preset",
    [
        "omniglot_fomaml_5w1s",
        "omniglot_maml_20w1s",
        "omniglot_protonet_20w5s",
        "omniglot_pretrained_5w1s",
    ],
)
def test_presets_train_and_eval_through_the_cli(preset, tmp_path, capsys):
    """Every algorithm family runs end to end: train (2 iterations) -> eval.json."""
    import json

    from mamlkit.cli import main

    root = data_root()
    run = tmp_path / "run"
    argv = ["train", preset, "--out", str(run), "--no-progress"]
    for s in (
        f"task.data_dir={root}/omniglot",
        "train.iterations=2",
        "train.meta_batch=2",
        "train.val_every=0",
        "train.tensorboard=false",
    ):
        argv += ["--set", s]
    assert main(argv) == 0, capsys.readouterr().err
    assert main(["eval", str(run), "--tasks", "4"]) == 0, capsys.readouterr().err
    result = json.loads((run / "eval-tasks-4.json").read_text())  # not the preset's 600
    config = load_config(str(run / "config.yaml"))
    assert set(result) == {"accuracy", "ci95", "tasks", "ways", "shots", "steps", "split"} | {
        "step", "weights", "weights_sha256", "run_id"  # the weights scored (eval_files)
    }
    assert result["ways"] == config.task.ways and result["shots"] == config.task.shots
    assert result["steps"] == config.eval.steps and result["split"] == "test"
    assert 0.0 <= result["accuracy"] <= 100.0 and result["tasks"] == 4


def test_pretrained_baseline_trains_on_labelled_minibatches(omniglot_config):
    """The pretrained classifier's data are minibatches over all training classes with
    global labels (an ExampleBatch), not episodes with an empty support set."""
    from mamlkit.tasks import ExampleBatch

    config = omniglot_config("omniglot_pretrained_5w1s", "task.batch_size=6")
    tasks = build_tasks(config, "train")
    batch = tasks.sample(3, torch.Generator().manual_seed(0))
    assert isinstance(batch, ExampleBatch) and not hasattr(batch, "support_x")
    assert batch.x.shape == (3, 6, 1, 28, 28) and batch.y.shape == (3, 6)
    assert 0 <= int(batch.y.min()) and int(batch.y.max()) < tasks.num_classes
    assert batch.num_tasks == 3 and batch.slice(1, 3).x.shape[0] == 2
    learner = build_learner(config, num_train_classes=tasks.num_classes)
    out = learner.meta_forward(batch)
    assert out.predictions.shape == (3, 6, tasks.num_classes) and out.loss.isfinite()
