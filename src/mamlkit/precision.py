"""Which arithmetic CUDA convolutions and matrix products use.

PyTorch lets cuDNN convolutions use TensorFloat-32 (a 10-bit mantissa) by default and
matrix products not. A run says what it wants instead (``train.precision``), so that its
numbers do not depend on a library default: ``fp32`` is full float32 everywhere, ``tf32``
allows TensorFloat-32 in both. The CPU is unaffected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "tf32")


@contextlib.contextmanager
def cuda_precision(precision: str) -> Iterator[None]:
    """Run the block with ``precision`` for CUDA convolutions and matmuls, then restore."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    tf32 = precision == "tf32"
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
