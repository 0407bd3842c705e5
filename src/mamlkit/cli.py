"""The ``mamlkit`` command: parses, builds the config, calls the library — nothing else.

A user mistake prints one line on stderr and exits with code 2 (no traceback)."""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path

import click

from mamlkit.errors import (
    DivergenceError,
    Interrupted,
    LostRank,
    UserError,
    is_write_failure,
)
from mamlkit.run_resume import RESUME_OVERRIDES  # the keys `train --resume --set` accepts

PATH = click.Path(path_type=Path)
# Where runs go when no --out is given (train: runs/<preset>, reproduce: runs/sine), and so
# where `mamlkit runs` looks first.
RUNS_DIR = Path("runs")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mamlkit")
def app() -> None:
    """Model-agnostic meta-learning: train, evaluate and reproduce the MAML paper."""


@app.group()
def reproduce() -> None:
    """Reproduce an experiment of the paper."""


@app.group()
def data() -> None:
    """Fetch data sets."""


def _check_device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"--device {device}: expected cpu or cuda")
    return device


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
        _check_device(device),
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
        _check_device(device),
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


@app.command()
@click.argument("config", required=False)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set train.iterations=100 (repeatable).",
)
@click.option("--out", type=PATH, default=None, help="Run directory (default runs/<preset>).")
@click.option(
    "--data-dir",
    type=PATH,
    default=None,
    help="Data set folder (default: $MAMLKIT_DATA/<dataset>, then the user cache).",
)
@click.option("--resume", type=PATH, default=None, help="Continue the run in this directory.")
@click.option(
    "--checkpoint",
    "from_step",
    type=click.IntRange(min=0),
    default=None,
    metavar="STEP",
    help="With --resume: continue from this saved step, not the newest (e.g. when the "
    "newest checkpoint is damaged).",
)
@click.option("--force", is_flag=True, help="Overwrite a non-empty --out.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option(
    "--trust-code",
    is_flag=True,
    help="With --resume: allow importing the run's model.target from outside mamlkit.",
)
@click.option(
    "--max-time",
    default=None,
    metavar="DURATION",
    help="Time budget of this command, e.g. 2h30m, 45m or 1:30:00 (default: train.max_time, "
    "else none): training pauses before it ends, with a checkpoint of its last iteration, "
    "and `--resume` continues it exactly.",
)
@click.option("--seed", type=click.IntRange(min=0), default=None, help="train.seed (default 0).")
@click.option("--device", default=None, help="cpu or cuda: train.device (default: the config's).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Build everything, print the config, the data and its split sizes and an estimate "
    "of the training time (from timing 2 iterations); write nothing.",
)
def train(
    config,
    overrides,
    out,
    data_dir,
    resume,
    from_step,
    force,
    progress,
    trust_code,
    max_time,
    seed,
    device,
    dry_run,
) -> None:
    """Meta-train from a preset name or a YAML CONFIG, writing a run directory."""
    from mamlkit.budget import monotonic, parse_duration

    started = monotonic()
    if max_time is not None:
        parse_duration(max_time)  # a mistake is refused before anything is built
    from mamlkit.build import check_code_trust
    from mamlkit.config import load_config
    from mamlkit.runner import data_dir_update, load_run_config, require_run_directory, train_run

    if resume is not None:
        if config is not None or out is not None or force:
            raise UserError(
                "--resume continues a run with its own config and directory; drop "
                "CONFIG/--out/--force"
            )
        for flag, given in (("--seed", seed), ("--device", device), ("--dry-run", dry_run)):
            if given not in (None, False):
                raise UserError(
                    f"{flag} cannot change on --resume (the run keeps its seed and device, "
                    f"and continues for real); drop {flag}"
                )
        for text in overrides:
            key = text.split("=", 1)[0].strip()
            if key not in RESUME_OVERRIDES:
                raise UserError(
                    f"--set {key} cannot change on --resume (it would change what was "
                    f"trained so far); allowed: {', '.join(sorted(RESUME_OVERRIDES))}"
                )
        require_run_directory(resume, "--resume ")
        cfg = load_run_config(resume, overrides)
        check_code_trust(cfg, resume / "config.yaml", trust_code)
        summary = train_run(
            cfg,
            resume,
            resume=True,
            progress=progress,
            update_config=bool(overrides),
            from_step=from_step,
            max_time=max_time,
            started=started,
            data_dir=data_dir,
        )
    else:
        if from_step is not None:
            raise UserError("--checkpoint STEP chooses where --resume continues; add --resume")
        if config is None:
            raise UserError("missing CONFIG: give a preset name (`mamlkit presets`) or a YAML file")
        flags = [f"train.seed={seed}"] if seed is not None else []
        if device is not None:
            flags.append(f"train.device={_check_device(device)}")
        cfg = load_config(config, [*overrides, *flags], updates=data_dir_update(data_dir))
        run_dir = out if out is not None else RUNS_DIR / Path(config).stem
        if dry_run:
            from mamlkit.dry_run import dry_run as dry

            for line in dry(cfg, run_dir, force=force):
                click.echo(line)
            return
        summary = train_run(
            cfg, run_dir, force=force, progress=progress, max_time=max_time, started=started
        )
    click.echo(json.dumps(summary))
    if summary.get("paused"):
        budget = max_time or cfg.train.max_time
        click.echo(
            f"paused at step {summary['step']} of {cfg.train.iterations} before the time "
            f"budget ({budget}) ran out; continue with: mamlkit train --resume "
            f"{summary['run_dir']}" + (f" --max-time {max_time}" if max_time else ""),
            err=True,
        )


TRUST_HELP = (
    "Allow building the run's model.target when it is not a model class of mamlkit "
    "(that runs its code; only for runs you trust)."
)
DEVICE_HELP = "cpu or cuda (default: the run's train.device)."


@app.command("eval")
@click.argument("run_dir", type=PATH)
@click.option(
    "--tasks",
    type=int,
    default=None,
    help="Test tasks (default: config eval.tasks; another number writes eval-tasks-N.json).",
)
@click.option(
    "--split",
    default=None,
    help="train, val or test (default: config eval.split; another writes eval-SPLIT.json).",
)
@click.option(
    "--steps",
    type=int,
    default=None,
    help="Test-time adaptation steps (default: config eval.steps; another number writes "
    "eval-steps-N.json).",
)
@click.option("--data-dir", type=PATH, default=None, help="Data set folder (default: as trained).")
@click.option(
    "--checkpoint",
    default=None,
    metavar="STEP|latest",
    help="Evaluate a training checkpoint (also of a running run) instead of the final "
    "weights; writes RUN_DIR/eval-step-N.json.",
)
@click.option("--trust-code", is_flag=True, help=TRUST_HELP)
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option(
    "--within-alphabet/--any-alphabet",
    default=None,
    help="Omniglot: draw each test episode's characters from one alphabet (Lake et al.) or "
    "from all (default: as the run's config says); writes eval-within-alphabet.json or "
    "eval-any-alphabet.json when it differs from the config.",
)
@click.option(
    "--inner-lr",
    type=float,
    multiple=True,
    help="Test-time step size instead of the run's; RL runs take one per step (repeat the "
    "option: --inner-lr 0.1 --inner-lr 0.05; the last repeats). Writes "
    "eval-inner-lr-A-B.json.",
)
@click.option(
    "--samples",
    type=int,
    default=None,
    help="RL: each test step takes at least N environment steps per task, in rounds of "
    "the run's trajectories (maml_rl's batch_size; 0: the trajectories alone). Writes "
    "eval-samples-N.json.",
)
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the record as JSON (as in the file) instead "
    "of the summary."
)
def eval_cmd(
    run_dir,
    tasks,
    split,
    steps,
    data_dir,
    checkpoint,
    trust_code,
    device,
    within_alphabet,
    inner_lr,
    samples,
    progress,
    as_json,
) -> None:
    """Evaluate a finished run on held-out tasks; writes RUN_DIR/eval.json (the run's own
    protocol), or a file named after the settings that differ from it, and prints a
    summary (the metric ± its 95% interval after each step; --json: the record)."""
    from mamlkit.cli_info import eval_summary
    from mamlkit.progress import bars
    from mamlkit.runner import eval_run

    if device is not None:
        _check_device(device)
    details: dict = {}
    with bars(progress):
        result = eval_run(
            run_dir,
            tasks=tasks,
            split=split,
            steps=steps,
            data_dir=data_dir,
            checkpoint=checkpoint,
            trust_code=trust_code,
            within_alphabet=within_alphabet,
            inner_lr=inner_lr,
            samples=samples,
            device=device,
            details=details,
        )
    if as_json:
        click.echo(json.dumps(result))
        return
    for line in eval_summary(result, details["by_step"], details["config"], details["path"]):
        click.echo(line)


@app.command()
@click.argument("run_dir", type=PATH)
@click.argument("more_queries", nargs=-1, metavar="[QUERY]...")
@click.option(
    "--support",
    type=PATH,
    required=True,
    help="Image runs: a folder with one sub-folder of K images per class. Regression runs: "
    "a CSV with columns x,y.",
)
@click.option(
    "--query",
    "queries",
    multiple=True,
    metavar="QUERY",
    help="Images (or folders of images) to classify; for regression runs x values or a CSV "
    "with an x column. More may follow: --query a.png b.png c.png.",
)
@click.option("--steps", type=int, default=None, help="Adaptation steps (default: eval.steps).")
@click.option("--out", type=PATH, default=None, help="Also write the predictions as JSON here.")
@click.option("--force", is_flag=True, help="Replace an existing --out file.")
@click.option(
    "--checkpoint",
    default=None,
    metavar="STEP|latest",
    help="Adapt a training checkpoint (also of an unfinished run) instead of the final weights.",
)
@click.option("--device", default=None, help=DEVICE_HELP)
@click.option("--trust-code", is_flag=True, help=TRUST_HELP)
@click.option(
    "--transductive",
    is_flag=True,
    help="Classify all queries in one batch, as the paper's evaluation does (a model with "
    "batch-statistics BatchNorm then scores each query depending on the others); default: "
    "each query beside the support set alone.",
)
def adapt(
    run_dir,
    more_queries,
    support,
    queries,
    steps,
    out,
    force,
    checkpoint,
    device,
    trust_code,
    transductive,
) -> None:
    """Adapt the trained model of RUN_DIR to a new task (--support) and predict --query."""
    from mamlkit.adaptation import adapt_run

    if device is not None:
        _check_device(device)
    result = adapt_run(
        run_dir,
        support,
        [*queries, *more_queries],
        steps=steps,
        out=out,
        force=force,
        trust_code=trust_code,
        checkpoint=checkpoint,
        device=device,
        transductive=transductive,
    )
    for row in result["predictions"]:
        if "class" in row:
            p = row["probabilities"][row["class"]]
            click.echo(f"{row['query']}\t{row['class']}\t{p:.3f}")
        else:
            click.echo(f"{row['x']}\t{row['y']}")
    if out is not None:
        click.echo(f"wrote {out}")


@app.group(invoke_without_command=True)
@click.pass_context
def presets(ctx) -> None:
    """List the shipped config presets (`presets show NAME`: one in full)."""
    from mamlkit.cli_info import preset_lines

    if ctx.invoked_subcommand is None:
        for line in preset_lines():
            click.echo(line)


@presets.command("show")
@click.argument("name")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, as train's --set (repeatable).",
)
def presets_show(name, overrides) -> None:
    """The resolved config of preset (or YAML file) NAME: the keys its task, model and
    algorithm read, each with its meaning."""
    from mamlkit.config import load_config
    from mamlkit.config_help import config_lines

    for line in config_lines(load_config(name, list(overrides))):
        click.echo(line)


@app.command()
@click.argument("root", type=PATH, required=False)
@click.option(
    "--repair",
    type=PATH,
    default=None,
    metavar="RUN_DIR",
    help="Set the damaged lines of RUN_DIR's metrics.jsonl aside (into "
    "metrics.jsonl.damaged) so that the run can be resumed and plotted again.",
)
def runs(root, repair) -> None:
    """List run directories under ROOT (default: ./runs, where runs go without --out, else
    the current directory) with status and best metric."""
    from mamlkit.runner import list_runs

    if repair is not None:
        from mamlkit.run_resume import repair_run

        if root is not None:
            raise UserError("--repair RUN_DIR mends one run; drop ROOT")
        lines = repair_run(repair)
        if lines:
            click.echo(
                f"{repair}/metrics.jsonl: set {len(lines)} damaged line(s) aside "
                f"(line {', '.join(map(str, lines))}) in metrics.jsonl.damaged"
            )
        else:
            click.echo(f"{repair}/metrics.jsonl: no damaged line; unchanged")
        return
    if root is None:
        root = RUNS_DIR if RUNS_DIR.is_dir() else Path(".")
    from mamlkit.cli_info import run_table

    rows = list_runs(root)
    if rows:
        for line in run_table(rows):
            click.echo(line)
    else:
        click.echo(f"no mamlkit runs under {root}", err=True)


@app.command()
@click.argument("run_dir", type=PATH)
def plot(run_dir) -> None:
    """Draw the learning curves of RUN_DIR to RUN_DIR/learning_curves.png (for a folder of
    runs such as `reproduce sine`'s, those of every run in it, side by side)."""
    from mamlkit import plots
    from mamlkit.rundir import is_mamlkit_run

    runs = None
    if (run_dir / "metrics.jsonl").is_file() and not is_mamlkit_run(run_dir):
        raise UserError(
            f"{run_dir}: not a mamlkit run directory (no env.json of mamlkit's); plot writes "
            "its figures only into runs `mamlkit train` wrote"
        )
    if not (run_dir / "metrics.jsonl").is_file():
        found = sorted(run_dir.glob("*/metrics.jsonl")) if run_dir.is_dir() else []
        found = [m for m in found if is_mamlkit_run(m.parent)]
        if not found:
            raise UserError(
                f"{run_dir}: no metrics.jsonl in it or its sub-folders; not a mamlkit run "
                "directory (pass a folder written by `mamlkit train` or `mamlkit reproduce`)"
            )
        runs = {m.parent.name: m.parent for m in found}
    plots.learning_curves(run_dir, run_dir / "learning_curves.png", runs=runs)
    click.echo(f"wrote {run_dir / 'learning_curves.png'}")
    if runs is None:
        _plot_rl(run_dir)


def _plot_rl(run_dir) -> None:
    """The figures a run's task draws of it (its registered ``plots``; RL: return vs
    adaptation steps after `mamlkit eval` and, for 2D navigation, trajectories before and
    after adaptation)."""
    import yaml

    from mamlkit.config_data import load_yaml
    from mamlkit.tasks.registry import TASKS

    path = run_dir / "config.yaml"
    try:
        config = load_yaml(path.read_text(), str(path))
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        raise UserError(f"{path}: not a readable YAML file; restore the run's config") from None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(task, dict):
        return
    spec = TASKS.get(task["name"]) if isinstance(task.get("name"), str) else None
    if spec is None or spec.plots is None:
        return
    from mamlkit.runner import load_run, run_checkpoints

    def load():
        final = (run_dir / "model.safetensors").is_file()
        if not (final or run_checkpoints(run_dir)):
            return None
        return load_run(run_dir, checkpoint=None if final else "latest", device="cpu")

    for written in spec.write_plots(run_dir, load):
        click.echo(f"wrote {written}")


@data.command("download")
@click.argument("dataset")
@click.option("--dest", type=PATH, default=None, help="Target folder (default: user cache).")
def data_download(dataset, dest) -> None:
    """Fetch the official archives of DATASET (omniglot; needs internet)."""
    from mamlkit.data import download_omniglot
    from mamlkit.data.cache import default_cache_dir

    if dataset != "omniglot":
        raise UserError(f"unknown data set {dataset!r}; only omniglot can be downloaded")
    path = download_omniglot(dest or default_cache_dir() / "omniglot")
    click.echo(f"omniglot ready in {path}")


_WARNED: set[str] = set()  # what this command has said already


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the CLI shows it: one line, without the source line Python adds, and
    each once per command (building train, val and test tasks may warn alike)."""
    text = " ".join(str(message).split())
    if text not in _WARNED:
        _WARNED.add(text)
        click.echo(f"mamlkit: warning: {text}", err=True)


def says_user_errors() -> bool:
    """Whether this process prints a user error. Under ``torchrun`` the processes of one
    node read the same command line, files and data and so refuse alike: only the node's
    first process (``LOCAL_RANK`` 0) says it, once per machine instead of once per process.
    (A lost rank, exit 1, is each process's own news: every process says it.)"""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return world <= 1 or int(os.environ.get("LOCAL_RANK", "0")) == 0
    except ValueError:  # not torchrun's environment: say it
        return True


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes become one line on stderr and exit code 2."""
    from mamlkit.data.errors import DataError
    from mamlkit.progress import log_to_stderr
    from mamlkit.system import tune_allocator

    tune_allocator()
    finished = False
    shown = warnings.showwarning
    warnings.showwarning = _one_line_warning
    _WARNED.clear()
    try:
        with log_to_stderr():  # progress lines without a terminal (mamlkit.progress)
            app.main(args=argv, prog_name="mamlkit", standalone_mode=False)
        finished = True
    except (UserError, DataError) as exc:
        if says_user_errors():
            click.echo(f"mamlkit: error: {exc}", err=True)
        finished = isinstance(exc, DivergenceError)  # every rank decides it alike
        return 2
    except LostRank as exc:  # another process of a torchrun job failed: its message says why
        click.echo(f"mamlkit: error: {exc}", err=True)
        return 1
    except OSError as exc:
        if not is_write_failure(exc):
            raise
        what = exc.filename or "a file"
        click.echo(
            f"mamlkit: error: {what}: {exc.strerror}; free space or fix the permissions, "
            "then run the command again (nothing written before was lost)",
            err=True,
        )
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"mamlkit: error: {exc.format_message()}", err=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        cause = exc.__cause__ if isinstance(exc, click.exceptions.Abort) else exc  # click wraps
        said = isinstance(cause, Interrupted) and str(cause)  # where the run continues from
        click.echo(f"mamlkit: {said or 'interrupted'}", err=True)
        return 130
    finally:
        warnings.showwarning = shown
        if "mamlkit.distributed" in sys.modules:  # else no process group to leave
            from mamlkit.distributed import shutdown

            # under torchrun the ranks leave together after a success or a divergence (a
            # rank that simply exits first makes gloo abort the others); a no-op for a
            # single process
            shutdown(wait=finished)
    return 0


def console() -> None:
    """Console-script entry point."""
    code = main()
    if "mamlkit.distributed" in sys.modules and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # a torchrun worker whose process group main() has already left, every file written
        from mamlkit.distributed import exit_without_teardown

        exit_without_teardown(code)
    sys.exit(code)


if __name__ == "__main__":
    console()
