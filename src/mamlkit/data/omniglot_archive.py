"""Reading and checking the two Omniglot image sets, from the official archives or the
folders they extract to.

The *content* is checked (alphabets, characters, images per character, disjoint sets)
instead of archive hashes, because re-zipped copies of the same PNGs are common and
perfectly usable. Every failure is a one-line :class:`~mamlkit.data.errors.DataError`
naming the archive (or folder), the member and the fix.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mamlkit.data.errors import DataError
from mamlkit.data.omniglot_data import BACKGROUND, SETS, _Counts

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


def _qualifies(directory: Path) -> bool:
    """True if ``directory`` holds both archives or both extracted folders."""
    return all((directory / f"{s}.zip").is_file() for s in SETS) or all(
        (directory / s).is_dir() for s in SETS
    )


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
