"""RL figures: the return after 0..k adaptation steps (from ``eval.json``) and, for 2D
navigation, trajectories before and after each adaptation step beside the goal."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mamlkit.functional import FixedStepSize, stack_params
from mamlkit.plots import _figure, _save
from mamlkit.rl.envs import NavigationTasks, environment_streams
from mamlkit.rl.learner import MAMLTRPO

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PAPER", "nav2d_run_plots", "nav2d_trajectories", "return_by_step", "rl_run_plots"]

#: paper's MAML returns after 0..3 steps (docs: protocols), drawn for reference
PAPER = {
    "nav2d": [-40.41, -11.68, -3.33, -3.23],
    "cheetah_vel": [-129.53, -78.57, -66.62, -60.78],
    "cheetah_dir": [-50.69, 293.19, 313.48, 315.65],
}


def _trained(iterations: int | None) -> str:
    return "" if iterations is None else f"{iterations:,} training iterations"


def return_by_step(eval_json: Path, task: str, path: Path) -> Figure:
    """The average return (95% CI) after 0..k policy-gradient steps of an evaluation
    record, the paper's curve beside it, the training iterations of the evaluated weights
    in the title. Returns the figure (saved to ``path``)."""
    record = json.loads(eval_json.read_text())
    rows = record["by_step"]
    fig = _figure(figsize=(4.8, 3.8))
    ax = fig.subplots()
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
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    step = record.get("step")
    trained = _trained(step if isinstance(step, int) and not isinstance(step, bool) else None)
    ax.set_title(f"{task}: return after adaptation" + (f"\n({trained})" if trained else ""))
    _save(fig, path, dpi=120)
    return fig


def nav2d_trajectories(
    learner: MAMLTRPO,
    path: Path,
    tasks: int = 4,
    seed: int = 0,
    shown: int = 3,
    steps: int = 3,
    iterations: int | None = None,
) -> Figure:
    """One test-like adaptation per goal, as evaluation does it: each of ``steps`` steps
    samples ``eval_rollouts`` trajectories with the current policy and takes one
    policy-gradient step on them with that step's test step size; ``shown`` trajectories
    of every step (0 = before adapting) are drawn, with the goal and the start. The axes
    hold every path and goal (no clipping); one legend for all panels. Returns the figure
    (saved to ``path``)."""
    batch = NavigationTasks().sample(tasks, torch.Generator().manual_seed(seed))
    goal = batch.task
    streams = environment_streams(batch)
    shown = min(shown, learner.eval_rollouts)
    sampled = []
    with torch.enable_grad():
        params = stack_params(learner.theta(), tasks)
        params = {n: p.detach().requires_grad_() for n, p in params.items()}
        for s in range(steps + 1):
            traj = learner.sample(
                params, goal, learner.eval_rollouts, streams, learner.eval_samples
            )
            sampled.append(traj)
            if s == steps:
                break
            update = FixedStepSize(learner.eval_update.step_size("", s))
            phi = learner.adapt_on(params, traj, update, 1, first_order=True)
            params = {n: p.detach().requires_grad_() for n, p in phi.items()}
    paths = [
        [
            [traj.obs[t, k, : int(traj.mask[t, k].sum()), :2] for k in range(shown)]
            for traj in sampled
        ]
        for t in range(tasks)
    ]
    points = torch.cat([torch.zeros(1, 2), goal.reshape(-1, 2)] + [
        xy.reshape(-1, 2) for task_paths in paths for step in task_paths for xy in step
    ])  # fmt: skip
    low, high = points.min(0).values, points.max(0).values
    pad = 0.05 * float((high - low).max().clamp(min=0.1))
    cmap = _step_colours(steps)
    fig = _figure(figsize=(3.1 * tasks, 3.9))
    axes = fig.subplots(1, tasks, squeeze=False, sharex=True, sharey=True)[0]
    for t, ax in enumerate(axes):
        for s, step_paths in enumerate(paths[t]):
            label = "before adapting" if s == 0 else f"after {s} step{'s' if s > 1 else ''}"
            for k, xy in enumerate(step_paths):
                ax.plot(
                    xy[:, 0], xy[:, 1], color=cmap[s], lw=0.9, alpha=0.85,
                    label=label if k == 0 else None,
                )  # fmt: skip
        ax.plot(0.0, 0.0, "ko", ms=4, label="start")
        ax.plot(*goal[t].tolist(), "r*", ms=12, label="goal")
        ax.set_xlim(float(low[0]) - pad, float(high[0]) + pad)
        ax.set_ylim(float(low[1]) - pad, float(high[1]) + pad)
        ax.set_aspect("equal")
        gx, gy = (round(float(v), 2) + 0.0 for v in goal[t])  # + 0.0: no "-0.00"
        ax.set_title(f"goal ({gx:.2f}, {gy:.2f})", fontsize=9)
        ax.set_xlabel("x position")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("y position")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    trained = _trained(iterations)
    fig.suptitle(
        f"2D navigation: {shown} sampled trajectories per policy-gradient step"
        + (f" ({trained})" if trained else ""),
        fontsize=11,
    )
    _save(fig, path, dpi=120)
    return fig


def _step_colours(steps: int) -> list[tuple[float, ...]]:
    """One colour per step, light (before adapting) to dark (the last step)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 - 0.85 * s / max(steps, 1)) for s in range(steps + 1)]


def rl_run_plots(run_dir: Path, task: str, load: Callable[[], Any]) -> list[Path]:
    """An RL task's figures of a run (its registered ``plots``): the return after every
    adaptation step of its ``eval.json`` (once `mamlkit eval` wrote one)."""
    if not (run_dir / "eval.json").is_file():
        return []
    return_by_step(run_dir / "eval.json", task, run_dir / "returns.png")
    return [run_dir / "returns.png"]


def nav2d_run_plots(run_dir: Path, task: str, load: Callable[[], Any]) -> list[Path]:
    """2D navigation's figures of a run: :func:`rl_run_plots`', and the trajectories
    before and after adaptation of its latest weights (``load()``: the run's config,
    learner and training step; None where it holds no weights yet)."""
    written = rl_run_plots(run_dir, task, load)
    loaded = load()
    if loaded is not None:
        config, learner, step = loaded
        path = run_dir / "trajectories.png"
        nav2d_trajectories(learner, path, steps=config.eval.steps, iterations=step)
        written.append(path)
    return written
