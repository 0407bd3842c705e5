"""Gaussian MLP policy whose parameters come with a leading task axis (one policy per task)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mamlkit.functional import Params, task_forward
from mamlkit.models import MLP

MEAN = "mean."


class GaussianMLPPolicy(nn.Module):
    """π(a | o) = N(μ_θ(o), diag σ²): μ an MLP (``hidden`` ReLU layers), log σ a learned
    state-independent vector (maml_rl's ``GaussianMLPPolicy``, initial σ = ``init_std``).

    Everything works on task-stacked parameters ``params [T, ...]`` (the engine's layout):
    :meth:`distribution` gives task t's action distribution on ``obs [T, ..., O]``.
    """

    def __init__(
        self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (100, 100), init_std=1.0
    ):
        super().__init__()
        self.mean = MLP((obs_dim, *hidden, act_dim))
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self._mean_forward, _ = task_forward(self.mean, "batched")

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """The distribution of the policy's own (meta-learned) parameters."""
        return self.mean(obs), self.log_std.expand(*obs.shape[:-1], -1)

    def distribution(self, params: Params, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-std ``[T, ..., A]`` of T tasks' policies on ``obs [T, ..., O]``."""
        mean_params = {n[len(MEAN) :]: p for n, p in params.items() if n.startswith(MEAN)}
        flat = obs.reshape(obs.shape[0], -1, obs.shape[-1])
        mean = self._mean_forward(mean_params, flat).reshape(*obs.shape[:-1], -1)
        log_std = params["log_std"].reshape(obs.shape[0], *([1] * (obs.dim() - 2)), -1)
        return mean, log_std.expand_as(mean)


def gaussian_log_prob(mean: Tensor, log_std: Tensor, action: Tensor) -> Tensor:
    """log N(action; mean, diag exp(log_std)²), summed over the last axis."""
    z = (action - mean) * torch.exp(-log_std)
    return -0.5 * z.pow(2).sum(-1) - log_std.sum(-1) - 0.5 * mean.shape[-1] * math.log(2 * math.pi)


def gaussian_kl(mean0: Tensor, log_std0: Tensor, mean1: Tensor, log_std1: Tensor) -> Tensor:
    """KL(N(mean0, σ0²) ‖ N(mean1, σ1²)) for diagonal Gaussians, summed over the last axis."""
    var0, var1 = torch.exp(2 * log_std0), torch.exp(2 * log_std1)
    kl = log_std1 - log_std0 + (var0 + (mean0 - mean1).pow(2)) / (2 * var1) - 0.5
    return kl.sum(-1)
