"""RL figures: the return after 0..k adaptation steps (from ``eval.json``) and, for 2D
navigation, trajectories before and after adaptation beside the goal."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mamlkit.functional import FixedStepSize, stack_params
from mamlkit.plots import _pyplot
from mamlkit.rl.envs import Navigation2D, NavigationTasks, environment_generator
from mamlkit.rl.learner import MAMLTRPO

#: paper's MAML returns after 0..3 steps (docs: protocols), drawn for reference
PAPER = {
    "nav2d": [-40.41, -11.68, -3.33, -3.23],
    "cheetah_vel": [-129.53, -78.57, -66.62, -60.78],
    "cheetah_dir": [-50.69, 293.19, 313.48, 315.65],
}


def return_by_step(eval_json: Path, task: str, path: Path) -> None:
    record = json.loads(eval_json.read_text())
    rows = record["by_step"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    steps = [r["steps"] for r in rows]
    ax.errorbar(
        steps, [r["return"] for r in rows], [r["ci95"] for r in rows], marker="o", capsize=3,
        label=f"this run ({record['tasks']} tasks, 95% CI)",
    )  # fmt: skip
    if task in PAPER:
        ax.plot(range(4), PAPER[task], "k--", marker="s", label="MAML (paper)")
    ax.set_xlabel("policy-gradient steps")
    ax.set_ylabel("average return")
    ax.set_xticks(steps)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def nav2d_trajectories(learner: MAMLTRPO, path: Path, tasks: int = 4, seed: int = 0) -> None:
    """One test-like adaptation per goal (40 trajectories, one step of the first test step
    size), and the mean action's path before and after it."""
    env: Navigation2D = learner.env
    batch = NavigationTasks().sample(tasks, torch.Generator().manual_seed(seed))
    goal = batch.support_x[:, 0]
    generator = environment_generator(batch.support_y)
    with torch.enable_grad():
        theta = {
            n: p.detach().requires_grad_() for n, p in stack_params(learner.theta(), tasks).items()
        }
        traj = learner.sample(theta, goal, learner.eval_rollouts, generator)
        update = FixedStepSize(learner.eval_update.step_size("", 0))
        phi = learner.adapt_on(theta, traj, update, 1, first_order=True)
    paths = [_mean_path(learner, theta, goal), _mean_path(learner, phi, goal)]
    plt = _pyplot()
    fig, axes = plt.subplots(1, tasks, figsize=(3 * tasks, 3), squeeze=False)
    for t, ax in enumerate(axes[0]):
        for p, label, style in zip(paths, ["before", "after 1 step"], ["-", "-"], strict=True):
            ax.plot(p[t, :, 0], p[t, :, 1], style, marker=".", markersize=3, label=label)
        ax.plot(*goal[t].tolist(), "r*", markersize=12, label="goal")
        ax.set_xlim(-0.6, 0.6)
        ax.set_ylim(-0.6, 0.6)
        ax.set_aspect("equal")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"2D navigation: mean-action paths (horizon {env.horizon})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def _mean_path(learner: MAMLTRPO, params, goal) -> torch.Tensor:
    """Positions ``[T, H + 1, 2]`` when every step takes the policy's mean action."""
    env = learner.env
    params = {n: p.detach() for n, p in params.items()}
    state, obs = env.reset(goal, 1)
    points = [state[0][:, 0]]
    for _ in range(env.horizon):
        mean, _ = learner.policy.distribution(params, obs)
        state, obs, _, done = env.step(state, mean)
        points.append(state[0][:, 0])
        if done.all():
            break
    return torch.stack(points, 1)
