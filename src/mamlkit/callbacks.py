"""Side jobs of a training run — a progress bar, TensorBoard — told what the loop does; none
of them changes what is computed. A user's own (early stopping, a W&B logger) subclasses
:class:`Callback` and goes in ``Trainer(..., callbacks=[...])``."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any


class Callback:
    """Hooks the Trainer calls: ``on_start`` (after any resume, at ``trainer.step``),
    ``on_step`` (after every iteration), ``on_log`` (every record written to
    ``metrics.jsonl``), ``on_end`` (however training stopped)."""

    def on_start(self, trainer: Any, resumed: bool) -> None:
        pass

    def on_step(self, trainer: Any) -> None:
        pass

    def on_log(self, trainer: Any, record: dict[str, Any]) -> None:
        pass

    def on_end(self, trainer: Any) -> None:
        pass


class ProgressBar(Callback):
    """A tqdm bar over the run's iterations, showing the newest logged numbers."""

    def __init__(self, description: str, position: int = 0):
        self.description, self.position, self.bar = description, position, None

    def on_start(self, trainer, resumed):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=trainer.config.train.iterations,
            initial=trainer.step,
            desc=self.description,
            mininterval=0.5,
            dynamic_ncols=True,
            position=self.position,
        )

    def on_step(self, trainer):
        self.bar.update(1)

    def on_log(self, trainer, record):
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "step"})

    def on_end(self, trainer):
        if self.bar is not None:
            self.bar.close()


class LogLines(Callback):
    """Without a terminal (a job log) or with ``--no-progress``: a plain line per logged
    record (every ``train.log_every`` steps and at each validation) with the step, the
    metrics and the ETA, through :data:`mamlkit.progress.LOGGER`."""

    def __init__(self, description: str):
        self.description, self.started, self.first = description, 0.0, 0

    def on_start(self, trainer, resumed):
        import time

        self.started, self.first = time.monotonic(), trainer.step

    def on_log(self, trainer, record):
        import time

        from mamlkit.progress import LOGGER, log_line

        numbers = {k: v for k, v in record.items() if k != "step" and not k.endswith("_ci95")}
        elapsed = time.monotonic() - self.started
        line = log_line(
            self.description,
            record["step"],
            trainer.config.train.iterations,
            elapsed,
            since=self.first,
            **numbers,
        )
        LOGGER.info(line)


class TensorBoard(Callback):
    """Every numeric field of every logged record as a TensorBoard scalar in ``folder``; a
    resumed run first drops the events written after its checkpoint (``purge_step``).
    Optional: without the ``tensorboard`` package it warns once and does nothing.

    The writer writes in a thread of its own; a write that fails there (a full disk) is
    raised again in the training thread at the writer's next call, as an ``OSError``
    naming ``folder``, so training stops with the one-line message of any full disk. The
    thread itself stays silent (its own traceback would say nothing more)."""

    def __init__(self, folder: Path):
        self.folder, self.writer = Path(folder), None
        self._previous_hook: Any = None

    def _thread_failed(self, args: Any) -> None:
        """``threading.excepthook`` while this callback runs: quiet for the writer thread's
        OSError (the training thread gets it), the previous hook for anything else."""
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith(
            "tensorboard."
        ):
            return
        (self._previous_hook or threading.__excepthook__)(args)

    def _named(self, exc: OSError) -> OSError:
        if not exc.filename:  # a write error in the thread knows no file name
            exc.filename = str(self.folder)
        return exc

    def on_start(self, trainer, resumed):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional (the `tensorboard` extra): metrics.jsonl has it all
            warnings.warn(
                "train.tensorboard is on but tensorboard is not installed; metrics go to "
                "metrics.jsonl only (pip install 'mamlkit[tensorboard]', or set "
                "train.tensorboard=false)",
                stacklevel=2,
            )
            return
        purge = trainer.step + 1 if resumed else None
        self._previous_hook, threading.excepthook = threading.excepthook, self._thread_failed
        try:
            self.writer = SummaryWriter(str(self.folder), purge_step=purge)
        except OSError as exc:
            raise self._named(exc) from None

    def on_log(self, trainer, record):
        if self.writer is None:
            return
        try:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, record["step"])
        except OSError as exc:
            raise self._named(exc) from None

    def on_end(self, trainer):
        try:
            if self.writer is not None:
                self.writer.close()
        except OSError as exc:
            raise self._named(exc) from None
        finally:
            if threading.excepthook == self._thread_failed:  # else someone hooked after us
                threading.excepthook = self._previous_hook


def run_callbacks(
    progress: bool | None, description: str, position: int = 0, tensorboard: Path | None = None
) -> list[Callback]:
    """A training run's own callbacks: a progress bar on a terminal (``progress`` true),
    else a log line per logged record (unless ``progress`` is None); TensorBoard events in
    the folder ``tensorboard``, where given."""
    from mamlkit.progress import show_bars

    jobs: list[Callback] = []
    if progress and show_bars():
        jobs.append(ProgressBar(description, position))
    elif progress is not None:  # no terminal, or --no-progress: a line per log
        jobs.append(LogLines(description))
    if tensorboard is not None:
        jobs.append(TensorBoard(tensorboard))
    return jobs
