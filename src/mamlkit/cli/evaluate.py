"""``mamlkit eval``: evaluate a run on held-out tasks and print (or write) the record."""

from __future__ import annotations

import json

import click

from mamlkit.cli.common import DEVICE_HELP, PATH, TRUST_HELP, check_device

__all__ = ["eval_cmd"]


@click.command("eval")
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
        check_device(device)
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
