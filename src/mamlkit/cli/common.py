"""What the commands of ``mamlkit`` share: path arguments, where runs go, the help of
repeated options and the check of ``--device``."""

from __future__ import annotations

from pathlib import Path

import click

from mamlkit.errors import UserError

__all__ = ["DEVICE_HELP", "PATH", "RUNS_DIR", "TRUST_HELP", "check_device"]

PATH = click.Path(path_type=Path)
# Where runs go when no --out is given (train: runs/<preset>, reproduce: runs/sine), and so
# where `mamlkit runs` looks first.
RUNS_DIR = Path("runs")

TRUST_HELP = (
    "Allow building the run's model.target when it is not a model class of mamlkit "
    "(that runs its code; only for runs you trust)."
)
DEVICE_HELP = "cpu or cuda (default: the run's train.device)."


def check_device(device: str) -> str:
    """``device`` when it names a device this machine has (cpu, or cuda where CUDA is
    available), else a :class:`~mamlkit.errors.UserError` naming the fix."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available here; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"--device {device}: expected cpu or cuda")
    return device
