"""The evaluation files of a run: their names, what ties each to the weights it scored,
and whether it still describes the run.

``eval.json`` is the run's own protocol (its config's ``eval`` section) on the final
weights; any other setting (``--tasks``, ``--steps``, ``--split``, ``--inner-lr``,
``--samples``, an alphabet protocol, ``--checkpoint``) goes to a file named after it, so
that no evaluation replaces one made otherwise. Every record holds the training ``step``
of the weights, the SHA-256 of their tensors (``weights_sha256``), the file it read
(``weights``) and the run's id: ``mamlkit runs`` shows only records of the weights the run
holds now, and an evaluation writes nothing if the run changed under it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mamlkit.errors import UserError
from mamlkit.rundir.checkpoint import weights_digest
from mamlkit.rundir.identity import run_id, run_instance

__all__ = ["EVAL_FILE", "WeightsSource", "eval_file_name", "is_current"]

# Every name :func:`eval_file_name` gives (and those of older versions): what `--force`
# removes as an evaluation. Step sizes are written with :g (0.1, 1e-05).
EVAL_FILE = re.compile(
    r"eval(-inner-lr-[0-9][0-9.e+-]*?)?(-samples-\d+)?(-tasks-\d+)?(-steps-\d+)?"
    r"(-(train|val|test))?(-(within|any)-alphabet)?(-step-\d{8,})?\.json"
)


def eval_file_name(
    step: int | None = None,
    alphabet: str | None = None,
    split: str | None = None,
    tasks: int | None = None,
    steps: int | None = None,
    samples: int | None = None,
    inner_lr: Sequence[float] = (),
) -> str:
    """The file of an evaluation: ``eval.json`` for the run's protocol on its final
    weights; each argument given (a setting other than the protocol's) adds itself to the
    name, e.g. ``eval-tasks-10.json``, ``eval-inner-lr-0.1-0.05-val.json``,
    ``eval-step-00000020.json`` (a checkpoint's)."""
    parts = []
    if inner_lr:
        parts.append("inner-lr-" + "-".join(f"{a:g}" for a in inner_lr))
    for label, value in (("samples", samples), ("tasks", tasks), ("steps", steps)):
        if value is not None:
            parts.append(f"{label}-{value}")
    if split is not None:
        parts.append(split)
    if alphabet is not None:
        parts.append(f"{alphabet}-alphabet")
    if step is not None:
        parts.append(f"step-{step:08d}")
    name = "-".join(["eval", *parts]) + ".json"
    assert EVAL_FILE.fullmatch(name), name
    return name


@dataclass(frozen=True)
class WeightsSource:
    """The weights an evaluation started from: the file, the SHA-256 of its tensors, its
    training step, and the run's id and instance at that moment."""

    run_dir: Path
    path: Path
    digest: str
    step: int | None
    run_id: str | None
    instance: str | None

    def record(self) -> dict[str, Any]:
        """The entries of an evaluation record that name these weights."""
        out: dict[str, Any] = {
            "step": self.step,
            "weights": self.path.relative_to(self.run_dir).as_posix(),
            "weights_sha256": self.digest,
        }
        if self.run_id is not None:
            out["run_id"] = self.run_id
        return out

    def check_unchanged(self) -> None:
        """Refuse to write a result when the run is no longer the one evaluated: started
        anew (``--force``, a restart), or its weights file replaced (a resume finished,
        a file copied in). A checkpoint that training has since rotated away is fine."""
        now = self.run_dir
        changed = None
        if run_id(now) != self.run_id or run_instance(now) != self.instance:
            changed = "was started anew (--force or a restart)"
        elif self.path.exists() or self.path.name == "model.safetensors":
            if weights_digest(self.path) != self.digest:
                changed = f"has other weights in {self.path.name} now"
        if changed is not None:
            raise UserError(
                f"{now} {changed} while this evaluation ran; its result describes weights "
                f"the run no longer holds and was not written: evaluate again"
            )


def is_current(run_dir: Path, record: Any) -> bool:
    """Whether an evaluation record describes the weights ``run_dir`` holds now (records
    from before these entries existed count as current: nothing tells otherwise)."""
    if not isinstance(record, dict):
        return True
    ours = run_id(run_dir)
    if "run_id" in record and ours is not None and record["run_id"] != ours:
        return False
    weights, digest = record.get("weights"), record.get("weights_sha256")
    if not isinstance(weights, str) or not isinstance(digest, str):
        return True
    path = run_dir / weights
    if not path.exists():
        # a checkpoint rotated away by training is still this run's; final weights are not
        return weights != "model.safetensors"
    return weights_digest(path) == digest
