"""One image file -> the uint8 array a model of an image run was trained on.

Training data and the images a user adapts on later must be preprocessed the same way; the
data-set readers and ``mamlkit adapt`` both decode through :func:`decode_image`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from mamlkit.data.errors import DataError

__all__ = ["DECODE_ERRORS", "IMAGE_SUFFIXES", "decode_image", "is_image_name"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

# What Pillow raises for damaged or non-image files (SyntaxError for some malformed chunks).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def decode_image(
    path: str | os.PathLike[str], image_size: int, channels: int = 3, invert: bool = False
) -> np.ndarray:
    """Image file (any size and format Pillow reads) -> uint8 ``[S, S]`` (``channels=1``)
    or ``[S, S, 3]``; ``invert`` flips grey values (Omniglot: strokes high).

    Lanczos when shrinking (sharpest anti-aliasing); bicubic when enlarging, where Lanczos's
    ringing would show. Raises :class:`DataError` naming the file if Pillow cannot read it.
    """
    try:
        with Image.open(path) as im:
            image = im.convert("L" if channels == 1 else "RGB")
    except DECODE_ERRORS as exc:
        raise DataError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); replace or remove the file"
        ) from None
    if image.size != (image_size, image_size):
        shrinking = image.width > image_size or image.height > image_size
        method = Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC
        image = image.resize((image_size, image_size), method)
    array = np.asarray(image, dtype=np.uint8)
    return 255 - array if invert else array
