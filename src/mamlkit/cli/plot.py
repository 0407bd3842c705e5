"""``mamlkit plot``: a run's learning curves, and for RL runs its returns and trajectories."""

from __future__ import annotations

import click

from mamlkit.cli.common import PATH
from mamlkit.errors import UserError

__all__ = ["plot"]


@click.command("plot")
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
