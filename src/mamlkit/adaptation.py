"""``mamlkit adapt``: adapt a trained run to a new task given as files and predict its
queries. Image runs take a folder with one sub-folder of K images per class; regression
runs take a CSV of support points. Every input is checked before the model runs, and a
mistake is one line naming the input and the fix."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mamlkit.build import image_channels
from mamlkit.checkpoint import atomic_write_text
from mamlkit.config import Config
from mamlkit.data.images import decode_image, is_image_name
from mamlkit.errors import UserError
from mamlkit.limits import check_flag
from mamlkit.runner import load_run
from mamlkit.tasks.registry import task_spec

_X_COLUMN = re.compile(r"x\d*")
_Y_COLUMN = re.compile(r"y\d*")


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _to_tensor(images: list[np.ndarray]) -> Tensor:
    """uint8 ``[S, S]`` / ``[S, S, 3]`` images -> float ``[N, C, S, S]`` in [0, 1], the
    layout and scale of the training episodes."""
    x = torch.from_numpy(np.stack(images))
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


class ImagePreprocessing:
    """How the run's training images were made: size, channels, Omniglot's inversion.
    Calling it on an image file gives the uint8 array the run's data set would hold.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> from mamlkit import load_config
        >>> path = tempfile.mkdtemp() + "/a.png"
        >>> Image.new("RGB", (105, 90), "white").save(path)
        >>> prepare = ImagePreprocessing(load_config("omniglot_maml_5w1s"))
        >>> array = prepare(path)
        >>> array.shape, int(array.max())  # grey, 28 x 28, white paper -> 0 after inversion
        ((28, 28), 0)
    """

    def __init__(self, config: Config):
        self.size = config.task.image_size
        self.channels = image_channels(config)
        self.invert = task_spec(config.task.name).inverted

    def __call__(self, path: Path) -> np.ndarray:
        return decode_image(path, self.size, self.channels, invert=self.invert)


def read_images(paths: list[Path], prepare: ImagePreprocessing) -> Tensor:
    """Image files -> ``[N, C, S, S]`` floats in [0, 1], preprocessed as ``prepare`` says."""
    return _to_tensor([prepare(p) for p in paths])


def read_support_folder(folder: Path, prepare: ImagePreprocessing) -> tuple[Tensor, Tensor, list]:
    """``folder/<class>/<image>`` -> images ``[N·K, C, S, S]``, labels ``[N·K]`` (class
    index in sorted name order) and the class names."""
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file"
        raise UserError(
            f"--support {folder} {what}; for an image run give a folder with one sub-folder "
            "of images per class"
        )
    classes, files = [], []
    for entry in _visible(folder):
        if not entry.is_dir():
            raise UserError(
                f"--support {folder}: {entry.name} is a file; put every image into the "
                "folder of its class (one sub-folder per class)"
            )
        images = _visible(entry)
        for path in images:
            if path.is_dir() or not is_image_name(path.name):
                raise UserError(
                    f"--support {folder}: {path} is not an image file; remove it (class "
                    "folders hold images only)"
                )
        if not images:
            raise UserError(f"--support {folder}: class folder {entry.name} holds no images")
        classes.append(entry.name)
        files.append(images)
    if len(classes) < 2:
        raise UserError(
            f"--support {folder} holds {len(classes)} class folder(s) ({', '.join(classes)}); "
            "a task needs at least 2 classes, one sub-folder each"
        )
    counts = {c: len(f) for c, f in zip(classes, files)}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{c}: {n}" for c, n in counts.items())
        raise UserError(
            f"--support {folder}: classes hold different numbers of images ({detail}); give "
            "every class the same K images"
        )
    x = read_images([p for class_files in files for p in class_files], prepare)
    y = torch.arange(len(classes)).repeat_interleave(len(files[0]))
    return x, y, classes


def query_image_paths(items: list[Path]) -> list[Path]:
    """The query files: each item a file, or a folder whose images are all queries."""
    paths: list[Path] = []
    for item in items:
        if item.is_dir():
            found = [p for p in _visible(item) if p.is_file() and is_image_name(p.name)]
            if not found:
                raise UserError(f"--query {item} is a folder without images; give image files")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise UserError(f"--query {item} does not exist; give image files to classify")
    return paths


def read_csv_columns(path: Path, option: str, need_y: bool) -> tuple[Tensor, Tensor | None]:
    """A CSV with a header: input columns ``x`` (or ``x1, x2, ...``), target columns ``y``
    (or ``y1, ...``) -> float tensors ``[N, Dx]``, ``[N, Dy]``."""
    if not path.is_file():
        raise UserError(
            f"{option} {path} is not a file; give a CSV with a header row (x,y) and one "
            "point per row"
        )
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{option} {path}: cannot read it as CSV ({exc})") from None
    header = [h.strip() for h in rows[0]] if rows else []
    x_cols = [i for i, h in enumerate(header) if _X_COLUMN.fullmatch(h)]
    y_cols = [i for i, h in enumerate(header) if _Y_COLUMN.fullmatch(h)]
    missing = [n for n, cols in (("x", x_cols), ("y", y_cols if need_y else [0])) if not cols]
    if missing:
        raise UserError(
            f"{option} {path}: no column {' or '.join(repr(m) for m in missing)} in the header "
            f"({','.join(header) or 'empty file'}); the first row must name the columns, e.g. "
            f"{'x,y' if need_y else 'x'}"
        )
    values = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            number = [float(row[i]) for i in x_cols + (y_cols if need_y else [])]
        except (ValueError, IndexError):
            raise UserError(
                f"{option} {path} line {line}: expected numbers in columns "
                f"{', '.join(header[i] for i in x_cols + (y_cols if need_y else []))}, "
                f"got {','.join(row)}"
            ) from None
        if not all(math.isfinite(v) for v in number):
            raise UserError(f"{option} {path} line {line}: values must be finite numbers")
        values.append(number)
    if not values:
        raise UserError(f"{option} {path} has a header but no rows; add at least one point")
    table = torch.tensor(values, dtype=torch.float32)
    return table[:, : len(x_cols)], (table[:, len(x_cols) :] if need_y else None)


def read_query_values(items: list[str]) -> Tensor:
    """Query inputs of a regression run: numbers, or CSV files with an ``x`` column."""
    rows: list[Tensor] = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            rows.append(read_csv_columns(Path(item), "--query", need_y=False)[0])
            continue
        if not math.isfinite(value):
            raise UserError(f"--query {item}: give finite numbers")
        rows.append(torch.tensor([[value]]))
    widths = {r.shape[1] for r in rows}
    if len(widths) > 1:
        raise UserError("--query: the query inputs have different numbers of x columns")
    return torch.cat(rows)


def _predict(learner, xs, ys, xq, steps, run_dir: Path) -> Tensor:
    try:
        return learner.predict_task(xs, ys, xq, steps=steps)
    except (RuntimeError, ValueError, IndexError) as exc:
        reason = " ".join(str(exc).split())[:300]
        raise UserError(
            f"{run_dir}: the model cannot run on these inputs ({reason}); give inputs shaped "
            "like the training data"
        ) from None


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
) -> dict[str, Any]:
    """Adapt the run in ``run_dir`` on ``support`` and predict ``queries``; returns (and with
    ``out`` writes as JSON) the predictions. Nothing is written if anything is wrong.
    ``checkpoint`` (a step or ``latest``) adapts a training checkpoint instead of the final
    weights (an unfinished run); ``device`` replaces the run's ``train.device``."""
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
    record: dict[str, Any] = {"run_dir": str(run_dir), "support": str(support), "steps": steps}
    if task.inputs == "vector":
        if support.is_dir():
            raise UserError(
                f"--support {support} is a folder, but {run_dir} is a regression run; give a "
                "CSV with columns x,y"
            )
        xs, ys = read_csv_columns(support, "--support", need_y=True)
        xq = read_query_values(queries)
        pred = _predict(learner, xs.to(device), ys.to(device), xq.to(device), steps, run_dir)
        record["predictions"] = [
            {
                "x": x.tolist() if len(x) > 1 else x.item(),
                "y": y.tolist() if len(y) > 1 else y.item(),
            }
            for x, y in zip(xq, pred.cpu())
        ]
        return _finish(record, out)

    prepare = ImagePreprocessing(config)
    xs, ys, classes = read_support_folder(support, prepare)
    paths = query_image_paths([Path(q) for q in queries])
    xq = read_images(paths, prepare)
    if config.algorithm.name in ("maml", "fomaml"):
        with torch.no_grad():
            outputs = learner.model(xs[:2].to(device)).shape[-1]
        if outputs != len(classes):
            raise UserError(
                f"--support {support} has {len(classes)} classes but {run_dir} was trained "
                f"{outputs}-way (its head has {outputs} outputs); give {outputs} class folders"
            )
    logits = _predict(learner, xs.to(device), ys.to(device), xq.to(device), steps, run_dir)
    probabilities = torch.softmax(logits.double(), -1).cpu()
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


def _finish(record: dict[str, Any], out: Path | None) -> dict[str, Any]:
    if out is not None:
        try:
            atomic_write_text(out, json.dumps(record, indent=1))
        except OSError as exc:
            raise UserError(f"--out {out}: cannot write it ({exc.strerror or exc})") from None
    return record
