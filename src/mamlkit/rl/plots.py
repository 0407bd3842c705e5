"""RL figures: the return after 0..k adaptation steps (from ``eval.json``) and, for 2D
navigation, trajectories before and after adaptation beside the goal."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mamlkit.functional import FixedStepSize, stack_params
from mamlkit.plots import _pyplot
from mamlkit.rl.envs import NavigationTasks, environment_streams
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


def nav2d_trajectories(
    learner: MAMLTRPO, path: Path, tasks: int = 4, seed: int = 0, shown: int = 3
) -> None:
    """One test-like adaptation per goal (``eval_rollouts`` trajectories, one step of the
    first test step size), and ``shown`` trajectories sampled before and after it."""
    batch = NavigationTasks().sample(tasks, torch.Generator().manual_seed(seed))
    goal = batch.task
    streams = environment_streams(batch)
    with torch.enable_grad():
        theta = stack_params(learner.theta(), tasks)
        theta = {n: p.detach().requires_grad_() for n, p in theta.items()}
        traj = learner.sample(theta, goal, learner.eval_rollouts, streams)
        update = FixedStepSize(learner.eval_update.step_size("", 0))
        phi = learner.adapt_on(theta, traj, update, 1, first_order=True)
    after = learner.sample(phi, goal, shown, streams)
    plt = _pyplot()
    fig, axes = plt.subplots(1, tasks, figsize=(3 * tasks, 3.2), squeeze=False)
    for t, ax in enumerate(axes[0]):
        for sampled, label, color in [(traj, "before", "C0"), (after, "after 1 step", "C1")]:
            for k in range(shown):
                steps = int(sampled.mask[t, k].sum())
                xy = sampled.obs[t, k, :steps, :2]
                ax.plot(xy[:, 0], xy[:, 1], color=color, lw=0.8, label=label if k == 0 else None)
        ax.plot(*goal[t].tolist(), "r*", markersize=12, label="goal")
        ax.set_xlim(-0.6, 0.6)
        ax.set_ylim(-0.6, 0.6)
        ax.set_aspect("equal")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"2D navigation: sampled trajectories before and after adaptation ({shown} each)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
