"""ANIL (Raghu, Raghu, Bengio & Vinyals, 2020): Almost No Inner Loop — adapt the head only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from mamlkit.algorithms.base import register
from mamlkit.algorithms.maml import MAML
from mamlkit.functional import LossFn
from mamlkit.settings import AlgorithmSettings


def last_linear(model: nn.Module) -> str:
    """The name of the model's last ``nn.Linear`` (its head), e.g. ``"head"``."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head; pass head=")
    return names[-1]


@dataclass
class ANILSettings(AlgorithmSettings):
    """``algorithm.name: anil``."""

    name: str = "anil"
    head: str | None = None  # anil: the parameter-name prefix it adapts (default: last Linear)


@register("anil")
class ANIL(MAML):
    """MAML whose inner loop adapts only the head (``head``: a parameter-name prefix or a
    list of them; default the model's last ``nn.Linear``), while the outer loop still
    meta-learns the whole network: the body's meta-gradient flows through the adapted
    head. Otherwise the arguments of :class:`MAML`.

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> from mamlkit import ANIL, SineTasks
        >>> from mamlkit.models import MLP
        >>> learner = ANIL(MLP((1, 40, 40, 1)), F.mse_loss, inner_lr=0.01, inner_steps=2)
        >>> batch = SineTasks().sample(4, torch.Generator().manual_seed(0))
        >>> sorted(learner.adapt(batch.support_x, batch.support_y))
        ['net.4.bias', 'net.4.weight']
        >>> learner.meta_loss(*batch).backward()
        >>> learner.model.net[0].weight.grad is not None   # the body is meta-learned
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inner_lr: float | Sequence[float],
        inner_steps: int = 1,
        head: str | Sequence[str] | None = None,
        **kwargs,
    ):
        for name in ("adapt_only", "adapt"):
            if name in kwargs:
                raise TypeError(f"ANIL chooses what it adapts with head=, not {name}=")
        super().__init__(
            model, loss_fn, inner_lr, inner_steps, adapt_only=head or last_linear(model), **kwargs
        )

    settings_class = ANILSettings

    @classmethod
    def config_kwargs(cls, algorithm) -> dict:
        return {"head": algorithm.head}
