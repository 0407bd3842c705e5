"""The files of a training run, apart from the loop that trains it: preparing its folder,
``env.json``'s record of the environment, ``status.json``, finding and choosing checkpoints,
cutting ``metrics.jsonl`` back to a resumed step. What in a folder is mamlkit's, and the
run's lock, are :mod:`mamlkit.rundir.ownership`'s."""

from __future__ import annotations

import errno
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mamlkit import __version__
from mamlkit.errors import UserError
from mamlkit.rundir import records
from mamlkit.rundir.checkpoint import (
    atomic_write_text,
    load_checkpoint,
)
from mamlkit.rundir.identity import checkpoint_identity, new_run_env, weights_identity
from mamlkit.rundir.ownership import (
    CHECKPOINT_DIR,
    clear_run_dir,
    has_content,
    is_mamlkit_run,
    is_reproduce_dir,
)


def prepare_run_dir(out: str | Path, force: bool = False, clear: bool = True) -> Path:
    """Check that a new run may be written to ``out``; with ``force``, clear the old run
    there first (only a folder that is itself a mamlkit run, and only mamlkit's files in it:
    the user's own files stay; ``--force`` on any other folder is refused; ``clear=False``
    only checks). Call it after everything else is validated."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; choose another path")
    if has_content(out) and not force:
        raise UserError(
            f"--out {out} already exists and is not empty; pass --force to overwrite it, "
            "--resume to continue it, or choose another directory"
        )
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise UserError(f"--out {out} is not writable: {probe} is a file; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(
            f"--out {out} is not writable ({probe} denies writing); choose another path"
        )
    if force and has_content(out):
        if not (is_mamlkit_run(out) or is_reproduce_dir(out)):
            raise UserError(
                f"--out {out} is not a mamlkit run directory itself (no env.json of "
                "mamlkit's); --force replaces only a run (not a folder holding runs or "
                "another tool's files), so choose a new directory"
            )
        if clear:
            clear_run_dir(out)
    return out


def environment_info(device: str) -> dict[str, Any]:
    import numpy

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "device": device,
        "cpu": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "argv": sys.argv,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    info["mamlkit"] = __version__
    checkout = source_checkout()
    if checkout is not None:  # an installed mamlkit has no commit of its own to record
        info.update(_git_state(checkout))
    declared = os.environ.get("MAMLKIT_COMMIT", "").strip()
    if "git_commit" not in info and declared:  # a copy without .git (a lent GPU machine's)
        info["declared_commit"] = declared[:64]  # what its sender says, not what git read
    return info


def _cpu_model() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what platform reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def source_checkout(package_dir: str | Path | None = None) -> Path | None:
    """The root of mamlkit's own git checkout when the package in ``package_dir`` (default:
    the one running) is imported from one: a folder above it holding ``.git`` and a
    ``pyproject.toml`` of the project ``mamlkit``. None for an installed copy, also when the
    environment it is installed in lies inside some other git repository."""
    # the mamlkit package: this module's package's parent (mamlkit/rundir/files.py)
    package = Path(package_dir or Path(__file__).resolve().parents[1]).resolve()
    for root in (package.parent, package.parent.parent):  # flat or src/ layout
        pyproject = root / "pyproject.toml"
        if (root / ".git").exists() and pyproject.is_file():
            return root if _project_name(pyproject) == "mamlkit" else None
    return None


def _project_name(pyproject: Path) -> str | None:
    try:
        text = pyproject.read_text()
    except OSError:
        return None
    try:
        import tomllib
    except ImportError:  # Python 3.10: no TOML parser, and one line is all that is needed
        import re

        found = re.search(r"""^name\s*=\s*["']([^"']+)["']""", text, re.M)
        return found.group(1) if found else None
    try:
        project = tomllib.loads(text).get("project")
    except tomllib.TOMLDecodeError:
        return None
    return project.get("name") if isinstance(project, dict) else None


def _git_state(root: Path) -> dict[str, Any]:
    """``git_commit`` of the checkout at ``root`` and ``git_dirty`` (uncommitted changes to
    tracked files), where git can tell."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if changes is None else bool(changes)}


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    """Replace ``status.json`` atomically. On a full disk the replacement (a new file)
    cannot be written, but the old file's own space can be reused: the status is then
    written over it in place, so that a run stopped by a full disk says ``crashed`` rather
    than ``running``. (A write torn there reads as a damaged status.json, never a wrong
    one: the new text is one JSON object, and the old tail is cut off after it.)"""
    data = {"status": status, "pid": os.getpid(), "updated": time.time(), **extra}
    text = records.dumps(data)
    try:
        atomic_write_text(run_dir / "status.json", text)
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        if not full or not _overwrite_in_place(run_dir / "status.json", text.encode()):
            raise


def _overwrite_in_place(path: Path, data: bytes) -> bool:
    """Write ``data`` over the existing file ``path`` (no new file, no new name); False
    where it does not exist or the write fails too."""
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], done)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def run_checkpoints(run_dir: Path, folder: str = CHECKPOINT_DIR) -> dict[int, Path]:
    """The saved checkpoints of a run directory by training step, oldest first (``folder``:
    another folder of step-N files, e.g. ``ensemble``)."""
    found = {}
    for path in (run_dir / folder).glob("step-*.safetensors"):
        step = path.stem.split("-")[1]
        if step.isascii() and step.isdigit():  # "²" is a digit int() refuses
            found[int(step)] = path
    return dict(sorted(found.items()))


# what a training checkpoint must hold before a restore may start
_META_TYPES = {"step": int, "optimizer": dict, "rng": dict}
_TENSORS = ("window", "rng.torch", "rng.numpy.keys")


def load_training_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A training checkpoint's tensors and metadata, with the metadata checked: a missing
    or mistyped entry is a :class:`UserError` naming the file, not a crash mid-restore."""
    tensors, meta = load_checkpoint(path)
    for key, kind in _META_TYPES.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise UserError(
                f"checkpoint {path}: metadata entry {key!r} is missing or not a "
                f"{kind.__name__} (damaged or hand-edited); resume from an older checkpoint "
                "(--checkpoint STEP)"
            )
    missing = [name for name in _TENSORS if name not in tensors]
    if missing or meta["step"] < 0 or not isinstance(meta.get("best"), (dict, type(None))):
        raise UserError(
            f"checkpoint {path}: incomplete training state ({', '.join(missing) or 'step'}); "
            "resume from an older checkpoint (--checkpoint STEP)"
        )
    return tensors, meta


def resume_checkpoint(run_dir: Path, step: int | None = None) -> Path:
    """The checkpoint to resume from: the newest, or the one of ``step``. A damaged newest
    one is refused, naming the newest intact one; resuming from an older step sets the
    damaged newer ones aside as ``*.damaged`` (kept, but never read again)."""
    found = run_checkpoints(run_dir)
    if not found:
        raise UserError(f"{run_dir} has no checkpoint to resume from")
    if step is not None and step not in found:
        saved = ", ".join(str(s) for s in found)
        raise UserError(f"--checkpoint {step}: not a saved step of {run_dir}; saved: {saved}")
    chosen = max(found) if step is None else step
    try:
        load_training_checkpoint(found[chosen])
    except UserError as exc:
        older = [s for s in sorted(found, reverse=True) if s < chosen]
        intact = next((s for s in older if _is_intact(found[s])), None)
        if intact is None:
            raise UserError(
                f"{exc} -- no older intact checkpoint is left: restore it from a backup or "
                "start the run again with --force"
            ) from None
        raise UserError(
            f"{found[chosen]} is damaged; step {intact} is intact: continue from it with "
            f"`mamlkit train --resume {run_dir} --checkpoint {intact}`"
        ) from exc
    for newer, path in found.items():
        if newer > chosen and not _is_intact(path):
            path.rename(path.with_name(path.name + ".damaged"))
    return found[chosen]


def _is_intact(path: Path) -> bool:
    try:
        load_training_checkpoint(path)
    except UserError:
        return False
    return True


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint being resumed (they will be redone). A
    line torn by a crash mid-append is dropped (with a one-line notice) when it was written
    after that checkpoint; one from before it means records the resume would silently lose:
    an error naming the line and the repair."""
    if not path.exists():
        return
    keep, torn = records.scan_metrics(path)
    if torn is not None:
        number, text = torn
        torn_step = records.torn_step(text)
        last = max((r["step"] for r in keep), default=-1)
        if (torn_step is not None and torn_step <= step) or (torn_step is None and last < step):
            at = f"step {torn_step}" if torn_step is not None else "a step unknown"
            raise UserError(
                f"{path} line {number} is torn ({at}) before the checkpoint at step {step}: "
                f"resuming would lose the records up to step {step}; set the line aside with "
                f"`mamlkit runs --repair {path.parent}` (the log then has a gap), or restore "
                "the file from a backup"
            )
        print(
            f"mamlkit: {path} line {number}: dropped a record torn by a crash after the "
            f"checkpoint at step {step} (it will be redone)",
            file=sys.stderr,
        )
    keep = [r for r in keep if r["step"] <= step]
    atomic_write_text(path, "".join(records.dumps(r) + "\n" for r in keep))


def save_identity(run_dir: Path, config: dict[str, Any], final: bool = False) -> dict[str, Any]:
    """The metadata entries that tie a checkpoint (or, ``final``, ``model.safetensors``) to
    the run in ``run_dir``: its run id and, in a checkpoint, the config trained with."""
    return weights_identity(run_dir) if final else checkpoint_identity(run_dir, config)


def write_env(run_dir: Path, info: dict[str, Any], config: dict[str, Any]) -> None:
    """Write a new run's ``env.json``: mamlkit's marker, the run's id and ``info``. Write it
    first: from then on the folder is a mamlkit run (also to ``--force`` and ``--resume``)."""
    atomic_write_text(run_dir / "env.json", json.dumps(new_run_env(info, config), indent=2))
