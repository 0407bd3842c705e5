"""MAML-TRPO's Fisher-vector products, timed in one process on the same sampled data:
building the product (once per meta-iteration) and one product (conjugate gradient takes 11),
for each ``--fisher`` construction (or, with ``--chunk-rows``, each chunk size of the ``rop``
products), alternating (the order reversed every repetition), in process CPU time (a shared
machine's other jobs do not count; ``--clock wall`` for elapsed time, where several threads
work). Prints one JSON line: per variant the median and range of the build and of one
product, the speed-up of each against the last one named, and the largest relative
difference between the variants' products.

    python benchmarks/rl_fisher.py --env cheetah [--tasks 40] [--rollouts 20] [--reps 5]
        [--products 2] [--fisher rop gauss_newton] [--inner-steps 1] [--first-order]
        [--chunk-rows 8192 1000000000] [--clock cpu|wall]
    python benchmarks/rl_fisher.py --env nav2d --tasks 20 --rollouts 20
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mamlkit.rl import (  # noqa: E402
    MAMLTRPO,
    GaussianMLPPolicy,
    Navigation2D,
    NavigationTasks,
    fisher_rop,
)
from mamlkit.rl.envs import environment_streams  # noqa: E402
from mamlkit.rl.learner import FISHER  # noqa: E402
from mamlkit.rl.returns import old_policy, surrogate_and_kl  # noqa: E402


def learner_and_batch(args):
    """The learner and one task batch of ``args``' environment."""
    generator = torch.Generator().manual_seed(0)
    if args.env == "cheetah":
        from mamlkit.rl.cheetah import CheetahVelocityTasks, HalfCheetah

        env = HalfCheetah("vel", horizon=200, threads=2)
        batch = CheetahVelocityTasks().sample(args.tasks, generator)
    else:
        env = Navigation2D(horizon=100)
        batch = NavigationTasks().sample(args.tasks, generator)
    policy = GaussianMLPPolicy(env.obs_dim, env.act_dim)
    learner = MAMLTRPO(
        env,
        policy,
        rollouts=args.rollouts,
        inner_steps=args.inner_steps,
        first_order=args.first_order,
    )
    return learner, batch


def summary(times: list[float]) -> dict:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", choices=("cheetah", "nav2d"), default="cheetah")
    p.add_argument("--tasks", type=int, default=40, help="tasks per meta-batch")
    p.add_argument("--rollouts", type=int, default=20, help="trajectories per task")
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--reps", type=int, default=5, help="alternating repetitions")
    p.add_argument("--products", type=int, default=2, help="products timed per build")
    p.add_argument("--fisher", nargs="+", choices=FISHER, default=["rop", "gauss_newton"])
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--chunk-rows",
        type=int,
        nargs="+",
        help="rop only: compare these chunk sizes (rows of tasks' data per chunk of a "
        "product; a size above the batch's rows computes all tasks at once)",
    )
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = p.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    # the variants: (name, --fisher construction, rop chunk rows or None for the default)
    if args.chunk_rows:
        variants = [(f"rop@{rows}", "rop", rows) for rows in args.chunk_rows]
    else:
        variants = [(f, f, None) for f in args.fisher]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    learner, batch = learner_and_batch(args)
    start = time.perf_counter()
    support, phi, query, adv, adv_s = learner._sample_and_adapt(batch, environment_streams(batch))
    sampling_s = time.perf_counter() - start
    old = old_policy(learner.policy, phi, query)
    _, kl = surrogate_and_kl(learner.policy, phi, query, adv, old)
    size = sum(p.numel() for p in learner.policy.parameters())
    vectors = [torch.randn(size) for _ in range(args.products)]
    names = [name for name, _, _ in variants]
    build: dict[str, list[float]] = {name: [] for name in names}
    product: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, torch.Tensor] = {}
    default_rows = fisher_rop.CHUNK_ROWS
    for rep in range(args.reps):
        order = variants if rep % 2 == 0 else variants[::-1]
        for name, fisher, rows in order:
            learner.fisher = fisher
            fisher_rop.CHUNK_ROWS = default_rows if rows is None else rows
            start = clock()
            fvp = learner.fisher_vector_product(phi, query, old, kl, support, adv_s)
            build[name].append(clock() - start)
            for v in vectors:
                start = clock()
                out = fvp(v)
                product[name].append(clock() - start)
            results[name] = out.detach()
            del fvp
    base = names[-1]
    ref = results[base]
    print(
        json.dumps(
            {
                "env": args.env,
                "tasks": args.tasks,
                "rollouts": args.rollouts,
                "steps_per_task": int(query.mask[0].numel()),
                "inner_steps": args.inner_steps,
                "first_order": args.first_order,
                "threads": args.threads,
                "dtype": str(torch.get_default_dtype()),
                "reps": args.reps,
                "clock": args.clock,
                "sampling_wall_s": sampling_s,
                "build_s": {f: summary(t) for f, t in build.items()},
                "product_s": {f: summary(t) for f, t in product.items()},
                "product_speedup_vs_" + base: {
                    f: statistics.median(product[base]) / statistics.median(t)
                    for f, t in product.items()
                },
                "max_rel_difference_vs_" + base: {
                    f: float((r - ref).norm() / ref.norm()) for f, r in results.items()
                },
                "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
