"""``mamlkit presets`` and ``mamlkit runs``: what is there — the shipped presets (one in
full with ``presets show``) and the run directories under a folder (``--repair``: mend one)."""

from __future__ import annotations

from pathlib import Path

import click

from mamlkit.cli.common import PATH, RUNS_DIR
from mamlkit.errors import UserError

__all__ = ["presets", "runs"]


@click.group("presets", invoke_without_command=True)
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


@click.command("runs")
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
