"""Omniglot (Lake et al., 2015): find, validate, preprocess and cache the image set.

The reader works on the two official archives ``images_background.zip`` and
``images_evaluation.zip`` directly (no extraction needed), or on the folders they extract to.
It checks the *content* (50 alphabets, 1623 characters, 20 drawings each) instead of archive
hashes, because re-zipped copies of the same PNGs are common and perfectly usable.

Preprocessing follows the reference MAML code (cbfinn/maml): grey-scale, Lanczos resize to
``image_size`` x ``image_size`` and inversion, so strokes are high (255) and the background
is 0. The result is cached as ``.npy`` keyed by a fingerprint of the archive content, so only
the first call pays for decoding 32,460 PNGs.

Rotation-based class augmentation is deliberately *not* done here: it belongs to the episode
sampler, which can rotate on the fly without quadrupling the stored array.

The parts live beside this module: :mod:`~mamlkit.data.omniglot_data` (the array and the
constants), :mod:`~mamlkit.data.omniglot_archive` (reading and checking the archives or
folders), :mod:`~mamlkit.data.omniglot_cache` (the ``.npy`` cache) and
:mod:`~mamlkit.data.omniglot_split_schemes` (train / val / test characters); this module finds,
decodes, loads and downloads, and re-exports the public names of the others.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mamlkit.data.cache import default_cache_dir
from mamlkit.data.errors import DataError
from mamlkit.data.omniglot_archive import (
    _DECODE_ERRORS,
    _FIX_HINT,
    _list_images,
    _Listing,
    _open_sets,
    _qualifies,
)
from mamlkit.data.omniglot_cache import _cache_key, _cache_path, _read_cache, _write_cache
from mamlkit.data.omniglot_data import (  # the names of the former single module, kept
    BACKGROUND,  # noqa: F401
    EVALUATION,  # noqa: F401
    OFFICIAL_COUNTS,
    PREPROCESS_VERSION,
    SETS,
    OmniglotData,
    _Counts,
)
from mamlkit.data.omniglot_split_schemes import MAML_N_TRAIN, omniglot_splits  # noqa: F401

__all__ = [
    "OMNIGLOT_URLS",
    "PREPROCESS_VERSION",
    "OmniglotData",
    "download_omniglot",
    "find_omniglot_dir",
    "load_omniglot",
    "omniglot_splits",
]

logger = logging.getLogger(__name__)

DATA_ENV_VAR = "MAMLKIT_DATA"

OMNIGLOT_URLS: dict[str, str] = {
    f"{name}.zip": f"https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip"
    for name in SETS
}
# Omniglot drawings are 105x105; a member claiming far more pixels is refused before it is
# decoded (Pillow only refuses beyond ~179 million, after warning from ~89 million).
_MAX_PIXELS = 4096 * 4096


# --------------------------------------------------------------------------------------
# Locating the data
# --------------------------------------------------------------------------------------

def find_omniglot_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the directory that holds the Omniglot archives (or their extracted folders).

    Lookup order:

    1. ``data_dir`` if given (the directory itself, or its ``omniglot/`` sub-directory, so
       both ``--data-dir data`` and ``--data-dir data/omniglot`` work). An explicit
       argument is never silently replaced by another location.
    2. ``$MAMLKIT_DATA/omniglot`` if the variable is set.
    3. ``default_cache_dir()/omniglot``, where ``mamlkit data download omniglot`` puts it.

    Raises :class:`DataError` naming every place it looked.
    """
    if data_dir is not None:
        base = Path(data_dir).expanduser()
        candidates = [base, base / "omniglot"]
    else:
        candidates = []
        env = os.environ.get(DATA_ENV_VAR)
        if env:
            candidates.append(Path(env).expanduser() / "omniglot")
        candidates.append(default_cache_dir() / "omniglot")
    for candidate in candidates:
        if _qualifies(candidate):
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"Omniglot not found: looked for {SETS[0]}.zip + {SETS[1]}.zip (or the extracted "
        f"folders) in {looked}; {_FIX_HINT}"
    )


def _decode(data: bytes, image_size: int) -> np.ndarray:
    """PNG bytes -> inverted uint8 ``[S, S]`` (strokes high), as in the reference MAML code."""
    with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height > _MAX_PIXELS:
            raise ValueError(f"{im.width}x{im.height} pixels; a decompression bomb?")
        grey = im.convert("L")
    if grey.size != (image_size, image_size):
        grey = grey.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(grey, dtype=np.uint8)


def _preprocess(listing: _Listing, image_size: int) -> np.ndarray:
    """Decode every image of ``listing`` into ``[characters, images, S, S]`` uint8."""
    from mamlkit.progress import Progress

    n_per = len(listing.files[0])
    images = np.empty((len(listing.files), n_per, image_size, image_size), dtype=np.uint8)
    # first use only (then cached): ~15 s of decoding shows a bar, or a log line every 10 s
    with Progress(len(listing.files), "omniglot: preprocessing", unit="character") as bar:
        for c, (names, source) in enumerate(zip(listing.files, listing.sources, strict=True)):
            for j, name in enumerate(names):
                data = source.read(name)
                try:
                    images[c, j] = _decode(data, image_size)
                except _DECODE_ERRORS as exc:
                    raise DataError(
                        f"{source.path}: cannot decode image {name} ({exc}); {source.hint}"
                    ) from exc
            bar.update()
    return images


# --------------------------------------------------------------------------------------
# Public loading API
# --------------------------------------------------------------------------------------


def _check_image_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")


def _load_omniglot(
    data_dir: str | os.PathLike[str] | None,
    image_size: int,
    cache_dir: str | os.PathLike[str] | None,
    expected: _Counts | None,
) -> OmniglotData:
    """:func:`load_omniglot` with the expected counts as a parameter (tests shrink them)."""
    _check_image_size(image_size)
    directory = find_omniglot_dir(data_dir)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "omniglot"
    with _open_sets(directory) as sets:
        listing = _list_images(sets, expected)
        key = _cache_key(listing, image_size, cache)
        npy = _cache_path(cache, image_size, key)
        cached = _read_cache(npy, key, image_size)
        if cached is not None:
            return cached
        logger.info("preprocessing Omniglot from %s (one-time, cached in %s)", directory, cache)
        images = _preprocess(listing, image_size)
    data = OmniglotData(
        images=images,
        characters=listing.characters,
        alphabets=listing.alphabets,
        background=np.asarray(listing.background, dtype=bool),
    )
    return dataclasses.replace(data, sha256=_write_cache(npy, key, data))


def load_omniglot(
    data_dir: str | os.PathLike[str] | None = None,
    image_size: int = 28,
    cache_dir: str | os.PathLike[str] | None = None,
) -> OmniglotData:
    """Load all 1623 Omniglot characters as uint8 ``[1623, 20, S, S]`` with strokes high.

    ``data_dir`` is resolved by :func:`find_omniglot_dir`. The content is validated (50
    alphabets, 1623 characters, 20 images each) and any damaged archive member is reported as
    a :class:`DataError` naming the archive and member. The preprocessed array is cached in
    ``cache_dir`` (default ``default_cache_dir()/"omniglot"``) under a key derived from the
    archive content and ``image_size``, so later calls only read one ``.npy`` file.
    """
    return _load_omniglot(data_dir, image_size, cache_dir, OFFICIAL_COUNTS)


# --------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------


def _download(url: str, target: Path, timeout: float) -> None:
    """Fetch ``url`` to ``target`` through a temporary file, so a failure leaves no stub."""
    import tempfile
    import urllib.error
    import urllib.request
    from http.client import HTTPException

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            expected = resp.headers.get("Content-Length")
            written = 0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                written += len(chunk)
            if expected is not None and expected.isdigit() and written != int(expected):
                raise DataError(
                    f"download of {url} stopped after {written} of {expected} bytes; "
                    "run `mamlkit data download omniglot` again"
                )
        os.replace(tmp_name, target)
    except (urllib.error.URLError, HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"could not download {url} ({reason}); check the network connection, or fetch "
            f"the file by hand into {target.parent}"
        ) from exc
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def download_omniglot(dest: str | os.PathLike[str], timeout: float = 60.0) -> Path:
    """Download the two official archives into ``dest`` and validate them.

    Archives already present are kept (validation still checks them). Validation runs
    :func:`load_omniglot`, which also fills the default cache, so the first training run
    starts at once. Network problems become a one-line :class:`DataError`.
    """
    dest = Path(dest).expanduser()
    for name, url in OMNIGLOT_URLS.items():
        target = dest / name
        if target.is_file():
            logger.info("%s already present, not downloading it again", target)
            continue
        logger.info("downloading %s -> %s", url, target)
        _download(url, target, timeout)
    load_omniglot(dest)
    return dest
