"""A network of your own for image runs, named in a config as ``my_models:SmallCNN``.

``model.target`` imports it by name, so this file must be importable where the run is
trained and evaluated: run from this folder, or put it on ``PYTHONPATH``."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks with BatchNorm (batch statistics, as MAML normalises) and a linear
    head; ``channels`` 1 (grey) or 3 (RGB), ``ways`` outputs."""

    def __init__(self, ways: int = 5, channels: int = 3, filters: int = 16, image_size: int = 28):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, filters, 3, stride=2, padding=1),
            nn.BatchNorm2d(filters, track_running_stats=False),
            nn.ReLU(),
            nn.Conv2d(filters, filters, 3, stride=2, padding=1),
            nn.BatchNorm2d(filters, track_running_stats=False),
            nn.ReLU(),
            nn.Flatten(),
        )
        side = (image_size + 3) // 4
        self.head = nn.Linear(filters * side * side, ways)

    def forward(self, x):
        return self.head(self.body(x))
