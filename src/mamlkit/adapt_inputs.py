"""The inputs of ``mamlkit adapt`` read and checked: a support folder of class folders and
query images (image runs), CSV files and numbers (regression runs). Every mistake is a
one-line :class:`UserError` naming the input and the fix, raised before the model runs."""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mamlkit.build import image_channels
from mamlkit.config import Config
from mamlkit.data.images import decode_image, is_image_name, is_regular_file
from mamlkit.errors import UserError
from mamlkit.tasks.registry import task_spec

__all__ = [
    "ImagePreprocessing",
    "query_image_paths",
    "read_csv_columns",
    "read_images",
    "read_query_values",
    "read_support_folder",
]

_X_COLUMN = re.compile(r"x\d*")
_Y_COLUMN = re.compile(r"y\d*")


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _kind(path: Path) -> str:
    """What a path that is not a regular file is, for a message."""
    if not os.path.lexists(path):
        return "does not exist"
    if path.is_dir():
        return "is a folder"
    if not path.exists():
        return "is a broken link"
    return "is not a regular file (a FIFO, socket or device: reading it could block forever)"


def _to_tensor(images: list[np.ndarray]) -> Tensor:
    """uint8 ``[S, S]`` / ``[S, S, 3]`` images -> float ``[N, C, S, S]`` in [0, 1], the
    layout and scale of the training episodes."""
    x = torch.from_numpy(np.stack(images))
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


class ImagePreprocessing:
    """How the run's training images were made: size, channels, Omniglot's inversion.
    Calling it on an image file gives the uint8 array the run's data set would hold.

    Examples:
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
            if not is_regular_file(path):
                raise UserError(f"--support {folder}: {path} {_kind(path)}; remove it")
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
            found = [p for p in _visible(item) if is_image_name(p.name) and not p.is_dir()]
            if not found:
                raise UserError(f"--query {item} is a folder without images; give image files")
            for path in found:
                if not is_regular_file(path):
                    raise UserError(f"--query {item}: {path} {_kind(path)}; remove it")
            paths += found
        elif is_regular_file(item):
            paths.append(item)
        else:
            raise UserError(f"--query {item} {_kind(item)}; give image files to classify")
    return paths


def _check_header(header: list[str], path: Path, option: str, need_y: bool) -> None:
    """Refuse columns given twice and columns that are neither inputs nor targets: each
    would silently change what the model is given (``x,y,y``: two target columns)."""
    for number, name in enumerate(header, 1):
        if not name:
            raise UserError(
                f"{option} {path}: column {number} of the header ({','.join(header)}) has no "
                "name; remove it (or any trailing comma)"
            )
        if header.count(name) > 1:
            raise UserError(
                f"{option} {path}: column {name!r} appears {header.count(name)} times in the "
                f"header ({','.join(header)}); give each column once"
            )
        if not _X_COLUMN.fullmatch(name) and not _Y_COLUMN.fullmatch(name):
            targets = "nor a target (y, y1, y2, ...)" if need_y else "nor a (ignored) target y"
            raise UserError(
                f"{option} {path}: column {name!r} is neither an input (x, x1, x2, ...) "
                f"{targets}; remove it"
            )


def _in_dtype(values: list[list[float]], lines: list[int], dtype: torch.dtype, where: str):
    """``values`` as a ``dtype`` tensor; a number beyond ``dtype``'s range (1e39 becomes
    inf in float32) is a :class:`UserError` naming its line (``where``: the input)."""
    table = torch.tensor(values, dtype=torch.float64).to(dtype)
    bad = (~torch.isfinite(table)).any(dim=1).nonzero()
    if len(bad):
        row = int(bad[0])
        number = next(v for v, t in zip(values[row], table[row]) if not math.isfinite(t))
        line = f" line {lines[row]}" if lines[row] else ""
        raise UserError(
            f"{where}{line}: {number:g} is beyond the range of the model's "
            f"{str(dtype).removeprefix('torch.')} numbers "
            f"(±{torch.finfo(dtype).max:.3g}); scale the data to the range the run was "
            "trained on"
        )
    return table


def read_csv_columns(
    path: Path, option: str, need_y: bool, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor | None]:
    """A CSV with a header (a UTF-8 byte-order mark is allowed): input columns ``x`` (or
    ``x1, x2, ...``), target columns ``y`` (or ``y1, ...``) -> ``dtype`` tensors
    ``[N, Dx]``, ``[N, Dy]``. Other, unnamed or repeated columns are refused; without
    ``need_y`` target columns are allowed and ignored."""
    if not is_regular_file(path):
        raise UserError(
            f"{option} {path} {_kind(path)}; give a CSV with a header row (x,y) and one "
            "point per row"
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except PermissionError:
        raise UserError(
            f"{option} {path}: permission denied; make it readable (chmod u+r)"
        ) from None
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
    _check_header(header, path, option, need_y)
    used = x_cols + (y_cols if need_y else [])
    values, lines = [], []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        try:
            number = [float(row[i]) for i in used]
        except (ValueError, IndexError):
            raise UserError(
                f"{option} {path} line {line}: expected numbers in columns "
                f"{', '.join(header[i] for i in used)}, got {','.join(row)}"
            ) from None
        if not all(math.isfinite(v) for v in number):
            raise UserError(f"{option} {path} line {line}: values must be finite numbers")
        values.append(number)
        lines.append(line)
    if not values:
        raise UserError(f"{option} {path} has a header but no rows; add at least one point")
    table = _in_dtype(values, lines, dtype, f"{option} {path}")
    return table[:, : len(x_cols)], (table[:, len(x_cols) :] if need_y else None)


def read_query_values(items: list[str], dtype: torch.dtype = torch.float32) -> Tensor:
    """Query inputs of a regression run: numbers, or CSV files with an ``x`` column, as a
    ``dtype`` tensor ``[M, Dx]``."""
    rows: list[Tensor] = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            rows.append(read_csv_columns(Path(item), "--query", need_y=False, dtype=dtype)[0])
            continue
        if not math.isfinite(value):
            raise UserError(f"--query {item}: give finite numbers")
        rows.append(_in_dtype([[value]], [0], dtype, f"--query {item}"))
    widths = {r.shape[1] for r in rows}
    if len(widths) > 1:
        raise UserError("--query: the query inputs have different numbers of x columns")
    return torch.cat(rows)
