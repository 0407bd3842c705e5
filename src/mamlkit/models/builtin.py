"""mamlkit's own models, registered by name: the sine MLP, the few-shot Conv4 and ResNet-12."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from mamlkit.models.conv import Conv4, Conv4Settings
from mamlkit.models.mlp import MLP, MLPSettings
from mamlkit.models.registry import register_model
from mamlkit.models.resnet import ResNet12, ResNet12Settings
from mamlkit.tasks.registry import task_spec

if TYPE_CHECKING:
    from mamlkit.config import Config


@register_model("mlp", inputs="vector", settings=MLPSettings)
def build_mlp(c: Config, out_features: int | None) -> nn.Module:
    return MLP((1, *c.model.hidden, 1), init=c.model.init)


@register_model("conv4", inputs="image", settings=Conv4Settings)
def build_conv4(c: Config, out_features: int | None) -> nn.Module:
    return Conv4(
        out_features=c.task.ways if out_features is None else out_features,
        in_channels=task_spec(c.task.name).image_channels(c.task),
        filters=c.model.filters,
        image_size=c.task.image_size,
        pooling=c.model.pooling,
        global_pool=c.model.global_pool,
        activation=c.model.activation,
        bn_running_stats=c.model.bn_running_stats,
    )


@register_model("resnet12", inputs="image", settings=ResNet12Settings)
def build_resnet12(c: Config, out_features: int | None) -> nn.Module:
    return ResNet12(
        out_features=c.task.ways if out_features is None else out_features,
        in_channels=task_spec(c.task.name).image_channels(c.task),
        channels=c.model.channels,
        dropblock=c.model.dropblock,
        dropblock_size=c.model.dropblock_size,
        bn_running_stats=c.model.bn_running_stats,
    )
