"""One image file -> the uint8 array a model of an image run was trained on.

Training data and the images a user adapts on later must be preprocessed the same way; the
data-set readers and ``mamlkit adapt`` both decode through :func:`decode_image`.

Transparent pixels (RGBA, LA, palette or grey images with a transparent colour) are
composited onto :data:`BACKGROUND` (white, the paper of Omniglot's drawings) before the
conversion to grey or RGB: black strokes on a transparent background stay black strokes on
white. Files that are not regular files (a FIFO would block the reader forever) and images
of more than :data:`MAX_IMAGE_PIXELS` pixels are refused before anything is decoded."""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from mamlkit.data.errors import DataError

__all__ = [
    "BACKGROUND",
    "DECODE_ERRORS",
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "decode_image",
    "is_image_name",
    "is_regular_file",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})

# What Pillow raises for damaged or non-image files (SyntaxError for some malformed chunks).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

#: The most pixels an image may have (8192 x 8192, 67 megapixels): far beyond what a few-shot
#: model's 28-84 pixel inputs need, and below Pillow's own decompression-bomb warning.
MAX_IMAGE_PIXELS = 8192 * 8192

#: What transparent pixels become: white (RGB), as the paper under Omniglot's strokes.
BACKGROUND = (255, 255, 255)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """True for a regular file (or a link to one); False for folders, FIFOs, sockets,
    devices and missing paths. Reading a FIFO blocks until someone writes into it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _too_large(path: str | os.PathLike[str], size: str) -> DataError:
    return DataError(
        f"image {path} has {size} pixels, more than mamlkit reads ({MAX_IMAGE_PIXELS:,} = "
        "8192 x 8192); shrink it (the model sees it at its image_size anyway) or remove it"
    )


def _flatten(image: Image.Image) -> Image.Image:
    """``image`` without transparency: composited onto :data:`BACKGROUND` (other images
    are returned as they are)."""
    if image.mode not in _ALPHA_MODES and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba)


def decode_image(
    path: str | os.PathLike[str], image_size: int, channels: int = 3, invert: bool = False
) -> np.ndarray:
    """Image file (any size and format Pillow reads) -> uint8 ``[S, S]`` (``channels=1``)
    or ``[S, S, 3]``; ``invert`` flips grey values (Omniglot: strokes high).

    Lanczos when shrinking (sharpest anti-aliasing); bicubic when enlarging, where Lanczos's
    ringing would show. Raises :class:`DataError` naming the file if it is not a regular
    file, is unreadable, has more than :data:`MAX_IMAGE_PIXELS` pixels, or Pillow cannot
    read it.
    """
    if not is_regular_file(path):
        what = "does not exist" if not os.path.lexists(path) else "is not a regular file"
        raise DataError(f"cannot read image {path}: it {what}; give image files only")
    try:
        with warnings.catch_warnings():  # the size is checked below, in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise _too_large(path, f"{im.width} x {im.height}")
                image = _flatten(im).convert("L" if channels == 1 else "RGB")
    except Image.DecompressionBombError:  # beyond twice Pillow's limit: refused in open()
        raise _too_large(path, "more than 179 million") from None
    except PermissionError:
        raise DataError(
            f"cannot read image {path}: permission denied; make it readable (chmod u+r) or "
            "remove it"
        ) from None
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
