"""Reptile (Nichol, Achiam & Schulman, 2018): first-order meta-learning by interpolation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mamlkit.algorithms.base import MetaOutput, register
from mamlkit.algorithms.capabilities import averages_over_ranks
from mamlkit.algorithms.inner_adam import InnerAdam
from mamlkit.algorithms.maml import MAML
from mamlkit.functional import (
    InnerUpdate,
    LossFn,
    adaptable_params,
    inner_loop,
    stack_params,
    task_mean_loss,
)
from mamlkit.settings import AlgorithmSettings, require, require_at_least
from mamlkit.tasks.base import TaskBatch

__all__ = ["Reptile", "ReptileSettings", "inner_minibatches"]


def inner_minibatches(x: Tensor, y: Tensor, size: int, steps: int) -> list[tuple[Tensor, Tensor]]:
    """The examples of each of ``steps`` inner steps: ``size`` of each task's ``N``, taken in
    turn (one pass over the task's data every ``N / size`` steps, then again from the start).

    Classification tasks (integer labels ``y [T, N]``) are first put in an order that
    interleaves their classes (the first example of every class, then the second, ...), so
    that a step sees ``size / ways`` examples of every class (±1 where it does not divide).
    Other tasks keep the order they come in (the samplers draw their examples at random).
    The draw needs no random state: a step's examples depend on the task batch alone, on
    every training path alike.

    Examples:
        >>> import torch
        >>> y = torch.tensor([[0, 0, 1, 1, 2, 2]])          # one task: 3 classes, 2 each
        >>> x = torch.arange(6.0).view(1, 6, 1)
        >>> [xb.flatten().tolist() for xb, _ in inner_minibatches(x, y, 3, 3)]
        [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0], [0.0, 2.0, 4.0]]
    """
    tasks, n = y.shape[:2]
    if not 1 <= size <= n:
        raise ValueError(f"an inner minibatch takes 1 to {n} examples of a task, got {size}")
    order = torch.arange(n, device=y.device).expand(tasks, n)
    if not y.is_floating_point() and y.dim() == 2:
        onehot = torch.nn.functional.one_hot(y, int(y.max()) + 1)
        occurrence = (onehot.cumsum(1) * onehot).sum(-1) - 1  # k-th example of its class
        order = (occurrence * onehot.shape[-1] + y).argsort(dim=1, stable=True)
    rows = torch.arange(tasks, device=y.device).unsqueeze(1)
    batches = []
    for s in range(steps):
        picks = order[:, (torch.arange(size, device=y.device) + s * size) % n]
        batches.append((x[rows, picks], y[rows, picks]))
    return batches


@dataclass
class ReptileSettings(AlgorithmSettings):
    """``algorithm.name: reptile``."""

    name: str = "reptile"
    # reptile: the interpolation ε, annealed linearly over train.iterations
    meta_step_size: float = 1.0
    meta_step_size_final: float = 0.0
    # reptile: examples of a task per inner step, taken in turn (classes interleaved);
    # 0: all of the task's labelled data at every step
    inner_batch: int = 0
    # reptile: the inner steps' optimiser: sgd (step size inner_lr) | adam (learning rate
    # inner_lr, its moments kept from task to task, as the paper trains)
    inner_optimizer: str = "sgd"
    # reptile, inner_optimizer adam: Adam's (β₁, β₂) and ε (the paper's: β₁ = 0)
    inner_betas: list[float] = field(default_factory=lambda: [0.0, 0.999])
    inner_eps: float = 1e-8

    def validate(self, config: Any) -> None:
        super().validate(config)
        require_at_least(0, "algorithm", self, "inner_batch")
        require(
            self.inner_optimizer in ("sgd", "adam"),
            "algorithm.inner_optimizer",
            f"must be 'sgd' or 'adam', got {self.inner_optimizer!r}",
        )
        betas = self.inner_betas
        require(
            isinstance(betas, (list, tuple))
            and len(betas) == 2
            and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas),
            "algorithm.inner_betas",
            f"must be two numbers in [0, 1), e.g. [0.0, 0.999]; got {betas!r}",
        )
        require(self.inner_eps > 0, "algorithm.inner_eps", f"must be > 0, got {self.inner_eps}")
        task = config.task
        if self.inner_batch and all(hasattr(task, k) for k in ("ways", "shots", "queries")):
            per_task = task.ways * (task.shots + task.queries)
            require(
                self.inner_batch <= per_task,
                "algorithm.inner_batch",
                f"a task has {per_task} labelled examples (task.ways × (task.shots + "
                f"task.queries)), got {self.inner_batch}; give at most {per_task}, or 0 for all",
            )


@register("reptile")
class Reptile(MAML):
    """Adapt every task by ``inner_steps`` plain gradient steps on its labelled data
    (support and query sets together: all of it at every step, or ``inner_batch`` examples
    a step, taken in turn by :func:`inner_minibatches`), then move θ toward the tasks' mean
    adapted weights: θ ← θ + ε (φ̄ − θ), with ε annealed linearly from ``meta_step_size`` to
    ``meta_step_size_final`` over ``anneal_iterations`` meta-iterations. No second
    derivatives, no outer optimiser: the update is :meth:`outer_step`. Test-time
    adaptation is MAML's (gradient steps on the support set).

    The inner steps are SGD with step size ``inner_lr``, or with
    ``inner_optimizer="adam"`` Adam with learning rate ``inner_lr`` (:class:`InnerAdam`,
    β₁ = 0 by default, as the paper's experiments), its moments kept from one
    meta-iteration to the next and used at test time. The paper's minibatches are
    shuffled; mamlkit's are drawn in turn with the classes interleaved. Training logs
    the inner steps' own mean loss and accuracy (Reptile minimises no query loss, and
    scoring the adapted weights again cost about a tenth of a meta-iteration).

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> from mamlkit import Reptile, SineTasks
        >>> from mamlkit.models import MLP
        >>> learner = Reptile(MLP((1, 40, 40, 1)), F.mse_loss, inner_lr=0.01, inner_steps=5)
        >>> batch = SineTasks().sample(4, torch.Generator().manual_seed(0))
        >>> before = learner.model.net[0].weight.clone()
        >>> out = learner.outer_step(batch, optimizer=None, iteration=0)
        >>> bool((learner.model.net[0].weight != before).any())
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inner_lr: float,
        inner_steps: int = 5,
        *,
        meta_step_size: float = 1.0,
        meta_step_size_final: float = 0.0,
        anneal_iterations: int = 100_000,
        inner_batch: int = 0,
        inner_optimizer: str = "sgd",
        inner_betas: Sequence[float] = (0.0, 0.999),
        inner_eps: float = 1e-8,
        **kwargs,
    ):
        if anneal_iterations < 1:
            raise ValueError(f"anneal_iterations must be >= 1, got {anneal_iterations}")
        if inner_batch < 0:
            raise ValueError(f"inner_batch must be >= 0 (0: all the data), got {inner_batch}")
        if inner_optimizer not in ("sgd", "adam"):
            raise ValueError(f"inner_optimizer must be 'sgd' or 'adam', got {inner_optimizer!r}")
        self.inner_optimizer = inner_optimizer  # read by make_update, in super().__init__
        self.inner_betas, self.inner_eps = tuple(inner_betas), inner_eps
        kwargs["first_order"] = True  # Reptile differentiates nothing through its steps
        super().__init__(model, loss_fn, inner_lr, inner_steps, **kwargs)
        self.meta_step_size, self.meta_step_size_final = meta_step_size, meta_step_size_final
        self.anneal_iterations = anneal_iterations
        self.inner_batch = inner_batch

    settings_class = ReptileSettings

    @classmethod
    def config_kwargs(cls, algorithm) -> dict:
        return {
            "meta_step_size": algorithm.meta_step_size,
            "meta_step_size_final": algorithm.meta_step_size_final,
            "inner_batch": algorithm.inner_batch,
            "inner_optimizer": algorithm.inner_optimizer,
            "inner_betas": algorithm.inner_betas,
            "inner_eps": algorithm.inner_eps,
        }

    def make_update(self) -> InnerUpdate:
        if self.inner_optimizer == "sgd":
            return super().make_update()
        if not isinstance(self.inner_lr, (int, float)):
            raise ValueError("Reptile's inner Adam takes one learning rate (inner_lr)")
        params = adaptable_params(self.model, self.adapt_only)
        return InnerAdam(params, self.inner_lr, self.inner_betas, self.inner_eps)

    @classmethod
    def from_config(cls, config, build_model, loss_fn, train_classes, **overrides):
        overrides.setdefault("anneal_iterations", config.train.iterations)
        return super().from_config(config, build_model, loss_fn, train_classes, **overrides)

    def interpolation(self, iteration: int) -> float:
        """ε at ``iteration``: linear from ``meta_step_size`` to ``meta_step_size_final``."""
        frac = min(iteration / self.anneal_iterations, 1.0)
        return (1 - frac) * self.meta_step_size + frac * self.meta_step_size_final

    def _adapt_on_all(
        self, x: Tensor, y: Tensor, theta
    ) -> tuple[dict[str, Tensor], list[tuple[Tensor, Tensor, Tensor]]]:
        """φ after the inner steps on the tasks' labelled data (first order, no graph), and
        every step's mean loss, predictions and targets (detached: what training logs)."""
        if self.inner_batch:
            data = inner_minibatches(x, y, self.inner_batch, self.inner_steps)
        else:
            data = [(x, y)] * self.inner_steps
        batches, seen = iter(data), []

        def support_loss(params):  # the next step's examples at every call
            xb, yb = next(batches)
            pred = self._forward(params, xb)
            loss = task_mean_loss(self.loss_fn, pred, yb)
            seen.append((loss.detach(), pred.detach(), yb))
            return loss * xb.shape[0]  # a sum over tasks: slice i of its gradient is task i's

        phi = stack_params(theta, x.shape[0])
        phi = inner_loop(phi, support_loss, self.update, self.inner_steps, True, None, False)
        return phi, seen

    @averages_over_ranks
    def outer_step(self, batch: TaskBatch, optimizer, iteration: int) -> MetaOutput:
        """The interpolation θ ← θ + ε (φ̄ − θ). What it returns for the log is what the
        inner steps trained on: their mean loss, and their predictions with the examples'
        targets (no extra forward pass; Reptile minimises no query loss). An update that is
        not finite is not made: the loss comes back NaN and training stops."""
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)
        theta = {n: p.detach().requires_grad_() for n, p in adaptable_params(self.model).items()}
        with torch.enable_grad():
            phi, seen = self._adapt_on_all(x, y, theta)
        if isinstance(self.update, InnerAdam):  # the next inner loops start from here
            state = self.update.final_state()
            self.mean_over_ranks(state)
            self.update.keep(state)
        eps = self.interpolation(iteration)
        with torch.no_grad():
            loss = torch.stack([step_loss for step_loss, _, _ in seen]).mean()
            pred = torch.cat([p for _, p, _ in seen], dim=1)
            targets = torch.cat([t for _, _, t in seen], dim=1)
            params = adaptable_params(self.model)
            moves = [phi[name].mean(0) - p for name, p in params.items()]  # φ̄ − θ
            self.mean_over_ranks(moves)
            if not bool(torch.stack([m.sum() for m in moves]).sum().isfinite()):
                return MetaOutput(torch.full_like(loss, float("nan")), pred, targets=targets)
            for p, move in zip(params.values(), moves, strict=True):
                p.add_(move, alpha=eps)
        return MetaOutput(loss, pred, targets=targets)
