"""Meta-iterations per second of data-parallel MAML with 1 and 2 processes (JSON lines).

    python benchmarks/scaling.py [--workload sine|omniglot-5w1s|rl-nav2d] [--procs 1 2]
                                 [--iters N] [--device cpu|cuda]

Each process count runs as ``torchrun`` would run mamlkit: every process draws the whole
meta-batch, keeps its share of the tasks, and the meta-gradients are averaged with one
flattened all-reduce (``bucket``) or one all-reduce per parameter tensor (``per-tensor``),
then Adam steps. Random inputs (timing does not depend on the pixel values). ``rl-nav2d``
is the ``rl_nav2d_maml`` preset's MAML-TRPO meta-iteration (20 tasks × 20 trajectories of
100 steps, sampled by each rank for its tasks; TRPO's own outer step, averaged over the
ranks by ``mean_over_ranks``: ``bucket`` only). On a CPU the
processes share the machine's cores: the numbers say what splitting costs or gains on this
machine, not on a cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, args, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(max(1, args.threads // world))
    import torch.distributed as dist

    from mamlkit.distributed import exit_without_teardown, from_environment, shutdown

    ctx = from_environment(args.device) if world > 1 else None
    device = ctx.device(args.device) if ctx else args.device
    if args.workload == "rl-nav2d":
        step = make_rl_step(device, ctx)
    else:
        step = make_supervised_step(args, device, ctx, world, dist)
    for _ in range(args.warmup):
        step()
    if ctx:
        dist.barrier()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync()
    elapsed = time.perf_counter() - t0
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": elapsed}))
    if ctx:
        shutdown()
        exit_without_teardown(0)


def make_rl_step(device: str, ctx):
    """One MAML-TRPO meta-iteration of the 2D-navigation preset on this rank's tasks."""
    from mamlkit.rl import MAMLTRPO, GaussianMLPPolicy, Navigation2D, NavigationTasks

    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, (100, 100))
    learner = MAMLTRPO(Navigation2D(), policy, inner_lr=0.5, rollouts=20).to(device)
    if ctx:
        learner.mean_over_ranks = ctx.mean_  # what the trainer installs under torchrun
    batch = NavigationTasks().sample(20, torch.Generator(device=device).manual_seed(0))

    def step() -> None:
        learner.outer_step(ctx.shard(batch) if ctx else batch, None, 0)

    return step


def make_supervised_step(args, device: str, ctx, world: int, dist):
    """One MAML meta-iteration (meta-gradient, all-reduce, Adam) on this rank's tasks."""
    from meta_iteration import make

    learner, _ = make(args.workload, "auto", False, device)
    params = [p for p in learner.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, 1e-3)
    inputs = make_batch(args.workload, device)

    def step():
        batch = ctx.shard(inputs) if ctx else inputs
        opt.zero_grad(set_to_none=True)
        learner.meta_loss(*batch).backward()
        grads = [p.grad for p in params]
        if ctx and args.mode == "bucket":
            ctx.mean_(grads)
        elif ctx:
            for g in grads:
                dist.all_reduce(g)
                g /= world
        opt.step()

    return step


def make_batch(workload: str, device: str):
    from meta_iteration import WORKLOADS

    from mamlkit.tasks.base import TaskBatch

    w = WORKLOADS[workload]
    gen = torch.Generator(device=device).manual_seed(0)
    if workload == "sine":
        xs = torch.rand(w["tasks"], w["support"], 1, generator=gen, device=device) * 10 - 5
        xq = torch.rand(w["tasks"], w["query"], 1, generator=gen, device=device) * 10 - 5
        return TaskBatch(xs, torch.sin(xs), xq, torch.sin(xq))
    n_s, n_q = w["ways"] * w["shots"], w["ways"] * w["queries"]
    xs = torch.rand(w["tasks"], n_s, 1, 28, 28, generator=gen, device=device)
    xq = torch.rand(w["tasks"], n_q, 1, 28, 28, generator=gen, device=device)
    ys = torch.arange(w["ways"], device=device).repeat_interleave(w["shots"]).expand(w["tasks"], -1)
    yq = torch.arange(w["ways"], device=device).repeat_interleave(w["queries"])
    return TaskBatch(xs, ys.contiguous(), xq, yq.expand(w["tasks"], -1).contiguous())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--workload", choices=["sine", "omniglot-5w1s", "rl-nav2d"], default="omniglot-5w1s"
    )
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="intra-op threads in all (split over the processes)")  # fmt: skip
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    for procs in args.procs:
        modes = ["bucket"] if args.workload == "rl-nav2d" else ["bucket", "per-tensor"]
        for mode in modes if procs > 1 else ["single"]:
            args.mode = mode
            with tempfile.TemporaryDirectory() as tmp:
                out = str(Path(tmp) / "result.json")
                mp.spawn(_worker, args=(procs, _free_port(), args, out), nprocs=procs)
                seconds = json.loads(Path(out).read_text())["seconds"]
            print(json.dumps({
                "workload": args.workload, "processes": procs, "all_reduce": mode,
                "iterations_per_second": round(args.iters / seconds, 3),
                "ms_per_iteration": round(seconds / args.iters * 1e3, 2),
                "iters": args.iters, "threads_total": args.threads, "device": args.device,
                "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            }))  # fmt: skip


if __name__ == "__main__":
    main()
