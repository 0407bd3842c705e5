"""Your own few-shot data set: a folder of class folders (``task.name: imagefolder``).

Two layouts:

* ``root/<class>/<image>``: the classes are split into meta-train / val / test by a seeded
  permutation in the proportions ``fractions`` (default 64/16/20%, as miniImageNet);
* ``root/train/<class>/...``, ``root/val/...``, ``root/test/...``: the split is yours
  (``val/`` may be missing).

Images may be grey or colour and of any size and format Pillow reads; they are converted to
``channels`` (1: grey, 3: RGB) and resized to ``image_size`` squares. Every class is cut to
the size of the smallest (episodes need a rectangular array), with a warning. The array of
all classes is cached as ``.npy`` under a key from the files' names and *bytes* (two folders
with equal names and sizes but other pixels never share an entry; see
:mod:`mamlkit.data.content` for how re-reading an unchanged folder is avoided).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mamlkit.data.cache import (
    default_cache_dir,
    entry_sha256,
    read_cache_entry,
    write_cache_entry,
)
from mamlkit.data.content import files_content_key
from mamlkit.data.errors import DataError
from mamlkit.data.images import decode_image, is_image_name

__all__ = ["PREPROCESS_VERSION", "ImageFolderData", "load_image_folder", "read_image_folder"]

logger = logging.getLogger(__name__)

#: Bump whenever the pixels produced for the same input change, so stale caches are ignored.
PREPROCESS_VERSION = 2  # 2: transparent pixels composited onto white
SPLITS = ("train", "val", "test")
_LAYOUT = "expected <class>/<image> folders, or train/ val/ test/ folders of class folders"


def _class_folders(directory: Path) -> dict[str, list[Path]]:
    """``directory/<class>/<image>`` (hidden entries and non-image files skipped)."""
    out: dict[str, list[Path]] = {}
    try:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            out[entry.name] = sorted(
                Path(f.path)
                for f in os.scandir(entry.path)
                if not f.name.startswith(".") and is_image_name(f.name) and f.is_file()
            )
    except OSError as exc:
        raise DataError(f"cannot list {directory} ({exc.strerror or exc})") from None
    return out


def _split_classes(
    root: Path, fractions: tuple[float, float, float], seed: int
) -> dict[str, dict[str, list[Path]]]:
    """Classes (name -> image files) of each split: the user's train/val/test folders, else
    a seeded split of the class folders in ``root``."""
    if any((root / s).is_dir() for s in SPLITS):
        for required in ("train", "test"):
            if not (root / required).is_dir():
                raise DataError(f"{root} has split folders but no {required}/; add it ({_LAYOUT})")
        return {
            s: {f"{s}/{c}": f for c, f in _class_folders(root / s).items()}
            if (root / s).is_dir()
            else {}
            for s in SPLITS
        }
    listing = _class_folders(root)
    names = list(listing)
    picked = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    total = sum(fractions)
    n_train = round(len(names) * fractions[0] / total)
    n_val = round(len(names) * fractions[1] / total)
    parts = {
        "train": picked[:n_train],
        "val": picked[n_train : n_train + n_val],
        "test": picked[n_train + n_val :],
    }
    return {s: {c: listing[c] for c in sorted(parts[s])} for s in SPLITS}


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarray fields with == is ambiguous
class ImageFolderData:
    """An image folder as one array: ``images`` holds the train classes, then val, then
    test (uint8 ``[C, M, S, S]`` grey or ``[C, M, S, S, 3]`` RGB); ``splits`` the class
    names of each split in that order; ``sha256`` the content hash of the array."""

    images: np.ndarray
    splits: dict[str, list[str]]
    root: Path
    sha256: str

    def split(self, name: str) -> tuple[np.ndarray, list[str]]:
        """``(images, class names)`` of split ``name`` (train, val or test)."""
        start = 0
        for s in SPLITS:
            n = len(self.splits[s])
            if s == name:
                return self.images[start : start + n], list(self.splits[s])
            start += n
        raise KeyError(name)


def load_image_folder(
    root: str | os.PathLike[str],
    image_size: int = 28,
    channels: int = 3,
    fractions: tuple[float, float, float] = (0.64, 0.16, 0.20),
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, tuple[np.ndarray, list[str]]]:
    """``{split: (images, class names)}`` for train / val / test; ``images`` is uint8
    ``[C, M, S, S]`` (grey) or ``[C, M, S, S, 3]`` (RGB). Raises :class:`DataError` naming
    the folder or file for a missing folder, too few classes or an unreadable image.
    """
    data = read_image_folder(root, image_size, channels, fractions, seed, cache_dir, _stack=3)
    return {s: data.split(s) for s in SPLITS}


def read_image_folder(
    root: str | os.PathLike[str],
    image_size: int = 28,
    channels: int = 3,
    fractions: tuple[float, float, float] = (0.64, 0.16, 0.20),
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    _stack: int = 2,
) -> ImageFolderData:
    """:func:`load_image_folder` as one :class:`ImageFolderData`, with the content hash."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"image folder {root} does not exist; set task.data_dir (or --data-dir) to a "
            "folder of class folders"
        )
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    splits = _split_classes(root, fractions, seed)
    classes = [c for s in SPLITS for c in splits[s]]
    if len(classes) < 2:
        raise DataError(f"{root} holds {len(classes)} class folders with images ({_LAYOUT})")
    files = [splits[s][c] for s in SPLITS for c in splits[s]]
    counts = [len(f) for f in files]
    smallest = min(counts)
    if smallest == 0:
        raise DataError(f"{root / classes[counts.index(0)]} holds no images; add some or remove it")
    if max(counts) != smallest:
        warnings.warn(
            f"{root}: classes hold {smallest} to {max(counts)} images "
            f"({classes[counts.index(smallest)]} has {smallest}); using the first "
            f"{smallest} of every class",
            stacklevel=_stack,
        )
    files = [f[:smallest] for f in files]

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "imagefolder"
    salt = f"mamlkit-imagefolder\nv{PREPROCESS_VERSION}\nS={image_size}\nch={channels}"
    named = [(p.relative_to(root).as_posix(), p) for class_files in files for p in class_files]
    key = files_content_key(salt, root, named, cache)
    npy = cache / f"imagefolder-{image_size}px-{channels}ch-{key[:20]}.npy"
    shape = (len(classes), smallest, image_size, image_size) + ((3,) if channels == 3 else ())
    entry = read_cache_entry(npy, key)
    if entry is not None and entry[0].shape == shape and entry[1].get("classes") == classes:
        images, digest = entry[0], entry_sha256(npy, entry[1], entry[0])
    else:
        from mamlkit.progress import Progress

        logger.info("preprocessing image folder %s (one-time, cached in %s)", root, cache)
        images = np.empty(shape, dtype=np.uint8)
        with Progress(len(files), f"{root.name}: preprocessing", unit="class") as bar:
            for c, class_files in enumerate(files):
                for j, path in enumerate(class_files):
                    images[c, j] = decode_image(path, image_size, channels)
                bar.update()
        digest = write_cache_entry(npy, key, images, {"classes": classes, "root": str(root)})
    return ImageFolderData(images, {s: list(splits[s]) for s in SPLITS}, root, digest)
