"""The protocol every algorithm follows, so training, evaluation and the CLI treat them alike."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def check_task_batch(x: Tensor, y: Tensor, where: str) -> None:
    """Refuse inputs without the leading task axis (``x [T, N, ...]``, ``y [T, N, ...]``):
    ``x`` of shape ``[N, features]`` would otherwise be read as N tasks of one example."""
    if x.dim() < 3:
        raise ValueError(
            f"{where}: support_x has shape {list(x.shape)}; expected [tasks, examples, "
            f"features...] with a leading task axis. For one task pass x.unsqueeze(0) "
            f"(and y.unsqueeze(0)), or use adapt_task / predict_task"
        )
    if y.shape[:2] != x.shape[:2]:
        raise ValueError(
            f"{where}: support_y has shape {list(y.shape)} but support_x {list(x.shape)}; "
            "both need the same [tasks, examples] leading axes"
        )


class MetaLearner(nn.Module):
    """Owns the network (``self.model``) and whatever else is meta-learned.

    Subclasses implement :meth:`meta_forward` and :meth:`query_predictions`.
    ``self.parameters()`` is what the outer optimiser updates.
    """

    model: nn.Module
    #: True where ``meta_forward`` never reads a value back to the host, so a whole
    #: training iteration can be captured as a CUDA graph (see mamlkit.device_step)
    capturable: bool = False

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
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, steps: int
    ) -> list[Tensor]:
        """Test-time predictions on the query set after 0, 1, …, ``steps`` adaptation steps
        (one entry for algorithms that do not adapt by gradient steps). No outer graph."""
        raise NotImplementedError

    def predict_task(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, steps: int | None = None
    ) -> Tensor:
        """Predictions for ONE task without the task axis: adapt on ``support_x [N, ...]``,
        ``support_y [N, ...]`` (``steps`` gradient steps; default ``inner_steps``) and return
        the output for ``query_x [M, ...]`` as ``[M, ...]`` (logits for classifiers). Works
        under ``torch.no_grad()`` and ``torch.inference_mode()``.

        Example:
            >>> import torch, torch.nn.functional as F
            >>> from mamlkit import MAML
            >>> from mamlkit.models import MLP
            >>> learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, inner_lr=0.01)
            >>> xs = torch.linspace(-5, 5, 10).unsqueeze(1)
            >>> learner.predict_task(xs, torch.sin(xs), torch.zeros(3, 1), steps=5).shape
            torch.Size([3, 1])
        """
        if steps is None:
            steps = getattr(self, "inner_steps", 0)
        if support_x.shape[0] != support_y.shape[0]:
            raise ValueError(
                f"predict_task: {support_x.shape[0]} support inputs but "
                f"{support_y.shape[0]} targets"
            )
        with torch.inference_mode(False):
            # inference tensors cannot enter the adaptation's autograd graph: copies can
            args = [t.clone().unsqueeze(0) for t in (support_x, support_y, query_x)]
            return self.query_predictions(*args, steps)[-1][0].detach()
