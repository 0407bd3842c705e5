"""Process-level performance settings, applied by the CLI and the benchmarks (never on
import: they affect the whole process)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> bool:
    """Keep freed CPU tensor memory in the process (glibc only).

    glibc serves every allocation above 128 KiB–32 MiB with a fresh ``mmap`` and returns it
    on free, so each iteration page-faults its multi-MB activations in again; on the
    Omniglot conv net that costs ~15% of a meta-iteration. Raising the mmap and trim
    thresholds makes the heap reuse those blocks. Returns whether the setting took effect.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        return bool(ok)
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
