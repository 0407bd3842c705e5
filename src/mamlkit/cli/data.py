"""``mamlkit data``: fetch data sets (``data download omniglot``)."""

from __future__ import annotations

import click

from mamlkit.cli.common import PATH
from mamlkit.errors import UserError

__all__ = ["data"]


@click.group("data")
def data() -> None:
    """Fetch data sets."""


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
