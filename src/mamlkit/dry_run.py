"""``mamlkit train ... --dry-run``: build everything a run builds, time two iterations and
say what the run would be, writing nothing."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from mamlkit.callbacks import Callback
from mamlkit.config import Config

__all__ = ["dry_run"]


class _Clock(Callback):
    """The time of each iteration."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_start(self, trainer: Any, resumed: bool) -> None:
        self.times.append(time.perf_counter())

    def on_step(self, trainer: Any) -> None:
        self.times.append(time.perf_counter())


def _duration(seconds: float) -> str:
    from mamlkit.progress import format_eta

    return format_eta(seconds) if seconds >= 1 else f"{seconds * 1000:.0f} ms"


def dry_run(config: Config, run_dir: Path, force: bool = False) -> list[str]:
    """The lines ``--dry-run`` prints: the config (the keys its components read), the data
    found and its split sizes, the model's size, and an estimate of the run's training time
    from timing 2 iterations. The checks of a real run apply (a non-empty ``run_dir``
    without ``force`` is refused as ``train`` refuses it); nothing is written."""
    from mamlkit.build import build_learner, build_tasks, check_device, metric_for
    from mamlkit.config_help import config_lines
    from mamlkit.rundir.data import checked_splits, data_record
    from mamlkit.rundir.files import prepare_run_dir
    from mamlkit.tasks.datasets import dataset_of, locate
    from mamlkit.training import seed_everything

    check_device(config, "use --device cpu")
    lines = ["config (the keys this run's task, model and algorithm read):"]
    lines += ["  " + line for line in config_lines(config)]
    splits = checked_splits(config)
    if dataset_of(config) is not None:
        config.task.data_dir = str(locate(config))
        record = data_record(config, splits)
        lines.append(f"data: {dataset_of(config)} in {record['data_dir']}")
        for split, info in record["splits"].items():
            lines.append(
                f"  {split:<5} {info['classes']} classes, {info['images_per_class']} images "
                f"per class, images {'x'.join(map(str, info['image_shape']))}"
            )
    else:
        lines.append(f"data: {config.task.name} tasks are generated; no data set to read")
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    built = {split: build_tasks(config, split) for split in splits}  # episodes that fit
    learner = build_learner(config)
    params = sum(p.numel() for p in learner.parameters())
    lines.append(f"model: {type(learner).__name__}, {params:,} parameters")
    prepare_run_dir(run_dir, force, clear=False)  # what train would refuse, it refuses
    lines.append(f"run directory: {run_dir} (not created: --dry-run)")
    lines += _timing(config, learner, built["train"], metric_for(config))
    lines.append("nothing was written")
    return lines


def _timing(config: Config, learner: Any, tasks: Any, metric: str) -> list[str]:
    """Two iterations on a copy of the run's config (no run directory, no validation); the
    second (the first pays for warming up) times the rest."""
    from mamlkit.training import Trainer

    timed = copy.deepcopy(config)
    timed.train.iterations = min(2, config.train.iterations) or 0
    timed.train.val_every = 0
    clock = _Clock()
    trainer = Trainer(learner, tasks, timed, metric=metric, progress=None, callbacks=[clock])
    if not timed.train.iterations:
        return ["timing: train.iterations is 0; nothing to train"]
    trainer.fit()
    steps = [b - a for a, b in zip(clock.times, clock.times[1:])]
    each = steps[-1]
    total = each * config.train.iterations
    return [
        f"timing: {', '.join(_duration(s) for s in steps)} for the first {len(steps)} "
        f"iteration(s); {config.train.iterations} iterations: about {_duration(total)} "
        "(without validation and checkpoints)"
    ]
