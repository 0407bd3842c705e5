"""Where a meta-iteration spends its time: every aten call of the benchmark's meta-iteration,
timed one by one and grouped by operator and first-argument shape.

    python benchmarks/op_breakdown.py --workload omniglot-5w1s [--algorithm maml] [--iters 10]
        [--top 25]

Prints one JSON object: the meta-iteration time under the timing mode (each call is timed
synchronously, which adds a few µs per call), the summed op time, the share of convolution
kernels, and the top entries. ``--onednn`` adds oneDNN's own account of one meta-iteration
(its verbose mode): milliseconds per primitive kind, e.g. how much goes to ``reorder``
(layout conversions around the convolution kernels). Use it to decide what to optimise;
quote benchmarks/meta_iteration.py for speed itself.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time

import torch
from meta_iteration import WORKLOADS, make, make_protonet, tune_allocator
from torch.utils._python_dispatch import TorchDispatchMode


class _OpTimer(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seconds: dict[tuple[str, tuple[int, ...]], float] = collections.defaultdict(float)
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        key = (str(func.overloadpacket.__name__), tuple(first.shape) if first is not None else ())
        self.seconds[key] += time.perf_counter() - start
        self.calls[key] += 1
        return out


def _onednn_ms_per_kind(step) -> dict[str, float]:
    """Run ``step`` once with oneDNN's verbose mode on; sum its exec times per primitive kind.

    oneDNN prints from C++ to file descriptor 1, so that descriptor is pointed at a
    temporary file meanwhile."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                step()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        ms: dict[str, float] = collections.defaultdict(float)
        for line in log:
            fields = line.strip().split(",")
            # onednn_verbose,v1,primitive,exec,cpu,KIND,...,EXEC_MS
            if len(fields) > 6 and fields[2] == "primitive" and fields[3] == "exec":
                ms[fields[5]] += float(fields[-1])
    return {kind: round(v, 2) for kind, v in sorted(ms.items(), key=lambda kv: -kv[1])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="omniglot-5w1s")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--first-order", action="store_true")
    p.add_argument(
        "--algorithm",
        default="maml",
        choices=["maml", "metasgd", "anil", "mamlpp", "reptile"],
        help="MAML-family workloads: which algorithm's meta-iteration (default maml)",
    )
    p.add_argument("--onednn", action="store_true", help="add oneDNN's ms per primitive kind")
    args = p.parse_args()
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.workload.startswith("protonet"):  # one episode, channels-last as ProtoNets train
        _, step = make_protonet(args.workload, True, "cpu")
    else:
        _, step = make(args.workload, "auto", args.first_order, "cpu", algorithm=args.algorithm)
    for _ in range(3):
        step()
    timer = _OpTimer()
    start = time.perf_counter()
    with timer:
        for _ in range(args.iters):
            step()
    per_iter = (time.perf_counter() - start) / args.iters
    total = sum(timer.seconds.values()) / args.iters
    conv = (
        sum(v for (op, _), v in timer.seconds.items() if op.startswith("convolution")) / args.iters
    )
    top = sorted(timer.seconds.items(), key=lambda kv: -kv[1])[: args.top]
    onednn = {"onednn_ms_per_kind": _onednn_ms_per_kind(step)} if args.onednn else {}
    print(
        json.dumps(
            {
                **onednn,
                "workload": args.workload,
                "algorithm": "protonet" if args.workload.startswith("protonet") else args.algorithm,
                "first_order": args.first_order,
                "ms_per_iter_timed": round(per_iter * 1e3, 2),
                "ms_in_ops": round(total * 1e3, 2),
                "convolution_share_of_op_time": round(conv / total, 3),
                "threads": torch.get_num_threads(),
                "top": [
                    {
                        "op": op,
                        "shape": list(shape),
                        "calls_per_iter": timer.calls[(op, shape)] / args.iters,
                        "ms_per_iter": round(v / args.iters * 1e3, 2),
                    }
                    for (op, shape), v in top
                ],
            }
        )
    )


if __name__ == "__main__":
    main()
