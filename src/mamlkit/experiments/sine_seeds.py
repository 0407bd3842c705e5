"""`mamlkit reproduce sine-seeds`: whether MAML's 5-shot sine numbers (Table 2) hold across
seeds — MAML at each inner step size α (the paper's text says 0.01, cbfinn/maml's sinusoid
command leaves its default 1e-3) and Meta-SGD, whose learned per-weight α are reported."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any, NamedTuple

from mamlkit.config import Config, load_config
from mamlkit.experiments.sine import (
    DIVERGED_MSE,
    PAPER_TABLE2,
    check_reproduce_iterations,
    load_learners,
    mse_by_step,
    reproduce_dir,
    sine_test_tasks,
    train_models,
)
from mamlkit.experiments.sine_report import environment_lines
from mamlkit.rundir.checkpoint import atomic_write_text, load_checkpoint

K = 5  # the K of Table 2's sine rows: K support (and K query) points per task
PAPER = PAPER_TABLE2["maml"]
REPORT_STEPS = tuple(PAPER)  # 1, 5, 10: the steps Table 2 reports
INNER_LRS = (0.01, 0.001)
STUDY_RUN = re.compile(r"(maml_lr.+|metasgd)_seed\d+")  # the run directories' names


class Model(NamedTuple):
    """One trained model of the study: which method (``maml_lr0.01``, ``metasgd``), seed,
    and its validated config."""

    method: str
    seed: int
    config: Config


def method_name(inner_lr: float | None) -> str:
    """``maml_lr<α>`` for MAML at a fixed α, ``metasgd`` for learned step sizes."""
    return "metasgd" if inner_lr is None else f"maml_lr{inner_lr!r}"


def study_models(
    seeds: list[int],
    inner_lrs: list[float],
    metasgd: bool,
    iterations: int | None,
    device: str,
) -> dict[str, Model]:
    """Every model by run-directory name (``maml_lr0.01_seed0``, ``metasgd_seed0``): MAML
    per α and seed, Meta-SGD per seed, all trained with K support + K query points;
    validated here, before anything is written."""
    methods = [("sine_maml", lr) for lr in inner_lrs]
    if metasgd:
        methods.append(("sine_metasgd", None))
    common = [f"task.k_support={K}", f"task.k_query={K}", f"train.device={device}"]
    if iterations is not None:
        check_reproduce_iterations(iterations)
        common.append(f"train.iterations={iterations}")
    models = {}
    for preset, lr in methods:
        method = method_name(lr)
        sets = common if lr is None else [*common, f"algorithm.inner_lr={lr!r}"]
        for seed in seeds:
            config = load_config(preset, [*sets, f"train.seed={seed}"])
            models[f"{method}_seed{seed}"] = Model(method, seed, config)
    return models


def holds_study(out: Path) -> bool:
    """Whether ``out`` holds (part of) a sine-seeds study that ``--resume`` can continue."""
    if not out.is_dir():
        return False
    return any(p.is_dir() and STUDY_RUN.fullmatch(p.name) for p in out.iterdir())


def step_sizes(learner) -> dict[str, dict[str, float]]:
    """Meta-SGD's learned α per parameter tensor: mean, min, max over its elements."""
    return {
        name: {"mean": a.mean().item(), "min": a.min().item(), "max": a.max().item()}
        for name, a in ((n, a.detach().double()) for n, a in learner.inner_lrs.items())
    }


def _spread(values: list[float]) -> dict[str, Any]:
    """Mean, standard deviation (n − 1), min, max and median of per-seed means. A diverged
    seed (infinite mean) makes the mean infinite and the standard deviation undefined
    (None); the median still says where most seeds are."""
    finite = all(math.isfinite(v) for v in values)
    return {
        "mean": statistics.fmean(values) if finite else math.inf,
        "std": (statistics.stdev(values) if len(values) > 1 else 0.0) if finite else None,
        "min": min(values),
        "max": max(values),
        "median": statistics.median(values),
    }


def summarize(records: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per method and step, the spread over seeds of the per-seed mean MSE, the diverged
    seeds and tasks, and which seeds meet the paper (mean ≤ Table 2's at 1, 5 and 10 steps;
    robustly: every seed at every step)."""
    summary = {}
    for method in methods:
        rows = [r for r in records if r["method"] == method]
        seeds = sorted({r["seed"] for r in rows})
        by = {(r["seed"], r["steps"]): r for r in rows}
        steps = {}
        for s in sorted({r["steps"] for r in rows}):
            means = [by[seed, s]["mse"] for seed in seeds]
            steps[str(s)] = {
                **_spread(means),
                "task_median_mean": statistics.fmean(by[seed, s]["median"] for seed in seeds),
                "diverged_seeds": sum(not m <= DIVERGED_MSE for m in means),
                "diverged_tasks": [by[seed, s]["diverged_tasks"] for seed in seeds],
            }
        meets = {
            str(seed): all(by[seed, s]["mse"] <= PAPER[s] for s in REPORT_STEPS) for seed in seeds
        }
        summary[method] = {
            "seeds": seeds,
            "steps": steps,
            "meets_paper": meets,
            "seeds_meeting_paper": sum(meets.values()),
            "meets_robustly": all(meets.values()),
        }
    return summary


def summarize_step_sizes(per_seed: dict[str, dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Across seeds, per parameter tensor: the mean of the per-seed means, min and max."""
    names = next(iter(per_seed.values()), {})
    return {
        name: {
            "mean": statistics.fmean(s[name]["mean"] for s in per_seed.values()),
            "min": min(s[name]["min"] for s in per_seed.values()),
            "max": max(s[name]["max"] for s in per_seed.values()),
        }
        for name in names
    }


def label(method: str, models: dict[str, Model], short: bool = False) -> str:
    config = next(m.config for m in models.values() if m.method == method)
    if method == "metasgd":
        init = f" (learned α, initialised to {config.algorithm.inner_lr})"
        return "Meta-SGD" + ("" if short else init)
    return ("" if short else "MAML ") + f"α = {config.algorithm.inner_lr}"


def conclusion(summary: dict[str, Any], models: dict[str, Model]) -> str:
    """One line computed from the numbers: per method, in how many seeds it meets the paper
    at every step, which methods do in every seed, and whether the sine_maml preset's α
    is one of them."""
    counts = [
        f"{label(m, models, short=True)} in {s['seeds_meeting_paper']}/{len(s['seeds'])}"
        for m, s in summary.items()
    ]
    robust = [m for m, s in summary.items() if s["meets_robustly"]]
    line = (
        f"{counts[0].replace(' in ', ' meets the paper at every step in ', 1)} seeds"
        + "".join(f"; {c}" for c in counts[1:])
        + ". Robust (every seed, every step): "
        + (", ".join(label(m, models, short=True) for m in robust) or "none")
    )
    preset = load_config("sine_maml").algorithm.inner_lr
    if method_name(preset) in summary:
        ok = "is" if method_name(preset) in robust else "is not"
        line += f"; the sine_maml preset's α = {preset} {ok}"
    return line + "."


def _num(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3f}" if math.isfinite(x) else "inf"


def report_markdown(result: dict[str, Any], models: dict[str, Model], env: dict) -> str:
    summary, tasks = result["summary"], result["tasks"]
    iterations = sorted({m["iterations"] for m in result["models"].values()})
    seeds = sorted({m.seed for m in models.values()})
    steps_head = " | ".join(f"{s} step{'s' * (s > 1)}" for s in REPORT_STEPS)
    lines = [
        "# Sine regression across seeds: MAML's Table 2",
        "",
        *environment_lines(env),
        "",
        f"5-shot MSE after {' / '.join(map(str, REPORT_STEPS))} gradient steps on the same "
        f"{tasks} test tasks for every model (MSE on 100 evenly spaced points over [−5, 5]); "
        f"every model meta-trained for {', '.join(map(str, iterations))} iterations with "
        f"K = {K} support + {K} query points; seeds {', '.join(map(str, seeds))}. A model's "
        "number is its mean over the tasks; a cell is the mean ± standard deviation of those "
        "per-seed means over seeds [min, max].",
        "",
        f"**{result['conclusion']}**",
        "",
        f"| method | {steps_head} | seeds meeting the paper |",
        "|---|" + "---|" * (len(REPORT_STEPS) + 1),
    ]

    def cell(st):
        spread = f"{_num(st['mean'])} ± {_num(st['std'])}" if st["std"] is not None else "inf"
        return f"{spread} [{_num(st['min'])}, {_num(st['max'])}]"

    for method, s in summary.items():
        lines.append(
            f"| {label(method, models)} | "
            + " | ".join(cell(s["steps"][str(t)]) for t in REPORT_STEPS)
            + f" | {s['seeds_meeting_paper']}/{len(s['seeds'])} |"
        )
    lines += [
        "| MAML (paper) | " + " | ".join(f"{PAPER[t]:.2f}" for t in REPORT_STEPS) + " | |",
        "",
        "Medians (what a diverged seed or task leaves of the mean): the median over seeds of "
        "the per-seed means, and in brackets the mean over seeds of the median over tasks.",
        "",
        f"| method | {steps_head} |",
        "|---|" + "---|" * len(REPORT_STEPS),
    ]
    for method, s in summary.items():
        lines.append(
            f"| {label(method, models)} | "
            + " | ".join(
                f"{_num(s['steps'][str(t)]['median'])} "
                f"({_num(s['steps'][str(t)]['task_median_mean'])})"
                for t in REPORT_STEPS
            )
            + " |"
        )
    lines += [
        "",
        f"Seeds whose mean diverges (above {DIVERGED_MSE:g} or not finite), and tasks of "
        f"{tasks} whose error does, per seed, after {' / '.join(map(str, REPORT_STEPS))} steps:",
        "",
    ]
    for method, s in summary.items():
        per_step = [s["steps"][str(t)] for t in REPORT_STEPS]
        lines.append(
            f"- {label(method, models)}: seeds "
            + " / ".join(str(st["diverged_seeds"]) for st in per_step)
            + "; tasks per seed "
            + " / ".join(",".join(map(str, st["diverged_tasks"])) for st in per_step)
        )
    lines += [
        "",
        "## Per model",
        "",
        f"Mean ± 95% CI over the tasks (median; diverged tasks) after "
        f"{' / '.join(map(str, REPORT_STEPS))} steps.",
        "",
        f"| model | {steps_head} | meets the paper |",
        "|---|" + "---|" * (len(REPORT_STEPS) + 1),
    ]
    by = {(r["model"], r["steps"]): r for r in result["records"]}
    for name, model in models.items():
        cells = []
        for t in REPORT_STEPS:
            r = by[name, t]
            cells.append(
                f"{_num(r['mse'])} ± {_num(r['ci95'])} ({_num(r['median'])}; {r['diverged_tasks']})"
            )
        meets = summary[model.method]["meets_paper"][str(model.seed)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if meets else 'no'} |")
    if result["step_sizes"]["per_seed"]:
        lines += _step_size_lines(result["step_sizes"])
    return "\n".join(lines) + "\n"


def _step_size_lines(sizes: dict[str, Any]) -> list[str]:
    overall, per_seed = sizes["overall"], sizes["per_seed"]
    lines = [
        "",
        "## Meta-SGD's learned step sizes",
        "",
        "α per parameter tensor after meta-training: the mean over its elements, and its "
        "smallest and largest element; over seeds, the mean of the per-seed means, the "
        "smallest and the largest.",
        "",
        "| parameter | " + " | ".join(f"seed {s}" for s in per_seed) + " | over seeds |",
        "|---|" + "---|" * (len(per_seed) + 1),
    ]

    def cell(v):
        return f"{v['mean']:.4g} [{v['min']:.4g}, {v['max']:.4g}]"

    for name, all_seeds in overall.items():
        lines.append(
            f"| {name} | "
            + " | ".join(cell(s[name]) for s in per_seed.values())
            + f" | {cell(all_seeds)} |"
        )
    return lines


def reproduce_sine_seeds(
    out: str | Path,
    seeds: list[int],
    inner_lrs: list[float] = INNER_LRS,
    metasgd: bool = True,
    iterations: int | None = None,
    tasks: int | None = None,
    device: str = "cpu",
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    jobs: int | None = None,
) -> dict[str, Any]:
    """Train (or, with ``resume``, finish training) every model of the study into
    ``out/<model>``, evaluate each on the same ``tasks`` test tasks (default: the presets'
    600) after 0..10 steps with its own step size, and write results.json and report.md,
    holding the folder's lock throughout."""
    models = study_models(seeds, list(inner_lrs), metasgd, iterations, device)
    configs = {name: m.config for name, m in models.items()}
    with reproduce_dir(out, force, resume) as out:
        from mamlkit.rundir.files import environment_info

        train_models(configs, out, resume, progress, jobs, device)
        learners = load_learners(configs, out, device)
        first = next(iter(configs.values()))
        batch = sine_test_tasks(first, K, device, tasks)
        records, info, sizes = [], {}, {}
        for name, model in models.items():
            learner = learners[name]
            # lr=None: each learner's own rule, MAML's training α or Meta-SGD's learned α
            for r in mse_by_step(learner, batch, model.config):
                records.append({"model": name, "method": model.method, "seed": model.seed, **r})
            _, meta = load_checkpoint(out / name / "model.safetensors")
            info[name] = {
                "method": model.method,
                "seed": model.seed,
                "inner_lr": model.config.algorithm.inner_lr,
                "iterations": int(meta.get("step", model.config.train.iterations)),
            }
            if model.method == "metasgd":
                sizes[str(model.seed)] = step_sizes(learner)
        methods = list(dict.fromkeys(m.method for m in models.values()))
        summary = summarize(records, methods)
        result = {
            "k_shot": K,
            "tasks": batch.num_tasks,
            "paper": {str(s): v for s, v in PAPER.items()},
            "models": info,
            "records": records,
            "summary": summary,
            "step_sizes": {"per_seed": sizes, "overall": summarize_step_sizes(sizes)},
            "conclusion": conclusion(summary, models),
        }
        env = environment_info(device)
        atomic_write_text(out / "results.json", json.dumps(result, indent=1))
        atomic_write_text(out / "report.md", report_markdown(result, models, env))
        return {**result, "out": str(out)}
