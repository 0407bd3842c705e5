"""Run directories as mamlkit owns them: which files in them are mamlkit's, an exclusive
lock for the life of a training process, and the checks made before a run is written.

A run directory may hold the user's own files beside mamlkit's (notes, a copied figure):
``--force`` removes only what :data:`RUN_FILES` names, and never follows a link out of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mamlkit.errors import UserError

LOCK_FILE = ".mamlkit.lock"
CHECKPOINT_DIR = "checkpoints"
# Everything `train` and `eval` write into a run directory (the lock file stays: another
# process may be waiting on it).
RUN_FILES = (
    "config.yaml",
    "data.json",
    "env.json",
    "resumes.jsonl",
    "status.json",
    "metrics.jsonl",
    "model.safetensors",
    "eval.json",
    "learning_curves.png",
    CHECKPOINT_DIR,
    "tensorboard",
)
RUN_PATTERNS = ("eval-step-*.json", "eval-any-alphabet*.json", "eval-within-alphabet*.json")
# What `mamlkit reproduce sine` and `reproduce sine-seeds` write around their runs (one run
# directory per model: sine's maml_k5, maml_k10, pretrained; sine-seeds' maml_lr0.01_seed0,
# metasgd_seed0; "maml" is what sine's folders held before its per-K models).
REPRODUCE_FILES = ("results.json", "report.md", "sine_fits.png", "sine_mse.png")
REPRODUCE_RUN = re.compile(r"maml|pretrained|maml_k\d+|maml_lr[0-9.e+-]+_seed\d+|metasgd_seed\d+")
# Temporary files of interrupted atomic writes by training (``.<name>.<random>.tmp``)
_TRAINING_TMP_PREFIXES = (
    ".config.yaml.",
    ".data.json.",
    ".env.json.",
    ".status.json.",
    ".metrics.jsonl.",
    ".model.safetensors.",
    ".step-",
)


def is_run_dir(path: Path) -> bool:
    """A directory that is itself a mamlkit training run (not one that merely holds runs)."""
    return any(_is_file(path / name) for name in ("config.yaml", "status.json"))


def is_reproduce_dir(path: Path) -> bool:
    """The output folder of ``mamlkit reproduce``: its results, or only its own runs."""
    if any(_is_file(path / name) for name in REPRODUCE_FILES):
        return True
    runs = [p for p in _entries(path) if p.is_dir() and is_run_dir(p)]
    return bool(runs) and all(is_reproduce_run_name(p.name) for p in runs)


def is_reproduce_run_name(name: str) -> bool:
    """Whether ``name`` is one of the run directories ``mamlkit reproduce`` writes."""
    return REPRODUCE_RUN.fullmatch(name) is not None


def _is_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _entries(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.name != LOCK_FILE]


def has_content(path: Path) -> bool:
    """Whether a directory holds anything besides mamlkit's lock file."""
    return path.is_dir() and bool(_entries(path))


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)  # a link goes, never what it points to
    else:
        shutil.rmtree(path)


def clear_run_dir(path: Path) -> None:
    """Remove mamlkit's files from a run (or reproduce) directory; the user's stay."""
    owned = [path / name for name in RUN_FILES]
    for pattern in RUN_PATTERNS:
        owned += path.glob(pattern)
    if is_reproduce_dir(path):
        owned += [path / name for name in REPRODUCE_FILES]
        for run in _entries(path):
            # only mamlkit's runs: never a link, nor a folder of the user's of such a name
            if is_reproduce_run_name(run.name) and not run.is_symlink() and is_run_dir(run):
                clear_run_dir(run)
                with contextlib.suppress(OSError):  # still holds the user's files
                    (run / LOCK_FILE).unlink(missing_ok=True)
                    run.rmdir()
    for item in owned:
        if item.exists() or item.is_symlink():
            _remove(item)
    remove_orphaned_tmp(path)


def remove_orphaned_tmp(run_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed process left behind. Call
    it only while holding the run's lock (a live trainer's temporary file is in use)."""
    removed = []
    for folder in (run_dir, run_dir / CHECKPOINT_DIR):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for path in folder.glob(".*.tmp"):
            if path.name.startswith(_TRAINING_TMP_PREFIXES) and not path.is_dir():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def check_no_links(run_dir: Path) -> None:
    """Refuse a run directory in which one of mamlkit's files or folders is a symbolic link:
    writing through it would change files outside the run."""
    candidates = [run_dir / name for name in RUN_FILES]
    for folder in (CHECKPOINT_DIR, "tensorboard"):
        if (run_dir / folder).is_dir() and not (run_dir / folder).is_symlink():
            candidates += (run_dir / folder).iterdir()
    for path in candidates:
        if path.is_symlink():
            raise UserError(
                f"{path} is a symbolic link; mamlkit never writes through links out of a run "
                "directory: replace it with a copy of the file (or remove it) and try again"
            )


# --- the lock ----------------------------------------------------------------------------


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info["since"])))
        return f"pid {int(info['pid'])} on {info['host']} since {since}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def lock_run_dir(run_dir: Path, create: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (``flock`` on its lock file) until the block
    ends. The kernel releases it when the process dies, so a killed trainer's lock is taken
    over without any clean-up. ``create`` makes the directory first (and removes it again if
    nothing but the lock was written into it)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): run without the lock
        yield
        return
    run_dir = Path(run_dir)
    created = False
    if create and not run_dir.exists():
        try:  # exist_ok: a second command may create it at the same moment (then: the lock)
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"--out {run_dir} cannot be created ({exc.strerror}); choose another path"
            ) from None
        created = True
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise UserError(
            f"{run_dir}: cannot create its lock file {LOCK_FILE} ({exc.strerror}); check the "
            "directory's permissions"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"{run_dir} is in use by {_holder(path)}; wait for that command to end (or "
                "stop it), then try again"
            ) from None
        except OSError:  # a file system without flock (some network mounts): no lock there
            pass
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.time(),
            "command": " ".join(["mamlkit", *sys.argv[1:]]),
        }
        with contextlib.suppress(OSError):  # who holds it is a courtesy (e.g. a full disk)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield
        finally:
            if created and not has_content(run_dir):
                with contextlib.suppress(OSError):
                    path.unlink()
                    run_dir.rmdir()
    finally:
        os.close(fd)
