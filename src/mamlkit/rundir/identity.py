"""Which run a folder and its files belong to.

A run's ``env.json`` carries mamlkit's marker (``run_format``), the run's id and an
``instance`` of its own. The id is a hash of the config the run was created with, so two
runs made from the same config (which train the same weights) share it and write
byte-identical files; every checkpoint and ``model.safetensors`` of the run carries it,
and ``eval``, ``adapt`` and ``--resume`` refuse a file whose id is another run's. The
``instance`` changes whenever the folder is started anew (``--force``, a restart), which
is what an evaluation checks before it writes its result. Each training checkpoint also
holds the config it was trained with, so that a resume can tell a hand edit of
``config.yaml`` from the changes a resume may make. Runs written before these existed
(an ``env.json`` without them) are recognised by ``env.json``'s own fields and checked
as before.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mamlkit.errors import UserError

__all__ = [
    "RUN_FORMAT",
    "check_file_identity",
    "check_resume_config",
    "checkpoint_identity",
    "config_difference",
    "is_mamlkit_env",
    "make_run_id",
    "new_run_env",
    "read_env",
    "run_id",
    "run_instance",
    "weights_identity",
]

RUN_FORMAT = 1
# what every env.json had before run_format existed (mamlkit's own environment record)
_LEGACY_ENV_KEYS = frozenset({"python", "platform", "torch", "argv", "device"})


def canonical_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as JSON gives it back (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def make_run_id(config: dict[str, Any]) -> str:
    """The id of a run created from ``config``: 16 hex digits of its canonical hash."""
    text = json.dumps(canonical_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def new_run_env(info: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """``env.json`` of a new run: mamlkit's marker, the run's id and instance, then the
    environment ``info``."""
    return {
        "run_format": RUN_FORMAT,
        "run_id": make_run_id(config),
        "instance": uuid.uuid4().hex,
        **info,
    }


def read_env(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``env.json`` as a mapping; None when it is missing, a link or damaged."""
    path = Path(run_dir) / "env.json"
    if path.is_symlink() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_mamlkit_env(env: Any) -> bool:
    """Whether ``env`` (an ``env.json``'s content) is mamlkit's: marked with
    ``run_format``, or holding the fields mamlkit wrote before the marker existed."""
    if not isinstance(env, dict):
        return False
    if "run_format" in env:
        return env["run_format"] == RUN_FORMAT and isinstance(env.get("run_id"), str)
    return _LEGACY_ENV_KEYS <= env.keys() and isinstance(env.get("argv"), list)


def run_id(run_dir: Path) -> str | None:
    """The run's id; None for a run from before ids (or with a damaged env.json)."""
    env = read_env(run_dir)
    found = env.get("run_id") if env is not None and is_mamlkit_env(env) else None
    return found if isinstance(found, str) else None


def run_instance(run_dir: Path) -> str | None:
    """This start of the run (new with every ``--force`` or restart), where recorded."""
    env = read_env(run_dir)
    found = env.get("instance") if env is not None else None
    return found if isinstance(found, str) else None


def weights_identity(run_dir: Path) -> dict[str, Any]:
    """Metadata entries that tie a weights file to the run in ``run_dir``."""
    found = run_id(run_dir)
    return {"run_id": found} if found is not None else {}


def checkpoint_identity(run_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Metadata entries of a training checkpoint: the run's id and the config trained with
    (:meth:`mamlkit.training.Trainer.save` adds them to every checkpoint)."""
    return {**weights_identity(run_dir), "config": canonical_config(config)}


def check_file_identity(run_dir: Path, path: Path, meta: dict[str, Any]) -> None:
    """Refuse ``path`` (a checkpoint or ``model.safetensors`` with metadata ``meta``) when
    it is not a file of the run in ``run_dir``. A run from before ids checks nothing."""
    ours = run_id(run_dir)
    if ours is None:
        return
    theirs = meta.get("run_id")
    if theirs != ours:
        whose = f"run id {theirs}" if isinstance(theirs, str) else "no run id"
        raise UserError(
            f"{path} belongs to another run ({whose}; {run_dir} is run {ours}): a file "
            "copied in from elsewhere is never used as this run's; put back this run's own "
            "file, or evaluate the other run in its own directory"
        )


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_difference(
    trained: dict[str, Any], now: dict[str, Any], may_change: Iterable[str]
) -> tuple[str, Any, Any] | None:
    """The first key (dotted) whose value differs between the config a checkpoint was
    trained with and the one given now, outside ``may_change``: ``(key, then, now)``.
    A key only one side knows is a difference only inside ``model.kwargs`` (elsewhere it
    is a key another mamlkit version added or dropped)."""
    then_flat, now_flat = _flat(canonical_config(trained)), _flat(canonical_config(now))
    allowed = set(may_change)
    for key in sorted(then_flat.keys() | now_flat.keys()):
        if key in allowed:
            continue
        both = key in then_flat and key in now_flat
        if not both and not key.startswith("model.kwargs."):
            continue
        missing = "(absent)"
        then, value = then_flat.get(key, missing), now_flat.get(key, missing)
        if then != value:
            return key, then, value
    return None


def check_resume_config(
    run_dir: Path,
    config: dict[str, Any],
    checkpoint: Path,
    meta: dict[str, Any],
    may_change: Iterable[str],
) -> None:
    """Refuse to resume ``checkpoint`` with ``config`` when the run was trained with
    another value of a key a resume may not change (a hand edit of ``config.yaml``).
    Checkpoints from before the config was stored in them check nothing."""
    trained = meta.get("config")
    if not isinstance(trained, dict):
        return
    may_change = sorted(may_change)
    found = config_difference(trained, config, may_change)
    if found is None:
        return
    key, then, now = found
    raise UserError(
        f"{run_dir / 'config.yaml'}: {key} is {now!r} but the run was trained with "
        f"{then!r} up to {checkpoint.name}; a resume may change only "
        f"{', '.join(may_change)}: set {key} back to {then!r} (or train a new run with "
        "the new value)"
    )
