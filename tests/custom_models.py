"""Models the tests name by import path (``model.target: tests.custom_models:...``)."""

from __future__ import annotations

from torch import nn


class TinyRegressor(nn.Module):
    """1 -> hidden -> 1 with tanh; no batched kernel (runs under vmap)."""

    def __init__(self, hidden: int = 8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)


def make_regressor(hidden: int = 8) -> nn.Module:
    return TinyRegressor(hidden)


def not_a_model(**kwargs):
    return {"weights": 1}


class NotAModule:
    pass
