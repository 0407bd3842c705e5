"""Half-cheetah (and 2D-navigation) meta-iterations of several checkouts or settings of
mamlkit, in rounds of rotating order: each run a fresh process of its checkout's own
``benchmarks/rl_rollout.py``, so that a noisy machine's load falls on all variants alike.

    python benchmarks/rl_commits.py --rounds 3 \\
        --variant head-rllab . "--threads 2 --fisher rop --cheetah-env rllab" \\
        --variant base /tmp/base "--threads 1" \\
        [--common "--tasks 2 --rollouts 20 --horizon 10 --iters 1 --warmup 0 \\
                   --cheetah-tasks 40 --cheetah-iters 1"]

A variant is a name, a checkout (a folder with ``src/`` and ``benchmarks/``) and the
arguments its ``rl_rollout.py`` takes (an older checkout's benchmark knows fewer flags).
Prints one JSON line per run (``variant``, ``round``, ``commit``, and the benchmark's own
JSON under ``result``), then one summary line: each variant's seconds per half-cheetah
meta-iteration, run by run, and their median.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

COMMON = (
    "--tasks 2 --rollouts 20 --horizon 10 --iters 1 --warmup 0 --cheetah-tasks 40 --cheetah-iters 1"
)


def commit(checkout: Path) -> str:
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)  # fmt: skip
    return done.stdout.strip() or "unknown"


def run(checkout: Path, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    script = checkout / "benchmarks" / "rl_rollout.py"
    done = subprocess.run([sys.executable, str(script), *args], cwd=checkout, env=env,
                          capture_output=True, text=True)  # fmt: skip
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", nargs=3, action="append", required=True,
                   metavar=("NAME", "CHECKOUT", "ARGS"))  # fmt: skip
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--common", default=COMMON, help="arguments every run gets")
    args = p.parse_args()
    variants = [(name, Path(folder).resolve(), shlex.split(extra))
                for name, folder, extra in args.variant]  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for r in range(args.rounds):
        shift = r % len(variants)
        for name, checkout, extra in variants[shift:] + variants[:shift]:
            result = run(checkout, [*shlex.split(args.common), *extra])
            cheetah = result.get("half_cheetah")
            if isinstance(cheetah, dict) and cheetah.get("s_per_meta_iteration_all"):
                seconds[name] += cheetah["s_per_meta_iteration_all"]
            line = {"variant": name, "round": r + 1, "commit": commit(checkout), "result": result}
            print(json.dumps(line), flush=True)
    summary = {
        name: {"s_per_meta_iteration": times, "median": statistics.median(times) if times else None}
        for name, times in seconds.items()
    }
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    main()
