"""How long loading Omniglot takes: the one-time preprocessing (only when the cache is empty)
and the cached load every later run does. Prints one JSON line.

    python benchmarks/data_load.py [--data-dir DIR] [--cache-dir DIR] [--repeats 5]

``--data-dir`` defaults to ``$MAMLKIT_DATA/omniglot``. Without ``--cache-dir`` a fresh
temporary cache is used, so the run times the preprocessing too (``build_s``); with an
already filled ``--cache-dir`` only cached loads are timed (``build_s`` null).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mamlkit.data import DataError, load_omniglot  # noqa: E402
from mamlkit.data import omniglot as omniglot_module  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    data_dir = args.data_dir
    if data_dir is None and os.environ.get("MAMLKIT_DATA"):
        data_dir = str(Path(os.environ["MAMLKIT_DATA"]) / "omniglot")

    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(args.cache_dir) if args.cache_dir else Path(scratch) / "omniglot"
        # Count decodes so the JSON says whether the first load built the cache or hit it.
        decode, decoded = omniglot_module._decode, [0]

        def counting_decode(*a, **k):
            decoded[0] += 1
            return decode(*a, **k)

        omniglot_module._decode = counting_decode
        start = time.perf_counter()
        try:
            data = load_omniglot(data_dir, cache_dir=cache)
        except DataError as exc:  # a missing or damaged data set: one line, exit code 2
            p.error(str(exc))
        first = time.perf_counter() - start
        built, decoded[0] = decoded[0] > 0, 0
        cached = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            load_omniglot(data_dir, cache_dir=cache)
            cached.append(time.perf_counter() - start)
        omniglot_module._decode = decode
        out = {
            "images": int(data.images.shape[0] * data.images.shape[1]),
            "shape": list(data.images.shape),
            "build_s": first if built else None,
            "cached_load_s_median": statistics.median(cached) if cached else None,
            "cached_load_s_max": max(cached) if cached else None,
            "cached_loads_decoded": decoded[0],  # 0: the repeats read only the cache
            "repeats": args.repeats,
            "cpus": os.cpu_count(),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
