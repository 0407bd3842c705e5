"""Synthetic image folders written with Pillow for the image-folder and adapt tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def class_image(label: int, variant: int, size: int = 20, rgb: bool = False) -> Image.Image:
    """A bright square whose position encodes ``label`` on a dark, slightly noisy field."""
    rng = np.random.default_rng(1000 * label + variant)
    pixels = rng.integers(0, 40, (size, size), dtype=np.uint8)
    row, col = divmod(label % 16, 4)
    step = size // 4
    pixels[row * step : (row + 1) * step, col * step : (col + 1) * step] = 230
    image = Image.fromarray(pixels, "L")
    return image.convert("RGB") if rgb else image


def write_image_folder(root: Path, classes: int, per_class: int, rgb_every: int = 3) -> Path:
    """``root/class_XX/img_Y.png|jpg``: mixed grey/RGB, sizes and formats."""
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True)
        for j in range(per_class):
            image = class_image(c, j, size=20 + 4 * (j % 2), rgb=(c + j) % rgb_every == 0)
            suffix = "jpg" if j % 3 == 2 else "png"
            image.save(folder / f"img_{j}.{suffix}", quality=95)
    return root
