"""Tests for mamlkit.data.miniimagenet on a tiny synthetic data set in both layouts."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mamlkit.data import DataError, ImageClassData, find_miniimagenet_dir, load_miniimagenet
from mamlkit.data import miniimagenet as mini_module

N_CLASSES = 5
PER_CLASS = 20
CLASSES = [f"n{k:08d}" for k in range(N_CLASSES)]  # ImageNet-style wnids
SPLIT_CLASSES = {"train": CLASSES[:3], "val": CLASSES[3:4], "test": CLASSES[4:]}


def _colour(k: int, j: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(1000 * k + j)
    return tuple(int(v) for v in rng.integers(30, 226, 3))


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("filename,label\n" + "".join(f"{f},{c}\n" for f, c in rows))


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same 5x20 solid-colour 100x90 images as a CSV layout and as a folder layout."""
    base = tmp_path_factory.mktemp("mini")
    csv_root, dir_root = base / "csv", base / "folders"
    (csv_root / "images").mkdir(parents=True)
    for split, classes in SPLIT_CLASSES.items():
        rows = []
        for cls in classes:
            k = CLASSES.index(cls)
            (dir_root / split / cls).mkdir(parents=True)
            # Written in reverse so that listing order != sorted order.
            for j in reversed(range(PER_CLASS)):
                name = f"{cls}{j:08d}.jpg"
                Image.new("RGB", (100, 90), _colour(k, j)).save(csv_root / "images" / name)
                shutil.copyfile(csv_root / "images" / name, dir_root / split / cls / name)
                rows.append((name, cls))
        _write_csv(csv_root / f"{split}.csv", rows)
    return csv_root, dir_root


def _no_decoding(*args: object) -> None:
    raise AssertionError("decoded an image although the cache should have been used")


@pytest.mark.parametrize("layout", ["csv", "folders"])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_shapes_classes_and_pixels(
    layouts: tuple[Path, Path], tmp_path: Path, layout: str, split: str
) -> None:
    root = layouts[0] if layout == "csv" else layouts[1]
    data = load_miniimagenet(root, split, cache_dir=tmp_path)
    assert isinstance(data, ImageClassData)
    n = len(SPLIT_CLASSES[split])
    assert data.images.shape == (n, PER_CLASS, 84, 84, 3)
    assert data.images.dtype == np.uint8
    assert data.classes == SPLIT_CLASSES[split]
    # Solid colours survive JPEG + resizing almost exactly, and images are in file order.
    k = CLASSES.index(data.classes[-1])
    for j in (0, PER_CLASS - 1):
        mean = data.images[-1, j].reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean, _colour(k, j), atol=4)


def test_both_layouts_give_the_same_array(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    a = load_miniimagenet(layouts[0], "train", image_size=32, cache_dir=tmp_path / "a")
    b = load_miniimagenet(layouts[1], "train", image_size=32, cache_dir=tmp_path / "b")
    np.testing.assert_array_equal(a.images, b.images)
    assert a.classes == b.classes


def test_cache_hit_and_key(
    layouts: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_miniimagenet(layouts[0], "train", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1
    with monkeypatch.context() as m:
        m.setattr(mini_module, "_decode", _no_decoding)
        again = load_miniimagenet(layouts[0], "train", cache_dir=tmp_path)
    np.testing.assert_array_equal(first.images, again.images)
    assert again.classes == first.classes
    # A different size or split is a different entry.
    load_miniimagenet(layouts[0], "train", image_size=40, cache_dir=tmp_path)
    load_miniimagenet(layouts[0], "val", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 3


def test_default_cache_dir_and_lookup(
    layouts: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_root = tmp_path / "data"
    shutil.copytree(layouts[1], data_root / "miniimagenet")
    monkeypatch.setenv("MAMLKIT_DATA", str(data_root))
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    assert find_miniimagenet_dir() == data_root / "miniimagenet"
    assert find_miniimagenet_dir(data_root) == data_root / "miniimagenet"
    data = load_miniimagenet(None, "test")
    assert data.classes == SPLIT_CLASSES["test"]
    assert list((tmp_path / "cache" / "miniimagenet").glob("miniimagenet-test-84px-*.npy"))


def test_lookup_failure_names_every_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMLKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        find_miniimagenet_dir()
    message = str(info.value)
    assert str(tmp_path / "data" / "miniimagenet") in message
    assert str(tmp_path / "cache" / "miniimagenet") in message
    assert "\n" not in message


def test_unequal_classes_are_truncated_with_a_warning(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for cls, n in (("a", 22), ("b", 20), ("c", 25)):
        (root / "train" / cls).mkdir(parents=True)
        for j in range(n):
            Image.new("RGB", (50, 60), (j, j, j)).save(root / "train" / cls / f"{j:03d}.png")
    with pytest.warns(UserWarning, match="from 20 to 25 images; using the first 20"):
        data = load_miniimagenet(root, "train", image_size=16, cache_dir=tmp_path / "cache")
    assert data.images.shape == (3, 20, 16, 16, 3)
    # Deterministic order: sorted by file name, the first 20 kept (PNG is lossless).
    np.testing.assert_array_equal(data.images[2, :, 0, 0, 0], np.arange(20))


# --------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------


def _clone_csv_root(layouts: tuple[Path, Path], tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(layouts[0], root)
    return root


def test_unknown_split(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown miniImageNet split 'training'"):
        load_miniimagenet(layouts[0], "training", cache_dir=tmp_path)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        load_miniimagenet(tmp_path / "missing", "train", cache_dir=tmp_path)
    assert str(tmp_path / "missing") in str(info.value)


def test_missing_split(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    root = _clone_csv_root(layouts, tmp_path)
    (root / "val.csv").unlink()
    with pytest.raises(DataError) as info:
        load_miniimagenet(root, "val", cache_dir=tmp_path / "cache")
    assert str(root / "val.csv") in str(info.value) and str(root / "val") in str(info.value)


def test_bad_header(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    root = _clone_csv_root(layouts, tmp_path)
    (root / "test.csv").write_text("file,class\nx.jpg,n0\n")
    with pytest.raises(DataError, match="header 'filename,label'") as info:
        load_miniimagenet(root, "test", cache_dir=tmp_path / "cache")
    assert str(root / "test.csv") in str(info.value)


def test_csv_names_a_missing_image(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    root = _clone_csv_root(layouts, tmp_path)
    gone = root / "images" / f"{CLASSES[4]}00000007.jpg"
    gone.unlink()
    with pytest.raises(DataError) as info:
        load_miniimagenet(root, "test", cache_dir=tmp_path / "cache")
    assert str(gone) in str(info.value)


def test_unreadable_image(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    root = _clone_csv_root(layouts, tmp_path)
    bad = root / "images" / f"{CLASSES[3]}00000005.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg at all")
    with pytest.raises(DataError, match="cannot decode image") as info:
        load_miniimagenet(root, "val", cache_dir=tmp_path / "cache")
    assert str(bad) in str(info.value)
    assert not list((tmp_path / "cache").glob("*.npy")), "nothing may be cached"


def test_too_few_images_per_class(layouts: tuple[Path, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(layouts[1], root)
    for f in sorted((root / "train" / CLASSES[1]).iterdir())[:5]:
        f.unlink()
    with pytest.raises(DataError, match=f"class '{CLASSES[1]}' has 15 images"):
        load_miniimagenet(root, "train", cache_dir=tmp_path / "cache")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_miniimagenet(root, "train", cache_dir=tmp_path / "cache", min_per_class=15)
    assert data.images.shape[:2] == (3, 15)
