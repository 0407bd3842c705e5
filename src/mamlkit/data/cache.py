"""On-disk cache helpers shared by the data-set readers.

Preprocessing (decoding thousands of PNG/JPEG files and resizing them) is far slower than
reading one ``.npy`` file, so every reader stores its result once and reloads it later.
Writes are atomic (temporary file in the same directory, then :func:`os.replace`) so that an
interrupted run, or two runs racing, can never leave a half-written cache file behind that a
later run would trust.

Each entry also records the SHA-256 of its array (:func:`entry_sha256`), the content hash a
run keeps as its data's fingerprint; it is taken once, when the entry is written, and
trusted afterwards while the ``.npy`` file keeps its size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from mamlkit.data.errors import DataError

__all__ = [
    "array_sha256",
    "atomic_save_npy",
    "atomic_write_text",
    "default_cache_dir",
    "entry_sha256",
    "forget_recent_entries",
    "load_npy",
    "read_cache_entry",
    "write_cache_entry",
]

logger = logging.getLogger(__name__)

CACHE_ENV_VAR = "MAMLKIT_CACHE"
# Entries read in this process, by file identity: building a run's train, val and test
# tasks (and checking its data) reads the same entry up to four times.
_RECENT: OrderedDict[tuple, tuple[np.ndarray, dict[str, Any]]] = OrderedDict()
_RECENT_SIZE = 4


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


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 over an array's dtype, shape and bytes (C order)."""
    arr = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{arr.dtype.str}\0{arr.shape}\0".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _identity(path: Path) -> list[int] | None:
    """``[size, mtime_ns, inode]`` of a file, or None if it cannot be stat-ed."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def read_cache_entry(npy_path: Path, key: str) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Return ``(array, metadata)`` for a cache entry written with the same ``key``, else None.

    An entry is an ``.npy`` file plus a JSON side file (same stem) that holds the content key
    and reader-specific metadata such as class names. A damaged entry counts as a miss: the
    cache only holds derived data, so the right response is to rebuild it, not to fail.
    The last few entries read stay in memory while their files are unchanged.
    """
    meta_path = npy_path.with_suffix(".json")
    if not (npy_path.is_file() and meta_path.is_file()):
        return None
    identity = (str(npy_path), key, *(_identity(npy_path) or []), *(_identity(meta_path) or []))
    if identity in _RECENT:
        _RECENT.move_to_end(identity)
        return _RECENT[identity]
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        entry = load_npy(npy_path), meta
    except (OSError, ValueError, DataError) as exc:
        logger.warning("ignoring damaged cache entry %s (%s); rebuilding it", npy_path, exc)
        return None
    _RECENT[identity] = entry
    while len(_RECENT) > _RECENT_SIZE:
        _RECENT.popitem(last=False)
    return entry


def forget_recent_entries() -> None:
    """Let go of the entries :func:`read_cache_entry` keeps in memory (a training process
    calls it once its tasks are built: arrays it only checked need not stay resident)."""
    _RECENT.clear()


def entry_sha256(npy_path: Path, meta: dict[str, Any], array: np.ndarray) -> str:
    """The SHA-256 of a cache entry's array (:func:`array_sha256`): the one recorded when
    the entry was written while the ``.npy`` file is unchanged (same size, modification
    time and inode), else hashed now and recorded in the entry (if the cache is writable)."""
    identity = _identity(npy_path)
    recorded = meta.get("sha256")
    if isinstance(recorded, str) and identity is not None and meta.get("npy") == identity:
        return recorded
    digest = array_sha256(array)
    if identity is not None and isinstance(meta.get("key"), str):
        meta.update(sha256=digest, npy=identity)
        try:
            atomic_write_text(npy_path.with_suffix(".json"), json.dumps(meta))
        except OSError:
            pass  # a read-only cache: hashed again next time (about 20 ms per 30 MB)
    return digest


def write_cache_entry(npy_path: Path, key: str, array: np.ndarray, meta: dict[str, Any]) -> str:
    """Store a cache entry and return its array's SHA-256; never raises for I/O problems.

    The JSON goes last because its key is what marks the entry valid. A read-only or full
    cache directory must not stop training, it only makes the next start slower, so write
    failures are logged and swallowed.
    """
    digest = array_sha256(array)
    try:
        atomic_save_npy(npy_path, array)
        record = {**meta, "key": key, "sha256": digest, "npy": _identity(npy_path)}
        atomic_write_text(npy_path.with_suffix(".json"), json.dumps(record))
    except OSError as exc:
        logger.warning("could not write cache entry %s (%s); continuing without it", npy_path, exc)
    return digest
