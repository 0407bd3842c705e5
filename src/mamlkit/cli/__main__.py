"""`python -m mamlkit.cli ...`: the same command line as the `mamlkit` script."""

from mamlkit.cli import console

console()
