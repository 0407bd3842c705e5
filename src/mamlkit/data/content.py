"""Content keys: what identifies a data set's files and a cached array by their bytes.

A cache keyed on file names and sizes alone hands one folder's pixels to another folder
whose files happen to have the same names and sizes. Keys here hash the *bytes*; so that a
large folder is not read in full at every start, the content hash of a folder is memoised
in the cache directory under the files' ``(name, size, mtime_ns, ctime_ns, inode)``: any
write, copy or replacement of a file changes its ``ctime`` or inode, and the next start
hashes the folder again (once).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from mamlkit.data.cache import atomic_write_text
from mamlkit.data.errors import DataError

__all__ = ["files_content_key"]

_CHUNK = 1 << 20


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as exc:
        raise DataError(f"cannot read image {path} ({exc.strerror or exc})") from None


def _hash_files(salt: str, files: Sequence[tuple[str, Path]]) -> str:
    h = hashlib.sha256(f"{salt}\ncontent\n".encode())
    for name, path in files:
        h.update(f"{name}\0".encode())
        inner = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    inner.update(chunk)
        except OSError as exc:
            raise DataError(f"cannot read image {path} ({exc.strerror or exc})") from None
        h.update(inner.digest())
    return h.hexdigest()


def files_content_key(
    salt: str, root: Path, files: Sequence[tuple[str, Path]], memo_dir: Path
) -> str:
    """SHA-256 over ``salt`` and every file's name (as given) and bytes.

    The result is memoised in ``memo_dir`` under a hash of ``root`` (absolute) and each
    file's stat, so that an unchanged folder is only stat-ed, not read; a memo that cannot
    be read or written only costs a rehash. Raises :class:`DataError` naming an unreadable
    file.
    """
    stat_hash = hashlib.sha256(f"{salt}\n{Path(root).resolve()}\n".encode())
    for name, path in files:
        st = _stat(path)
        stat_hash.update(
            f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode()
        )
    stat_key = stat_hash.hexdigest()
    memo = memo_dir / f"content-{stat_key[:24]}.json"
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
        if isinstance(known, dict) and known.get("stat") == stat_key:
            content = known.get("content")
            if isinstance(content, str) and len(content) == 64:
                return content
    except (OSError, ValueError):
        pass
    content = _hash_files(salt, files)
    try:
        atomic_write_text(memo, json.dumps({"stat": stat_key, "content": content}))
    except OSError:
        pass  # a read-only cache: the next start hashes again
    return content
