"""Time one MAML meta-iteration of two checkouts of mamlkit, alternating run by run, with
one harness: only the library differs. For "did this change make MAML slower?" on a noisy
machine, where two separate benchmark runs differ by more than the change.

    python benchmarks/paired_commits.py --base /tmp/base/src --head src \\
        [--workload sine|omniglot-5w1s] [--pairs 6] [--iters 2000] [--threads 1] [--clock cpu]

Each run is a fresh process importing mamlkit from one ``src`` folder; it uses only the API
every version has had (``MAML(model, loss, inner_lr)``, ``meta_loss``, ``MLP``, ``Conv4``),
so any two commits compare. ``--clock cpu`` times the thread's CPU time (preemption by
other processes does not count), ``wall`` the elapsed time. Prints one JSON line: per run
the median and 10th percentile (ms), and the paired differences head − base.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys

RUN = r"""
import sys, time, statistics
sys.path.insert(0, {src!r})
import torch, torch.nn.functional as F
from mamlkit import MAML
from mamlkit.models import MLP, Conv4
torch.set_num_threads({threads})
torch.manual_seed(0)
gen = torch.Generator().manual_seed(0)
if {workload!r} == "sine":
    learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    def batch():
        amp = torch.rand(25, 1, 1, generator=gen) * 4.9 + 0.1
        phase = torch.rand(25, 1, 1, generator=gen) * 3.1416
        xs, xq = (torch.rand(25, 10, 1, generator=gen) * 10 - 5 for _ in range(2))
        return xs, amp * torch.sin(xs - phase), xq, amp * torch.sin(xq - phase)
else:  # omniglot-5w1s: 32 tasks, 5-way 1-shot, 1 query per class, 1 step, alpha 0.4
    learner = MAML(Conv4(5), F.cross_entropy, 0.4)
    def batch():
        xs, xq = (torch.rand(32, 5, 1, 28, 28, generator=gen) for _ in range(2))
        y = torch.arange(5).expand(32, 5).contiguous()
        return xs, y, xq, y.clone()
opt = torch.optim.Adam(learner.parameters(), 1e-3)
batches = [batch() for _ in range(20)]
clock = time.thread_time if {clock!r} == "cpu" else time.perf_counter
def step(b):
    loss = learner.meta_loss(*b)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for i in range({warmup}):
    step(batches[i % 20])
times = []
for i in range({iters}):
    t = clock()
    step(batches[i % 20])
    times.append(clock() - t)
times.sort()
print(1e3 * statistics.median(times), 1e3 * times[len(times) // 10])
"""


def run(src: str, args) -> tuple[float, float]:
    code = RUN.format(
        src=src,
        threads=args.threads,
        workload=args.workload,
        clock=args.clock,
        warmup=args.warmup,
        iters=args.iters,
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    median, p10 = map(float, out.stdout.split())
    return median, p10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="src folder of the checkout before")
    parser.add_argument("--head", required=True, help="src folder of the checkout after")
    parser.add_argument("--workload", choices=["sine", "omniglot-5w1s"], default="sine")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args()
    runs = {"base": [], "head": []}
    for _ in range(args.pairs):
        for name in ("base", "head"):
            runs[name].append(run(getattr(args, name), args))
    diffs = [h[1] - b[1] for b, h in zip(runs["base"], runs["head"], strict=True)]
    report = {
        "workload": args.workload,
        "clock": args.clock,
        "threads": args.threads,
        "iters": args.iters,
        "pairs": args.pairs,
        "base": args.base,
        "head": args.head,
        "median_ms": {k: [round(m, 4) for m, _ in v] for k, v in runs.items()},
        "p10_ms": {k: [round(p, 4) for _, p in v] for k, v in runs.items()},
        "p10_median_ms": {k: round(statistics.median(p for _, p in v), 4) for k, v in runs.items()},
        "paired_p10_diff_ms": [round(d, 4) for d in diffs],
        "paired_p10_diff_median_ms": round(statistics.median(diffs), 4),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
