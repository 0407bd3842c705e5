"""Time one MAML meta-iteration of two checkouts of mamlkit, alternating run by run, with
one harness: only the library differs. For "did this change make MAML slower?" on a noisy
machine, where two separate benchmark runs differ by more than the change.

    python benchmarks/paired_commits.py --base /tmp/base/src --head src \\
        [--workload sine|omniglot-5w1s | --preset NAME [--iteration N]] [--pairs 6]
        [--iters 2000] [--threads 1] [--clock cpu]

Each run is a fresh process importing mamlkit from one ``src`` folder. The workloads use
only the API every version has had (``MAML(model, loss, inner_lr)``, ``meta_loss``, ``MLP``,
``Conv4``), so any two commits compare. ``--preset`` times a shipped preset's own
meta-iteration instead (its model, algorithm and meta-batch, on 4 batches of its training
tasks, so its data must be under ``MAMLKIT_DATA``; at training iteration ``--iteration``,
which matters for schedules such as MAML++'s multi-step loss); both checkouts need
``mamlkit.build`` (2026-10 on). ``--clock cpu`` times the thread's CPU time (preemption by
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
if {preset!r}:
    from mamlkit.build import build_learner, build_tasks
    from mamlkit.config import load_config
    config = load_config({preset!r}, ["train.threads={threads}"])
    learner = build_learner(config)
    tasks = build_tasks(config, "train")
    batches = [tasks.sample(config.train.meta_batch, gen) for _ in range(4)]
elif {workload!r} == "sine":
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
if not {preset!r}:
    batches = [batch() for _ in range(20)]
clock = time.thread_time if {clock!r} == "cpu" else time.perf_counter
def step(b):
    if {preset!r}:  # the preset's own update where its algorithm has one (Reptile)
        opt.zero_grad(set_to_none=True)
        if learner.outer_step(b, opt, {iteration}) is None:
            learner.meta_forward(b, {iteration}).loss.backward()
            opt.step()
        return
    loss = learner.meta_loss(*b)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for i in range({warmup}):
    step(batches[i % len(batches)])
times = []
for i in range({iters}):
    t = clock()
    step(batches[i % len(batches)])
    times.append(clock() - t)
times.sort()
print(1e3 * statistics.median(times), 1e3 * times[len(times) // 10])
"""


def run(src: str, args) -> tuple[float, float]:
    code = RUN.format(
        src=src,
        threads=args.threads,
        workload=args.workload,
        preset=args.preset or "",
        iteration=args.iteration,
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
    parser.add_argument(
        "--preset", default=None, help="time this preset's meta-iteration instead (its data)"
    )
    parser.add_argument(
        "--iteration", type=int, default=0, help="with --preset: the training iteration"
    )
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
        "workload": args.preset or args.workload,
        **({"iteration": args.iteration} if args.preset else {}),
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
