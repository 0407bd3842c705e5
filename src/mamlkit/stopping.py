"""When a piece of training stops before its last iteration: a signal (SIGINT, SIGTERM) or
the time budget of ``--max-time`` (:mod:`mamlkit.budget`). The trainer asks
:meth:`Stopper.check` before every iteration; it raises :class:`Stop` with the status the
run then records (``interrupted`` or ``paused``)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import torch

from mamlkit.budget import TimeBudget, monotonic

__all__ = ["Stop", "Stopper"]


class Stop(Exception):
    """Raised before an iteration to end this piece of training: ``reason`` is the status
    (``paused`` or ``interrupted``); ``refusal``, where set, the error to raise instead (a
    budget shorter than one iteration: nothing of the piece is kept)."""

    def __init__(self, reason: str, refusal: str = ""):
        super().__init__(reason)
        self.reason, self.refusal = reason, refusal


class Stopper:
    """The signals received and the time budget's account of one piece of training.

    ``budget``: ``--max-time``'s, or None; ``mean``: a distributed job's in-place mean over
    its ranks (they decide together: any rank's reason stops all, at the same step)."""

    def __init__(self, budget: TimeBudget | None, mean: Any = None):
        self.budget, self.mean = budget, mean
        self.signal: int | None = None  # SIGINT/SIGTERM received: stop at the iteration's end
        self._last_check: float | None = None  # clock at the last check
        self._aside = 0.0  # validation and checkpoint time since then (not the iteration's)

    def check(self, first_of_piece: bool, validates: bool, saves: bool) -> None:
        """Before an iteration: raise :class:`Stop` for a signal received, or to pause when
        the iteration and what follows it (``validates``, ``saves``) would not end within
        the budget. ``first_of_piece``: one iteration of this piece has run (a budget
        already spent then is shorter than starting the run)."""
        signalled = self.signal is not None
        pause = too_short = False
        budget = self.budget
        now = 0.0
        if budget is not None:
            now = monotonic()
            if self._last_check is not None:  # one iteration since: its time, all of it
                budget.note("iteration", now - self._last_check - self._aside)
            self._last_check, self._aside = now, 0.0
            too_short = first_of_piece and now - budget.started > budget.seconds
            pause = not budget.fits(now, validates, saves)
        if self.mean is not None:
            flags = torch.tensor([signalled, pause, too_short], dtype=torch.float64)
            self.mean([flags])
            signalled, pause, too_short = (bool(f > 0) for f in flags)
        if too_short:
            raise Stop(
                "interrupted",
                f"--max-time {budget.text}: shorter than starting this run and its first "
                f"iteration ({now - budget.started:.1f} s); nothing of this piece was kept; "
                "give a longer budget",
            )
        if signalled:
            raise Stop("interrupted")
        if pause:
            raise Stop("paused")

    def used(self) -> dict[str, float]:
        """What this piece had of the budget, and what it used (status.json's record)."""
        seconds = monotonic() - self.budget.started
        return {"budget_seconds": self.budget.seconds, "used_seconds": round(seconds, 1)}

    @contextlib.contextmanager
    def timed(self, kind: str) -> Iterator[None]:
        """Measure a validation or checkpoint for the time budget's plan."""
        if self.budget is None:
            yield
            return
        started = monotonic()
        yield
        seconds = monotonic() - started
        self.budget.note(kind, seconds)
        self._aside += seconds

    @contextlib.contextmanager
    def on_signals(self, description: str, announce: bool = True) -> Iterator[None]:
        """SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption, `timeout`, `kill`) stop
        training at the end of the running iteration, with a checkpoint of it (as Lightning
        does on preemption); a second signal stops at once (the run resumes from its last
        checkpoint). Only the main thread can install signal handlers; elsewhere signals
        keep their meaning. ``announce``: say so on stderr (rank 0 of a job)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum, frame):
            if self.signal is not None:
                raise KeyboardInterrupt(f"signal {signum}")
            self.signal = signum
            if announce:
                print(
                    f"{description}: stopping at the end of this iteration, with a "
                    "checkpoint (signal again to stop at once)",
                    file=sys.stderr,
                    flush=True,
                )

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
