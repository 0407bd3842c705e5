"""A training time budget (``--max-time``, ``train.max_time``): parse "2h30m", and decide
before each iteration whether it, and what must follow it, still fits.

Training that stops for its budget leaves a checkpoint of its last completed iteration and
the status ``paused``; ``mamlkit train --resume RUN`` continues it bit-identically. The plan
uses measured times: the slowest recent iteration, the last validation and the slowest
checkpoint write, each with a safety margin, so that a piece ends before its budget (as a
SLURM job must end before ``--time``).

>>> parse_duration("2h30m"), parse_duration("45s"), parse_duration("1:30:00")
(9000.0, 45.0, 5400.0)
>>> format_duration(9000.0), format_duration(59.5)
('2h30m', '59.5s')
"""

from __future__ import annotations

import os
import re
import time
from collections import deque

from mamlkit.errors import UserError

__all__ = ["MIN_BUDGET", "TimeBudget", "format_duration", "monotonic", "parse_duration"]

#: The smallest budget accepted: below it no run could even start its first iteration.
MIN_BUDGET = 1.0

_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_PARTS = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_CLOCK = re.compile(r"(?:(\d+):)?(\d+):(\d+)")

# Tests make time deterministic: with MAMLKIT_TEST_CLOCK=S every read of the clock advances
# it by S seconds (no test may depend on how fast or busy the machine is).
_fake_now = 0.0


def monotonic() -> float:
    """``time.monotonic()``, or the deterministic test clock of ``MAMLKIT_TEST_CLOCK``."""
    tick = os.environ.get("MAMLKIT_TEST_CLOCK")
    if not tick:
        return time.monotonic()
    global _fake_now
    _fake_now += float(tick)
    return _fake_now


def parse_duration(text: str, option: str = "--max-time") -> float:
    """Seconds in ``text``: units ``d h m s`` in sequence (``2h30m``, ``90m``, ``1.5h``) or a
    clock ``H:MM:SS`` / ``MM:SS`` (SLURM's ``--time`` style). A bare number is refused
    (minutes or seconds?)."""
    raw = str(text).strip().lower().replace(" ", "")
    seconds = None
    clock = _CLOCK.fullmatch(raw)
    if clock:
        hours, minutes, secs = (int(g) if g else 0 for g in clock.groups())
        seconds = hours * 3600.0 + minutes * 60.0 + secs
    elif raw and _PARTS.sub("", raw) == "":
        seconds = sum(float(n) * _UNITS[u] for n, u in _PARTS.findall(raw))
    if seconds is None:
        raise UserError(
            f"{option} {text}: not a duration; write it with units, e.g. 2h30m, 45m or 90s "
            "(or H:MM:SS)"
        )
    if seconds < MIN_BUDGET:
        raise UserError(
            f"{option} {text}: a budget under {MIN_BUDGET:g} s cannot hold one iteration; "
            "give more time (e.g. 10m)"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """A compact duration, the form :func:`parse_duration` reads back."""
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes = int(seconds // 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


class TimeBudget:
    """The deadline of this piece of training and the measured costs that plan it.

    >>> budget = TimeBudget(100.0, started=0.0)
    >>> budget.note("iteration", 10.0); budget.note("checkpoint", 2.0)
    >>> budget.fits(now=70.0, validation=False, checkpoint=False)  # 70 + 12.5 + 3 <= 100
    True
    >>> budget.fits(now=90.0, validation=False, checkpoint=False)
    False
    """

    #: seconds a checkpoint write is taken to cost before one is measured: a fixed cost plus
    #: its bytes at a slow disk's speed (a guess on the safe side; the first write replaces it)
    CHECKPOINT_FIXED = 2.0
    DISK_BYTES_PER_SECOND = 20e6

    @classmethod
    def checkpoint_seconds(cls, nbytes: int) -> float:
        """The guess for a checkpoint of ``nbytes`` bytes.

        >>> TimeBudget.checkpoint_seconds(40_000_000)
        4.0
        """
        return cls.CHECKPOINT_FIXED + nbytes / cls.DISK_BYTES_PER_SECOND

    #: margins on the measured times (a busy machine slows some iterations down)
    ITERATION_MARGIN = 1.25
    OTHER_MARGIN = 1.5

    def __init__(self, seconds: float, started: float | None = None, text: str | None = None):
        #: what a checkpoint is taken to cost until one is measured (the trainer sets it
        #: from the size of what it saves; without it, one iteration's time)
        self.checkpoint_guess: float | None = None
        self.seconds = float(seconds)
        self.text = text or format_duration(self.seconds)
        self.started = monotonic() if started is None else started
        self.deadline = self.started + self.seconds
        self._iterations: deque[float] = deque(maxlen=20)
        self._validation: float | None = None
        self._checkpoint: float | None = None
        #: eval.ensemble: test tasks per validation task; a validation may then also predict
        #: the test tasks (planned as the slowest such prediction, or the validation's time
        #: scaled by this ratio until one is measured). None: no ensemble
        self.ensemble_ratio: float | None = None
        self._ensemble: float | None = None

    def note(self, kind: str, seconds: float) -> None:
        """Record how long an ``iteration``, ``validation``, ``ensemble`` (the test
        predictions of ``eval.ensemble``) or ``checkpoint`` took."""
        if kind == "iteration":
            self._iterations.append(seconds)
        elif kind == "validation":
            self._validation = seconds
        elif kind == "ensemble":
            self._ensemble = max(seconds, self._ensemble or 0.0)
        else:
            self._checkpoint = max(seconds, self._checkpoint or 0.0)

    @property
    def iteration(self) -> float | None:
        """The slowest of the last 20 iterations, or None before the first."""
        return max(self._iterations) if self._iterations else None

    def fits(self, now: float, validation: bool, checkpoint: bool) -> bool:
        """Whether one more iteration (with the validation and checkpoint that follow it
        where ``validation``/``checkpoint`` say so) and then the pause's own checkpoint end
        before the deadline. Before any measurement it plans nothing: the first iteration
        always runs (a budget shorter than it is refused after it)."""
        iteration = self.iteration
        if iteration is None:
            return True
        unmeasured = self.checkpoint_guess if self.checkpoint_guess is not None else iteration
        save = (self._checkpoint or unmeasured) * self.OTHER_MARGIN
        need = iteration * self.ITERATION_MARGIN + save * (2 if checkpoint else 1)
        if validation:
            # unmeasured: as long as 20 iterations (100 tasks x 10 steps vs 25 tasks x 1-5)
            validating = self._validation or 20 * iteration
            need += validating * self.OTHER_MARGIN
            if self.ensemble_ratio is not None:
                predicting = self._ensemble or validating * self.ensemble_ratio
                need += predicting * self.OTHER_MARGIN
        return now + need <= self.deadline
