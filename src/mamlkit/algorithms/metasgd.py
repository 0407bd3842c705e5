"""Meta-SGD (Li, Zhou, Chen & Li, 2017): MAML with a learned step size for every weight."""

from __future__ import annotations

from torch import Tensor

from mamlkit.algorithms.base import register
from mamlkit.algorithms.maml import MAML
from mamlkit.functional import InnerUpdate, PerParameterStepSize, adaptable_params


@register("metasgd")
class MetaSGD(MAML):
    """MAML whose inner update is φ ← θ − α ⊙ ∇L(θ, Dᵗʳ) with α a learned tensor of θ's shape,
    initialised to ``inner_lr`` and meta-learned with θ (``learner.parameters()`` holds
    both, so one outer optimiser trains them). Same arguments as :class:`MAML`; only the
    update rule differs (:meth:`make_update`).

    Examples:
        >>> import torch, torch.nn.functional as F
        >>> from mamlkit import MetaSGD, SineTasks
        >>> from mamlkit.models import MLP
        >>> learner = MetaSGD(MLP((1, 40, 40, 1)), F.mse_loss, inner_lr=0.01)
        >>> batch = SineTasks().sample(4, torch.Generator().manual_seed(0))
        >>> learner.meta_loss(*batch).backward()
        >>> learner.inner_lrs["net.0.weight"].shape, learner.inner_lrs["net.0.weight"].grad is None
        (torch.Size([40, 1]), False)
    """

    def make_update(self) -> InnerUpdate:
        if not isinstance(self.inner_lr, (int, float)):
            raise ValueError("Meta-SGD learns its step sizes: give inner_lr as one number")
        return PerParameterStepSize(adaptable_params(self.model, self.adapt_only), self.inner_lr)

    @property
    def inner_lrs(self) -> dict[str, Tensor]:
        """The learned step sizes α by parameter name (each of its parameter's shape)."""
        return {
            name: self.update.step_size(name, 0)
            for name in adaptable_params(self.model, self.adapt_only)
        }
