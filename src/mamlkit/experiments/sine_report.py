"""The report (report.md) of `mamlkit reproduce sine`: Table 2 of the paper beside the
measured numbers, and the lines every experiment's report starts with."""

from __future__ import annotations

import time
from typing import Any

from mamlkit.config import Config
from mamlkit.experiments.sine import K_SHOTS, PAPER_TABLE2

__all__ = ["environment_lines", "report_markdown"]


def report_markdown(
    records: list[dict[str, Any]],
    configs: dict[str, Config],
    fine_tune: dict[int, dict[str, Any]],
    env: dict[str, Any],
) -> str:
    """report.md of a reproduction: 5-shot Table 2 (ours beside the paper's), diverged tasks
    and medians, every K, and the pretrained model's chosen fine-tuning step sizes."""

    def rows(method, k):
        return {r["steps"]: r for r in records if r["method"] == method and r["k_shot"] == k}

    def cell(r):
        return f"{r['mse']:.3f} ± {r['ci95']:.3f}"

    tasks = next(iter(configs.values())).eval.tasks
    iters = {name: c.train.iterations for name, c in configs.items()}
    maml5, pre5 = rows("maml", 5), rows("pretrained", 5)
    lines = [
        "# Sine regression: Table 2 reproduction",
        "",
        *environment_lines(env),
        "",
        f"5-shot MSE after 1 / 5 / 10 gradient steps: mean ± 95% CI over the same {tasks} test "
        "tasks for both methods; MSE on 100 evenly spaced points over [−5, 5].",
        "",
        "| method | 1 step | 5 steps | 10 steps |",
        "|---|---|---|---|",
        f"| MAML (ours, trained with K={maml5[0]['trained_k']}, "
        f"{iters['maml_k' + str(maml5[0]['trained_k'])]} iterations) | "
        + " | ".join(cell(maml5[s]) for s in (1, 5, 10))
        + " |",
        "| MAML (paper) | "
        + " | ".join(f"{PAPER_TABLE2['maml'][s]:.2f}" for s in (1, 5, 10))
        + " |",
        f"| pretrained on all tasks (ours, {iters['pretrained']} iterations, fine-tuning step "
        f"{fine_tune[5]['chosen']}) | " + " | ".join(cell(pre5[s]) for s in (1, 5, 10)) + " |",
        "| pretrained (paper) | "
        + " | ".join(f"{PAPER_TABLE2['pretrained'][s]:.2f}" for s in (1, 5, 10))
        + " |",
        "",
        "Tasks whose error exceeds 1000 (fixed-size steps overshooting) after 1 / 5 / 10 "
        "steps: MAML "
        + " / ".join(str(maml5[s]["diverged_tasks"]) for s in (1, 5, 10))
        + ", pretrained "
        + " / ".join(str(pre5[s]["diverged_tasks"]) for s in (1, 5, 10))
        + f" of {tasks}.",
        "",
        "Medians over tasks (the mean is sensitive to the few tasks on which 10 fixed-size "
        "steps overshoot): MAML "
        + " / ".join(f"{maml5[s]['median']:.3f}" for s in (1, 5, 10))
        + ", pretrained "
        + " / ".join(f"{pre5[s]['median']:.3f}" for s in (1, 5, 10))
        + ".",
        "",
        "## All K",
        "",
        "| method | K | trained K / fine-tune step | 0 steps | 1 step | 5 steps | 10 steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in ("maml", "pretrained"):
        for k in K_SHOTS:
            r = rows(method, k)
            how = r[0].get("trained_k", r[0].get("fine_tune_lr"))
            lines.append(
                f"| {method} | {k} | {how} | "
                + " | ".join(cell(r[s]) for s in (0, 1, 5, 10))
                + " |"
            )
    lines += [
        "",
        "Pretrained fine-tuning step sizes, chosen per K on 200 validation tasks "
        "(mean MSE over 1–10 steps per candidate):",
        "",
    ]
    for k, choice in fine_tune.items():
        lines.append(
            f"- K={k}: {choice['chosen']} ("
            + ", ".join(f"{a}: {v:.3f}" for a, v in choice["scores"].items())
            + ")"
        )
    return "\n".join(lines) + "\n"


def environment_lines(env: dict[str, Any]) -> list[str]:
    """A report's first lines: the command, the date and what it ran on."""
    return [
        f"Command: `{' '.join(env.get('argv', []))}`  ",
        f"Date {time.strftime('%Y-%m-%d')}; mamlkit {env.get('mamlkit')}"
        + (f" (commit {env['git_commit']})" if env.get("git_commit") else "")
        + f"; torch {env.get('torch')}; device {env.get('device')}; "
        f"{env.get('cpu_threads')} threads; {env.get('platform')}",
    ]
