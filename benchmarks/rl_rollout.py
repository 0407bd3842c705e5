"""Reinforcement-learning throughput: 2D-navigation environment steps per second (the bare
vectorised environment, and sampling with the Gaussian MLP policy) and seconds per
MAML-TRPO meta-iteration (sampling, inner VPG step, query sampling, TRPO step). Prints one
JSON line.

    python benchmarks/rl_rollout.py [--tasks 20] [--rollouts 20] [--horizon 100]
        [--iters 3] [--warmup 1] [--threads N] [--device cpu]
        [--fisher gauss_newton [hessian]] [--fisher-subsample 1 [0.2]] [--cg-iterations 10 [5]]

``--fisher`` names TRPO's Fisher-vector products to time (``MAMLTRPO(fisher=...)``); with
several, each gets its own copy of the same initial policy and their meta-iterations
alternate on the same task batches (the order reversed every round), so a shared machine's
load falls on all of them alike. ``s_per_meta_iteration_by_fisher`` has every one's
times; ``s_per_meta_iteration_*`` are the first one's. ``--fisher-subsample`` and
``--cg-iterations`` (``algorithm.fisher_subsample``, ``algorithm.cg_iterations``) add
variants the same way (every combination, keyed ``FISHER,sub=S,cg=C`` where more than one
is given, on 2D navigation and half-cheetah), with each one's process CPU seconds
(``cpu_s_by_variant``: the CPU time of all threads, which a lower-priority job beside it
does not add to).

An environment step is one step of one trajectory: a tensor step of T tasks × N
trajectories counts T·N. Half-cheetah (where MuJoCo is installed, ``--cheetah-tasks``
× ``--rollouts`` simulations, closed loop, one ``mujoco.rollout`` call per environment step
of the frame skip's physics steps: 1 for ``--cheetah-env rllab``, the presets' MDP and the
default, 5 for ``gymnasium``): environment steps per second of mamlkit's vectorised
environment and of one ``gymnasium.make("HalfCheetah-v5")`` environment, and with
``--cheetah-iters N`` seconds per half-cheetah velocity meta-iteration (meta-batch
``--cheetah-tasks``, horizon 200).

``--cheetah-split N``: N more half-cheetah meta-iterations, each split into its phases
(``meta_iteration_split``: pre-update sampling, inner step, post-update sampling, surrogate
and its gradient, Fisher-vector products with their count, line search with its count of
evaluations, baseline fits, the rest; :mod:`rl_split`), and the physics floor
(``physics_floor_env_steps_per_s``: bare ``mujoco.rollout`` of the same simulations with one
fixed random action, ``--floor-steps`` environment steps, 1 and 2 threads).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mamlkit.functional import stack_params  # noqa: E402
from mamlkit.rl import MAMLTRPO, GaussianMLPPolicy, Navigation2D, NavigationTasks  # noqa: E402
from mamlkit.rl.envs import TaskStreams  # noqa: E402
from mamlkit.rl.learner import FISHER  # noqa: E402
from mamlkit.rl.returns import sample_trajectories  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_split import meta_iteration_split, physics_floor  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def cheetah_throughput(args, device: torch.device) -> dict | str:
    try:
        import gymnasium
        import mujoco
    except ImportError:
        return "MuJoCo not installed (pip install 'mamlkit[rl]')"
    import numpy as np

    from mamlkit.rl.cheetah import CheetahVelocityTasks, HalfCheetah

    env = HalfCheetah(
        "vel", horizon=args.cheetah_horizon, env=args.cheetah_env, threads=args.cheetah_threads
    )
    generator = torch.Generator(device=device).manual_seed(0)
    batch = CheetahVelocityTasks().sample(args.cheetah_tasks, generator).to(device)
    goal, n, horizon = batch.task, args.rollouts, args.cheetah_horizon

    def bare() -> None:
        state, _ = env.reset(goal, n, TaskStreams(batch.seeds))
        for _ in range(horizon):
            action = torch.randn(goal.shape[0], n, 6, generator=generator, device=device)
            state, _, _, _ = env.step(state, action)

    times = timed(bare, device, 1, 2)
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda message: None)  # not into MUJOCO_LOG.TXT in the cwd
    try:
        single = gymnasium.make("HalfCheetah-v5")
    finally:
        mujoco.set_mju_user_warning(previous)
    single.reset(seed=0)
    rng = np.random.default_rng(0)
    single_steps = 2000
    start = time.perf_counter()
    for _ in range(single_steps):
        single.step(rng.uniform(-1, 1, 6))
    single_s = time.perf_counter() - start
    out = {
        "env": env.env,
        "simulations": goal.shape[0] * n,
        "mujoco_threads": env.threads,
        "env_steps_per_s": goal.shape[0] * n * horizon / statistics.median(times),
        "single_gymnasium_env_steps_per_s": single_steps / single_s,
    }
    if args.cheetah_iters or args.cheetah_split:
        policy = GaussianMLPPolicy(env.obs_dim, env.act_dim).to(device)
        learners = variant_learners(args, env, policy, n, device)
        learner = next(iter(learners.values()))
        wall, cpu = alternate(
            learners,
            lambda: CheetahVelocityTasks().sample(goal.shape[0], generator),
            device,
            0,
            args.cheetah_iters,
        )
        out["s_per_meta_iteration_all"] = next(iter(wall.values()))
        if len(learners) > 1:
            out["s_per_meta_iteration_by_variant"] = wall
        out["cpu_s_by_variant"] = cpu
        splits = []
        for _ in range(args.cheetah_split):
            batch = CheetahVelocityTasks().sample(goal.shape[0], generator)
            splits.append(meta_iteration_split(learner, batch))
        out["meta_iteration_split"] = splits
    if args.floor_steps:
        out["physics_floor_env_steps_per_s"] = {
            threads: physics_floor(goal.shape[0] * n, args.floor_steps, env.frame_skip, threads)
            for threads in (1, 2)
        }
    return out


def variant_learners(args, env, policy, n: int, device) -> dict[str, MAMLTRPO]:
    """A learner per combination of ``--fisher``, ``--fisher-subsample`` and
    ``--cg-iterations``, each with its own copy of ``policy``."""
    plain = len(args.fisher_subsample) == 1 and len(args.cg_iterations) == 1
    out = {}
    for f in args.fisher:
        for sub in args.fisher_subsample:
            for cg in args.cg_iterations:
                key = f if plain else f"{f},sub={sub:g},cg={cg}"
                out[key] = MAMLTRPO(
                    env,
                    copy.deepcopy(policy),
                    rollouts=n,
                    fisher=f,
                    fisher_subsample=sub,
                    cg_iterations=cg,
                ).to(device)
    return out


def alternate(learners: dict, next_batch, device, warmup: int, iters: int):
    """Meta-iterations of every learner on the same task batches, the order reversed every
    round: wall and process CPU seconds per learner (after ``warmup`` rounds)."""
    wall: dict[str, list[float]] = {k: [] for k in learners}
    cpu: dict[str, list[float]] = {k: [] for k in learners}
    for i in range(warmup + iters):
        batch = next_batch()
        order = list(learners) if i % 2 == 0 else list(reversed(learners))  # neither first
        for k in order:
            sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            learners[k].outer_step(batch, None, i)
            sync(device)
            if i >= warmup:
                wall[k].append(time.perf_counter() - start)
                cpu[k].append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=20, help="tasks per meta-batch")
    p.add_argument("--rollouts", type=int, default=20, help="trajectories per task")
    p.add_argument("--horizon", type=int, default=100)
    p.add_argument("--iters", type=int, default=3, help="timed meta-iterations")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cheetah-tasks", type=int, default=40, help="0: skip half-cheetah")
    p.add_argument("--cheetah-horizon", type=int, default=200)
    p.add_argument("--cheetah-iters", type=int, default=0, help="timed cheetah meta-iterations")
    p.add_argument("--cheetah-split", type=int, default=0, help="split cheetah meta-iterations")
    p.add_argument("--floor-steps", type=int, default=50, help="physics floor steps (0: skip)")
    p.add_argument("--cheetah-threads", type=int, default=2, help="MuJoCo threads")
    p.add_argument(
        "--cheetah-env",
        choices=["rllab", "gymnasium"],
        default="rllab",
        help="the half-cheetah MDP (task.env; rllab: the presets', 1 physics step per env step)",
    )
    p.add_argument(
        "--fisher",
        nargs="+",
        choices=FISHER,
        default=["gauss_newton"],
        help="Fisher-vector products to time, alternating (cheetah: the first)",
    )
    p.add_argument(
        "--fisher-subsample",
        nargs="+",
        type=float,
        default=[1.0],
        help="algorithm.fisher_subsample values to time, alternating",
    )
    p.add_argument(
        "--cg-iterations",
        nargs="+",
        type=int,
        default=[10],
        help="algorithm.cg_iterations values to time, alternating",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    generator = torch.Generator(device=device).manual_seed(0)
    env = Navigation2D(horizon=args.horizon)
    batch = NavigationTasks().sample(args.tasks, generator).to(device)
    goal = batch.task
    n = args.rollouts
    envs = args.tasks * n

    def bare() -> None:  # the environment alone, random actions
        state, _ = env.reset(goal, n)
        for _ in range(args.horizon):
            action = torch.randn(args.tasks, n, 2, generator=generator, device=device) * 0.1
            state, _, _, _ = env.step(state, action)

    policy = GaussianMLPPolicy(env.obs_dim, env.act_dim).to(device)
    params = stack_params(dict(policy.named_parameters()), args.tasks)

    def with_policy() -> None:
        sample_trajectories(env, policy, params, goal, n, TaskStreams(batch.seeds))

    rollout_iters = max(3, args.iters)
    bare_times = timed(bare, device, 1, rollout_iters)
    policy_times = timed(with_policy, device, 1, rollout_iters)
    learners = variant_learners(args, env, policy, n, device)
    by_fisher, cpu = alternate(
        learners,
        lambda: NavigationTasks().sample(args.tasks, generator),
        device,
        args.warmup,
        args.iters,
    )
    meta_times = next(iter(by_fisher.values()))
    steps_per_rollout = envs * args.horizon
    cheetah = cheetah_throughput(args, device) if args.cheetah_tasks else "skipped"
    print(
        json.dumps(
            {
                "workload": "nav2d",
                "tasks": args.tasks,
                "rollouts_per_task": n,
                "horizon": args.horizon,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "env_steps_per_s": steps_per_rollout / statistics.median(bare_times),
                "policy_env_steps_per_s": steps_per_rollout / statistics.median(policy_times),
                "s_per_meta_iteration_median": statistics.median(meta_times),
                "s_per_meta_iteration_all": meta_times,
                "fisher": args.fisher,
                "s_per_meta_iteration_by_fisher": by_fisher,
                "cpu_s_by_variant": cpu,
                "iters": args.iters,
                "half_cheetah": cheetah,
                "torch": torch.__version__,
                "cpu": platform.processor() or platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
