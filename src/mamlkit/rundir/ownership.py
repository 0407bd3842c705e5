"""Run directories as mamlkit owns them: which folders are mamlkit's runs, which files in
them are mamlkit's, an exclusive lock for the life of a training process, and the checks
made before a run is written.

A folder is a run only when its ``env.json`` is mamlkit's (:mod:`mamlkit.rundir.identity`):
a ``config.yaml`` or ``checkpoints/`` of some other tool never makes one. A run directory
may hold the user's own files beside mamlkit's (notes, a copied figure): ``--force``
removes only the files mamlkit writes, by name (:data:`RUN_FILES`, the patterns below and
the checkpoint naming), and never follows a link out of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mamlkit.errors import UserError
from mamlkit.eval_files import EVAL_FILE
from mamlkit.rundir.identity import is_mamlkit_env, read_env

LOCK_FILE = ".mamlkit.lock"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
# test predictions of the best validation checkpoints (``eval.ensemble``), as step-N files
ENSEMBLE_DIR = "ensemble"
# Everything `train`, `eval`, `plot` and `runs --repair` write into a run directory under a
# fixed name (the lock file stays: another process may be waiting on it).
RUN_FILES = (
    "config.yaml",
    "data.json",
    "env.json",
    "resumes.jsonl",
    "status.json",
    "metrics.jsonl",
    "metrics.jsonl.damaged",
    "model.safetensors",
    "learning_curves.png",
    "returns.png",
    "trajectories.png",
)
# ... and under names of these forms: evaluations (see mamlkit.eval_files), what a restart
# without checkpoints sets aside, checkpoints and TensorBoard's event files
_SET_ASIDE = re.compile(r"(metrics|model)\.before-restart-\d+\.(jsonl|safetensors)")
CHECKPOINT_FILE = re.compile(r"step-\d{8,}\.safetensors(\.damaged)?")
_TENSORBOARD_FILE = re.compile(r"events\.out\.tfevents\..+")
# What `mamlkit reproduce sine` and `reproduce sine-seeds` write around their runs (one run
# directory per model: sine's maml_k5, maml_k10, pretrained; sine-seeds' maml_lr0.01_seed0,
# metasgd_seed0; "maml" is what sine's folders held before its per-K models).
REPRODUCE_FILES = ("results.json", "report.md", "sine_fits.png", "sine_mse.png")
REPRODUCE_RUN = re.compile(r"maml|pretrained|maml_k\d+|maml_lr[0-9.e+-]+_seed\d+|metasgd_seed\d+")
# Temporary files of interrupted atomic writes (``.<name>.<random>.tmp``) of mamlkit's files
_TMP_PREFIXES = (
    *(f".{name}." for name in RUN_FILES),
    ".eval",
    ".step-",
)


def is_mamlkit_run(path: Path) -> bool:
    """A directory that is itself a mamlkit training run: its ``env.json`` is mamlkit's
    (marked, or one written before the marker existed). Not a folder that merely holds
    runs, nor one with some other tool's ``config.yaml`` or checkpoints."""
    return _is_file(path / "env.json") and is_mamlkit_env(read_env(path))


def is_reproduce_dir(path: Path) -> bool:
    """The output folder of ``mamlkit reproduce``: mamlkit runs under the names reproduce
    gives them, and no other runs."""
    try:
        runs = [p for p in _entries(path) if p.is_dir() and is_mamlkit_run(p)]
    except OSError:
        return False
    return bool(runs) and all(is_reproduce_run_name(p.name) for p in runs)


def holds_mamlkit_files(path: Path) -> bool:
    """Whether ``path`` is a folder mamlkit writes itself: a run (also one being created,
    locked, or one of ``save_pretrained``'s: weights with their config) or the output
    folder of ``mamlkit reproduce``. Nothing else may write into it."""
    if is_mamlkit_run(path) or (path / LOCK_FILE).exists():
        return True
    if _is_file(path / "model.safetensors") and _is_file(path / "config.yaml"):
        return True
    return _is_file(path / "results.json") and is_reproduce_dir(path)


def mamlkit_folder_above(path: Path) -> Path | None:
    """The nearest folder holding ``path`` (at any depth, links resolved) that mamlkit
    writes itself (:func:`holds_mamlkit_files`), or None."""
    for folder in Path(path).resolve().parents:
        with contextlib.suppress(OSError):
            if holds_mamlkit_files(folder):
                return folder
    return None


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
    """Remove one of mamlkit's files (a link goes, never what it points to; a folder of
    the user's under such a name stays)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)


def _owned(path: Path) -> list[Path]:
    """mamlkit's files directly in a run (or reproduce) directory."""
    owned = [path / name for name in RUN_FILES]
    owned += [p for p in _entries(path) if EVAL_FILE.fullmatch(p.name)]
    return owned + [p for p in _entries(path) if _SET_ASIDE.fullmatch(p.name)]


def _clear_folder(folder: Path, pattern: re.Pattern[str]) -> None:
    """Remove the files of ``pattern`` from one of a run's sub-folders, then the folder if
    that left it empty (a link to a folder goes as a link; the user's files stay)."""
    if folder.is_symlink() or not folder.is_dir():
        _remove(folder)
        return
    for item in folder.iterdir():
        if pattern.fullmatch(item.name) and (item.is_symlink() or not item.is_dir()):
            item.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # still holds files that are not mamlkit's
        folder.rmdir()


def clear_run_dir(path: Path, keep_set_aside: bool = False) -> None:
    """Remove mamlkit's files from a run (or reproduce) directory; the user's stay, also
    inside ``checkpoints/`` and ``tensorboard/``. ``keep_set_aside`` keeps what a restart
    set aside (``metrics.before-restart-N.jsonl``)."""
    owned = _owned(path)
    if keep_set_aside:
        owned = [p for p in owned if not _SET_ASIDE.fullmatch(p.name)]
    if is_reproduce_dir(path):
        owned += [path / name for name in REPRODUCE_FILES]
        for run in _entries(path):
            # only mamlkit's runs: never a link, nor a folder of the user's of such a name
            if is_reproduce_run_name(run.name) and not run.is_symlink() and is_mamlkit_run(run):
                clear_run_dir(run)
                with contextlib.suppress(OSError):  # still holds the user's files
                    (run / LOCK_FILE).unlink(missing_ok=True)
                    run.rmdir()
    remove_orphaned_tmp(path)
    _clear_folder(path / CHECKPOINT_DIR, CHECKPOINT_FILE)
    _clear_folder(path / ENSEMBLE_DIR, CHECKPOINT_FILE)
    _clear_folder(path / TENSORBOARD_DIR, _TENSORBOARD_FILE)
    for item in owned:  # env.json (mamlkit's marker) last: an interrupted clear is redone
        if item.name != "env.json":
            _remove(item)
    _remove(path / "env.json")


def _in_use(path: Path) -> bool:
    """Whether a live process holds the temporary file ``path`` (see
    :func:`mamlkit.rundir.checkpoint.atomic_write_bytes`)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def remove_orphaned_tmp(run_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes (training's, an evaluation's, a plot's)
    that a killed process left behind; one a live process is still writing (an
    evaluation running beside a resume) stays."""
    removed = []
    for folder in (run_dir, run_dir / CHECKPOINT_DIR, run_dir / ENSEMBLE_DIR):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for path in folder.glob(".*.tmp"):
            if path.name.startswith(_TMP_PREFIXES) and not path.is_dir() and not _in_use(path):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def check_no_links(run_dir: Path) -> None:
    """Refuse a run directory in which one of mamlkit's files or folders is a symbolic link:
    writing through it would change files outside the run."""
    folders = (CHECKPOINT_DIR, TENSORBOARD_DIR, ENSEMBLE_DIR)
    candidates = [run_dir / name for name in (*RUN_FILES, *folders)]
    for folder in folders:
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
