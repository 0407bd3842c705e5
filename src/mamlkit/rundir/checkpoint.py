"""Checkpoints as safetensors: tensors plus JSON metadata. Loading executes no code, so a
checkpoint from elsewhere cannot run anything (a pickle offered instead is refused)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from mamlkit.errors import UserError

_META_KEY = "mamlkit"
_DIGEST_KEY = "mamlkit_sha256"


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (``os.umask``
    can only be read by setting it, which would race with other threads creating files)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _hold(fd: int) -> None:
    """Mark a temporary file as in use by this process (``flock``): a clean-up of orphaned
    temporaries (:func:`mamlkit.rundir.remove_orphaned_tmp`) leaves it alone, and takes it
    once the process is gone, even after a SIGKILL."""
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ImportError, OSError):  # no flock here: the clean-up cannot tell either way
        pass


def atomic_write_bytes(
    path: Path, write: Callable[[str], Any], before_replace: Callable[[], None] | None = None
) -> None:
    """Write via a temporary file in the same directory, then rename: a crash mid-write
    never leaves a half-written file under ``path``. The file gets the mode a plain
    ``open(path, "w")`` would give it (0644 under the usual umask), not mkstemp's 0600,
    so that others sharing the machine can read the run as the umask allows.
    ``before_replace`` runs just before the rename (it may raise to cancel the write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    held, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    _hold(held)  # released when this process ends, however it ends
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        fd = os.open(tmp, os.O_RDONLY)
        try:  # on disk before the rename, so a power loss cannot leave an empty checkpoint
            os.fsync(fd)
        finally:
            os.close(fd)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename in (None, tmp):  # name the file the user knows, not the temporary
            exc.filename = str(path)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os.close(held)


def atomic_write_text(
    path: Path, text: str, before_replace: Callable[[], None] | None = None
) -> None:
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text), before_replace)


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes: safetensors itself has no
    checksum, so a flipped bit in the data would otherwise load as a silently wrong value."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def canonical_safetensors(data: bytes) -> bytes:
    """``data`` (a safetensors file) with its JSON header in one fixed order: safetensors
    writes the metadata map in a random order per process, so equal tensors and metadata
    gave files with other bytes, and checked-in weights changed when nothing had."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the tensor data stays 8-byte aligned
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` and the JSON-able ``meta`` as a safetensors file (atomically, with a
    checksum of the tensors); the same tensors and ``meta`` always give the same bytes."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    metadata = {_META_KEY: json.dumps(meta), _DIGEST_KEY: tensors_digest(tensors)}
    # serialised here and written by Python, so a full disk is an OSError with its errno
    data = canonical_safetensors(save(tensors, metadata=metadata))
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(data))


def state_mismatch(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> str:
    """What differs between ``model``'s state dict and ``state``, in a few names (for the
    one-line error when weights do not fit a run's config)."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    parts = []
    for what, names in (
        ("the model has", sorted(set(ours) - set(theirs))),
        ("the file has", sorted(set(theirs) - set(ours))),
        ("shapes differ for", sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])),
    ):
        if names:
            more = f" (+{len(names) - 2} more)" if len(names) > 2 else ""
            parts.append(f"{what} {', '.join(names[:2])}{more}")
    return "; ".join(parts)


def check_readable(path: Path) -> None:
    """A :class:`UserError` that says why ``path`` cannot be opened for reading (permission
    denied, ...). safetensors reports every failure to open a file as "No such file or
    directory", a missing read permission included; Python's own open says what it is."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise UserError(
            f"{path} cannot be read: permission denied; give your user read permission "
            f"(chmod u+r {path}) or run as its owner"
        ) from None
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror or exc}); check it") from None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a mamlkit checkpoint; anything else raises :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise UserError(f"checkpoint {path} {what}")
    check_readable(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            meta = json.loads(header.get(_META_KEY, "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{path} is not a readable safetensors checkpoint ({type(exc).__name__}): damaged, "
            "or another format (pickle files are refused: loading them can execute code)"
        ) from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} is a safetensors file without mamlkit metadata; not a checkpoint")
    digest = header.get(_DIGEST_KEY)  # absent in checkpoints written before it existed
    if digest is not None and digest != tensors_digest(tensors):
        raise UserError(
            f"{path} is damaged: its tensors do not match their checksum (a flipped bit or an "
            "overwritten block); use an older checkpoint or a backup"
        )
    return tensors, meta


def read_metadata(path: Path) -> dict[str, Any] | None:
    """The mamlkit metadata of a safetensors file, read from its header alone (no tensor
    is loaded); None when the file is missing, damaged or not mamlkit's."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(_META_KEY, "null"))
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
    return meta if isinstance(meta, dict) else None


def weights_digest(path: Path) -> str | None:
    """The SHA-256 of a checkpoint's tensors (see :func:`tensors_digest`): the one its
    header records, else computed from the tensors. None when the file cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            digest = (f.metadata() or {}).get(_DIGEST_KEY)
            if digest is None:
                digest = tensors_digest({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None
    return digest


# --- optimiser state ---------------------------------------------------------------------


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    # Checkpoints store tensors contiguous; a per-parameter moment (Adam's exp_avg) must be
    # laid out like its parameter again (e.g. channels-last convolution weights), or a fused
    # optimiser pairs the wrong elements. load_state_dict keeps the layout it is given.
    params = [p for group in opt.param_groups for p in group["params"]]
    for idx, entries in state.items():
        param = params[idx] if 0 <= idx < len(params) else None
        for key, value in entries.items():
            if param is not None and isinstance(value, torch.Tensor):
                if value.shape == param.shape:
                    entries[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --- random number generators ------------------------------------------------------------


def rng_to_tensors(generators: dict[str, torch.Generator]) -> tuple[dict, dict]:
    """States of torch (CPU and CUDA), numpy, Python ``random`` and the task samplers."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    for name, gen in generators.items():
        tensors[f"rng.generator.{name}"] = gen.get_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(keys.astype(np.int64))
    version, py_state, gauss = random.getstate()
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(py_state), gauss],
        # a generator's state fits only a generator of its kind of device (CPU: Mersenne
        # twister; CUDA: Philox), so a resume on another device must know which it was
        "devices": {name: gen.device.type for name, gen in generators.items()},
    }
    return tensors, meta


def rng_from_tensors(
    tensors: dict,
    meta: dict,
    generators: dict[str, torch.Generator],
    saved_on: str | None = None,
    reseed: Callable[[str, torch.Generator], None] | None = None,
) -> list[str]:
    """Restore what :func:`rng_to_tensors` saved. A generator saved on another kind of
    device than its own now (``meta["devices"]``; for a checkpoint older than that record,
    ``saved_on``, the device its run trained on) cannot take that state: ``reseed(name,
    generator)`` seeds it instead (without ``reseed``, a ValueError). Returns the names of
    the generators reseeded. CUDA's global states are restored where CUDA is available."""
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    devices = meta.get("devices") or {}
    reseeded = []
    for name, gen in generators.items():
        was = devices.get(name) or (torch.device(saved_on).type if saved_on else gen.device.type)
        if was == gen.device.type:
            gen.set_state(tensors[f"rng.generator.{name}"])
        elif reseed is None:
            raise ValueError(f"generator {name!r} was saved on {was}, not {gen.device.type}")
        else:
            reseed(name, gen)
            reseeded.append(name)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state(
        (kind, tensors["rng.numpy.keys"].numpy().astype(np.uint32), pos, has_gauss, cached)
    )
    version, py_state, gauss = meta["python"]
    random.setstate((version, tuple(py_state), gauss))
    return reseeded
