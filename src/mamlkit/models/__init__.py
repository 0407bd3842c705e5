"""Plain ``nn.Module`` networks. Each may offer ``batched_forward(params, x)``: a forward
pass of T tasks with per-task weights, which the engine prefers to ``vmap`` when present."""

from mamlkit.models.conv import Conv4
from mamlkit.models.mlp import MLP

__all__ = ["MLP", "Conv4"]
