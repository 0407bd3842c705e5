"""MAML++'s test protocol (Antoniou et al. 2019): the test predictions of the
``eval.ensemble`` best validation checkpoints, averaged, then scored.

A run does not keep K copies of its weights for this (a zoo run could not hold them); it
keeps what each of them predicts. Whenever a validation ranks among the K best so far, the
trainer predicts the test tasks that ``mamlkit eval`` scores (``eval.tasks`` tasks of
``eval.split`` drawn with ``eval.seed``, after ``eval.steps`` steps) and writes them to
``ensemble/step-N.safetensors``; the file it displaces is removed. ``mamlkit eval`` then
averages the kept predictions (a classifier's logits, as MAML++'s code averages its models'
outputs) and reports the ensemble's metric beside the final weights'. A tie in validation goes
to the later checkpoint.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mamlkit.errors import UserError
from mamlkit.evaluation import HIGHER_IS_BETTER, METRICS, mean_ci95, task_batches
from mamlkit.rundir import RunDirectory
from mamlkit.rundir.checkpoint import load_checkpoint, read_metadata

__all__ = [
    "Ensemble",
    "describe",
    "ensemble_record",
    "final_predictions",
    "protocol",
    "run_ensemble",
]

KIND = "ensemble-predictions"


def protocol(config: Any) -> dict[str, Any]:
    """What a test prediction depends on besides the weights: the test tasks (task settings
    but the data folder, which a resume may move) and the evaluation settings."""
    task = {k: v for k, v in config.to_dict()["task"].items() if k != "data_dir"}
    ev = config.eval
    keys = ("tasks", "steps", "seed", "split", "chunk")
    return json.loads(json.dumps({"task": task, **{k: getattr(ev, k) for k in keys}}))


def final_predictions(
    learner: torch.nn.Module, tasks: Any, config: Any, device: torch.device | str
) -> tuple[Tensor, Tensor]:
    """The predictions ``[T, ...]`` after ``eval.steps`` steps and the targets of the test
    tasks :func:`mamlkit.evaluation.evaluate` scores for ``config``'s protocol (the same
    tasks, in the same order)."""
    ev = config.eval
    preds, targets = [], []
    for batch in task_batches(tasks, ev.tasks, ev.seed, device, ev.chunk):
        per_step = learner.predictions_by_step(batch, ev.steps, reduce=lambda p: p.detach())
        preds.append(per_step[-1].float().cpu())
        targets.append(batch.targets.cpu())
    return torch.cat(preds), torch.cat(targets)


def _key(value: float, step: int, higher: bool) -> tuple[float, int]:
    """Sort key, best first: the better value, then the later step."""
    return (-value if higher else value, -step)


class Ensemble:
    """The ``size`` best validation checkpoints' test predictions of a run (``run``), kept
    up to date by :meth:`offer` after each validation (the trainer calls it).

    Examples:
        >>> import tempfile, torch
        >>> from mamlkit.rundir import RunDirectory
        >>> run = RunDirectory(tempfile.mkdtemp())
        >>> kept = Ensemble(run, size=2, metric="accuracy", predict=lambda: (
        ...     torch.zeros(1, 3, 5), torch.zeros(1, 3, dtype=torch.long)), protocol={})
        >>> [kept.offer(step, value) for step, value in [(10, 90.0), (20, 95.0), (30, 92.0),
        ...                                              (40, 92.0), (50, 80.0)]]
        [True, True, True, True, False]
        >>> sorted(run.predictions())
        [20, 40]
    """

    def __init__(
        self,
        run: RunDirectory,
        size: int,
        metric: str,
        predict: Any,
        protocol: dict[str, Any],
    ):
        self.run, self.size, self.metric = run, size, metric
        self.predict = predict  # () -> (predictions, targets) of the current weights
        self.protocol = protocol
        self.higher = metric in HIGHER_IS_BETTER

    def members(self) -> dict[int, float]:
        """Validation value by step of the kept predictions (files of another protocol, or
        unreadable ones, are not members)."""
        out = {}
        for step, path in self.run.predictions().items():
            meta = _meta(path)
            if meta is not None and meta.get("protocol") == self.protocol:
                out[step] = float(meta["value"])
        return out

    def offer(self, step: int, value: float) -> bool:
        """Keep the test predictions of the current weights (validated at ``step`` with
        ``value``) if they rank among the best ``size``; drop the one they displace."""
        if not math.isfinite(value):
            return False
        members = self.members()
        ranked = sorted(members, key=lambda s: _key(members[s], s, self.higher))
        if len(ranked) >= self.size:
            worst = ranked[self.size - 1]
            if _key(value, step, self.higher) > _key(members[worst], worst, self.higher):
                return False
        preds, targets = self.predict()
        meta = {"kind": KIND, "step": step, "value": value, "metric": self.metric,
                "protocol": self.protocol}  # fmt: skip
        self.run.save_predictions(step, {"predictions": preds, "targets": targets}, meta)
        # after the write: a crash in between leaves one file too many, never one too few
        self.run.remove_predictions(steps=tuple(s for s in ranked[self.size - 1 :] if s != step))
        return True


def run_ensemble(run: RunDirectory, learner: torch.nn.Module, config: Any) -> Ensemble | None:
    """The :class:`Ensemble` a trainer keeps for ``config`` (None: ``eval.ensemble`` is 1):
    its predictions are ``learner``'s on the test tasks of ``config``'s protocol, in
    evaluation mode, with the global random state left as it was (training goes on exactly
    as it would without)."""
    if config.eval.ensemble <= 1:
        return None
    from mamlkit.build import build_tasks, metric_for

    device = torch.device(config.train.device)
    with torch.random.fork_rng(devices=[]):
        tasks = build_tasks(config, config.eval.split)

    def predict() -> tuple[Tensor, Tensor]:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            learner.eval()
            try:
                return final_predictions(learner, tasks, config, device)
            finally:
                learner.train()

    return Ensemble(run, config.eval.ensemble, metric_for(config), predict, protocol(config))


def _meta(path: Path) -> dict[str, Any] | None:
    meta = read_metadata(path)
    if meta is None or meta.get("kind") != KIND:
        return None
    value = meta.get("value")
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return meta


def _validations(run_dir: Path, metric: str) -> dict[int, float]:
    """The validation values ``metrics.jsonl`` records, by step."""
    out: dict[int, float] = {}
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            record = json.loads(line)
            value = float(record[f"val_{metric}"])
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            continue
        if math.isfinite(value):
            out[step] = value
    return out


def ensemble_record(run_dir: Path, config: Any, metric: str) -> dict[str, Any] | None:
    """The ensemble's score on the run's own test protocol (``eval.ensemble`` > 1), from its
    kept predictions: the metric with its 95% interval over tasks, the members' steps and
    validation values, and ``not_kept``, the validations that would rank among the best but
    whose predictions were never taken (``eval.ensemble`` set by a resume after them). None
    when the run asks for no ensemble or keeps no predictions of its protocol."""
    size = config.eval.ensemble
    if size <= 1:
        return None
    kept = Ensemble(RunDirectory(run_dir), size, metric, None, protocol(config))
    members = kept.members()
    if not members:
        return None
    higher = kept.higher
    best = sorted(members, key=lambda s: _key(members[s], s, higher))[:size]
    stack, targets = [], None
    for step in best:
        path = kept.run.predictions()[step]
        fix = f"remove it (the ensemble then leaves step {step} out and says so) or restore it"
        try:
            tensors, _ = load_checkpoint(path)
        except UserError as exc:
            raise UserError(f"{exc} [eval.ensemble's test predictions: {fix}]") from None
        preds, these = tensors.get("predictions"), tensors.get("targets")
        if preds is None or these is None or (targets is not None and not torch.equal(
            these, targets
        )):
            raise UserError(f"{path}: not test predictions of this run's test tasks; {fix}")
        targets = these
        stack.append(preds.double())
    mean = torch.stack(stack).mean(0)
    value, ci = mean_ci95(METRICS[metric](mean, targets))
    # the protocol's members: the best of every validation metrics.jsonl records
    logged = {**_validations(run_dir, metric), **members}
    top = sorted(logged, key=lambda s: _key(logged[s], s, higher))[:size]
    not_kept = sorted(s for s in top if s not in members)
    record = {
        metric: value,
        "ci95": ci,
        "members": [{"step": s, f"val_{metric}": members[s]} for s in best],
    }
    if not_kept:
        record["not_kept"] = not_kept
    return record


def describe(record: dict[str, Any]) -> str:
    """How an ``ensemble`` record names itself (``mamlkit eval``'s summary, the zoo table).

    >>> describe({"members": [{"step": 40}, {"step": 30}]})
    'ensemble of the 2 best validation checkpoints (steps 40, 30)'
    """
    steps = ", ".join(str(m["step"]) for m in record["members"])
    return f"ensemble of the {len(record['members'])} best validation checkpoints (steps {steps})"
