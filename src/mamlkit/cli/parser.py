"""The command line's shape: the ``mamlkit`` group and the commands under it, each defined
in its own module of :mod:`mamlkit.cli` (``train``, ``eval``, ``adapt``, ``presets``,
``runs``, ``plot``, ``reproduce``, ``data``)."""

from __future__ import annotations

import click

from mamlkit.cli.adapt import adapt
from mamlkit.cli.data import data
from mamlkit.cli.evaluate import eval_cmd
from mamlkit.cli.listing import presets, runs
from mamlkit.cli.plot import plot
from mamlkit.cli.reproduce import reproduce
from mamlkit.cli.train import train

__all__ = ["app"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mamlkit")
def app() -> None:
    """Model-agnostic meta-learning: train, evaluate and reproduce the MAML paper."""


for _command in (reproduce, data, train, eval_cmd, adapt, presets, runs, plot):
    app.add_command(_command)
