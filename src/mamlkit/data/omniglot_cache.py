"""The cache of preprocessed Omniglot arrays: one ``.npy`` per image size, keyed by a
fingerprint of the archive content and the preprocessing, so only the first load pays for
decoding 32,460 PNGs and a changed data set or preprocessing is never served stale."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from mamlkit.data.cache import entry_sha256, read_cache_entry, write_cache_entry
from mamlkit.data.content import files_content_key
from mamlkit.data.omniglot_archive import _DirSet, _Listing
from mamlkit.data.omniglot_data import PREPROCESS_VERSION, OmniglotData

logger = logging.getLogger("mamlkit.data.omniglot")  # the loader's logger, as before


def _cache_key(listing: _Listing, image_size: int, cache: Path) -> str:
    """Content fingerprint: member names + CRC32 (zip) or size (folder) + preprocessing;
    for extracted folders also the files' bytes (hashed once, then memoised by their stat
    in ``cache``), so that other drawings with equal names and sizes are never mistaken for
    cached ones."""
    h = hashlib.sha256()
    h.update(f"mamlkit-omniglot\nv{PREPROCESS_VERSION}\nS={image_size}\n".encode())
    for name, fp in listing.fingerprint:
        h.update(f"{name}\0{fp}\n".encode())
    folders = sorted({s.root for s in listing.sources if isinstance(s, _DirSet)})
    for root in folders:
        named = sorted(
            (name, root / name)
            for names, s in zip(listing.files, listing.sources, strict=True)
            if isinstance(s, _DirSet) and s.root == root
            for name in names
        )
        h.update(files_content_key("mamlkit-omniglot-files", root, named, cache).encode())
    return h.hexdigest()


def _cache_path(cache_dir: Path, image_size: int, key: str) -> Path:
    return cache_dir / f"omniglot-{image_size}px-{key[:20]}.npy"


def _read_cache(npy: Path, key: str, image_size: int) -> OmniglotData | None:
    """Return the cached data, or None on a miss or an inconsistent entry (then rebuilt)."""
    entry = read_cache_entry(npy, key)
    if entry is None:
        return None
    images, meta = entry
    try:
        characters = [str(c) for c in meta["characters"]]
        alphabets = [str(a) for a in meta["alphabets"]]
        background = np.asarray(meta["background"], dtype=bool)
        expected_shape = (len(characters), images.shape[1], image_size, image_size)
        if images.dtype != np.uint8 or images.shape != expected_shape:
            return None
        return OmniglotData(
            images, characters, alphabets, background, entry_sha256(npy, meta, images)
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        logger.warning("ignoring inconsistent Omniglot cache %s (%s); rebuilding", npy, exc)
        return None


def _write_cache(npy: Path, key: str, data: OmniglotData) -> str:
    meta = {
        "format": "mamlkit-omniglot",
        "preprocess_version": PREPROCESS_VERSION,
        "image_size": data.image_size,
        "characters": data.characters,
        "alphabets": data.alphabets,
        "background": data.background.tolist(),
    }
    return write_cache_entry(npy, key, data.images, meta)
