"""The protocol every algorithm follows, so training, evaluation and the CLI treat them alike."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


class MetaLearner(nn.Module):
    """Owns the network (``self.model``) and whatever else is meta-learned.

    Subclasses implement :meth:`meta_forward` and :meth:`query_predictions`.
    ``self.parameters()`` is what the outer optimiser updates.
    """

    model: nn.Module

    def meta_forward(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The meta-training objective, averaged over tasks, and the query predictions
        ``[T, N_q, ...]`` it was computed from (for accuracy logging)."""
        raise NotImplementedError

    def meta_loss(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> Tensor:
        """Scalar outer loss; ``.backward()`` puts the meta-gradient in ``self.parameters()``."""
        return self.meta_forward(support_x, support_y, query_x, query_y)[0]

    def query_predictions(
        self,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        steps: int,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> list[Tensor]:
        """Test-time predictions on the query set after 0, 1, …, ``steps`` adaptation steps
        (one entry for algorithms that do not adapt by gradient steps). No outer graph.
        ``reduce`` (e.g. a per-task metric) is applied to each step's predictions as soon
        as they exist, so only its small results are kept: memory does not grow with
        ``steps``."""
        raise NotImplementedError
