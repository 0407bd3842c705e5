"""``task.name: imagefolder``: your own folder of class folders as a few-shot data set
(issue 11, capability 2)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from mamlkit import load_config
from mamlkit.build import build_tasks
from mamlkit.data import imagefolder
from mamlkit.data.imagefolder import load_image_folder

from .imagefolders import write_image_folder
from .test_cli_bad_input import assert_user_error, run_cli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_seeded_split_covers_every_class_once(tmp_path, cache):
    root = write_image_folder(tmp_path / "data", classes=10, per_class=3)
    splits = load_image_folder(root, image_size=12, channels=1, seed=0)
    names = [c for s in ("train", "val", "test") for c in splits[s][1]]
    assert sorted(names) == sorted(p.name for p in root.iterdir())
    assert [len(splits[s][1]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert splits["train"][0].shape == (6, 3, 12, 12) and splits["train"][0].dtype == np.uint8
    again = load_image_folder(root, image_size=12, channels=1, seed=0)
    other = load_image_folder(root, image_size=12, channels=1, seed=1)
    assert again["test"][1] == splits["test"][1]
    assert {s: other[s][1] for s in other} != {s: splits[s][1] for s in splits}
    rgb = load_image_folder(root, image_size=12, channels=3, seed=0)
    assert rgb["val"][0].shape == (2, 3, 12, 12, 3)


def test_train_val_test_folders_are_the_split(tmp_path, cache):
    root = tmp_path / "data"
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        write_image_folder(root / split, classes=n, per_class=2)
    splits = load_image_folder(root, image_size=8, channels=3)
    assert {s: len(splits[s][1]) for s in splits} == {"train": 4, "val": 2, "test": 3}
    assert all(c.startswith("test/") for c in splits["test"][1])


def test_cached_array_is_reused(tmp_path, cache, monkeypatch):
    root = write_image_folder(tmp_path / "data", classes=4, per_class=2)
    first = load_image_folder(root, image_size=8, channels=1)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(imagefolder, "decode_image", no_decoding)
    second = load_image_folder(root, image_size=8, channels=1)
    assert all(np.array_equal(first[s][0], second[s][0]) for s in first)


def test_unequal_classes_are_cut_to_the_smallest_with_a_warning(tmp_path, cache):
    root = write_image_folder(tmp_path / "data", classes=4, per_class=3)
    (root / "class_00" / "img_2.jpg").unlink()
    with pytest.warns(UserWarning, match="2 to 3 images"):
        splits = load_image_folder(root, image_size=8, channels=1)
    assert all(images.shape[1] == 2 for images, _ in splits.values() if len(images))


def _config(tmp_path, root, *sets):
    return load_config(
        {
            "task": {
                "name": "imagefolder",
                "data_dir": str(root),
                "ways": 3,
                "shots": 1,
                "queries": 1,
                "image_size": 12,
                "channels": 1,
            },
            "model": {"name": "conv4", "filters": 4},
            "train": {
                "iterations": 2,
                "meta_batch": 2,
                "tensorboard": False,
                "checkpoint_every": 2,
            },
            "eval": {"tasks": 4, "steps": 1},
        },
        list(sets),
    )


def test_episodes_and_rotations(tmp_path, cache):
    root = write_image_folder(tmp_path / "data", classes=16, per_class=3)
    config = _config(tmp_path, root)
    train = build_tasks(config, "train")
    assert not train.rotations  # natural images: rotations only on request
    assert build_tasks(_config(tmp_path, root, "task.rotations=true"), "train").rotations
    batch = train.sample(2, __import__("torch").Generator().manual_seed(0))
    assert tuple(batch.support_x.shape) == (2, 3, 1, 12, 12)


def test_cli_trains_and_evaluates_an_image_folder(capsys, tmp_path, cache):
    root = write_image_folder(tmp_path / "data", classes=16, per_class=3)
    config_file = tmp_path / "mine.yaml"
    config_file.write_text(yaml.safe_dump(_config(tmp_path, root).to_dict()))
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", config_file, "--out", run, "--no-progress")
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", run, "--json")
    assert code == 0, err
    assert json.loads(out)["ways"] == 3


def test_bad_image_folders_are_one_line_and_write_nothing(capsys, tmp_path, cache):
    root = write_image_folder(tmp_path / "data", classes=6, per_class=3)
    config_file = tmp_path / "mine.yaml"
    config_file.write_text(yaml.safe_dump(_config(tmp_path, root).to_dict()))
    run = tmp_path / "run"
    assert_user_error(
        capsys,
        "train",
        config_file,
        "--data-dir",
        tmp_path / "nowhere",
        "--out",
        run,
        match="nowhere",
    )
    (root / "class_03" / "img_1.png").write_bytes(b"not a png")
    assert_user_error(capsys, "train", config_file, "--out", run, match="img_1.png")
    shutil.rmtree(root)
    root.mkdir()
    assert_user_error(capsys, "train", config_file, "--out", run, match="class folders")
    assert_user_error(
        capsys,
        "train",
        config_file,
        "--set",
        "task.split_fractions=[0.5, 0.5]",
        "--out",
        run,
        match="task.split_fractions",
    )
    assert not run.exists()
