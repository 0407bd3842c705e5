"""The data sets behind mamlkit's image tasks: where one was found (an absolute folder),
the arrays of each split, and a fingerprint of them that a run keeps (``data.json``) to
know later that the data it finds is the data it trained on.

Tasks without a data set (sine, the RL environments, a task of your own) have none:
:func:`dataset_of` is None for them and nothing here touches them.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from mamlkit.tasks.registry import task_spec

if TYPE_CHECKING:
    from mamlkit.config import Config

__all__ = [
    "SplitData",
    "dataset_of",
    "fingerprint",
    "has_default_location",
    "load_split",
    "locate",
    "reads_dataset",
]

F = TypeVar("F", bound=Callable[..., Any])

# builder function -> the data set it reads (by function, so that a builder registered
# under a name of one's own reads the same data set)
_READERS: dict[Callable[..., Any], str] = {}
# data sets found without a folder named (task.data_dir): in $MAMLKIT_DATA or the cache
_DEFAULT_LOCATED = ("omniglot", "miniimagenet")


def reads_dataset(name: str) -> Callable[[F], F]:
    """Decorator for a task builder: it reads the data set ``name`` through
    :func:`load_split` (omniglot, miniimagenet or imagefolder)."""

    def mark(fn: F) -> F:
        _READERS[fn] = name
        return fn

    return mark


def dataset_of(config: Config) -> str | None:
    """The data set the task of ``config`` reads, or None (a task without one)."""
    builder = task_spec(config.task.name).builder
    return None if isinstance(builder, str) else _READERS.get(builder)


def has_default_location(dataset: str) -> bool:
    """Whether ``dataset`` is also looked for without a folder named ($MAMLKIT_DATA)."""
    return dataset in _DEFAULT_LOCATED


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarray fields with == is ambiguous
class SplitData:
    """One split of a data set: ``images`` ``[classes, images, ...]`` (uint8), the class
    names, the absolute folder it was read from, and the content hash (``sha256``) of the
    cached array it is part of (``source``: ``"all"`` where one array holds every split)."""

    images: np.ndarray
    classes: list[str]
    location: Path
    source: str
    sha256: str
    alphabets: Callable[[], np.ndarray] | None = None


def locate(config: Config) -> Path:
    """The absolute folder the data set of ``config`` is read from (``task.data_dir``, else
    where the data set's reader looks by default); :class:`DataError` if there is none."""
    from mamlkit.data import find_miniimagenet_dir, find_omniglot_dir
    from mamlkit.data.errors import DataError

    dataset, data_dir = dataset_of(config), config.task.data_dir
    if dataset == "omniglot":
        found = find_omniglot_dir(data_dir)
    elif dataset == "miniimagenet":
        found = find_miniimagenet_dir(data_dir)
    elif dataset == "imagefolder":
        if not data_dir:
            raise DataError("an image-folder task needs task.data_dir (or --data-dir)")
        found = Path(data_dir).expanduser()
        if not found.is_dir():
            raise DataError(
                f"image folder {found} does not exist; set task.data_dir (or --data-dir) to "
                "a folder of class folders"
            )
    else:
        raise ValueError(f"task {config.task.name!r} reads no data set")
    return found.resolve()


def _signature(folder: Path) -> tuple:
    """What changes when the files at the top of ``folder`` are replaced (Omniglot's two
    archives or folders): keeps the in-process cache from serving replaced data."""
    out = []
    with os.scandir(folder) as entries:
        for entry in entries:
            st = entry.stat()
            out.append((entry.name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(sorted(out))


@functools.lru_cache(maxsize=2)
def _omniglot_splits(
    location: str, signature: tuple, image_size: int, scheme: str, seed: int, n_val: int
) -> dict[str, tuple[np.ndarray, list[str], np.ndarray, str]]:
    """Each split's images, characters and alphabet ids, and the data's content hash."""
    from mamlkit.data import load_omniglot, omniglot_splits

    data = load_omniglot(location, image_size=image_size)
    names = sorted(set(data.alphabets))
    ids = np.array([names.index(a) for a in data.alphabets], dtype=np.int64)
    digest = data.sha256
    splits = omniglot_splits(data, scheme=scheme, seed=seed, n_val=n_val)
    return {
        name: (data.images[idx], [data.characters[i] for i in idx], ids[idx], digest)
        for name, idx in splits.items()
    }


def load_split(config: Config, split: str) -> SplitData:
    """Split ``split`` of the data set of ``config``, read where :func:`locate` finds it."""
    t = config.task
    dataset, location = dataset_of(config), locate(config)
    if dataset == "omniglot":
        key = (str(location), _signature(location), t.image_size, t.split, t.split_seed)
        images, classes, ids, digest = _omniglot_splits(*key, t.val_classes)[split]
        return SplitData(images, classes, location, "all", digest, alphabets=lambda: ids)
    if dataset == "miniimagenet":
        from mamlkit.data import load_miniimagenet

        data = load_miniimagenet(location, split, image_size=t.image_size)
        return SplitData(data.images, data.classes, location, split, data.sha256)
    from mamlkit.data.imagefolder import read_image_folder

    channels = task_spec(t.name).image_channels(t)
    folder = read_image_folder(
        location, t.image_size, channels, tuple(t.split_fractions), t.split_seed
    )
    images, classes = folder.split(split)
    return SplitData(images, classes, location, "all", folder.sha256)


def fingerprint(data: SplitData) -> dict[str, Any]:
    """What a run records of a split it used: class count, images per class, image shape,
    a hash of the class names, and the content hash of the cached array."""
    names = hashlib.sha256("\n".join(data.classes).encode()).hexdigest()
    return {
        "classes": len(data.classes),
        "images_per_class": int(data.images.shape[1]) if data.images.ndim > 1 else 0,
        "image_shape": [int(n) for n in data.images.shape[2:]],
        "class_names_sha256": names,
        "source": data.source,
        "sha256": data.sha256,
    }
