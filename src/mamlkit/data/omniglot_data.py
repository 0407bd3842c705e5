"""What an Omniglot set is: the preprocessed array (:class:`OmniglotData`), the two image
sets it is read from, the counts a complete copy has, and the version of the preprocessing.

The loading pipeline is :mod:`mamlkit.data.omniglot`; this module holds the types and
constants that its parts (archive reading, cache, splits) share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BACKGROUND",
    "EVALUATION",
    "OFFICIAL_COUNTS",
    "PREPROCESS_VERSION",
    "SETS",
    "OmniglotData",
]

#: Bump whenever the pixels produced for the same input change (resampling, inversion, ...),
#: so stale caches are ignored instead of silently reused.
PREPROCESS_VERSION = 1

BACKGROUND = "images_background"
EVALUATION = "images_evaluation"
SETS: tuple[str, str] = (BACKGROUND, EVALUATION)


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
