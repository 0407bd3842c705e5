"""The protocol every algorithm follows, so training, evaluation and the CLI treat them alike."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.algorithms.registry import ALGORITHMS, register
from mamlkit.settings import AlgorithmSettings
from mamlkit.tasks.base import TaskBatch

__all__ = ["ALGORITHMS", "MetaLearner", "MetaOutput", "check_task_batch", "register"]


@dataclass
class MetaOutput:
    """One meta-training objective: ``loss`` (what the outer step differentiates),
    ``predictions`` on the query sets ``[T, N_q, ...]`` (for accuracy logging; None where
    there are none), any further scalars to log (``metrics``), and ``targets``: what the
    predictions are scored against where that is not the batch's query targets (Reptile
    logs its inner steps' own minibatches)."""

    loss: Tensor
    predictions: Tensor | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)
    targets: Tensor | None = None


def check_task_batch(x: Tensor, y: Tensor, where: str) -> None:
    """Refuse inputs without the leading task axis (``x [T, N, ...]``, ``y [T, N, ...]``):
    ``x`` of shape ``[N, features]`` would otherwise be read as N tasks of one example."""
    if x.dim() < 3:
        raise ValueError(
            f"{where}: support_x has shape {list(x.shape)}; expected [tasks, examples, "
            f"features...] with a leading task axis. For one task pass x.unsqueeze(0) "
            f"(and y.unsqueeze(0)), or use adapt_task / predict_task"
        )
    if y.shape[:2] != x.shape[:2]:
        raise ValueError(
            f"{where}: support_y has shape {list(y.shape)} but support_x {list(x.shape)}; "
            "both need the same [tasks, examples] leading axes"
        )


class MetaLearner(nn.Module):
    """Owns the network (``self.model``) and whatever else is meta-learned.

    Subclasses implement :meth:`meta_forward` and :meth:`query_predictions`.
    ``self.parameters()`` is what the outer optimiser updates.
    """

    model: nn.Module
    #: the dataclass of its ``algorithm:`` config section (:class:`AlgorithmSettings` or a
    #: subclass with the learner's own hyperparameters and their validation)
    settings_class: type[AlgorithmSettings] = AlgorithmSettings
    #: what it trains on: ``"tasks"`` (the task's own batches, each task with a support
    #: and a query set) or ``"examples"`` (ordinary labelled minibatches over all training
    #: classes, :class:`~mamlkit.tasks.ClassBatches`, which an episode task then draws)
    trains_on: str = "tasks"
    # What the trainer may do with a learner (capture its iteration as a CUDA graph, run
    # its own outer step under torchrun) is read from its hooks, never from flags that a
    # subclass would inherit while it replaces the hook: see mamlkit.algorithms.capabilities
    # (``@capturable`` on ``meta_forward``, ``@averages_over_ranks`` on ``outer_step``).

    #: the job's all-reduce mean, for the length of :meth:`averaging_over_ranks`
    _rank_mean: Callable[[list[Tensor]], None] | None = None

    @classmethod
    def from_config(
        cls,
        config: Any,
        build_model: Callable[..., nn.Module],
        loss_fn: Callable,
        train_classes: Callable[[], int],
        **overrides: Any,
    ) -> MetaLearner:
        """The learner a run's config describes: ``config`` is a :class:`mamlkit.config.Config`,
        ``build_model(out_features=None)`` builds its network, ``loss_fn`` is the task's
        loss and ``train_classes()`` counts the training classes (only a classifier over
        all of them needs it); ``overrides`` come from :func:`register`."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a config")

    def meta_forward(self, batch: TaskBatch, iteration: int = 0) -> MetaOutput:
        """The meta-training objective on a batch of tasks at training ``iteration`` (for
        schedules such as MAML++'s annealing), with the query predictions it came from."""
        raise NotImplementedError

    def meta_loss(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> Tensor:
        """Scalar outer loss; ``.backward()`` puts the meta-gradient in ``self.parameters()``."""
        return self.meta_forward(TaskBatch(support_x, support_y, query_x, query_y)).loss

    def outer_step(
        self, batch: TaskBatch, optimizer: torch.optim.Optimizer, iteration: int
    ) -> MetaOutput | None:
        """The outer update of a learner whose update is not "backward the meta-loss, then
        ``optimizer.step()``" (Reptile's interpolation, TRPO's line search): do it here and
        return what to log (``loss`` is also checked for NaN/Inf). The default, None,
        leaves the usual step (health check, clipping, optimiser) to the trainer."""
        return None

    def mean_over_ranks(self, tensors: list[Tensor]) -> None:
        """Average ``tensors`` in place over the processes that each hold an equal share of
        the meta-batch's tasks. In one process there is nothing to do; under ``torchrun``
        the trainer hands the learner the job's all-reduce for the length of ``fit``
        (:meth:`averaging_over_ranks`). An own :meth:`outer_step` calls it on its per-task
        means (Reptile's mean adapted weights; TRPO's gradient, Fisher-vector products and
        line-search losses), so that every rank sees the whole batch's values and makes the
        same update; it says so by marking itself
        :func:`~mamlkit.algorithms.capabilities.averages_over_ranks`."""
        if self._rank_mean is not None:
            self._rank_mean(tensors)

    @contextlib.contextmanager
    def averaging_over_ranks(
        self, mean: Callable[[list[Tensor]], None] | None
    ) -> Iterator[MetaLearner]:
        """For the length of the block, :meth:`mean_over_ranks` is ``mean`` (a distributed
        job's in-place all-reduce mean; None: one process, nothing to average)."""
        before = self._rank_mean
        self._rank_mean = mean
        try:
            yield self
        finally:
            self._rank_mean = before

    def query_predictions(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        steps: int,
        lr: float | None = None,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> list[Tensor]:
        """Test-time predictions on the query set after 0, 1, …, ``steps`` adaptation steps
        (one entry for algorithms that do not adapt by gradient steps). No outer graph.
        ``lr``: the test-time step size (default: the learner's ``eval_inner_lr``).
        ``reduce`` (e.g. a per-task metric) is applied to each step's predictions as soon
        as they exist, so only its small results are kept: memory does not grow with
        ``steps``."""
        raise NotImplementedError

    def predictions_by_step(
        self,
        batch: Any,
        steps: int,
        lr: float | None = None,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> list[Tensor]:
        """What evaluation scores: :meth:`query_predictions` for a batch of tasks (a
        :class:`TaskBatch`: adapt on each support set, predict its query set). A learner
        whose tasks carry no given data (RL: trajectories are sampled) overrides this."""
        return self.query_predictions(
            batch.support_x, batch.support_y, batch.query_x, steps, lr=lr, reduce=reduce
        )

    def predict_task(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, steps: int | None = None
    ) -> Tensor:
        """Predictions for ONE task without the task axis: adapt on ``support_x [N, ...]``,
        ``support_y [N, ...]`` (``steps`` gradient steps; default ``inner_steps``) and return
        the output for ``query_x [M, ...]`` as ``[M, ...]`` (logits for classifiers). Works
        under ``torch.no_grad()`` and ``torch.inference_mode()``.

        Examples:
            >>> import torch, torch.nn.functional as F
            >>> from mamlkit import MAML
            >>> from mamlkit.models import MLP
            >>> learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, inner_lr=0.01)
            >>> xs = torch.linspace(-5, 5, 10).unsqueeze(1)
            >>> learner.predict_task(xs, torch.sin(xs), torch.zeros(3, 1), steps=5).shape
            torch.Size([3, 1])
        """
        if steps is None:
            steps = getattr(self, "inner_steps", 0)
        if support_x.shape[0] != support_y.shape[0]:
            raise ValueError(
                f"predict_task: {support_x.shape[0]} support inputs but "
                f"{support_y.shape[0]} targets"
            )
        with torch.inference_mode(False):
            # inference tensors cannot enter the adaptation's autograd graph: copies can
            args = [t.clone().unsqueeze(0) for t in (support_x, support_y, query_x)]
            return self.query_predictions(*args, steps)[-1][0].detach()
