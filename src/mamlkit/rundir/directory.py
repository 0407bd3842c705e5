""":class:`RunDirectory`: the one object through which a training run's folder is written.

The trainer never writes a path of its own: ``config.yaml``, ``env.json``, ``status.json``,
``metrics.jsonl``, ``resumes.jsonl``, ``checkpoints/step-N.safetensors``,
``model.safetensors``, ``ensemble/step-N.safetensors``, the TensorBoard folder and a
callback's own file (``data.json``) are all written by a method here, which records what
it wrote (:attr:`RunDirectory.written`): a test can hold the folder's files to that list.
How each file is written (atomically, appended without tearing, checked when read) is the
concern of the package's other modules (:mod:`mamlkit.rundir`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from mamlkit.budget import monotonic
from mamlkit.rundir import records
from mamlkit.rundir.checkpoint import atomic_write_text, save_checkpoint
from mamlkit.rundir.files import (
    environment_info,
    load_training_checkpoint,
    resume_checkpoint,
    run_checkpoints,
    save_identity,
    truncate_metrics,
    write_env,
    write_status,
)
from mamlkit.rundir.ownership import CHECKPOINT_DIR, ENSEMBLE_DIR, TENSORBOARD_DIR

__all__ = ["RunDirectory"]


class RunDirectory:
    """A training run's folder ``path``, read and written through its methods.

    Examples:
        >>> import tempfile
        >>> run = RunDirectory(tempfile.mkdtemp())
        >>> run.append_metrics({"step": 1, "loss": 0.5})
        >>> [p.name for p in run.written]
        ['metrics.jsonl']
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        #: every file (and the TensorBoard folder) written so far and still there
        self.written: set[Path] = set()
        # status.json's train_seconds: this piece's clock, and the earlier pieces' time
        self._started, self._seconds_before = monotonic(), 0.0

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def _wrote(self, path: Path) -> Path:
        self.written.add(path)
        return path

    # ---- reading --------------------------------------------------------------------------
    def checkpoints(self) -> dict[int, Path]:
        """The saved training checkpoints by step, oldest first."""
        return run_checkpoints(self.path)

    def resume_checkpoint(self, step: int | None = None) -> Path:
        """The checkpoint a resume continues from: the newest, or the one of ``step``."""
        return resume_checkpoint(self.path, step)

    def load_checkpoint(self, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """A training checkpoint's tensors and (checked) metadata."""
        return load_training_checkpoint(path)

    def continue_clock(self) -> None:
        """A resume: ``train_seconds`` goes on from what ``status.json`` records."""
        self._seconds_before = self.train_seconds()

    def train_seconds(self) -> float:
        """The training time ``status.json`` records (0 where it has none)."""
        try:
            status = json.loads((self.path / "status.json").read_text())
            seconds = status.get("train_seconds")
        except (OSError, ValueError, AttributeError):
            return 0.0
        return float(seconds) if isinstance(seconds, (int, float)) and seconds >= 0 else 0.0

    # ---- writing --------------------------------------------------------------------------
    def create(self) -> None:
        """Make the folder (and its parents) where it does not exist yet."""
        self.path.mkdir(parents=True, exist_ok=True)

    def create_run(self, config: dict[str, Any], device: str, job: dict[str, Any]) -> None:
        """A new run: the folder, its ``env.json`` (written first: from then on the folder is
        a run; the environment of ``device`` and a distributed ``job``'s size), its
        ``config.yaml``."""
        self.create()
        environment = {"time": _utc_now(), **environment_info(device), **job}
        write_env(self.path, environment, config)
        self._wrote(self.path / "env.json")
        self.write_config(config)

    def write_config(self, config: dict[str, Any]) -> None:
        """``config.yaml``: the config that rebuilds the run's learner."""
        text = yaml.safe_dump(config, sort_keys=False)
        atomic_write_text(self._wrote(self.path / "config.yaml"), text)

    def write_status(self, status: str, **extra: Any) -> None:
        """``status.json``: how the run stands (``running``, ``finished``, …), ``extra``, and
        the training time of all pieces so far (``train_seconds``: the run's wall time since
        this object was made, and before a resume, without the gaps between pieces)."""
        seconds = self._seconds_before + monotonic() - self._started
        write_status(self.path, status, **extra, train_seconds=round(seconds, 1))
        self._wrote(self.path / "status.json")

    def final_status(self, status: str, **extra: Any) -> None:
        """Record how training stopped, if the disk still lets us: the error that stopped
        it (perhaps that very disk) is what the user must see."""
        with contextlib.suppress(OSError):
            self.write_status(status, **extra)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One record appended to ``metrics.jsonl``."""
        records.append_line(self._wrote(self.path / "metrics.jsonl"), record)

    def append_resume(self, step: int, device: str, job: dict[str, Any]) -> None:
        """One record appended to ``resumes.jsonl``: the step a resume continues from and
        its own environment (another machine, commit or number of processes may continue a
        run; ``env.json`` is the first start's)."""
        record = {"step": step, "time": _utc_now(), **environment_info(device), **job}
        records.append_line(self._wrote(self.path / "resumes.jsonl"), record)

    def truncate_metrics(self, step: int) -> None:
        """Drop the ``metrics.jsonl`` records after ``step`` (a resume redoes them)."""
        path = self.path / "metrics.jsonl"
        if path.exists():
            truncate_metrics(self._wrote(path), step)

    def write_text(self, name: str, text: str) -> Path:
        """A file of the run that another component owns the content of (``data.json``)."""
        path = self.path / name
        atomic_write_text(self._wrote(path), text)
        return path

    def tensorboard_folder(self) -> Path:
        """The folder TensorBoard's writer fills."""
        return self._wrote(self.path / TENSORBOARD_DIR)

    def save_checkpoint(
        self,
        step: int,
        tensors: dict[str, torch.Tensor],
        meta: dict[str, Any],
        config: dict[str, Any],
        keep: int,
    ) -> Path:
        """``checkpoints/step-N.safetensors`` of training step ``step``, tied to this run by
        its identity (run id, and ``config``, the config trained with); then only the newest
        ``keep`` checkpoints are kept."""
        meta = {**meta, **save_identity(self.path, config)}
        path = self.path / CHECKPOINT_DIR / f"step-{step:08d}.safetensors"
        save_checkpoint(self._wrote(path), tensors, meta)
        for old in list(self.checkpoints().values())[:-keep]:
            old.unlink()
            self.written.discard(old)
        return path

    def save_weights(self, state: dict[str, torch.Tensor], step: int) -> Path:
        """``model.safetensors``: the finished run's weights, tied to this run."""
        path = self.path / "model.safetensors"
        meta = {"step": step, "kind": "weights", **save_identity(self.path, {}, True)}
        save_checkpoint(self._wrote(path), state, meta)
        return path


    # ---- eval.ensemble: test predictions of the best validation checkpoints ---------------
    def predictions(self) -> dict[int, Path]:
        """``ensemble/step-N.safetensors`` by step, oldest first."""
        return run_checkpoints(self.path, ENSEMBLE_DIR)

    def save_predictions(self, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
        """``ensemble/step-N.safetensors``: the test predictions of training step ``step``."""
        path = self.path / ENSEMBLE_DIR / f"step-{step:08d}.safetensors"
        save_checkpoint(self._wrote(path), tensors, meta)
        return path

    def remove_predictions(self, after: int = -1, steps: tuple[int, ...] = ()) -> None:
        """Remove the test predictions of ``steps``, and those of every step after
        ``after`` (a resume from an earlier checkpoint redoes those validations)."""
        for step, path in self.predictions().items():
            if step > after >= 0 or step in steps:
                path.unlink(missing_ok=True)
                self.written.discard(path)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
