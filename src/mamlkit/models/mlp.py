"""Multi-layer perceptron (the sine-regression network: 1-40-40-1, ReLU)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mamlkit.settings import ModelSettings, require

if TYPE_CHECKING:
    from mamlkit.config import Config


@dataclass
class MLPSettings(ModelSettings):
    """``model.name: mlp``: the sine network, and an RL task's policy."""

    hidden: list[int] = field(default_factory=lambda: [40, 40])
    init: str = "torch"  # mlp: torch (PyTorch default) | trunc_normal (cbfinn/maml: std 0.01)

    def validate(self, config: Config) -> None:
        super().validate(config)
        require(all(h >= 1 for h in self.hidden), "model.hidden", "sizes must be >= 1")
        require(
            self.init in ("torch", "trunc_normal"),
            "model.init",
            "must be 'torch' or 'trunc_normal'",
        )

    def largest_tensor_bytes(self, config: Config) -> tuple[int, str]:
        """The first hidden layer's activations, or the inner loop's per-task weights."""
        examples, _features, keys = config.task.batch_examples(config)
        width = max([*self.hidden, 1])
        sizes = [1, *self.hidden, 1]
        weights = sum(a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
        meta_batch = config.train.meta_batch
        return 4 * max(examples * width, weights * meta_batch), f"{keys}, model.hidden"


class MLP(nn.Module):
    """Linear layers with ReLU between them; ``sizes=(1, 40, 40, 1)`` is the paper's net."""

    def __init__(self, sizes: Sequence[int] = (1, 40, 40, 1), init: str = "torch"):
        super().__init__()
        if len(sizes) < 2 or any(int(s) <= 0 for s in sizes):
            raise ValueError(f"MLP sizes must be >= 2 positive ints, got {list(sizes)}")
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(n_in, n_out))
        self.net = nn.Sequential(*layers)
        self.sizes = tuple(int(s) for s in sizes)
        if init == "trunc_normal":  # cbfinn/maml: weights ~ N(0, 0.01²) cut at 2σ, zero biases
            for m in self.net:
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.01, a=-0.02, b=0.02)
                    nn.init.zeros_(m.bias)
        elif init != "torch":
            raise ValueError(f"init must be 'torch' or 'trunc_normal', got {init!r}")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def batched_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """Forward pass of T tasks at once, task t with its own weights ``params[...][t]``.

        ``x [T, N, in]`` -> ``[T, N, out]``. One batched matmul per layer replaces T small
        ones; this is the fast path of :mod:`mamlkit.functional` (tests pin it to the loop).
        """
        h = x
        linear_ids = [i for i, m in enumerate(self.net) if isinstance(m, nn.Linear)]
        for j, i in enumerate(linear_ids):
            weight, bias = params[f"net.{i}.weight"], params[f"net.{i}.bias"]
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
            if j < len(linear_ids) - 1:
                h = torch.relu(h)
        return h
