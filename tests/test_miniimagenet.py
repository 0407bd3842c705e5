"""MiniImagenet presets end to end on a tiny synthetic data set in the Ravi–Larochelle
layout (images/ + train/val/test.csv). There is no real MiniImagenet on this machine."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from mamlkit.cli import main


def write_tiny_miniimagenet(root, classes_per_split=6, per_class=20):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    for split in ("train", "val", "test"):
        rows = ["filename,label"]
        for c in range(classes_per_split):
            label = f"n{split}{c:03d}"
            colour = rng.integers(0, 256, 3)
            for i in range(per_class):
                name = f"{label}_{i:04d}.jpg"
                pixels = np.clip(colour + rng.normal(0, 30, (90, 100, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / "images" / name)
                rows.append(f"{name},{label}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


def test_miniimagenet_preset_trains_and_evaluates(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "mini"
    write_tiny_miniimagenet(data)
    run = tmp_path / "run"
    sets = [
        f"task.data_dir={data}",
        "train.iterations=2",
        "train.meta_batch=2",
        "task.queries=4",
        "train.log_every=1",
        "train.tensorboard=false",
        "train.val_every=0",
    ]
    argv = ["train", "miniimagenet_maml_5w1s", "--out", str(run), "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0, capsys.readouterr().err
    assert main(["eval", str(run), "--tasks", "4", "--steps", "2"]) == 0
    result = json.loads((run / "eval-tasks-4-steps-2.json").read_text())  # not the preset's
    assert result["ways"] == 5 and result["shots"] == 1 and result["steps"] == 2
    assert result["tasks"] == 4 and 0.0 <= result["accuracy"] <= 100.0


def test_miniimagenet_more_ways_than_classes_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "mini"
    write_tiny_miniimagenet(data, classes_per_split=3)
    code = main(
        [
            "train",
            "miniimagenet_maml_5w1s",
            "--out",
            str(tmp_path / "r"),
            "--set",
            f"task.data_dir={data}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "task.ways" in err[0]
    assert not (tmp_path / "r").exists()
