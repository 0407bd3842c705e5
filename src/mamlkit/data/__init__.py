"""Data-set readers: the bottom layer of mamlkit.

This package turns the raw data sets on disk (archives, image folders, CSV splits) into
plain uint8 NumPy arrays, validated and cached. It deliberately depends only on NumPy,
Pillow and platformdirs (no torch, nothing else from mamlkit), so that importing it is cheap
and every higher layer can build on it.
"""

from mamlkit.data.cache import atomic_save_npy, default_cache_dir, load_npy
from mamlkit.data.errors import DataError
from mamlkit.data.imagefolder import load_image_folder
from mamlkit.data.images import decode_image
from mamlkit.data.miniimagenet import ImageClassData, find_miniimagenet_dir, load_miniimagenet
from mamlkit.data.omniglot import (
    OmniglotData,
    download_omniglot,
    find_omniglot_dir,
    load_omniglot,
    omniglot_splits,
)

__all__ = [
    "DataError",
    "ImageClassData",
    "OmniglotData",
    "atomic_save_npy",
    "decode_image",
    "default_cache_dir",
    "download_omniglot",
    "find_miniimagenet_dir",
    "find_omniglot_dir",
    "load_image_folder",
    "load_miniimagenet",
    "load_npy",
    "load_omniglot",
    "omniglot_splits",
]
