"""``mamlkit adapt``: adapt a trained run to a new task given on disk and predict queries."""

from __future__ import annotations

import click

from mamlkit.cli.common import DEVICE_HELP, PATH, TRUST_HELP, check_device

__all__ = ["adapt"]


@click.command("adapt")
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
        check_device(device)
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
