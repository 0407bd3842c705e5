"""Prototypical Networks (Snell, Swersky & Zemel, 2017): classify by distance to class means."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamlkit.algorithms.base import MetaLearner, MetaOutput, register
from mamlkit.errors import ConfigError
from mamlkit.settings import AlgorithmSettings
from mamlkit.tasks.base import TaskBatch


def prototype_logits(support: Tensor, support_y: Tensor, query: Tensor, ways: int) -> Tensor:
    """−‖f(x) − c_k‖² for every query and class, c_k the mean support embedding of class k.

    ``support [T, Ns, D]``, ``support_y [T, Ns]``, ``query [T, Nq, D]`` -> ``[T, Nq, ways]``.
    """
    onehot = F.one_hot(support_y, ways).to(support.dtype)  # [T, Ns, N]
    prototypes = onehot.transpose(1, 2) @ support / onehot.sum(1).unsqueeze(-1)
    return -torch.cdist(query, prototypes).pow(2)


@dataclass
class ProtoNetSettings(AlgorithmSettings):
    """``algorithm.name: protonet``: trains on other episodes than it tests on where
    ``task.train_ways`` / ``task.train_queries`` say so."""

    name: str = "protonet"
    other_train_episodes: ClassVar[bool] = True


@register("protonet")
class PrototypicalNetwork(MetaLearner):
    """Embeds support and query of each episode in one batch, averages support embeddings
    per class into prototypes and scores queries by negative squared Euclidean distance.

    The embedding network is an ordinary module shared by all episodes, run once per
    episode as the original code does: in training mode its BatchNorm normalises with the
    episode's statistics (and, if it tracks them, updates running statistics, which
    ``eval()`` mode then uses at test time, as Snell et al. evaluate).

    ``channels_last`` stores the model's convolution weights channels-last (in place; the
    values are unchanged), so oneDNN's convolutions run without converting layouts around
    every call: on the CPU a ProtoNets iteration is about a third faster (docs/results.md).
    """

    settings_class = ProtoNetSettings

    def __init__(self, model: nn.Module, channels_last: bool = True):
        super().__init__()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model

    @classmethod
    def from_config(cls, config, build_model, loss_fn, train_classes, **overrides):
        if loss_fn is not F.cross_entropy:
            raise ConfigError("config key 'algorithm.name': protonet needs a classification task")
        return cls(build_model(out_features=0), **overrides)

    def embed(self, support_x: Tensor, query_x: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.stack([self.model(torch.cat([s, q])) for s, q in zip(support_x, query_x)])
        return z[:, : support_x.shape[1]], z[:, support_x.shape[1] :]

    def logits(self, support_x, support_y, query_x) -> Tensor:
        ways = int(support_y.max()) + 1
        support, query = self.embed(support_x, query_x)
        return prototype_logits(support, support_y, query, ways)

    def meta_forward(self, batch: TaskBatch, iteration: int = 0) -> MetaOutput:
        logits = self.logits(batch.support_x, batch.support_y, batch.query_x)
        return MetaOutput(F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()), logits)

    def query_predictions(self, support_x, support_y, query_x, steps, lr=None, reduce=None):
        with torch.no_grad():
            logits = self.logits(support_x, support_y, query_x)
            return [logits if reduce is None else reduce(logits)]
