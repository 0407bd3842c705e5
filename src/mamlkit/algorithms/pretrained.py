"""The paper's "pretrained" baseline: no meta-learning, one network fit to all tasks jointly.

Training minimises the ordinary loss of θ on every sampled point (support and query alike);
at test time θ is fine-tuned on the support set by the same gradient steps MAML takes, so
:meth:`query_predictions` and evaluation are shared with :class:`MAML`.
"""

from __future__ import annotations

import torch

from mamlkit.algorithms.maml import MAML
from mamlkit.functional import adaptable_params, stack_params, task_mean_loss


class PretrainedRegression(MAML):
    """Plain regression on samples from all tasks, then fine-tuning like MAML at test time.

    ``inner_lr`` is used only for test-time fine-tuning (the paper tuned it separately).
    """

    def __init__(self, model, loss_fn, inner_lr, impl: str = "auto", **kwargs):
        super().__init__(model, loss_fn, inner_lr, inner_steps=0, impl=impl, **kwargs)

    def meta_forward(self, support_x, support_y, query_x, query_y):
        theta = stack_params(adaptable_params(self.model), support_x.shape[0])
        x = torch.cat([support_x, query_x], dim=1)
        y = torch.cat([support_y, query_y], dim=1)
        pred = self.predict(theta, x)
        return task_mean_loss(self.loss_fn, pred, y), pred[:, support_x.shape[1]:]
