"""``mamlkit train``: meta-train from a preset or a YAML config, or continue a run
(``--resume``); ``--dry-run`` builds everything and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mamlkit.cli.common import PATH, RUNS_DIR, check_device
from mamlkit.errors import UserError
from mamlkit.run_resume import RESUME_OVERRIDES  # the keys `train --resume --set` accepts

__all__ = ["train"]


@click.command("train")
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
@click.option(
    "--device",
    default=None,
    help="cpu or cuda: train.device (default: the config's). With --resume, the run moves "
    "there (its task sampler then starts from a new seed, which the run records).",
)
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
        for flag, given in (("--seed", seed), ("--dry-run", dry_run)):
            if given not in (None, False):
                raise UserError(
                    f"{flag} cannot change on --resume (the run keeps its seed, and "
                    f"continues for real); drop {flag}"
                )
        if device is not None:  # the run moves to this device (train.device may change)
            overrides = (*overrides, f"train.device={check_device(device)}")
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
            flags.append(f"train.device={check_device(device)}")
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
