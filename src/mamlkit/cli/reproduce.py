"""``mamlkit reproduce``: the paper's experiments (``mamlkit.experiments``) from the command
line — ``reproduce sine`` and ``reproduce sine-seeds``."""

from __future__ import annotations

import math

import click

from mamlkit.cli.common import PATH, RUNS_DIR, check_device
from mamlkit.errors import UserError

__all__ = ["reproduce"]


@click.group("reproduce")
def reproduce() -> None:
    """Reproduce an experiment of the paper."""


@reproduce.command("sine")
@click.option(
    "--out",
    type=PATH,
    default=RUNS_DIR / "sine",
    show_default=True,
    help="Run directory to create.",
)
@click.option(
    "--iterations",
    type=int,
    default=None,
    help="Meta-training iterations (default: the paper's 70000).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of initialisation and task sampling.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--force", is_flag=True, help="Overwrite a non-empty --out.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a value of both methods' configs (e.g. algorithm.inner_lr=0.02).",
)
@click.option(
    "--jobs", type=int, default=None, help="Models trained in parallel (default: one per CPU core)."
)
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def reproduce_sine_cmd(
    out, iterations, seed, device, force, resume, overrides, jobs, progress
) -> None:
    """Sine regression (MAML §5.1): train MAML and the pretrained baseline, evaluate both,
    write results.json, sine_fits.png, sine_mse.png and report.md into --out."""
    from mamlkit.experiments.sine import reproduce_sine

    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    if resume and not (out / "pretrained").is_dir():
        raise UserError(f"--resume: {out} holds no sine run to continue; drop --resume")
    result = reproduce_sine(
        out,
        iterations,
        seed,
        check_device(device),
        force=force,
        resume=resume,
        progress=progress,
        overrides=list(overrides),
        jobs=jobs,
    )
    table = {(r["method"], r["steps"]): r for r in result["records"] if r["k_shot"] == 5}
    for method in ("maml", "pretrained"):
        cells = "  ".join(f"{s} steps {table[(method, s)]['mse']:.3f}" for s in (1, 5, 10))
        click.echo(f"{method:>10} 5-shot MSE: {cells}")
    click.echo(f"wrote {out}/results.json, report.md, sine_fits.png, sine_mse.png")


def _comma_list(option: str, text: str, kind: type) -> list:
    """A comma-separated option value as numbers, duplicates dropped, order kept: step sizes
    (``kind`` float) must be positive, seeds (int) whole numbers >= 0."""
    what, example = ("positive numbers", "0.01,0.001") if kind is float else ("seeds", "0,1,2")
    values = []
    for part in text.split(","):
        try:
            value = kind(part.strip())
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < 0 or (kind is float and not value):
            raise UserError(
                f"{option} {text}: {part.strip()!r} is not one of the {what} it takes; give "
                f"a comma-separated list such as {example}"
            )
        values.append(value)
    return list(dict.fromkeys(values))


@reproduce.command("sine-seeds")
@click.option(
    "--out",
    type=PATH,
    default=RUNS_DIR / "sine_seeds",
    show_default=True,
    help="Run directory to create (one sub-folder per model).",
)
@click.option("--seeds", type=int, default=None, help="Seeds 0..N-1 (default 5).")
@click.option("--seed-list", default=None, metavar="S,S,...", help="These seeds instead.")
@click.option(
    "--inner-lrs",
    default="0.01,0.001",
    show_default=True,
    metavar="A,A,...",
    help="MAML's inner step sizes α: the paper's text says 0.01, cbfinn/maml's default 0.001.",
)
@click.option(
    "--metasgd/--no-metasgd",
    default=True,
    show_default=True,
    help="Also Meta-SGD (learned per-weight α, initialised as its preset says).",
)
@click.option(
    "--iterations",
    type=int,
    default=None,
    help="Meta-training iterations per model (default: the presets' 70000).",
)
@click.option(
    "--tasks", type=int, default=None, help="Test tasks (default: the presets' 600)."
)
@click.option(
    "--jobs", type=int, default=None, help="Models trained in parallel (default: one per CPU core)."
)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--force", is_flag=True, help="Overwrite a non-empty --out.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the study in --out: finished models are kept, the others continue.",
)
@click.option("--progress/--no-progress", default=True, help="Show progress bars.")
def reproduce_sine_seeds_cmd(
    out, seeds, seed_list, inner_lrs, metasgd, iterations, tasks, jobs, device, force, resume,
    progress,
) -> None:
    """Sine regression's Table 2 across seeds: MAML at each --inner-lrs α and Meta-SGD, 5-shot,
    one model per seed; writes results.json and report.md (mean and spread over seeds,
    diverged tasks, Meta-SGD's learned step sizes) into --out."""
    from mamlkit.experiments.sine_seeds import holds_study, reproduce_sine_seeds
    from mamlkit.limits import check_flag

    check_flag("--seeds", seeds, "seeds")
    check_flag("--tasks", tasks, "tasks")
    if seed_list is not None:
        if seeds is not None:
            raise UserError("--seeds N and --seed-list S,S,... both choose seeds; give one")
        seed_values = _comma_list("--seed-list", seed_list, int)
    elif seeds is not None and seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    else:
        seed_values = list(range(5 if seeds is None else seeds))
    lrs = _comma_list("--inner-lrs", inner_lrs, float)
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    if tasks is not None and tasks < 1:
        raise UserError(f"--tasks must be >= 1, got {tasks}")
    if resume and force:
        raise UserError("--resume continues --out and --force replaces it; give one")
    if resume and not holds_study(out):
        raise UserError(f"--resume: {out} holds no sine-seeds study to continue; drop --resume")
    result = reproduce_sine_seeds(
        out,
        seed_values,
        lrs,
        metasgd,
        iterations,
        tasks,
        check_device(device),
        force=force,
        resume=resume,
        progress=progress,
        jobs=jobs,
    )
    for method, summary in result["summary"].items():
        cells = "  ".join(
            f"{s} steps {summary['steps'][str(s)]['mean']:.3f}" for s in (1, 5, 10)
        )
        click.echo(f"{method:>12} 5-shot MSE, mean over seeds: {cells}")
    click.echo(result["conclusion"])
    click.echo(f"wrote {out}/results.json, report.md")
