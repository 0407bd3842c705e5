"""What ``train --resume`` checks and repairs before it continues a run: that the folder is
a mamlkit run, that the checkpoint is this run's and was trained with the config given
now, a restart from step 0 when no checkpoint is left (the old log kept aside), and
``mamlkit runs --repair``'s mending of a damaged ``metrics.jsonl``."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from mamlkit.config import Config, with_current_names
from mamlkit.errors import UserError
from mamlkit.rundir import records
from mamlkit.rundir.checkpoint import atomic_write_bytes, read_metadata
from mamlkit.rundir.files import run_checkpoints
from mamlkit.rundir.identity import check_file_identity, check_resume_config
from mamlkit.rundir.ownership import check_no_links, clear_run_dir, is_mamlkit_run, lock_run_dir

__all__ = [
    "RESUME_OVERRIDES",
    "check_resume",
    "require_mamlkit_run",
    "repair_run",
    "restart_without_checkpoint",
]

#: Settings a resumed run may change (`train --resume --set`): how long it trains and how it
#: runs, not what it learns.
RESUME_OVERRIDES = frozenset(
    {
        "train.iterations",
        "train.threads",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.cuda_graphs",
        # a run may move between a GPU and the CPU (weights, optimiser and global random
        # states carry over; the task sampler starts from a new seed, and the resume says so)
        "train.device",
        "train.max_time",
        # what eval.ensemble keeps from then on (a resume after some validations: those are
        # not in it, and `mamlkit eval` says so); training goes on as it would without
        "eval.ensemble",
    }
)

# what a resume may change besides the keys `train --resume --set` accepts
RESUME_MAY_ALSO_CHANGE = frozenset({"task.data_dir"})


def require_mamlkit_run(run_dir: Path, option: str) -> None:
    """A one-line :class:`UserError` unless ``run_dir`` is a mamlkit run (its env.json)."""
    if not is_mamlkit_run(run_dir):
        none = ""
        if option == "--resume" and not run_checkpoints(run_dir):
            none = " and no checkpoint to resume from"
        raise UserError(
            f"{option} {run_dir}: not a mamlkit run directory (no env.json of mamlkit's"
            f"{none}); give a folder `mamlkit train` wrote"
        )


def check_resume(
    run_dir: Path, config: Config, from_step: int | None, may_change: Iterable[str]
) -> None:
    """Refuse to resume when the checkpoint to continue (the newest, or ``from_step``'s) is
    another run's, or was trained with another value of a key outside ``may_change`` (and
    ``task.data_dir``) than ``config`` has. A checkpoint whose metadata cannot be read
    is left to the restore, which names the damage."""
    found = run_checkpoints(run_dir)
    step = from_step if from_step is not None else max(found, default=None)
    if step not in found:
        return
    path = found[step]
    meta = read_metadata(path)
    if meta is None:
        return
    check_file_identity(run_dir, path, meta)
    if isinstance(meta.get("config"), dict):  # an older mamlkit's names (maml on nav2d)
        meta = {**meta, "config": with_current_names(meta["config"])}
    allowed = {*may_change, *RESUME_MAY_ALSO_CHANGE}
    check_resume_config(run_dir, config.to_dict(), path, meta, allowed)


def _free_name(run_dir: Path) -> int:
    n = 1
    while any(
        (run_dir / name).exists() or (run_dir / name).is_symlink()
        for name in (f"metrics.before-restart-{n}.jsonl", f"model.before-restart-{n}.safetensors")
    ):
        n += 1
    return n


def restart_without_checkpoint(run_dir: Path) -> bool:
    """A run without any checkpoint (stopped before its first, or its ``checkpoints/``
    deleted) has nothing to continue from: ``--resume`` starts it again from step 0 with
    its own config (the same seeds give the same run), says so in one line, and keeps the
    old ``metrics.jsonl`` (and final weights) aside as ``metrics.before-restart-N.jsonl``
    (``model.before-restart-N.safetensors``). Only a mamlkit run is restarted."""
    if not is_mamlkit_run(run_dir) or not (run_dir / "status.json").is_file():
        raise UserError(
            f"--resume {run_dir}: no checkpoint to resume from and no status.json of "
            f"mamlkit's (mamlkit never trained there); start it with `mamlkit train CONFIG "
            f"--out {run_dir}`"
        )
    config_text = (run_dir / "config.yaml").read_bytes()
    n = _free_name(run_dir)
    kept = []
    for name, aside in (
        ("metrics.jsonl", f"metrics.before-restart-{n}.jsonl"),
        ("model.safetensors", f"model.before-restart-{n}.safetensors"),
    ):
        path = run_dir / name
        if path.is_file() and not path.is_symlink() and path.stat().st_size:
            path.rename(run_dir / aside)
            kept.append(f"{name} as {aside}")
    clear_run_dir(run_dir, keep_set_aside=True)
    atomic_write_bytes(run_dir / "config.yaml", lambda tmp: Path(tmp).write_bytes(config_text))
    old = f"; kept aside: {', '.join(kept)}" if kept else ""
    print(
        f"mamlkit: {run_dir} has no checkpoint to continue from: training restarts from "
        f"step 0{old}",
        file=sys.stderr,
    )
    return True


def repair_run(run_dir: Path) -> list[int]:
    """``mamlkit runs --repair``: set the damaged lines of the run's metrics.jsonl aside
    (into ``metrics.jsonl.damaged``), holding the run's lock; returns their numbers."""
    require_mamlkit_run(run_dir, "--repair")
    path = run_dir / "metrics.jsonl"
    if not path.is_file() or path.is_symlink():
        raise UserError(f"--repair {run_dir}: no metrics.jsonl there to repair")
    with lock_run_dir(run_dir):
        check_no_links(run_dir)  # metrics.jsonl.damaged is written to: never through a link
        return records.repair_metrics(path)
