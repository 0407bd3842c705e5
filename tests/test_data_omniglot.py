"""Tests for mamlkit.data.omniglot.

Tests marked by the ``omniglot`` fixture use the real archives from ``$MAMLKIT_DATA/omniglot``:
they are skipped when MAMLKIT_DATA is unset, and FAIL when it is set but the data is not
there (a CI misconfiguration must not pass silently). The remaining tests build a tiny
synthetic data set with the official layout, so they run everywhere.
"""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mamlkit.data import (
    DataError,
    OmniglotData,
    download_omniglot,
    find_omniglot_dir,
    load_omniglot,
    omniglot_splits,
)
from mamlkit.data import omniglot as omniglot_module
from mamlkit.data.omniglot import _Counts, _load_omniglot

DATA_MODULE_DIR = Path(omniglot_module.__file__).parent
FIRST_MEMBER = "images_background/Alphabet_of_the_Magi/character01/0709_01.png"


# --------------------------------------------------------------------------------------
# Real data fixtures
# --------------------------------------------------------------------------------------


@dataclass
class Loaded:
    data: OmniglotData
    directory: Path
    cache_root: Path  # plays the role of $MAMLKIT_CACHE
    seconds: float


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    env = os.environ.get("MAMLKIT_DATA")
    if not env:
        pytest.skip("MAMLKIT_DATA is not set; the real-Omniglot tests need it")
    try:
        return find_omniglot_dir(Path(env) / "omniglot")
    except DataError as exc:
        pytest.fail(f"MAMLKIT_DATA={env} is set but Omniglot is not usable there: {exc}")


@pytest.fixture(scope="session")
def omniglot(omniglot_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Loaded:
    """The one slow preprocessing run of the session, into a private cache."""
    cache_root = tmp_path_factory.mktemp("mamlkit-cache")
    start = time.perf_counter()
    data = load_omniglot(omniglot_dir, cache_dir=cache_root / "omniglot")
    return Loaded(data, omniglot_dir, cache_root, time.perf_counter() - start)


@pytest.fixture
def zip_copy(omniglot_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the two archives, to damage."""
    dest = tmp_path / "omniglot"
    dest.mkdir()
    for name in ("images_background.zip", "images_evaluation.zip"):
        shutil.copyfile(omniglot_dir / name, dest / name)
    return dest


# --------------------------------------------------------------------------------------
# Synthetic data (official layout, tiny counts)
# --------------------------------------------------------------------------------------

SYNTH_SETS = {
    "images_background": {"Alpha": 2, "Beta": 2},
    "images_evaluation": {"Gamma": 2},
}
SYNTH_PER_CHAR = 4
SYNTH_COUNTS = _Counts(alphabets=3, characters=6, images_per_character=SYNTH_PER_CHAR)


def _stroke_png(rng: np.random.Generator) -> bytes:
    """A 105x105 mode-"1" PNG like Omniglot's: white background, a few black strokes."""
    im = Image.new("1", (105, 105), 1)
    draw = ImageDraw.Draw(im)
    for _ in range(3):
        draw.line([tuple(int(v) for v in rng.integers(5, 100, 2)) for _ in range(3)], 0, 4)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _make_synthetic(root: Path, *, zips: bool, folders: bool, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    char_id = 0
    for set_name, alphabets in SYNTH_SETS.items():
        members: dict[str, bytes] = {}
        for alphabet, n_chars in alphabets.items():
            for c in range(1, n_chars + 1):
                char_id += 1
                for d in range(1, SYNTH_PER_CHAR + 1):
                    name = f"{set_name}/{alphabet}/character{c:02d}/{char_id:04d}_{d:02d}.png"
                    members[name] = _stroke_png(rng)
        if folders:
            for name, data in members.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_bytes(data)
        if zips:
            with zipfile.ZipFile(root / f"{set_name}.zip", "w", zipfile.ZIP_DEFLATED) as zf:
                for name in sorted(members):
                    zf.writestr(name, members[name])
    return root


# --------------------------------------------------------------------------------------
# Real data: content, preprocessing, cache
# --------------------------------------------------------------------------------------


def test_counts_shape_dtype(omniglot: Loaded) -> None:
    data = omniglot.data
    assert data.images.shape == (1623, 20, 28, 28)
    assert data.images.dtype == np.uint8
    assert len(data.characters) == len(set(data.characters)) == 1623
    assert len(data.alphabets) == 1623
    assert len(set(data.alphabets)) == 50
    assert data.background.dtype == bool and data.background.shape == (1623,)
    assert int(data.background.sum()) == 964
    assert len({a for a, bg in zip(data.alphabets, data.background, strict=True) if bg}) == 30


def test_order_background_first_then_sorted(omniglot: Loaded) -> None:
    data = omniglot.data
    assert data.background[:964].all() and not data.background[964:].any()
    assert data.characters[:964] == sorted(data.characters[:964])
    assert data.characters[964:] == sorted(data.characters[964:])
    assert data.characters[0] == "Alphabet_of_the_Magi/character01"
    assert all(c.split("/")[0] == a for c, a in zip(data.characters, data.alphabets, strict=True))


def test_strokes_high_and_pixels_match_reference_recipe(omniglot: Loaded) -> None:
    images = omniglot.data.images
    # Most of each image is background, which must now be dark.
    assert images.mean() < 64
    assert images.max() == 255 and images.min() == 0
    # Recompute the first image independently: L, Lanczos 28x28, inverted.
    with zipfile.ZipFile(omniglot.directory / "images_background.zip") as zf:
        raw = zf.read(FIRST_MEMBER)
    ref = Image.open(io.BytesIO(raw)).convert("L").resize((28, 28), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(images[0, 0], 255 - np.asarray(ref))


def _no_decoding(*args: object) -> None:
    raise AssertionError("decoded an image although the cache should have been used")


def test_second_load_hits_cache(omniglot: Loaded, monkeypatch: pytest.MonkeyPatch) -> None:
    """Correctness of the cache hit; its speed is measured by benchmarks/data_load.py."""
    monkeypatch.setattr(omniglot_module, "_decode", _no_decoding)
    again = load_omniglot(omniglot.directory, cache_dir=omniglot.cache_root / "omniglot")
    np.testing.assert_array_equal(again.images, omniglot.data.images)
    assert again.characters == omniglot.data.characters
    assert again.alphabets == omniglot.data.alphabets
    np.testing.assert_array_equal(again.background, omniglot.data.background)


def test_data_load_benchmark_prints_json(omniglot: Loaded) -> None:
    """benchmarks/data_load.py runs and reports cached loads that decode nothing (its timings
    are measured by hand, never asserted)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "data_load.py"
    cache = omniglot.cache_root / "omniglot"
    args = ["--data-dir", str(omniglot.directory), "--cache-dir", str(cache), "--repeats", "2"]
    out = subprocess.run(
        [sys.executable, str(script), *args], check=True, capture_output=True, text=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [1623, 20, 28, 28] and result["images"] == 32460
    assert result["build_s"] is None and result["cached_loads_decoded"] == 0
    assert result["cached_load_s_median"] > 0 and result["repeats"] == 2


def test_default_cache_dir_follows_env(omniglot: Loaded, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMLKIT_CACHE", str(omniglot.cache_root))
    monkeypatch.setattr(omniglot_module, "_decode", _no_decoding)
    again = load_omniglot(omniglot.directory)
    np.testing.assert_array_equal(again.images, omniglot.data.images)


# --------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------


def _check_partition(split: dict[str, np.ndarray], n: int) -> None:
    assert set(split) == {"train", "val", "test"}
    for part in split.values():
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "split arrays must be sorted and unique"
    union = np.concatenate(list(split.values()))
    assert len(union) == n and set(union.tolist()) == set(range(n))


def test_maml_split_sizes(omniglot: Loaded) -> None:
    split = omniglot_splits(omniglot.data)
    assert [len(split[k]) for k in ("train", "val", "test")] == [1200, 0, 423]
    _check_partition(split, 1623)
    with_val = omniglot_splits(omniglot.data, n_val=100)
    assert [len(with_val[k]) for k in ("train", "val", "test")] == [1100, 100, 423]
    _check_partition(with_val, 1623)
    # n_val only carves validation out of meta-train; the test set does not move.
    np.testing.assert_array_equal(with_val["test"], split["test"])
    assert set(with_val["val"].tolist()) <= set(split["train"].tolist())


def test_maml_split_matches_documented_rule(omniglot: Loaded) -> None:
    perm = np.random.default_rng(7).permutation(1623)
    split = omniglot_splits(omniglot.data, seed=7, n_val=50)
    np.testing.assert_array_equal(split["train"], np.sort(perm[:1150]))
    np.testing.assert_array_equal(split["val"], np.sort(perm[1150:1200]))
    np.testing.assert_array_equal(split["test"], np.sort(perm[1200:]))


def test_lake_split_is_background_vs_evaluation(omniglot: Loaded) -> None:
    bg = omniglot.data.background
    split = omniglot_splits(omniglot.data, scheme="lake")
    np.testing.assert_array_equal(split["train"], np.flatnonzero(bg))
    np.testing.assert_array_equal(split["test"], np.flatnonzero(~bg))
    assert len(split["val"]) == 0
    with_val = omniglot_splits(omniglot.data, scheme="lake", n_val=64, seed=3)
    assert [len(with_val[k]) for k in ("train", "val", "test")] == [900, 64, 659]
    assert bg[with_val["val"]].all()
    _check_partition(with_val, 1623)


@pytest.mark.parametrize("scheme", ["maml", "lake"])
def test_split_seed_determinism(omniglot: Loaded, scheme: str) -> None:
    a = omniglot_splits(omniglot.data, scheme=scheme, seed=1, n_val=100)
    b = omniglot_splits(omniglot.data, scheme=scheme, seed=1, n_val=100)
    c = omniglot_splits(omniglot.data, scheme=scheme, seed=2, n_val=100)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["val"], c["val"])


def test_split_errors(omniglot: Loaded) -> None:
    with pytest.raises(DataError, match="unknown Omniglot split scheme"):
        omniglot_splits(omniglot.data, scheme="vinyals")
    with pytest.raises(DataError, match="n_val=1200"):
        omniglot_splits(omniglot.data, n_val=1200)
    with pytest.raises(DataError, match="n_val=964"):
        omniglot_splits(omniglot.data, scheme="lake", n_val=964)
    with pytest.raises(DataError, match="non-negative"):
        omniglot_splits(omniglot.data, n_val=-1)


# --------------------------------------------------------------------------------------
# Damaged or missing real data
# --------------------------------------------------------------------------------------


def test_truncated_archive(zip_copy: Path, tmp_path: Path) -> None:
    archive = zip_copy / "images_evaluation.zip"
    with open(archive, "r+b") as fh:
        fh.truncate(archive.stat().st_size // 2)
    with pytest.raises(DataError) as info:
        load_omniglot(zip_copy, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(archive) in message and "\n" not in message


def _data_offset(archive: Path, member: str) -> tuple[int, int]:
    """Offset and length of ``member``'s compressed bytes inside ``archive``."""
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(member)
    with open(archive, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def test_overwritten_member_bytes(zip_copy: Path, tmp_path: Path) -> None:
    archive = zip_copy / "images_background.zip"
    offset, length = _data_offset(archive, FIRST_MEMBER)
    with open(archive, "r+b") as fh:
        fh.seek(offset + length // 4)
        fh.write(b"\xff\x00" * (length // 4))
    with pytest.raises(DataError) as info:
        load_omniglot(zip_copy, cache_dir=tmp_path / "fresh-cache")
    message = str(info.value)
    assert str(archive) in message and FIRST_MEMBER in message and "\n" not in message
    assert not list((tmp_path / "fresh-cache").glob("*.npy")), "nothing may be cached"


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_omniglot(missing, cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert str(missing) in message and str(missing / "omniglot") in message
    assert "MAMLKIT_DATA" in message and "mamlkit data download omniglot" in message


def test_lookup_order_names_every_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMLKIT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError) as info:
        find_omniglot_dir()
    message = str(info.value)
    assert str(tmp_path / "data" / "omniglot") in message
    assert str(tmp_path / "cache" / "omniglot") in message
    # The environment variable wins over the cache directory ...
    _make_synthetic(tmp_path / "data" / "omniglot", zips=True, folders=False)
    _make_synthetic(tmp_path / "cache" / "omniglot", zips=True, folders=False)
    assert find_omniglot_dir() == tmp_path / "data" / "omniglot"
    # ... and an explicit argument wins over both; the parent of omniglot/ works too.
    _make_synthetic(tmp_path / "explicit" / "omniglot", zips=False, folders=True)
    assert find_omniglot_dir(tmp_path / "explicit") == tmp_path / "explicit" / "omniglot"
    monkeypatch.delenv("MAMLKIT_DATA")
    assert find_omniglot_dir() == tmp_path / "cache" / "omniglot"


def test_download_from_file_urls(
    omniglot: Loaded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = {
        name: (omniglot.directory / name).resolve().as_uri()
        for name in ("images_background.zip", "images_evaluation.zip")
    }
    monkeypatch.setattr(omniglot_module, "OMNIGLOT_URLS", urls)
    monkeypatch.setenv("MAMLKIT_CACHE", str(omniglot.cache_root))  # validation: cache hit
    dest = download_omniglot(tmp_path / "dl")
    assert find_omniglot_dir(dest) == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(urls)


def test_download_failure_is_one_clean_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 9 (discard) is closed on test machines, so this fails fast and offline.
    monkeypatch.setattr(
        omniglot_module,
        "OMNIGLOT_URLS",
        {"images_background.zip": "http://127.0.0.1:9/images_background.zip"},
    )
    with pytest.raises(DataError) as info:
        download_omniglot(tmp_path / "dl", timeout=5)
    message = str(info.value)
    assert "could not download http://127.0.0.1:9/images_background.zip" in message
    assert "\n" not in message
    assert list((tmp_path / "dl").iterdir()) == [], "no partial files may remain"


# --------------------------------------------------------------------------------------
# Synthetic data: layouts, validation, cache behaviour (no real data needed)
# --------------------------------------------------------------------------------------


def test_folders_and_zips_give_the_same_arrays(tmp_path: Path) -> None:
    root = _make_synthetic(tmp_path / "both", zips=True, folders=True)
    from_zip = _load_omniglot(root, 28, tmp_path / "c1", SYNTH_COUNTS)
    only_folders = tmp_path / "folders"
    shutil.copytree(root / "images_background", only_folders / "images_background")
    shutil.copytree(root / "images_evaluation", only_folders / "images_evaluation")
    from_dir = _load_omniglot(only_folders, 28, tmp_path / "c2", SYNTH_COUNTS)
    assert from_zip.images.shape == (6, SYNTH_PER_CHAR, 28, 28)
    np.testing.assert_array_equal(from_zip.images, from_dir.images)
    assert (
        from_zip.characters
        == from_dir.characters
        == [
            "Alpha/character01",
            "Alpha/character02",
            "Beta/character01",
            "Beta/character02",
            "Gamma/character01",
            "Gamma/character02",
        ]
    )
    assert from_zip.background.tolist() == [True] * 4 + [False] * 2


def test_public_loader_insists_on_official_counts(tmp_path: Path) -> None:
    root = _make_synthetic(tmp_path / "small", zips=True, folders=False)
    with pytest.raises(DataError, match=r"has 4 images, expected 20"):
        load_omniglot(root, cache_dir=tmp_path / "cache")


def test_count_validation_messages(tmp_path: Path) -> None:
    root = _make_synthetic(tmp_path / "tree", zips=False, folders=True)
    (root / "images_evaluation/Gamma/character02/0006_04.png").unlink()
    with pytest.raises(DataError, match=r"Gamma/character02 has 3 images, expected 4"):
        _load_omniglot(root, 28, tmp_path / "cache", SYNTH_COUNTS)
    shutil.rmtree(root / "images_evaluation/Gamma/character02")
    with pytest.raises(DataError, match=r"found 5 characters in .*, expected 6"):
        _load_omniglot(root, 28, tmp_path / "cache", SYNTH_COUNTS)
    shutil.rmtree(root / "images_evaluation/Gamma")
    with pytest.raises(DataError, match=r"images_evaluation holds no images"):
        _load_omniglot(root, 28, tmp_path / "cache", SYNTH_COUNTS)


def test_undecodable_png_names_archive_and_member(tmp_path: Path) -> None:
    root = _make_synthetic(tmp_path / "bad", zips=True, folders=False)
    archive = root / "images_evaluation.zip"
    member = "images_evaluation/Gamma/character01/0005_02.png"
    with zipfile.ZipFile(archive) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members[member] = b"\x89PNG\r\n\x1a\n this is not really a png"  # valid CRC, bad image
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(DataError) as info:
        _load_omniglot(root, 28, tmp_path / "cache", SYNTH_COUNTS)
    assert str(archive) in str(info.value) and member in str(info.value)


def test_cache_key_tracks_size_and_content(tmp_path: Path) -> None:
    root = _make_synthetic(tmp_path / "data", zips=True, folders=False)
    cache = tmp_path / "cache"
    a28 = _load_omniglot(root, 28, cache, SYNTH_COUNTS)
    a14 = _load_omniglot(root, 14, cache, SYNTH_COUNTS)
    assert a14.images.shape[-2:] == (14, 14)
    assert len(list(cache.glob("*.npy"))) == 2
    # Different strokes under the same names: the CRCs change, so does the key.
    _make_synthetic(root, zips=True, folders=False, seed=1)
    b28 = _load_omniglot(root, 28, cache, SYNTH_COUNTS)
    assert len(list(cache.glob("*.npy"))) == 3
    assert not np.array_equal(a28.images, b28.images)


def test_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    root = _make_synthetic(tmp_path / "data", zips=True, folders=False)
    cache = tmp_path / "cache"
    first = _load_omniglot(root, 28, cache, SYNTH_COUNTS)
    (npy,) = cache.glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:100])
    again = _load_omniglot(root, 28, cache, SYNTH_COUNTS)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(np.load(npy), first.images)


def test_bad_image_size(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image_size"):
        load_omniglot(tmp_path, image_size=0)


# --------------------------------------------------------------------------------------
# Layering
# --------------------------------------------------------------------------------------


def test_data_layer_imports_only_numpy_pillow_stdlib() -> None:
    """mamlkit.data is the bottom layer: no torch, no other mamlkit subpackage."""
    for source in sorted(DATA_MODULE_DIR.glob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top != "torch", f"{source.name} imports {name}"
                if top == "mamlkit":  # progress lines: a leaf module of the standard library's
                    ok = name.startswith("mamlkit.data") or name == "mamlkit.progress"
                    assert ok, f"{source.name} imports {name}"
    progress = ast.parse((DATA_MODULE_DIR.parent / "progress.py").read_text(encoding="utf-8"))
    for node in ast.walk(progress):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:  # the standard library alone (tqdm only where it shows a bar)
                assert name.split(".")[0] not in ("torch", "mamlkit", "numpy"), name
