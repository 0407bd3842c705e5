"""The four-block convolutional network of MAML and Prototypical Networks ("Conv4")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mamlkit.settings import ModelSettings, require, require_at_least

from . import ops
from .pool import MaxPool2x2, max_pool2x2

__all__ = ["ACTIVATIONS", "Conv4", "Conv4Settings"]

if TYPE_CHECKING:
    from mamlkit.config import Config


@dataclass
class Conv4Settings(ModelSettings):
    """``model.name: conv4``."""

    filters: int = 64
    pooling: str = "stride"  # conv4: stride | max
    global_pool: bool = False  # conv4: average the last feature map before the head (cbfinn)
    # conv4: relu | leaky_relu (slope 0.01, as MAML++'s released network)
    activation: str = "relu"
    # conv4, resnet12 for protonet: track running stats, use them in eval
    bn_running_stats: bool = False

    def validate(self, config: Config) -> None:
        super().validate(config)
        require(self.pooling in ("stride", "max"), "model.pooling", "must be 'stride' or 'max'")
        require(
            self.activation in ACTIVATIONS,
            "model.activation",
            f"must be one of {', '.join(map(repr, ACTIVATIONS))}",
        )
        require_at_least(1, "model", self, "filters")
        size = getattr(config.task, "image_size", 16)  # (a task without images: refused later)
        require(
            self.pooling != "max" or size >= 16,
            "task.image_size",
            f"conv4 with max-pooling halves the image 4 times; needs >= 16, got {size}",
        )

    def largest_tensor_bytes(self, config: Config) -> tuple[int, str]:
        """The first block's feature maps, or the inner loop's per-task 3×3 weights."""
        images, _features, keys = config.task.batch_examples(config)
        size = getattr(config.task, "image_size", 1)
        side = size if self.pooling == "max" else (size + 1) // 2
        activations = images * self.filters * side**2
        weights = 9 * self.filters**2 * config.train.meta_batch
        return 4 * max(activations, weights), f"{keys}, model.filters"


def _monotone(layer: nn.Module) -> bool:
    """A ReLU or a leaky ReLU with a slope >= 0 (another layer put there: not assumed)."""
    if type(layer) is nn.ReLU:
        return True
    return type(layer) is nn.LeakyReLU and layer.negative_slope >= 0


#: ``model.activation`` -> the negative slope of the (leaky) ReLU after each BatchNorm
ACTIVATIONS: dict[str, float] = {"relu": 0.0, "leaky_relu": 0.01}


class Conv4(nn.Module):
    """4 × [3×3 conv, BatchNorm, ReLU (, 2×2 max-pool)], then a linear head.

    ``pooling="stride"``: stride-2 convolutions, no pooling (MAML's Omniglot net);
    ``pooling="max"``: stride-1 convolutions followed by 2×2 max-pooling (MiniImagenet,
    ProtoNets), run before the ReLU, which gives the same values with the ReLU on a quarter
    of the entries (:meth:`_layers`; :mod:`mamlkit.models.pool`).
    ``out_features=0`` drops the head and returns the flattened embedding.
    ``global_pool`` averages the last feature map over space before the head, as
    cbfinn/maml does for Omniglot (64 features instead of 64·2·2).
    BatchNorm normalises with the current batch's statistics and keeps no running stats, as
    the original MAML code does; its γ/β are ordinary (meta-learned) parameters.
    ``activation="leaky_relu"`` puts a leaky ReLU (negative slope 0.01, PyTorch's default)
    where the ReLU is, as MAML++'s released network has.
    ``bn_running_stats=True`` restores ordinary BatchNorm (running statistics, used in
    ``eval()`` mode), as Prototypical Networks are evaluated.
    ``fold_batch_norm=False`` turns off the simplifications :meth:`batched_forward` makes
    where BatchNorm follows a convolution (same values; for comparisons and debugging).
    """

    def __init__(
        self,
        out_features: int,
        in_channels: int = 1,
        filters: int = 64,
        image_size: int = 28,
        pooling: str = "stride",
        blocks: int = 4,
        global_pool: bool = False,
        bn_running_stats: bool = False,
        fold_batch_norm: bool = True,
        activation: str = "relu",
    ):
        super().__init__()
        if pooling not in ("stride", "max"):
            raise ValueError(f"pooling must be 'stride' or 'max', got {pooling!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation, self.slope = activation, ACTIVATIONS[activation]
        self.pooling, self.filters, self.blocks = pooling, filters, blocks
        self.global_pool = global_pool
        self.fold_batch_norm = fold_batch_norm
        stride = 2 if pooling == "stride" else 1
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(blocks):
            layers += [
                nn.Conv2d(channels, filters, 3, stride=stride, padding=1),
                nn.BatchNorm2d(filters, track_running_stats=bn_running_stats),
                nn.LeakyReLU(self.slope) if self.slope else nn.ReLU(),
            ]
            if pooling == "max":
                layers.append(MaxPool2x2())
                size = size // 2
            else:
                size = (size + 1) // 2
            channels = filters
        self.features = nn.Sequential(*layers)
        self.embedding_dim = filters if global_pool else filters * size * size
        self.head = nn.Linear(self.embedding_dim, out_features) if out_features else None

    def _layers(self) -> list[tuple[int, nn.Module]]:
        """``features`` with their indices, in the order they run: each block's max-pool
        before its (leaky) ReLU. Both are monotone, so pooling first gives the same values
        and sends the gradient to the same entry (for a leaky ReLU: unless its slope rounds
        two different negative inputs to one value), with the activation and its
        derivatives on a quarter of the entries."""
        layers = list(enumerate(self.features))
        for i in range(len(layers) - 1):
            if isinstance(layers[i + 1][1], nn.MaxPool2d) and _monotone(layers[i][1]):
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
        return layers

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for _, layer in self._layers():
            h = layer(h)
        h = h.mean((2, 3)) if self.global_pool else h.flatten(1)
        return self.head(h) if self.head is not None else h

    def batched_forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """T tasks at once: ``x [T, B, C, H, W]`` -> ``[T, B, out]``, per-task weights.

        The tasks are stacked along the channel axis (``[B, T·C, H, W]``) and each
        convolution runs with ``groups=T`` (or, while all tasks still share θ, as one dense
        convolution over the B·T images). Training-mode BatchNorm on that layout normalises
        every task's channels with that task's own batch statistics, and unlike ``vmap``
        over an affine batch norm its double backward is exact. The layers come from
        :mod:`mamlkit.models.ops`: the same kernels as ``F.conv2d``/``F.batch_norm``/
        ``torch.relu``, with second derivatives that cost a few passes instead of a
        convolution per task.

        With ``fold_batch_norm`` (the default) two things that batch-statistics BatchNorm
        makes redundant are skipped. A convolution's bias is subtracted again with the
        batch mean, so the convolutions run without it; it enters as β + (b − b), which
        keeps its exact gradient, zero. And when ``x`` needs no gradient (images), the
        first convolution and its BatchNorm are one product from the images' windows
        (:func:`ops.task_conv_batch_norm`).
        """
        tasks, batch = x.shape[:2]
        h = x.transpose(0, 1).reshape(batch, tasks * x.shape[2], *x.shape[3:])
        layers = self._layers()
        if self.fold_batch_norm and not x.requires_grad:
            # first convolution + BatchNorm folded (see the docstring)
            conv, bn = self.features[0], self.features[1]
            k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            size = [(n + 2 * pad - k) // stride + 1 for n in h.shape[2:]]
            h = ops.task_conv_batch_norm(
                ops.image_patches(h, tasks, k, stride, pad),
                size,
                params["features.0.weight"],
                params["features.0.bias"],
                params["features.1.weight"],
                params["features.1.bias"],
                eps=bn.eps,
            )
            layers = layers[2:]
        conv_bias = None
        for i, layer in layers:
            if isinstance(layer, nn.Conv2d):
                bias = params[f"features.{i}.bias"]
                if self.fold_batch_norm:  # the next layer is its BatchNorm
                    bias, conv_bias = None, bias
                h = ops.task_conv2d(
                    h,
                    params[f"features.{i}.weight"],
                    bias,
                    stride=layer.stride[0],
                    padding=layer.padding[0],
                )
            elif isinstance(layer, nn.BatchNorm2d):
                beta = params[f"features.{i}.bias"]
                if conv_bias is not None:
                    beta, conv_bias = beta + (conv_bias - conv_bias), None
                h = ops.batch_norm(
                    h,
                    params[f"features.{i}.weight"].reshape(-1),
                    beta.reshape(-1),
                    eps=layer.eps,
                )
            elif isinstance(layer, (nn.ReLU, nn.LeakyReLU)):
                h = ops.relu(h, self.slope)
            else:
                h = max_pool2x2(h)
        if self.global_pool:
            h = h.mean((2, 3))
        # [B, T·C(, h, w)] -> [T, B, C(·h·w)]; the per-task flatten order matches forward().
        h = h.reshape(batch, tasks, -1).transpose(0, 1)
        if self.head is None:
            return h
        w, b = params["head.weight"], params["head.bias"]
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
