"""Turn a validated :class:`Config` into the objects a run needs (model, learner, tasks)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from mamlkit.algorithms import MAML, MetaLearner, PretrainedRegression
from mamlkit.config import Config
from mamlkit.errors import ConfigError
from mamlkit.models import MLP, Conv4
from mamlkit.tasks import SineTasks, TaskDistribution


def build_model(c: Config, out_features: int | None = None) -> nn.Module:
    if c.model.name == "mlp":
        return MLP((1, *c.model.hidden, 1))
    channels = 1 if c.task.name == "omniglot" else 3
    return Conv4(
        out_features=c.task.ways if out_features is None else out_features,
        in_channels=channels,
        filters=c.model.filters,
        image_size=c.task.image_size,
        pooling=c.model.pooling,
    )


def build_learner(c: Config) -> MetaLearner:
    a = c.algorithm
    if c.task.name == "sine":
        if c.model.name != "mlp":
            raise ConfigError("config key 'model.name': sine regression needs model.name=mlp")
        loss = F.mse_loss
        if a.name == "pretrained":
            return PretrainedRegression(build_model(c), loss, a.eval_inner_lr or a.inner_lr,
                                        impl=a.impl)
    else:
        loss = F.cross_entropy
    if a.name in ("maml", "fomaml"):
        return MAML(build_model(c), loss, a.inner_lr, a.inner_steps,
                    first_order=a.first_order or a.name == "fomaml", impl=a.impl,
                    eval_inner_lr=a.eval_inner_lr)
    raise ConfigError(f"config key 'algorithm.name': {a.name!r} is not available for task "
                      f"{c.task.name!r}")


def build_tasks(c: Config, split: str = "train") -> TaskDistribution:
    if c.task.name == "sine":
        if split == "train":
            return SineTasks(c.task.k_support, c.task.k_query)
        # evaluation: MSE over a grid across the whole input range
        return SineTasks(c.task.k_support, c.task.k_query, query_grid=100)
    raise ConfigError(f"config key 'task.name': {c.task.name!r} is not available yet")


def metric_for(c: Config) -> str:
    return "mse" if c.task.name == "sine" else "accuracy"
