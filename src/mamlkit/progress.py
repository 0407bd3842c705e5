"""Feedback on long work: a tqdm bar on a terminal, plain log lines elsewhere.

Every step that may take more than a couple of seconds (training, validation, evaluation,
first-time preprocessing of a data set) reports through here. On a terminal, with bars on
(the default; ``--no-progress`` turns them off), it draws a tqdm bar. Otherwise (a job log
on a cluster, a pipe, ``--no-progress``) it writes plain lines through the ``mamlkit``
logger: training one every ``train.log_every`` steps (step, metrics, ETA), the other work
one every :data:`LOG_SECONDS` while it runs. The ``mamlkit`` command shows these lines on
stderr; from Python they are silent unless logging is configured (``logging.basicConfig``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

__all__ = [
    "LOG_SECONDS",
    "LOGGER",
    "Progress",
    "bars",
    "format_eta",
    "is_progress_line",
    "log_line",
    "log_to_stderr",
    "show_bars",
]

#: the logger the lines go through (the CLI prints its INFO records on stderr)
LOGGER = logging.getLogger("mamlkit.progress")
#: seconds between two log lines of work other than training (and before the first)
LOG_SECONDS = 10.0
_BARS = [True]  # whether a terminal gets bars: the command's --progress/--no-progress
# every log line starts so: "[what] " — tools and tests can tell them from other output
_LINE = re.compile(r"\[[^\]\n]+\] ")


def show_bars() -> bool:
    """Whether bars are drawn now: bars are on and stderr is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return _BARS[0] and bool(isatty and isatty())


@contextlib.contextmanager
def bars(on: bool) -> Iterator[None]:
    """Bars on or off (``--progress``/``--no-progress``) for the block."""
    before, _BARS[0] = _BARS[0], on
    try:
        yield
    finally:
        _BARS[0] = before


def format_eta(seconds: float) -> str:
    """``"1h02m"``, ``"3m05s"``, ``"12s"``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def log_line(
    what: str,
    done: int,
    total: int,
    elapsed: float,
    unit: str = "step",
    since: int = 0,
    **numbers: Any,
) -> str:
    """One progress line: ``[what] step 100/1000 (10%) loss 0.5 mse 0.3 | 12s elapsed |
    ETA 1m48s``, the ETA from the rate since unit ``since`` (where this piece started)."""
    percent = f" ({100 * done / total:.0f}%)" if total else ""
    parts = [f"[{what}] {unit} {done}/{total}{percent}"]
    parts += [f"{key} {_number(value)}" for key, value in numbers.items()]
    text = " ".join(parts) + f" | {format_eta(elapsed)} elapsed"
    if since < done < total:
        text += f" | ETA {format_eta(elapsed / (done - since) * (total - done))}"
    return text


def is_progress_line(line: str) -> bool:
    """Whether a line of output is a progress line (not a result, warning or error)."""
    return bool(_LINE.match(line))


class Progress:
    """Progress of ``total`` units of work named ``what``: a bar on a terminal, else a log
    line every :data:`LOG_SECONDS` (none for work that ends sooner). ``lines=False``: no log
    lines (where another line says it, e.g. validation inside a logged training step)."""

    def __init__(
        self, total: int, what: str, unit: str = "step", lines: bool = True, leave: bool = False
    ):
        self.total, self.what, self.unit, self.lines = total, what, unit, lines
        self.done, self.started = 0, time.monotonic()
        self._last = self.started
        self._said = False
        self.bar = None
        if show_bars():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, desc=what, unit=unit, leave=leave, dynamic_ncols=True, mininterval=0.5
            )

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.lines and now - self._last >= LOG_SECONDS and self.done < self.total:
            self._last, self._said = now, True
            LOGGER.info(log_line(self.what, self.done, self.total, now - self.started, self.unit))

    def close(self) -> None:
        """End of the work: the bar closes; a log that said anything says it finished."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            return
        now = time.monotonic()
        if self.lines and (self._said or now - self.started >= LOG_SECONDS):
            self._said = False
            LOGGER.info(log_line(self.what, self.done, self.total, now - self.started, self.unit))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        if kind is None:
            self.close()
        elif self.bar is not None:  # a failure: its message is what the user must see
            self.bar.close()


class _Stderr(logging.Handler):
    """Each record as a line on the ``sys.stderr`` of the moment (a test's capture too)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed or broken stderr: progress is not worth dying
            pass


@contextlib.contextmanager
def log_to_stderr() -> Iterator[None]:
    """Show the progress lines on stderr for the block (what the ``mamlkit`` command and its
    worker processes do)."""
    handler = _Stderr(logging.INFO)
    level, propagate = LOGGER.level, LOGGER.propagate
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # said once, not again by a root handler
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(level)
        LOGGER.propagate = propagate
