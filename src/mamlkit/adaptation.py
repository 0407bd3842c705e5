"""``mamlkit adapt``: adapt a trained run to a new task given as files and predict its
queries. Image runs take a folder with one sub-folder of K images per class; regression
runs take a CSV of support points. Every input is checked before the model runs, and a
mistake is one line naming the input and the fix."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mamlkit.adapt_inputs import (
    ImagePreprocessing,
    query_image_paths,
    read_csv_columns,
    read_images,
    read_query_values,
    read_support_folder,
)
from mamlkit.errors import UserError
from mamlkit.limits import check_flag
from mamlkit.rundir.checkpoint import atomic_write_text
from mamlkit.rundir.ownership import mamlkit_folder_above
from mamlkit.runner import load_run
from mamlkit.tasks.registry import task_spec

__all__ = [
    "ImagePreprocessing",
    "adapt_run",
    "batch_dependent",
    "check_output_width",
    "output_width",
    "read_images",
    "read_support_folder",
]


def _cannot_run(run_dir: Path, exc: Exception) -> UserError:
    reason = " ".join(str(exc).split())[:300]
    return UserError(
        f"{run_dir}: the model cannot run on these inputs ({reason}); give inputs shaped "
        "like the training data"
    )


def _predict(learner, xs, ys, xq, steps, run_dir: Path) -> Tensor:
    try:
        return learner.predict_task(xs, ys, xq, steps=steps)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise _cannot_run(run_dir, exc) from None


def batch_dependent(learner: Any) -> bool:
    """Whether ``learner``'s predictions for one query depend on the other inputs of its
    batch: BatchNorm normalising with the batch's statistics (MAML's Conv4 keeps no running
    statistics, as in the paper)."""
    return any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        and (m.training or not m.track_running_stats)
        for m in learner.modules()
    )


def _predict_each_query(learner, xs, ys, xq, steps, run_dir: Path) -> Tensor:
    """Each query predicted with the support set beside it in the batch and no other query
    (the non-transductive protocol of Nichol et al. 2018): BatchNorm's statistics come
    from the support set and that one query, so a query's answer does not depend on which
    queries come with it. One task per query, all adapted at once on the same support."""
    if not hasattr(learner, "query_predictions"):  # no batch to share: nothing to separate
        return _predict(learner, xs, ys, xq, steps, run_dir)
    m = xq.shape[0]
    support_x = xs.unsqueeze(0).expand(m, *xs.shape).clone()
    support_y = ys.unsqueeze(0).expand(m, *ys.shape).clone()
    query_x = torch.cat([support_x, xq.unsqueeze(1)], dim=1)
    try:
        with torch.inference_mode(False):
            return learner.query_predictions(support_x, support_y, query_x, steps)[-1][:, -1]
    except (RuntimeError, ValueError, IndexError) as exc:
        raise _cannot_run(run_dir, exc) from None


def output_width(learner: Any, support_x: Tensor, support_y: Tensor, run_dir: Path) -> int:
    """How many values ``learner`` predicts per query on this support set (before any
    adaptation step): a fixed-width classification head (MAML, Meta-SGD, ANIL, MAML++,
    Reptile) gives its width whatever the support holds; ProtoNet and the pretrained
    baseline give the support's number of classes; a regression model its outputs."""
    probe = _predict(learner, support_x, support_y, support_x[:1], 0, run_dir)
    return int(probe.shape[-1]) if probe.dim() > 1 else 1


def check_output_width(
    learner: Any,
    support_x: Tensor,
    support_y: Tensor,
    classes: list[str],
    run_dir: Path,
    support: str = "the support set",
) -> None:
    """Refuse a support set (named ``support`` in the message) with another number of
    classes than the learner's head has outputs: its probabilities would be over the wrong
    classes (a 5-way head, 3 names)."""
    width = output_width(learner, support_x, support_y, run_dir)
    if width != len(classes):
        raise UserError(
            f"{support} has {len(classes)} classes but {run_dir} was trained {width}-way "
            f"(its head has {width} outputs); give {width} class folders"
        )


def _model_dtype(learner: Any) -> torch.dtype:
    """The floating-point type of the learner's parameters (what inputs are computed in)."""
    for param in learner.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.get_default_dtype()


def _check_finite(predictions: Tensor, support: Path, run_dir: Path) -> None:
    """Predictions that overflowed (NaN/inf) are refused, not written: strict JSON has no
    NaN, and a NaN prediction is no answer."""
    if not torch.isfinite(predictions).all():
        raise UserError(
            f"adapting {run_dir} on --support {support} gave predictions that are not finite "
            "(NaN or inf: the support values are too large for the model's arithmetic); "
            "scale the data to the range the run was trained on, or use fewer --steps"
        )


def adapt_run(
    run_dir: Path,
    support: Path,
    queries: list[str],
    steps: int | None = None,
    out: Path | None = None,
    force: bool = False,
    trust_code: bool = False,
    checkpoint: str | None = None,
    device: str | None = None,
    transductive: bool = False,
) -> dict[str, Any]:
    """Adapt the run in ``run_dir`` on ``support`` and predict ``queries``; returns (and with
    ``out`` writes as JSON) the predictions. Nothing is written if anything is wrong.
    ``checkpoint`` (a step or ``latest``) adapts a training checkpoint instead of the final
    weights (an unfinished run); ``device`` replaces the run's ``train.device``.

    A model whose BatchNorm normalises with batch statistics (MAML's) classifies each
    query with the support set and no other query by default, so that its answer does not
    depend on the other queries; ``transductive`` classifies all queries in one batch, as
    the paper's evaluation does (then a lone query is normalised by itself: a warning)."""
    if steps is not None and steps < 0:
        raise UserError(f"--steps must be >= 0, got {steps}")
    check_flag("--steps", steps, "steps")
    if not queries:
        raise UserError("no --query given; name the images (or x values) to predict")
    if out is not None and out.exists() and (out.is_dir() or not force):
        raise UserError(
            f"--out {out} already exists; pass --force to replace it or choose another file"
            if not out.is_dir()
            else f"--out {out} is a directory; give a file name such as preds.json"
        )
    if out is not None:
        check_out_outside_runs(out, run_dir)
    config, learner, _ = load_run(
        run_dir, checkpoint=checkpoint, trust_code=trust_code, device=device
    )
    task = task_spec(config.task.name)
    if task.rl:
        raise UserError(
            f"{run_dir} is a reinforcement-learning run: it adapts on trajectories it samples, "
            f"not on a support set; use `mamlkit eval {run_dir}`"
        )
    steps = config.eval.steps if steps is None else steps
    device = config.train.device
    dtype = _model_dtype(learner)
    record: dict[str, Any] = {"run_dir": str(run_dir), "support": str(support), "steps": steps}
    if task.inputs == "vector":
        if support.is_dir():
            raise UserError(
                f"--support {support} is a folder, but {run_dir} is a regression run; give a "
                "CSV with columns x,y"
            )
        xs, ys = read_csv_columns(support, "--support", need_y=True, dtype=dtype)
        xq = read_query_values(queries, dtype)
        if xq.shape[1] != xs.shape[1]:
            raise UserError(
                f"--query has {xq.shape[1]} x column(s) but --support {support} has "
                f"{xs.shape[1]}; give the queries the support's input columns"
            )
        xs, ys, xq = xs.to(device), ys.to(device), xq.to(device)
        width = output_width(learner, xs, ys, run_dir)
        if width != ys.shape[1]:
            raise UserError(
                f"--support {support} has {ys.shape[1]} target column(s) but {run_dir} "
                f"predicts {width} value(s) per point; give {width} (y, or y1 ... y{width})"
            )
        pred = _predict(learner, xs, ys, xq, steps, run_dir).cpu()
        _check_finite(pred, support, run_dir)
        record["predictions"] = [
            {
                "x": x.tolist() if len(x) > 1 else x.item(),
                "y": y.tolist() if len(y) > 1 else y.item(),
            }
            for x, y in zip(xq.cpu(), pred)
        ]
        return _finish(record, out)

    prepare = ImagePreprocessing(config)
    xs, ys, classes = read_support_folder(support, prepare)
    paths = query_image_paths([Path(q) for q in queries])
    xq = read_images(paths, prepare)
    xs, ys, xq = xs.to(device, dtype), ys.to(device), xq.to(device, dtype)
    check_output_width(learner, xs, ys, classes, run_dir, f"--support {support}")
    dependent = batch_dependent(learner)
    record["transductive"] = bool(transductive and dependent)
    if transductive and dependent and len(paths) == 1:
        warnings.warn(
            f"--transductive with one query: {run_dir}'s BatchNorm normalises that image by "
            "itself, so its scores are unlike those among other queries; drop --transductive "
            "to classify it beside the support set",
            stacklevel=1,
        )
    if transductive or not dependent:
        logits = _predict(learner, xs, ys, xq, steps, run_dir).cpu()
    else:
        logits = _predict_each_query(learner, xs, ys, xq, steps, run_dir).cpu()
    _check_finite(logits, support, run_dir)
    probabilities = torch.softmax(logits.double(), -1)
    record["classes"] = classes
    record["predictions"] = [
        {
            "query": str(path),
            "class": classes[int(p.argmax())],
            "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)},
        }
        for path, p in zip(paths, probabilities)
    ]
    return _finish(record, out)


def check_out_outside_runs(out: Path, run_dir: Path) -> None:
    """Refuse an ``--out`` inside a run directory (``run_dir`` or any other, at any depth,
    also through a link) or a ``reproduce`` folder: predictions never replace or join a
    run's own files."""
    target = Path(out).resolve()
    holder = mamlkit_folder_above(out)
    if holder is None and Path(run_dir).resolve() in target.parents:
        holder = Path(run_dir)
    if holder is not None:
        raise UserError(
            f"--out {out} is inside {holder}, a folder of mamlkit's own (a run's files "
            f"stay the run's); write the predictions outside it, e.g. --out {target.name} "
            "in the current directory"
        )


def _finish(record: dict[str, Any], out: Path | None) -> dict[str, Any]:
    if out is not None:
        text = json.dumps(record, indent=1, allow_nan=False)  # strict JSON: no NaN, no Infinity
        try:
            atomic_write_text(out, text)
        except OSError as exc:
            raise UserError(f"--out {out}: cannot write it ({exc.strerror or exc})") from None
    return record
