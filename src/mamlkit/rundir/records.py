"""The JSON files of a run (status.json, metrics.jsonl, eval.json): written as strict JSON,
appended without ever leaving a torn line behind, and read defensively (a damaged file is a
:class:`UserError` naming it; a line torn by a crash mid-append is skipped)."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from mamlkit.errors import UserError

NOT_FINITE = "not_finite"


def finite_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with NaN/Inf numbers (also in nested mappings, e.g. status.json's
    ``best``) replaced by ``null`` and their keys listed under ``"not_finite"`` (strict
    JSON parsers reject a bare NaN; a diverged metric stays visible as such)."""
    bad: list[str] = []

    def clean(value: Any, key: str) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(key)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        return value

    out = clean(record, "")
    if bad:
        out[NOT_FINITE] = sorted({*record.get(NOT_FINITE, ()), *bad})
    return out


def dumps(record: dict[str, Any], **kwargs: Any) -> str:
    """Strict JSON of a record (see :func:`finite_record`)."""
    return json.dumps(finite_record(record), allow_nan=False, **kwargs)


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line. A failed write (full disk, file size limit) is undone before
    the error propagates, so the file never ends in a torn line; links are not followed."""
    data = (dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass  # readers skip a torn last line anyway
            exc.filename = str(path)
            raise
    finally:
        os.close(fd)


def _parse(text: str, path: Path, where: str, fix: str = "") -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise UserError(
            f"{path}{where} is not valid JSON (damaged or hand-edited); "
            f"{fix or 'restore the file or remove the damaged part'}"
        ) from None


class UnreadableFile(UserError):
    """A run file that exists but cannot be read: no permission, or not a regular file
    (a FIFO would block the reader). Not damage: the message says which."""


def _read_text(path: Path) -> str:
    """The text of ``path``; :class:`UnreadableFile` where it cannot be opened (a missing
    file keeps its own message)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise UnreadableFile(
                f"{path} is not a regular file (a FIFO, socket or device); replace it with "
                "the run's file or remove it"
            )
        return Path(path).read_text()
    except PermissionError:
        raise UnreadableFile(
            f"{path} cannot be read: permission denied; give your user read permission "
            f"(chmod u+r {path})"
        ) from None
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror}); check it") from None


def read_json(path: Path) -> Any:
    """The content of a JSON file, or a :class:`UserError` naming the file."""
    try:
        text = _read_text(path)
    except UnicodeDecodeError:
        text = "\0"  # binary garbage: reported below as invalid JSON
    return _parse(text, path, "")


def _repair_hint(path: Path) -> str:
    return (
        f"set the damaged lines aside with `mamlkit runs --repair {Path(path).parent}` (or "
        "restore the file from a backup)"
    )


def _metrics_lines(path: Path) -> tuple[list[str], str]:
    """The complete lines of a metrics.jsonl and its unterminated last part ("" if none)."""
    try:
        text = _read_text(path)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file (damaged); restore it or remove it") from None
    lines = text.split("\n")
    return lines, lines.pop()


def _is_record(record: Any) -> bool:
    step = record.get("step") if isinstance(record, dict) else None
    return isinstance(step, int) and not isinstance(step, bool)


def scan_metrics(path: Path) -> tuple[list[dict[str, Any]], tuple[int, str] | None]:
    """The records of a metrics.jsonl (one object with an integer ``step`` a line) and its
    torn last line, if any, as ``(line number, text)``: an unterminated last line that
    does not parse (a crash mid-append). Damage anywhere else is a :class:`UserError`
    naming the file, the line and the repair."""
    lines, tail = _metrics_lines(path)
    records = []
    torn = None
    if tail.strip():
        try:
            lines.append(json.dumps(json.loads(tail)))
        except ValueError:
            torn = (len(lines) + 1, tail)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _parse(line, path, f" line {number}", _repair_hint(path))
        if not _is_record(record):
            raise UserError(
                f"{path} line {number} has no integer 'step' (damaged or hand-edited); "
                + _repair_hint(path)
            )
        records.append(record)
    return records, torn


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a torn last line (see :func:`scan_metrics`) is
    skipped."""
    return scan_metrics(path)[0]


_TORN_STEP = re.compile(r'\s*\{\s*"step"\s*:\s*(\d+)\s*[,}]')


def torn_step(text: str) -> int | None:
    """The step of a torn record, when the tear left it readable."""
    found = _TORN_STEP.match(text)
    return int(found.group(1)) if found else None


def repair_metrics(path: Path) -> list[int]:
    """Set the damaged lines of a metrics.jsonl aside: appended to
    ``metrics.jsonl.damaged`` beside it, and the file rewritten with the intact records,
    in order. Returns the numbers of the lines set aside (none: the file is unchanged)."""
    from mamlkit.rundir.checkpoint import atomic_write_text

    lines, tail = _metrics_lines(path)
    if tail:
        lines.append(tail)
    keep, damaged = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if _is_record(record):
            keep.append(line)
        else:
            damaged.append((number, line))
    if damaged:
        aside = path.with_name(path.name + ".damaged")
        with open(aside, "a") as out:  # kept, never read again
            out.writelines(f"{line}\n" for _, line in damaged)
        atomic_write_text(path, "".join(f"{line}\n" for line in keep))
    return [number for number, _ in damaged]
