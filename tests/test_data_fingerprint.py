"""Data a run can trust (issue 23, items 4, 5, 6, 22, 26): caches keyed on content, run
files byte-reproducible, every run's data recorded as an absolute folder plus a fingerprint
that ``eval`` and ``train --resume`` hold the data they find to.

Image folders here are BMP files: their size depends only on the image's dimensions, so
two folders can hold files of equal names and sizes but other pixels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mamlkit.checkpoint import save_checkpoint
from mamlkit.data import content, load_miniimagenet
from mamlkit.data.imagefolder import load_image_folder
from mamlkit.data.images import decode_image
from mamlkit.data.omniglot import _Counts, _load_omniglot
from mamlkit.progress import is_progress_line

from .conftest import data_root
from .test_cli_bad_input import assert_user_error, run_cli

SESSION_CACHE = os.environ.get("MAMLKIT_CACHE")
SESSION_DATA = os.environ.get("MAMLKIT_DATA")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A private cache; no $MAMLKIT_DATA unless a test sets one."""
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MAMLKIT_DATA", raising=False)
    return tmp_path / "cache"


def write_classes(root: Path, classes: int, per_class: int, seed: int, size: int = 12) -> Path:
    """``root/class_XX/img_Y.bmp`` of random grey pixels: other seeds, same names and sizes."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True)
        for j in range(per_class):
            pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(folder / f"img_{j}.bmp")
    return root


def write_split_folder(root: Path, seed: int, train: int = 3, test: int = 2) -> Path:
    """``root/train/`` and ``root/test/`` class folders (no val: the runs do not validate)."""
    write_classes(root / "train", train, 4, seed)
    write_classes(root / "test", test, 4, seed + 100)
    return root


def sizes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*.bmp")}


def image_folder_config(tmp_path: Path, data: Path | None, **task) -> Path:
    config = {
        "task": {
            "name": "imagefolder",
            "data_dir": str(data) if data is not None else None,
            "ways": 2,
            "shots": 1,
            "queries": 1,
            "image_size": 12,
            "channels": 1,
            **task,
        },
        "model": {"name": "conv4", "filters": 4},
        "train": {"iterations": 2, "meta_batch": 2, "tensorboard": False, "checkpoint_every": 2},
        "eval": {"tasks": 4, "steps": 1},
    }
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(capsys, *argv) -> None:
    code, _, err = run_cli(capsys, "train", *argv, "--no-progress")
    assert code == 0, err


def recorded_dir(run: Path) -> str:
    return yaml.safe_load((run / "config.yaml").read_text())["task"]["data_dir"]


# --- item 4: the image cache keys on content --------------------------------------------


def test_04_folders_with_equal_names_and_sizes_do_not_share_a_cache_entry(tmp_path):
    a = write_classes(tmp_path / "a", classes=3, per_class=2, seed=0)
    b = write_classes(tmp_path / "b", classes=3, per_class=2, seed=1)
    assert sizes(a) == sizes(b)  # exactly the case of the issue
    first = load_image_folder(a, image_size=12, channels=1)
    second = load_image_folder(b, image_size=12, channels=1)
    for split, (images, classes) in second.items():
        for c, name in enumerate(classes):
            for j in range(images.shape[1]):
                expected = decode_image(b / name / f"img_{j}.bmp", 12, channels=1)
                np.testing.assert_array_equal(images[c, j], expected)
        if len(images):
            assert not np.array_equal(images, first[split][0])


def test_04_a_file_rewritten_with_its_size_and_mtime_is_read_again(tmp_path):
    a = write_classes(tmp_path / "a", classes=3, per_class=2, seed=0)
    before = load_image_folder(a, image_size=12, channels=1)
    target = a / "class_01" / "img_0.bmp"
    st = target.stat()
    Image.fromarray(np.full((12, 12), 7, np.uint8), "L").save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    after = load_image_folder(a, image_size=12, channels=1)
    split = next(s for s in after if "class_01" in after[s][1])
    c = after[split][1].index("class_01")
    assert (after[split][0][c, 0] == 7).all()
    assert not (before[split][0][c, 0] == 7).all()


def test_04_an_unchanged_folder_is_not_read_again(tmp_path, monkeypatch):
    a = write_classes(tmp_path / "a", classes=3, per_class=2, seed=0)
    first = load_image_folder(a, image_size=12, channels=1)

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed the files again although none changed")

    monkeypatch.setattr(content, "_hash_files", no_hashing)
    again = load_image_folder(a, image_size=12, channels=1)
    assert all(np.array_equal(first[s][0], again[s][0]) for s in first)


def _omniglot_folder(root: Path, seed: int) -> Path:
    """The Omniglot folder layout, tiny, with uncompressed PNGs (sizes fixed by the shape)."""
    rng = np.random.default_rng(seed)
    for set_name, alphabets in (("images_background", "AB"), ("images_evaluation", "C")):
        for alphabet in alphabets:
            for c in (1, 2):
                folder = root / set_name / alphabet / f"character{c:02d}"
                folder.mkdir(parents=True)
                for d in (1, 2):
                    pixels = np.where(rng.random((20, 20)) < 0.2, 0, 255).astype(np.uint8)
                    Image.fromarray(pixels, "L").save(folder / f"{d:02d}.png", compress_level=0)
    return root


def test_04_same_fault_in_omniglot_folders_and_miniimagenet(tmp_path):
    counts = _Counts(alphabets=3, characters=6, images_per_character=2)
    a, b = _omniglot_folder(tmp_path / "oa", 0), _omniglot_folder(tmp_path / "ob", 1)
    assert {p.relative_to(a): p.stat().st_size for p in a.rglob("*.png")} == {
        p.relative_to(b): p.stat().st_size for p in b.rglob("*.png")
    }
    cache = tmp_path / "c"
    first = _load_omniglot(a, 12, cache / "omniglot", counts)
    second = _load_omniglot(b, 12, cache / "omniglot", counts)
    assert not np.array_equal(first.images, second.images)
    assert first.sha256 != second.sha256

    mini_a = write_classes(tmp_path / "ma" / "train", classes=2, per_class=20, seed=0).parent
    mini_b = write_classes(tmp_path / "mb" / "train", classes=2, per_class=20, seed=1).parent
    assert sizes(mini_a) == sizes(mini_b)
    one = load_miniimagenet(mini_a, "train", image_size=12, cache_dir=cache / "mini")
    two = load_miniimagenet(mini_b, "train", image_size=12, cache_dir=cache / "mini")
    assert not np.array_equal(one.images, two.images)


# --- item 4: run files are byte-reproducible ---------------------------------------------


def test_04_the_same_tensors_and_metadata_give_the_same_bytes(tmp_path):
    tensors = {f"w{i}": torch.arange(i + 2, dtype=torch.float32) for i in range(4)}
    written = set()
    for i in range(8):  # safetensors orders its metadata map at random, also within a process
        save_checkpoint(tmp_path / f"{i}.safetensors", tensors, {"step": 1, "kind": "weights"})
        written.add((tmp_path / f"{i}.safetensors").read_bytes())
    assert len(written) == 1


def test_04_two_identical_runs_write_identical_files(capsys, tmp_path):
    runs = [tmp_path / "one", tmp_path / "two"]
    for run in runs:
        train(
            capsys,
            "sine_maml",
            "--set",
            "train.iterations=2",
            "--set",
            "train.meta_batch=5",
            "--set",
            "train.checkpoint_every=1",
            "--set",
            "train.tensorboard=false",
            "--out",
            run,
        )
    names = ["model.safetensors", "checkpoints/step-00000001.safetensors"]
    names += ["checkpoints/step-00000002.safetensors"]
    for name in names:
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    assert not (runs[0] / "data.json").exists()  # sine reads no data set: nothing recorded


# --- item 5: the data of a run is recorded, and held to ----------------------------------


def test_05_a_relative_data_dir_is_recorded_absolute_with_a_fingerprint(
    capsys, tmp_path, monkeypatch
):
    data = write_split_folder(tmp_path / "work" / "data", seed=0)
    config = image_folder_config(tmp_path, None)
    monkeypatch.chdir(tmp_path / "work")
    run = tmp_path / "run"
    train(capsys, config, "--data-dir", "data", "--out", run)
    assert recorded_dir(run) == str(data.resolve())
    record = json.loads((run / "data.json").read_text())
    assert record["data_dir"] == str(data.resolve())
    assert {"train", "test"} <= set(record["splits"])
    assert record["splits"]["test"]["classes"] == 2

    # from another folder, where ./data holds other data: still the run's own data
    write_split_folder(tmp_path / "elsewhere" / "data", seed=5)
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, out, err = run_cli(capsys, "eval", run)
    assert code == 0, err
    # and --data-dir data (relative, here the other data) is refused, naming both folders
    line = assert_user_error(capsys, "eval", run, "--data-dir", "data", match="not the data")
    assert str(tmp_path / "elsewhere" / "data") in line and str(data.resolve()) in line


def test_05_changed_data_at_the_recorded_folder_is_refused(capsys, tmp_path):
    data = write_split_folder(tmp_path / "data", seed=0)
    run = tmp_path / "run"
    train(capsys, image_folder_config(tmp_path, data), "--out", run)
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 0, err
    kept = (run / "eval.json").read_bytes()
    shutil.rmtree(data)
    write_split_folder(data, seed=1)  # same names and sizes, other pixels
    line = assert_user_error(capsys, "eval", run, match="no longer the data")
    assert str(data) in line
    assert (run / "eval.json").read_bytes() == kept
    assert_user_error(capsys, "train", "--resume", run, match="no longer the data")


def test_05_a_copy_of_the_data_elsewhere_is_accepted(capsys, tmp_path):
    data = write_split_folder(tmp_path / "data", seed=0)
    run = tmp_path / "run"
    train(capsys, image_folder_config(tmp_path, data), "--out", run)
    shutil.copytree(data, tmp_path / "copy")
    code, out, err = run_cli(capsys, "eval", run, "--data-dir", tmp_path / "copy", "--json")
    assert code == 0, err
    code, same, err = run_cli(capsys, "eval", run, "--json")
    assert json.loads(out) == json.loads(same)
    shutil.rmtree(data)  # the recorded folder is gone, and an image folder has no default
    assert_user_error(capsys, "eval", run, match="--data-dir")


def _mini(root: Path, seed: int) -> Path:
    """``root/miniimagenet/{train,test}``: miniImageNet's folder layout, tiny."""
    write_classes(root / "miniimagenet" / "train", 3, 20, seed)
    write_classes(root / "miniimagenet" / "test", 2, 20, seed + 100)
    return root


def test_05_a_run_trained_from_mamlkit_data_resumes_on_another_machine(
    capsys, tmp_path, monkeypatch
):
    """The zoo case: a run trained where $MAMLKIT_DATA pointed, then used where that folder
    does not exist and $MAMLKIT_DATA points elsewhere."""
    config = image_folder_config(tmp_path, None, name="miniimagenet", channels=None)
    first = _mini(tmp_path / "machine1", seed=0)
    monkeypatch.setenv("MAMLKIT_DATA", str(first))
    run = tmp_path / "zoo" / "run"
    train(capsys, config, "--out", run)
    assert recorded_dir(run) == str((first / "miniimagenet").resolve())
    monkeypatch.delenv("MAMLKIT_DATA")
    code, out, err = run_cli(capsys, "eval", run, "--json")  # a shell without the variable
    assert code == 0, err
    before = json.loads(out)

    second = tmp_path / "machine2"
    shutil.copytree(first, second)
    first.rename(tmp_path / "gone")
    other = _mini(tmp_path / "machine3", seed=7)
    monkeypatch.setenv("MAMLKIT_DATA", str(other))
    line = assert_user_error(capsys, "eval", run, match="which is gone")
    assert str(first / "miniimagenet") in line and str(other / "miniimagenet") in line
    config_text = (run / "config.yaml").read_bytes()
    assert_user_error(capsys, "train", "--resume", run, "--set", "train.iterations=3")
    assert (run / "config.yaml").read_bytes() == config_text

    monkeypatch.setenv("MAMLKIT_DATA", str(second))
    code, out, err = run_cli(capsys, "eval", run, "--json")
    assert code == 0, err
    assert json.loads(out) == before
    train(capsys, "--resume", run, "--set", "train.iterations=3")
    assert recorded_dir(run) == str((second / "miniimagenet").resolve())
    assert json.loads((run / "data.json").read_text())["data_dir"] == recorded_dir(run)


# --- item 6: --resume --data-dir ---------------------------------------------------------


def test_06_resume_with_other_data_is_refused_with_the_same_data_recorded(capsys, tmp_path):
    data = write_split_folder(tmp_path / "data", seed=0)
    run = tmp_path / "run"
    train(capsys, image_folder_config(tmp_path, data), "--out", run)
    other = write_split_folder(tmp_path / "other", seed=3)
    config_text = (run / "config.yaml").read_bytes()
    argv = ("train", "--resume", run, "--set", "train.iterations=3", "--data-dir", other)
    line = assert_user_error(capsys, *argv, match="not the data")
    assert str(other) in line and str(data) in line
    assert (run / "config.yaml").read_bytes() == config_text

    moved = tmp_path / "moved"
    data.rename(moved)
    train(capsys, "--resume", run, "--data-dir", moved)  # nothing else changes: still recorded
    assert recorded_dir(run) == str(moved.resolve())
    assert json.loads((run / "data.json").read_text())["data_dir"] == str(moved.resolve())
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 0, err


# --- item 22: every split is checked at train --------------------------------------------


def test_22_a_test_split_with_fewer_classes_than_ways_is_refused_at_train(capsys, tmp_path):
    data = write_split_folder(tmp_path / "data", seed=0, train=4, test=2)
    run = tmp_path / "run"
    config = image_folder_config(tmp_path, data, ways=3)
    assert_user_error(capsys, "train", config, "--out", run, match="'test' split has 2")
    assert not run.exists()


# --- item 26: a class cut to the smallest: one line --------------------------------------


def test_26_a_small_class_is_one_line_before_an_error_and_as_a_warning(capsys, tmp_path):
    data = tmp_path / "data"
    write_classes(data / "train", 3, 6, seed=0)
    write_classes(data / "test", 2, 6, seed=1)
    for j in range(2, 6):
        (data / "train" / "class_01" / f"img_{j}.bmp").unlink()
    run = tmp_path / "run"
    config = image_folder_config(tmp_path, data, queries=5)
    # the console entry point, as a user sees it (pytest would catch a raw warning)
    proc = subprocess.run(
        [sys.executable, "-c", "from mamlkit.cli import console; console()"]
        + ["train", str(config), "--out", str(run), "--no-progress"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")},
        timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("mamlkit: error: config key 'task.shots'"), lines
    assert "class_01 has 2" in lines[0]
    assert not run.exists()

    config = image_folder_config(tmp_path, data, queries=1)  # fits: the cut is a warning
    code, _, err = run_cli(capsys, "train", config, "--out", run, "--no-progress")
    assert code == 0, err
    # once, though train, test and the record read it (besides the progress lines)
    lines = [line for line in err.strip().splitlines() if not is_progress_line(line)]
    assert len(lines) == 1 and lines[0].startswith("mamlkit: warning:"), err
    assert "class_01 has 2" in lines[0]


# --- the real Omniglot: recorded where $MAMLKIT_DATA found it, cheaply --------------------


def test_05_omniglot_records_where_mamlkit_data_found_it(capsys, tmp_path, monkeypatch):
    if SESSION_DATA:
        monkeypatch.setenv("MAMLKIT_DATA", SESSION_DATA)
    root = data_root()
    if SESSION_CACHE:  # Omniglot is preprocessed once for the whole test session
        monkeypatch.setenv("MAMLKIT_CACHE", SESSION_CACHE)
    else:
        monkeypatch.delenv("MAMLKIT_CACHE")
    monkeypatch.setenv("MAMLKIT_DATA", root)
    run = tmp_path / "run"
    argv = ["omniglot_maml_5w1s", "--out", run]
    for setting in (
        "train.iterations=1",
        "train.meta_batch=1",
        "train.val_every=0",
        "train.tensorboard=false",
        "model.filters=4",
        "eval.tasks=2",
        "eval.steps=1",
    ):
        argv += ["--set", setting]
    train(capsys, *argv)
    assert recorded_dir(run) == str((Path(root) / "omniglot").resolve())
    record = json.loads((run / "data.json").read_text())
    assert record["splits"]["train"]["classes"] == 1100
    assert record["splits"]["test"]["classes"] == 423
    monkeypatch.delenv("MAMLKIT_DATA")  # a shell without the variable
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 0, err
