"""miniImageNet (Vinyals et al., 2016; Ravi & Larochelle split): read, resize and cache.

Two layouts are accepted, because both circulate widely:

* CSV layout (Ravi & Larochelle): ``root/images/<file>.jpg`` plus ``root/train.csv``,
  ``root/val.csv`` and ``root/test.csv`` with the header ``filename,label``.
* Folder layout: ``root/<split>/<class>/<image>.jpg``.

Images are converted to RGB and resized to ``image_size`` x ``image_size`` with Pillow, then
stored as one uint8 array ``[n_classes, n_per_class, S, S, 3]``. Episode samplers want a
rectangular array, so every class is truncated to the size of the smallest one (in a fixed
order); a class below ``min_per_class`` is an error, since it could not fill a typical
episode. The array is cached as ``.npy`` under a key derived from the files' names and bytes.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mamlkit.data.cache import (
    default_cache_dir,
    entry_sha256,
    read_cache_entry,
    write_cache_entry,
)
from mamlkit.data.content import files_content_key
from mamlkit.data.errors import DataError

__all__ = [
    "PREPROCESS_VERSION",
    "SPLITS",
    "ImageClassData",
    "find_miniimagenet_dir",
    "load_miniimagenet",
]

logger = logging.getLogger(__name__)

#: Bump whenever the pixels produced for the same input change, so stale caches are ignored.
PREPROCESS_VERSION = 1

DATA_ENV_VAR = "MAMLKIT_DATA"
SPLITS: tuple[str, str, str] = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

_FIX_HINT = "pass --data-dir or set MAMLKIT_DATA (expects $MAMLKIT_DATA/miniimagenet)"
_LAYOUT_HINT = (
    "expected images/ + <split>.csv (header filename,label) or <split>/<class>/<image> folders"
)

# What Pillow raises for damaged or non-image files (SyntaxError for some malformed chunks).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_MAX_PIXELS = 8192 * 8192  # far beyond any ImageNet photo


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarray fields with == is ambiguous
class ImageClassData:
    """Images of one split, grouped by class.

    Attributes:
        images: uint8 ``[n_classes, n_per_class, S, S, 3]`` (RGB).
        classes: class label per row, sorted.
        sha256: the content hash of ``images`` (``""`` where not known).
    """

    images: np.ndarray
    classes: list[str]
    sha256: str = ""

    def __post_init__(self) -> None:
        if self.images.shape[0] != len(self.classes):
            raise ValueError(
                f"ImageClassData fields disagree: {self.images.shape[0]} image rows, "
                f"{len(self.classes)} classes"
            )

    @property
    def image_size(self) -> int:
        """Side length ``S`` of the stored (square) images."""
        return int(self.images.shape[2])

    def __repr__(self) -> str:
        return f"ImageClassData(images={self.images.dtype}{list(self.images.shape)}, " + (
            f"classes={len(self.classes)})"
        )


def _qualifies(directory: Path) -> bool:
    """True if ``directory`` looks like either supported layout for at least one split."""
    csv_layout = (directory / "images").is_dir() and any(
        (directory / f"{s}.csv").is_file() for s in SPLITS
    )
    return csv_layout or any((directory / s).is_dir() for s in SPLITS)


def find_miniimagenet_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the miniImageNet root directory.

    Same lookup order as :func:`mamlkit.data.find_omniglot_dir`: ``data_dir`` (itself or its
    ``miniimagenet/`` sub-directory), else ``$MAMLKIT_DATA/miniimagenet``, else
    ``default_cache_dir()/miniimagenet``. Raises :class:`DataError` naming every place it
    looked.
    """
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        candidates = [base, base / "miniimagenet"]
    else:
        candidates = []
        env = os.environ.get(DATA_ENV_VAR)
        if env:
            candidates.append(Path(env).expanduser() / "miniimagenet")
        candidates.append(default_cache_dir() / "miniimagenet")
    for candidate in candidates:
        if _qualifies(candidate):
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(f"miniImageNet not found in {looked} ({_LAYOUT_HINT}); {_FIX_HINT}")


# --------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------


def _list_csv(root: Path, csv_path: Path) -> dict[str, list[Path]]:
    """Read ``<split>.csv`` (header ``filename,label``); images live in ``root/images``."""
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise DataError(f"{csv_path} needs the image folder {images_dir}, which is missing")
    by_class: dict[str, list[Path]] = {}
    seen: set[str] = set()
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip().lower() for h in header] != ["filename", "label"]:
                raise DataError(
                    f"{csv_path}: first line must be the header 'filename,label', got {header!r}"
                )
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                if len(row) != 2 or not row[0].strip() or not row[1].strip():
                    raise DataError(
                        f"{csv_path}, line {reader.line_num}: expected 'filename,label', "
                        f"got {row!r}"
                    )
                filename, label = row[0].strip(), row[1].strip()
                if filename in seen:
                    raise DataError(
                        f"{csv_path}, line {reader.line_num}: {filename} is listed twice"
                    )
                seen.add(filename)
                by_class.setdefault(label, []).append(images_dir / filename)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {csv_path} ({exc})") from exc
    return by_class


def _list_folders(split_dir: Path) -> dict[str, list[Path]]:
    """Collect ``split_dir/<class>/<image>``; hidden files and non-images are skipped."""
    by_class: dict[str, list[Path]] = {}
    try:
        for class_dir in os.scandir(split_dir):
            if not class_dir.is_dir() or class_dir.name.startswith("."):
                continue
            files = [
                Path(f.path)
                for f in os.scandir(class_dir.path)
                if not f.name.startswith(".")
                and Path(f.name).suffix.lower() in IMAGE_SUFFIXES
                and f.is_file()
            ]
            by_class[class_dir.name] = files
    except OSError as exc:
        raise DataError(f"cannot list {split_dir} ({exc})") from exc
    return by_class


def _list_split(root: Path, split: str) -> tuple[dict[str, list[Path]], Path]:
    """Find ``split`` in either layout (the CSV wins if both exist); return the listing and the
    CSV file or folder it came from, for error messages."""
    csv_path = root / f"{split}.csv"
    split_dir = root / split
    if csv_path.is_file():
        by_class = _list_csv(root, csv_path)
        source = csv_path
    elif split_dir.is_dir():
        by_class = _list_folders(split_dir)
        source = split_dir
    else:
        raise DataError(
            f"miniImageNet split {split!r} not found: neither {csv_path} nor {split_dir} "
            f"exists ({_LAYOUT_HINT})"
        )
    if not by_class:
        raise DataError(f"{source} lists no images for split {split!r} ({_LAYOUT_HINT})")
    return by_class, source


def _select(
    by_class: dict[str, list[Path]], source: Path, min_per_class: int
) -> tuple[list[str], list[list[Path]]]:
    """Sort classes and files, check ``min_per_class`` and truncate to the smallest class.

    Files are ordered by file name so that both layouts give the same array for the same
    images.
    """
    classes = sorted(by_class)
    files = [sorted(by_class[c], key=lambda p: (p.name, str(p))) for c in classes]
    counts = [len(f) for f in files]
    smallest = min(counts)
    if smallest < min_per_class:
        worst = classes[counts.index(smallest)]
        raise DataError(
            f"{source}: class {worst!r} has {smallest} images, need at least "
            f"min_per_class={min_per_class}; add images or lower min_per_class"
        )
    if max(counts) != smallest:
        n_short = sum(c != max(counts) for c in counts)
        warnings.warn(
            f"{source}: class sizes range from {smallest} to "
            f"{max(counts)} images; using the first {smallest} of every class "
            f"({n_short} classes are below the largest)",
            stacklevel=3,
        )
    return classes, [f[:smallest] for f in files]


# --------------------------------------------------------------------------------------
# Decoding and cache
# --------------------------------------------------------------------------------------


def _decode(path: Path, image_size: int) -> np.ndarray:
    """Image file -> uint8 ``[S, S, 3]``.

    Lanczos when shrinking (sharpest anti-aliasing); bicubic when enlarging, where Lanczos's
    ringing would show.
    """
    with Image.open(path) as im:
        if im.width * im.height > _MAX_PIXELS:  # refused before decoding, not after
            raise ValueError(f"{im.width}x{im.height} pixels; a decompression bomb?")
        rgb = im.convert("RGB")
    if rgb.size != (image_size, image_size):
        shrinking = rgb.width > image_size or rgb.height > image_size
        method = Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC
        rgb = rgb.resize((image_size, image_size), method)
    return np.asarray(rgb, dtype=np.uint8)


def _cache_key(
    root: Path, classes: list[str], files: list[list[Path]], image_size: int, cache: Path
) -> str:
    """The class labels, every used image's relative name and its bytes (hashed once, then
    memoised by the files' stat; a missing file is reported here, before any slow work)."""
    named = []
    for label, class_files in zip(classes, files, strict=True):
        for path in class_files:
            try:
                name = path.relative_to(root).as_posix()
            except ValueError:
                name = path.as_posix()
            named.append((f"{label}\0{name}", path))
    salt = f"mamlkit-miniimagenet\nv{PREPROCESS_VERSION}\nS={image_size}\nclasses={len(classes)}"
    return files_content_key(salt, root, named, cache)


def load_miniimagenet(
    root: str | os.PathLike[str] | None,
    split: str,
    image_size: int = 84,
    cache_dir: str | os.PathLike[str] | None = None,
    min_per_class: int = 20,
) -> ImageClassData:
    """Load one split (``"train"``, ``"val"`` or ``"test"``) as uint8 ``[C, N, S, S, 3]``.

    ``root`` is the data set directory (``None``: use :func:`find_miniimagenet_dir`). The
    result is cached in ``cache_dir`` (default ``default_cache_dir()/"miniimagenet"``) under
    a key made from the image names, their bytes, ``image_size`` and the preprocessing
    version. Missing files, bad CSVs, unknown splits and undecodable images raise
    :class:`DataError` naming the path.
    """
    if split not in SPLITS:
        raise DataError(f"unknown miniImageNet split {split!r}; use one of {', '.join(SPLITS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if isinstance(min_per_class, bool) or not isinstance(min_per_class, int) or min_per_class < 1:
        raise DataError(f"min_per_class must be a positive integer, got {min_per_class!r}")
    if root is None:
        root_path = find_miniimagenet_dir()
    else:
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise DataError(f"miniImageNet directory {root_path} does not exist; {_FIX_HINT}")

    classes, files = _select(*_list_split(root_path, split), min_per_class)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "miniimagenet"
    key = _cache_key(root_path, classes, files, image_size, cache)
    npy = cache / f"miniimagenet-{split}-{image_size}px-{key[:20]}.npy"

    entry = read_cache_entry(npy, key)
    if entry is not None:
        images, meta = entry
        expected = (len(classes), len(files[0]), image_size, image_size, 3)
        if images.dtype == np.uint8 and images.shape == expected and meta.get("classes") == classes:
            return ImageClassData(images, classes, entry_sha256(npy, meta, images))

    logger.info("preprocessing miniImageNet %s (one-time, cached in %s)", root_path, cache)
    images = np.empty((len(classes), len(files[0]), image_size, image_size, 3), dtype=np.uint8)
    from mamlkit.progress import Progress

    with Progress(len(files), f"miniimagenet {split}: preprocessing", unit="class") as bar:
        for c, class_files in enumerate(files):
            for j, path in enumerate(class_files):
                try:
                    images[c, j] = _decode(path, image_size)
                except _DECODE_ERRORS as exc:
                    raise DataError(
                        f"cannot decode image {path} ({exc}); replace the file or drop it "
                        "from the split"
                    ) from exc
            bar.update()
    meta = {
        "format": "mamlkit-miniimagenet",
        "preprocess_version": PREPROCESS_VERSION,
        "split": split,
        "image_size": image_size,
        "classes": classes,
    }
    return ImageClassData(images, classes, write_cache_entry(npy, key, images, meta))
