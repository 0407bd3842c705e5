"""Test-time metrics over many tasks: mean and 95% confidence interval (1.96·std/√n)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from mamlkit.algorithms.base import MetaLearner
from mamlkit.distributed import Distributed
from mamlkit.tasks.base import TaskBatch, TaskDistribution


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval over tasks (n − 1 in the std)."""
    values = values.double().flatten()
    n = values.numel()
    std = values.std().item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(n)


def task_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Per-task mean squared error ``[T]``."""
    return (pred - target).pow(2).flatten(1).mean(1)


def task_accuracy(pred: Tensor, target: Tensor) -> Tensor:
    """Per-task classification accuracy in percent ``[T]`` (``pred`` are logits)."""
    return (pred.argmax(-1) == target).double().flatten(1).mean(1) * 100


def task_return(average_return: Tensor, _unused: Tensor | None) -> Tensor:
    """Per-task average return ``[T]``: an RL learner's "predictions" are already the
    returns of the trajectories it sampled (its query set is sampled, not given)."""
    return average_return


METRICS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": task_mse,
    "accuracy": task_accuracy,
    "return": task_return,
}
#: metrics where larger is better
HIGHER_IS_BETTER = ("accuracy", "return")


def per_task_metric_by_step(
    learner: MetaLearner,
    batch: TaskBatch,
    steps: int,
    metric: str,
    chunk: int = 100,
    lr: float | Sequence[float] | None = None,
    tick: Callable[[], None] | None = None,
) -> Tensor:
    """``[steps + 1, T]``: the metric of every task after 0..steps adaptation steps
    (a single row for learners that do not adapt by steps) with test-time step size ``lr``
    (default: the learner's; RL learners take one per step, the last repeating). Tasks run
    in chunks; ``tick`` is called after each step of each chunk (progress)."""
    fn = METRICS[metric]
    rows: list[Tensor] = []
    for start in range(0, batch.num_tasks, chunk):
        part = batch.slice(start, start + chunk)
        # each step's predictions become per-task metrics at once, written into one table
        # made up front: nothing is kept per step, so memory does not grow with ``steps``
        device = next(iter(part)).device
        table = torch.empty(steps + 1, part.num_tasks, dtype=torch.float64, device=device)

        def reduce(pred: Tensor, slots=iter(table), y: Tensor | None = part.targets) -> Tensor:
            out = next(slots).copy_(fn(pred.detach(), y))
            if tick is not None:
                tick()
            return out

        per_step = learner.predictions_by_step(part, steps, lr=lr, reduce=reduce)
        rows.append(table[: len(per_step)])
    return torch.cat(rows, dim=1)


def task_batches(
    tasks: TaskDistribution,
    num_tasks: int,
    seed: int,
    device: str | torch.device = "cpu",
    chunk: int = 100,
) -> Iterator[TaskBatch]:
    """The ``num_tasks`` tasks that :func:`evaluate` scores, ``chunk`` at a time, on
    ``device``: drawn with a CPU generator seeded with ``seed``, so that they are the same
    tasks for every method, every run and every device (a CUDA generator draws other
    numbers than a CPU one from the same seed)."""
    generator = torch.Generator().manual_seed(seed)
    elsewhere = torch.device(device).type != "cpu"  # then the batch moves to the device
    for i in range(0, num_tasks, chunk):
        batch = tasks.sample(min(chunk, num_tasks - i), generator)
        yield batch.to(device) if elsewhere else batch


def evaluate(
    learner: MetaLearner,
    tasks: TaskDistribution,
    num_tasks: int = 600,
    steps: int = 10,
    metric: str = "accuracy",
    seed: int = 0,
    device: str | torch.device = "cpu",
    chunk: int = 100,
    dist: Distributed | None = None,
    lr: float | Sequence[float] | None = None,
    progress: str | None = None,
) -> list[dict[str, float]]:
    """Draw ``num_tasks`` tasks with a fixed seed (the same tasks for every method) and
    return ``[{"steps": s, metric: mean, "ci95": c}]`` for s = 0..steps, adapting with
    test-time step size ``lr`` (default: the learner's). Distributed,
    every rank draws the same tasks, scores its share and gathers all the per-task values
    (the same numbers as one process). ``progress`` names the work for a progress bar or
    log lines (:class:`mamlkit.progress.Progress`, counting adaptation steps of task chunks;
    distributed, rank 0's); None: none."""
    from mamlkit.progress import Progress

    parts = []
    chunks = -(-num_tasks // chunk)
    shown = progress is not None and (dist is None or dist.main)
    bar = Progress(chunks * (steps + 1), progress) if shown else None
    tick = bar.update if bar is not None else None
    with bar if bar is not None else contextlib.nullcontext():
        for batch in task_batches(tasks, num_tasks, seed, device, chunk):
            if dist is None or batch.num_tasks < dist.world:  # too few to share: all score all
                part = per_task_metric_by_step(learner, batch, steps, metric, chunk, lr, tick)
            else:
                part = per_task_metric_by_step(
                    learner, dist.shard(batch), steps, metric, chunk, lr, tick
                )
                part = dist.gather_tasks(part)
            parts.append(part)
    values = torch.cat(parts, dim=1)
    out = []
    for s, row in enumerate(values):
        mean, ci = mean_ci95(row)
        out.append({"steps": s if values.shape[0] > 1 else 0, metric: mean, "ci95": ci})
    return out
