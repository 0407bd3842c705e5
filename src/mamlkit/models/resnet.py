"""ResNet-12, the backbone of TADAM (Oreshkin et al. 2018), MetaOptNet (Lee et al. 2019) and
most few-shot results since: four residual blocks, each three 3×3 convolutions with
BatchNorm and LeakyReLU(0.1), a 1×1 convolution + BatchNorm shortcut and 2×2 max-pooling,
optionally DropBlock (Ghiasi et al. 2018) in the last two blocks; then global average
pooling and a linear head (none for Prototypical Networks, which use the embedding).

The model has no ``batched_forward``: the MAML engine runs its tasks with ``vmap`` or a
``loop`` (see :func:`mamlkit.functional.task_forward`). Both give exact second-order
gradients through its affine BatchNorm, because the engine differentiates outside ``vmap``
(tests/test_resnet12.py compares them with a float64 per-task reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamlkit.errors import ConfigError
from mamlkit.settings import ModelSettings

from .pool import max_pool2x2

if TYPE_CHECKING:
    from mamlkit.config import Config

__all__ = ["DropBlock", "ResNet12", "ResidualBlock", "check_config"]

#: the channels of the four blocks in TADAM/MetaOptNet's ResNet-12
DEFAULT_CHANNELS = (64, 160, 320, 640)
#: LeakyReLU's negative slope in every block
NEGATIVE_SLOPE = 0.1
#: the most channels a block may have (the same ceiling as Conv4's model.filters)
MAX_CHANNELS = 4096


class DropBlock(nn.Module):
    """DropBlock (Ghiasi, Lin & Le, 2018): in training mode, zero ``block_size``² squares of
    each channel's feature map, about a fraction ``drop_prob`` of its positions, and scale the
    rest so that the mean is kept; the identity in ``eval()`` mode or with ``drop_prob=0``.

    The block is cut to the feature map where the map is smaller. Its random numbers come
    from ``torch.rand_like`` of the input, so under ``vmap(randomness="different")`` every
    task draws its own mask.
    """

    def __init__(self, drop_prob: float = 0.0, block_size: int = 5):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.drop_prob, self.block_size = float(drop_prob), int(block_size)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        height, width = x.shape[-2:]
        size = min(self.block_size, height, width)
        valid = (height - size + 1) * (width - size + 1)  # where a block may start
        gamma = self.drop_prob / size**2 * (height * width) / valid
        starts = (torch.rand_like(x[..., : height - size + 1, : width - size + 1]) < gamma).to(
            x.dtype
        )
        # every start covers the size×size square below and right of it
        dropped = F.max_pool2d(F.pad(starts, [size - 1] * 4), size, stride=1)
        keep = 1.0 - dropped
        return x * keep * (keep.numel() / keep.sum().clamp(min=1.0))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"


class ResidualBlock(nn.Module):
    """3 × [3×3 conv, BatchNorm] with LeakyReLU(0.1) between them, plus a 1×1 conv +
    BatchNorm shortcut; LeakyReLU after the sum, then 2×2 max-pooling and DropBlock.
    The convolutions have no bias: the BatchNorm after each removes it again."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bn_running_stats: bool = False,
        drop_prob: float = 0.0,
        block_size: int = 5,
    ):
        super().__init__()

        def bn() -> nn.BatchNorm2d:
            return nn.BatchNorm2d(out_channels, track_running_stats=bn_running_stats)

        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = bn()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = bn()
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn3 = bn()
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), bn())
        self.dropblock = DropBlock(drop_prob, block_size)

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.bn1(self.conv1(x)), NEGATIVE_SLOPE)
        h = F.leaky_relu(self.bn2(self.conv2(h)), NEGATIVE_SLOPE)
        h = self.bn3(self.conv3(h))
        # pooling before the (monotone) activation: the same values on a quarter of the entries
        h = F.leaky_relu(max_pool2x2(h + self.shortcut(x)), NEGATIVE_SLOPE)
        return self.dropblock(h)


class ResNet12(nn.Module):
    """Four :class:`ResidualBlock` s of ``channels`` (TADAM/MetaOptNet: 64-160-320-640),
    global average pooling, then a linear head of ``out_features`` (``0``: no head, the
    ``channels[-1]``-dimensional embedding is the output, as Prototypical Networks use it).

    ``dropblock`` (a drop probability, 0: off, the default) adds DropBlock of
    ``dropblock_size`` to the last two blocks, as MetaOptNet does (at a constant rate: it
    keeps no schedule, so the model holds no counters that vmap could not update).
    BatchNorm normalises with the current batch's statistics, as MAML's Conv4 does;
    ``bn_running_stats=True`` keeps running statistics for ``eval()`` mode (ProtoNets).
    The image needs at least 16 pixels a side: every block halves it.
    """

    def __init__(
        self,
        out_features: int,
        in_channels: int = 3,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        dropblock: float = 0.0,
        dropblock_size: int = 5,
        bn_running_stats: bool = False,
    ):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != 4 or min(channels) < 1:
            raise ValueError(f"channels must be 4 positive ints, got {list(channels)}")
        self.channels = channels
        blocks, previous = [], in_channels
        for i, width in enumerate(channels):
            drop = dropblock if i >= 2 else 0.0
            blocks.append(ResidualBlock(previous, width, bn_running_stats, drop, dropblock_size))
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.embedding_dim = channels[-1]
        self.head = nn.Linear(self.embedding_dim, out_features) if out_features else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(
                    m.weight, a=NEGATIVE_SLOPE, mode="fan_out", nonlinearity="leaky_relu"
                )

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(x).mean((2, 3))
        return self.head(h) if self.head is not None else h


@dataclass
class ResNet12Settings(ModelSettings):
    """``model.name: resnet12``."""

    # resnet12: the channels of its four residual blocks (TADAM/MetaOptNet: 64-160-320-640)
    channels: list[int] = field(default_factory=lambda: [64, 160, 320, 640])
    dropblock: float = 0.0  # resnet12: DropBlock's drop probability in blocks 3-4 (0: off)
    dropblock_size: int = 5  # resnet12: DropBlock's square side (cut to the feature map)
    # conv4, resnet12 for protonet: track running stats, use them in eval
    bn_running_stats: bool = False

    def validate(self, config: Config) -> None:
        super().validate(config)
        check_config(config)

    def largest_tensor_bytes(self, config: Config) -> tuple[int, str]:
        """The first block convolves at full size; the largest weight is a 3×3 conv of the
        widest block (per task: the inner loop copies it)."""
        images, _features, keys = config.task.batch_examples(config)
        ins = [1, *self.channels]  # a block's first conv reads the previous block's channels
        convs = [a * b for a, b in zip(ins, self.channels)] + [n * n for n in self.channels]
        size = getattr(config.task, "image_size", 1)
        activations = images * max(self.channels[:1] or [1]) * size**2
        weights = 9 * max(convs or [1]) * config.train.meta_batch
        return 4 * max(activations, weights), f"{keys}, model.channels"


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {message}")


def check_config(c: Config) -> None:
    """The keys ``model.name: resnet12`` reads, refused before anything is built."""
    channels = c.model.channels
    _require(
        len(channels) == 4,
        "model.channels",
        f"resnet12 has four blocks: give four channel counts (e.g. [64, 160, 320, 640]), "
        f"got {channels}",
    )
    _require(
        all(1 <= n <= MAX_CHANNELS for n in channels),
        "model.channels",
        f"channel counts must be between 1 and {MAX_CHANNELS}, got {channels}",
    )
    _require(
        0.0 <= c.model.dropblock < 1.0,
        "model.dropblock",
        f"a drop probability in [0, 1) (0: no DropBlock), got {c.model.dropblock}",
    )
    _require(
        c.model.dropblock_size >= 1,
        "model.dropblock_size",
        f"must be >= 1, got {c.model.dropblock_size}",
    )
    _require(
        getattr(c.task, "image_size", 16) >= 16,
        "task.image_size",
        f"resnet12 halves the image 4 times; needs >= 16, got {c.task.image_size}",
    )
