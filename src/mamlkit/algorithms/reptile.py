"""Reptile (Nichol, Achiam & Schulman, 2018): first-order meta-learning by interpolation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mamlkit.algorithms.base import MetaOutput, register
from mamlkit.algorithms.capabilities import averages_over_ranks
from mamlkit.algorithms.maml import MAML
from mamlkit.functional import LossFn, adaptable_params
from mamlkit.settings import AlgorithmSettings
from mamlkit.tasks.base import TaskBatch


@dataclass
class ReptileSettings(AlgorithmSettings):
    """``algorithm.name: reptile``."""

    name: str = "reptile"
    # reptile: the interpolation ε, annealed linearly over train.iterations
    meta_step_size: float = 1.0
    meta_step_size_final: float = 0.0


@register("reptile")
class Reptile(MAML):
    """Adapt every task by ``inner_steps`` plain gradient steps on all of its labelled data
    (support and query sets together), then move θ toward the tasks' mean adapted weights:
    θ ← θ + ε (φ̄ − θ), with ε annealed linearly from ``meta_step_size`` to
    ``meta_step_size_final`` over ``anneal_iterations`` meta-iterations. No second
    derivatives, no outer optimiser: the update is :meth:`outer_step`. Test-time
    adaptation is MAML's (gradient steps on the support set).

    The inner steps are SGD with step size ``inner_lr`` (the paper's experiments use Adam
    with β₁ = 0 on minibatches of 10; a one-line :class:`~mamlkit.functional.InnerUpdate`
    change would not express Adam's state, so mamlkit's Reptile is the SGD variant).

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
        **kwargs,
    ):
        if anneal_iterations < 1:
            raise ValueError(f"anneal_iterations must be >= 1, got {anneal_iterations}")
        kwargs["first_order"] = True  # Reptile differentiates nothing through its steps
        super().__init__(model, loss_fn, inner_lr, inner_steps, **kwargs)
        self.meta_step_size, self.meta_step_size_final = meta_step_size, meta_step_size_final
        self.anneal_iterations = anneal_iterations

    settings_class = ReptileSettings

    @classmethod
    def config_kwargs(cls, algorithm) -> dict:
        return {
            "meta_step_size": algorithm.meta_step_size,
            "meta_step_size_final": algorithm.meta_step_size_final,
        }

    @classmethod
    def from_config(cls, config, build_model, loss_fn, train_classes, **overrides):
        overrides.setdefault("anneal_iterations", config.train.iterations)
        return super().from_config(config, build_model, loss_fn, train_classes, **overrides)

    def interpolation(self, iteration: int) -> float:
        """ε at ``iteration``: linear from ``meta_step_size`` to ``meta_step_size_final``."""
        frac = min(iteration / self.anneal_iterations, 1.0)
        return (1 - frac) * self.meta_step_size + frac * self.meta_step_size_final

    @averages_over_ranks
    def outer_step(self, batch: TaskBatch, optimizer, iteration: int) -> MetaOutput:
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        y = torch.cat([batch.support_y, batch.query_y], dim=1)
        theta = {n: p.detach().requires_grad_() for n, p in adaptable_params(self.model).items()}
        with torch.enable_grad():
            phi = self.adapt(x, y, params=theta, first_order=True, keep_graph=False)
        eps = self.interpolation(iteration)
        with torch.no_grad():
            loss, pred = self.outer_loss(phi, batch.query_x, batch.query_y)
            params = adaptable_params(self.model)
            moves = [phi[name].mean(0) - p for name, p in params.items()]  # φ̄ − θ
            self.mean_over_ranks(moves)
            for p, move in zip(params.values(), moves, strict=True):
                p.add_(move, alpha=eps)
        return MetaOutput(loss, pred)
