"""On-disk cache helpers shared by the data-set readers.

Preprocessing (decoding thousands of PNG/JPEG files and resizing them) is far slower than
reading one ``.npy`` file, so every reader stores its result once and reloads it later.
Writes are atomic (temporary file in the same directory, then :func:`os.replace`) so that an
interrupted run, or two runs racing, can never leave a half-written cache file behind that a
later run would trust.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mamlkit.data.errors import DataError

__all__ = [
    "atomic_save_npy",
    "atomic_write_text",
    "default_cache_dir",
    "load_npy",
    "read_cache_entry",
    "write_cache_entry",
]

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "MAMLKIT_CACHE"


def default_cache_dir() -> Path:
    """Return the root cache directory: ``$MAMLKIT_CACHE`` if set, else the per-user cache.

    The environment variable wins so that CI and tests can point the cache at a scratch
    directory without touching the user's real cache.
    """
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    # Imported lazily: only needed when no override is given.
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mamlkit"))


def _atomic_write(path: Path, write) -> None:
    """Create ``path`` through a temporary sibling file so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 files; cache files are not secret and may live in a shared
        # cache directory, so give them ordinary permissions.
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` at ``path`` atomically (no pickles, so it is safe to load)."""
    arr = np.asarray(array)
    _atomic_write(Path(path), lambda fh: np.save(fh, arr, allow_pickle=False))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (used for the small JSON side files)."""
    data = text.encode("utf-8")
    _atomic_write(Path(path), lambda fh: fh.write(data))


def load_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """Load an ``.npy`` file written by :func:`atomic_save_npy`.

    Raises :class:`DataError` (naming the file) if it is missing or unreadable; callers that
    use it as a cache treat that as a miss and rebuild.
    """
    p = Path(path)
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(
            f"cannot read cache file {p} ({exc}); delete it and it will be rebuilt"
        ) from exc


def read_cache_entry(npy_path: Path, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Return ``(array, metadata)`` for a cache entry written with the same ``key``, else None.

    An entry is an ``.npy`` file plus a JSON side file (same stem) that holds the content key
    and reader-specific metadata such as class names. A damaged entry counts as a miss: the
    cache only holds derived data, so the right response is to rebuild it, not to fail.
    """
    meta_path = npy_path.with_suffix(".json")
    if not (npy_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        return load_npy(npy_path), meta
    except (OSError, ValueError, DataError) as exc:
        logger.warning("ignoring damaged cache entry %s (%s); rebuilding it", npy_path, exc)
        return None


def write_cache_entry(npy_path: Path, key: str, array: np.ndarray, meta: dict[str, Any]) -> None:
    """Store a cache entry; never raises for I/O problems.

    The JSON goes last because its key is what marks the entry valid. A read-only or full
    cache directory must not stop training, it only makes the next start slower, so write
    failures are logged and swallowed.
    """
    try:
        atomic_save_npy(npy_path, array)
        atomic_write_text(npy_path.with_suffix(".json"), json.dumps({**meta, "key": key}))
    except OSError as exc:
        logger.warning("could not write cache entry %s (%s); continuing without it", npy_path, exc)
