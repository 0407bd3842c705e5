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
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
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
    "OMNIGLOT_URLS",
    "PREPROCESS_VERSION",
    "OmniglotData",
    "download_omniglot",
    "find_omniglot_dir",
    "load_omniglot",
    "omniglot_splits",
]

logger = logging.getLogger(__name__)

#: Bump whenever the pixels produced for the same input change (resampling, inversion, ...),
#: so stale caches are ignored instead of silently reused.
PREPROCESS_VERSION = 1

DATA_ENV_VAR = "MAMLKIT_DATA"
BACKGROUND = "images_background"
EVALUATION = "images_evaluation"
SETS: tuple[str, str] = (BACKGROUND, EVALUATION)

#: Number of characters MAML (Finn et al., 2017) uses for meta-training; the rest is test.
MAML_N_TRAIN = 1200

OMNIGLOT_URLS: dict[str, str] = {
    f"{name}.zip": f"https://github.com/brendenlake/omniglot/raw/master/python/{name}.zip"
    for name in SETS
}

_FIX_HINT = "pass --data-dir, set MAMLKIT_DATA, or run `mamlkit data download omniglot`"
_REPLACE_ARCHIVE = (
    "the archive is damaged: delete it and run `mamlkit data download omniglot`, or copy it anew"
)
_REPLACE_DATA = "replace the data (`mamlkit data download omniglot`, or copy it anew)"

# What Pillow and zipfile raise for damaged input. PIL uses SyntaxError for some malformed
# PNG chunks, and zlib.error escapes zipfile when the deflate stream itself is damaged.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    zlib.error,
    zipfile.BadZipFile,
    Image.DecompressionBombError,
)
# Omniglot drawings are 105x105; a member claiming far more pixels is refused before it is
# decoded (Pillow only refuses beyond ~179 million, after warning from ~89 million).
_MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class _Counts:
    """Expected content of a complete data set (the tests use a smaller synthetic one)."""

    alphabets: int
    characters: int
    images_per_character: int


OFFICIAL_COUNTS = _Counts(alphabets=50, characters=1623, images_per_character=20)


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarray fields with == is ambiguous
class OmniglotData:
    """The preprocessed Omniglot set, one row per character.

    Attributes:
        images: uint8 ``[n_characters, 20, S, S]``; strokes are HIGH (255 = ink, 0 =
            background), i.e. inverted with respect to the PNG files.
        characters: ``"Alphabet/characterNN"`` per row; background set first, then
            evaluation, each sorted, so row indices are stable across machines.
        alphabets: the alphabet of each row.
        background: bool ``[n_characters]``, True for rows from ``images_background``.
        sha256: the content hash of ``images`` (``""`` where not known), a run's record of
            the data it trained on.
    """

    images: np.ndarray
    characters: list[str]
    alphabets: list[str]
    background: np.ndarray
    sha256: str = ""

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if not (len(self.characters) == len(self.alphabets) == self.background.shape[0] == n):
            raise ValueError(
                f"OmniglotData fields disagree: {n} image rows, {len(self.characters)} "
                f"characters, {len(self.alphabets)} alphabets, {self.background.shape[0]} flags"
            )

    @property
    def image_size(self) -> int:
        """Side length ``S`` of the stored (square) images."""
        return int(self.images.shape[-1])

    def __repr__(self) -> str:
        return (
            f"OmniglotData(images={self.images.dtype}{list(self.images.shape)}, "
            f"characters={len(self.characters)}, alphabets={len(set(self.alphabets))}, "
            f"background={int(self.background.sum())})"
        )


# --------------------------------------------------------------------------------------
# Locating the data
# --------------------------------------------------------------------------------------


def _qualifies(directory: Path) -> bool:
    """True if ``directory`` holds both archives or both extracted folders."""
    return all((directory / f"{s}.zip").is_file() for s in SETS) or all(
        (directory / s).is_dir() for s in SETS
    )


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


# --------------------------------------------------------------------------------------
# Reading archives and folders
# --------------------------------------------------------------------------------------


class _ZipSet:
    """One of the two image sets, read straight from its zip archive."""

    hint = _REPLACE_ARCHIVE

    def __init__(self, path: Path, set_name: str) -> None:
        self.path = path
        self.set_name = set_name
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise DataError(
                f"{path} is not a readable zip archive ({exc}); {_REPLACE_ARCHIVE}"
            ) from exc

    def members(self) -> list[tuple[str, int]]:
        """``(member name, CRC32)`` for every file; the CRC comes from the zip directory."""
        return [(i.filename, i.CRC) for i in self._zip.infolist() if not i.is_dir()]

    def read(self, name: str) -> bytes:
        try:
            # zipfile verifies the CRC32 once the member is fully read.
            return self._zip.read(name)
        except (*_DECODE_ERRORS, RuntimeError, NotImplementedError, KeyError) as exc:
            raise DataError(
                f"{self.path}: member {name} is corrupt ({exc}); {_REPLACE_ARCHIVE}"
            ) from exc

    def close(self) -> None:
        self._zip.close()


class _DirSet:
    """One of the two image sets, read from its extracted folder."""

    hint = _REPLACE_DATA

    def __init__(self, root: Path, set_name: str) -> None:
        self.root = root  # the directory that contains ``set_name/``
        self.path = root / set_name
        self.set_name = set_name

    def members(self) -> list[tuple[str, int]]:
        """``(relative posix name, file size)`` for every file in the expected 3 levels.

        Sizes only show truncated copies; the cache key of a folder also hashes the files'
        bytes (:func:`mamlkit.data.content.files_content_key`, memoised by their stat).
        """
        out: list[tuple[str, int]] = []
        try:
            for alphabet in os.scandir(self.path):
                if not alphabet.is_dir():
                    continue
                for character in os.scandir(alphabet.path):
                    if not character.is_dir():
                        continue
                    for f in os.scandir(character.path):
                        if f.is_file():
                            name = f"{self.set_name}/{alphabet.name}/{character.name}/{f.name}"
                            out.append((name, f.stat().st_size))
        except OSError as exc:
            raise DataError(f"cannot list {self.path} ({exc}); check permissions") from exc
        return out

    def read(self, name: str) -> bytes:
        path = self.root / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {path} ({exc}); {_REPLACE_DATA}") from exc

    def close(self) -> None:
        pass


_Set = _ZipSet | _DirSet


@contextmanager
def _open_sets(directory: Path) -> Iterator[list[_Set]]:
    """Open both image sets, preferring the archives when both layouts are present.

    The archives win because an extracted folder may be a partial, interrupted extraction.
    """
    sets: list[_Set] = []
    try:
        if all((directory / f"{s}.zip").is_file() for s in SETS):
            for s in SETS:
                sets.append(_ZipSet(directory / f"{s}.zip", s))
        elif all((directory / s).is_dir() for s in SETS):
            sets = [_DirSet(directory, s) for s in SETS]
        else:
            raise DataError(
                f"{directory} holds neither both Omniglot archives nor both extracted "
                f"folders ({SETS[0]}/, {SETS[1]}/); {_FIX_HINT}"
            )
        yield sets
    finally:
        for s in sets:
            s.close()


def _is_ignored(part: str) -> bool:
    """Skip OS litter such as ``.DS_Store`` and ``__MACOSX/`` that archivers like to add."""
    return part.startswith(".") or part == "__MACOSX"


@dataclass
class _Listing:
    """The validated file listing: one sorted list of member names per character."""

    characters: list[str]
    alphabets: list[str]
    background: list[bool]
    files: list[list[str]]  # per character, sorted member names
    sources: list[_Set]  # per character, which set to read it from
    fingerprint: list[tuple[str, int]]  # (name, CRC or size) of every image, sorted


def _list_images(sets: list[_Set], expected: _Counts | None) -> _Listing:
    """Group the image files by character and check the counts against ``expected``."""
    characters: list[str] = []
    alphabets: list[str] = []
    background: list[bool] = []
    files: list[list[str]] = []
    sources: list[_Set] = []
    fingerprint: list[tuple[str, int]] = []
    owner: dict[str, str] = {}  # alphabet -> set it came from, to catch duplicates

    for source in sets:
        grouped: dict[tuple[str, str], list[str]] = {}
        for name, fp in source.members():
            parts = name.split("/")
            if len(parts) != 4 or parts[0] != source.set_name or any(map(_is_ignored, parts)):
                continue
            if not parts[3].lower().endswith(".png"):
                continue
            grouped.setdefault((parts[1], parts[2]), []).append(name)
            fingerprint.append((name, fp))
        if not grouped:
            raise DataError(
                f"{source.path} holds no images under {source.set_name}/<Alphabet>/"
                f"<characterNN>/*.png; {source.hint}"
            )
        for alphabet, character in sorted(grouped):
            if owner.setdefault(alphabet, source.set_name) != source.set_name:
                raise DataError(
                    f"alphabet {alphabet!r} appears in both {SETS[0]} and {SETS[1]} under "
                    f"{source.path}; the two sets must be disjoint; {_REPLACE_DATA}"
                )
            names = sorted(grouped[alphabet, character])
            if expected is not None and len(names) != expected.images_per_character:
                raise DataError(
                    f"{source.path}: character {alphabet}/{character} has {len(names)} images, "
                    f"expected {expected.images_per_character}; {source.hint}"
                )
            characters.append(f"{alphabet}/{character}")
            alphabets.append(alphabet)
            background.append(source.set_name == BACKGROUND)
            files.append(names)
            sources.append(source)

    where = " and ".join(str(s.path) for s in sets)
    n_alpha = len(owner)
    if expected is not None and n_alpha != expected.alphabets:
        raise DataError(
            f"found {n_alpha} alphabets in {where}, expected {expected.alphabets}; "
            f"the data set is incomplete; {_REPLACE_DATA}"
        )
    if expected is not None and len(characters) != expected.characters:
        raise DataError(
            f"found {len(characters)} characters in {where}, expected {expected.characters}; "
            f"the data set is incomplete; {_REPLACE_DATA}"
        )
    per_char = {len(f) for f in files}
    if len(per_char) != 1:
        raise DataError(
            f"characters in {where} have different image counts ({sorted(per_char)}); "
            f"every character needs the same number; {_REPLACE_DATA}"
        )
    fingerprint.sort()
    return _Listing(characters, alphabets, background, files, sources, fingerprint)


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
# Cache
# --------------------------------------------------------------------------------------


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
# Splits
# --------------------------------------------------------------------------------------


def _carve_val(pool: np.ndarray, n_val: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Shuffle ``pool`` and move its last ``n_val`` entries to validation."""
    shuffled = rng.permutation(pool)
    cut = len(shuffled) - n_val
    return shuffled[:cut], shuffled[cut:]


def omniglot_splits(
    data: OmniglotData, scheme: str = "maml", seed: int = 0, n_val: int = 0
) -> dict[str, np.ndarray]:
    """Split character indices into ``"train"``, ``"val"`` (maybe empty) and ``"test"``.

    Schemes:

    * ``"maml"`` (Finn et al., 2017): shuffle all characters with
      ``np.random.default_rng(seed)``; the first 1200 are meta-train, the remaining 423 are
      test. The last ``n_val`` of the 1200 move to ``"val"``.
    * ``"lake"`` (Lake et al., 2015): train = background characters, test = evaluation
      characters; ``n_val`` background characters move to ``"val"`` by the same seeded rule.

    Each array is sorted int64, and the three are disjoint and cover every character.
    """
    n = len(data.characters)
    if isinstance(n_val, bool) or not isinstance(n_val, int | np.integer) or n_val < 0:
        raise DataError(f"n_val must be a non-negative integer, got {n_val!r}")
    rng = np.random.default_rng(seed)
    if scheme == "maml":
        if n <= MAML_N_TRAIN:
            raise DataError(
                f"the maml split needs more than {MAML_N_TRAIN} characters, the data has {n}"
            )
        perm = rng.permutation(n)
        pool, test = perm[:MAML_N_TRAIN], perm[MAML_N_TRAIN:]
        if n_val >= len(pool):
            raise DataError(
                f"n_val={n_val} must be below the {len(pool)} meta-train characters of the "
                "maml split"
            )
        cut = len(pool) - n_val
        train, val = pool[:cut], pool[cut:]
    elif scheme == "lake":
        indices = np.arange(n)
        pool, test = indices[data.background], indices[~data.background]
        if n_val >= len(pool):
            raise DataError(
                f"n_val={n_val} must be below the {len(pool)} background characters of the "
                "lake split"
            )
        train, val = _carve_val(pool, n_val, rng)
    else:
        raise DataError(f"unknown Omniglot split scheme {scheme!r}; use 'maml' or 'lake'")
    return {
        name: np.sort(np.asarray(part, dtype=np.int64))
        for name, part in (("train", train), ("val", val), ("test", test))
    }


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
