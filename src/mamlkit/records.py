"""The JSON files of a run (status.json, metrics.jsonl, eval.json): written as strict JSON,
appended without ever leaving a torn line behind, and read defensively (a damaged file is a
:class:`UserError` naming it; a line torn by a crash mid-append is skipped)."""

from __future__ import annotations

import json
import math
import os
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


def _parse(text: str, path: Path, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise UserError(
            f"{path}{where} is not valid JSON (damaged or hand-edited); restore the file or "
            "remove the damaged part"
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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (one object with an integer ``step`` a line). An
    unterminated last line that does not parse was
    torn by a crash mid-append and is skipped; damage anywhere else is a :class:`UserError`
    naming the file and line."""
    try:
        text = _read_text(path)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file (damaged); restore it or remove it") from None
    lines = text.split("\n")
    torn = lines.pop()  # "" when the file ends in a newline
    records = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            records.append(_parse(line, path, f" line {number}"))
    if torn.strip():
        try:
            records.append(json.loads(torn))
        except ValueError:
            pass
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise UserError(
                f"{path}: record {number} has no integer 'step' (damaged or hand-edited); "
                "restore the file or remove that line"
            )
    return records
