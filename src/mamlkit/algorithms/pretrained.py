"""The paper's "pretrained" baselines: no meta-learning, one network fit to all tasks jointly,
then fine-tuned on each test task's support set by the same inner loop MAML uses.

``algorithm.name: pretrained`` is one class per kind of task batch, each registered here
for its kind: :class:`PretrainedRegression` on regression ``points``,
:class:`PretrainedClassifier` on few-shot ``episodes`` (it trains on ordinary class
minibatches instead), and, on RL ``trajectories``, MAML-TRPO without inner steps in
training (TRPO on the task distribution, fine-tuned by the same test-time steps)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mamlkit.algorithms.base import MetaLearner, MetaOutput, register
from mamlkit.algorithms.capabilities import capturable
from mamlkit.algorithms.gradient import GradientLearner, check_impl
from mamlkit.functional import (
    FixedStepSize,
    adaptable_params,
    inner_loop,
    stack_params,
    supervised_support_loss,
    task_forward,
    task_mean_loss,
)
from mamlkit.tasks.base import ExampleBatch, TaskBatch


@register("pretrained", batches="points")
class PretrainedRegression(GradientLearner):
    """Plain regression on samples from all tasks (support and query points alike), then
    fine-tuning with gradient steps at test time, as MAML adapts. ``inner_lr`` is the
    test-time step size only (the paper tuned it separately); adaptation takes no step
    unless asked (``steps``)."""

    def __init__(self, model, loss_fn, inner_lr, impl: str = "auto", **kwargs):
        super().__init__(model, loss_fn, inner_lr, inner_steps=0, impl=impl, **kwargs)

    @classmethod
    def from_config(cls, config, build_model, loss_fn, train_classes, **overrides):
        a = config.algorithm
        return cls(
            check_impl(build_model(), a.impl), loss_fn, a.eval_inner_lr or a.inner_lr, impl=a.impl
        )

    def meta_forward(self, batch: TaskBatch, iteration: int = 0) -> MetaOutput:
        support_x, support_y, query_x, query_y = batch
        theta = stack_params(adaptable_params(self.model), support_x.shape[0])
        x = torch.cat([support_x, query_x], dim=1)
        y = torch.cat([support_y, query_y], dim=1)
        pred = self.predict(theta, x)
        return MetaOutput(task_mean_loss(self.loss_fn, pred, y), pred[:, support_x.shape[1] :])


@register("pretrained", batches="episodes")
class PretrainedClassifier(MetaLearner):
    """Ordinary classification over all training classes (``model`` ends in a head with one
    output per class; trained on :class:`~mamlkit.tasks.ClassBatches`), then, per test
    episode, a new zero-initialised N-way head and ``steps`` SGD steps on the support set
    over all parameters (``eval_inner_lr``, the name MAML uses for its test-time step)."""

    trains_on = "examples"

    def __init__(self, model: nn.Module, eval_inner_lr: float = 0.1, impl: str = "auto"):
        super().__init__()
        if getattr(model, "head", None) is None:
            raise ValueError("PretrainedClassifier needs a model with a linear `head`")
        self.model = model
        self.eval_inner_lr = eval_inner_lr
        self._forward, self.impl = task_forward(model, impl)
        self._episode_models: dict[int, tuple[nn.Module, object]] = {}

    @classmethod
    def from_config(cls, config, build_model, loss_fn, train_classes, **overrides):
        a = config.algorithm
        return cls(
            check_impl(build_model(out_features=train_classes()), a.impl),
            eval_inner_lr=a.eval_inner_lr or a.inner_lr,
            impl=a.impl,
        )

    @capturable
    def meta_forward(self, batch: ExampleBatch, iteration: int = 0) -> MetaOutput:
        # minibatches with global class labels (ClassBatches), not episodes
        theta = stack_params(adaptable_params(self.model), batch.num_tasks)
        logits = self._forward(theta, batch.x)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.y.flatten())
        return MetaOutput(loss, logits)

    def meta_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Cross-entropy of minibatches ``x [B, N, ...]`` with global labels ``y [B, N]``
        (this baseline trains on examples, not on tasks with a support set)."""
        return self.meta_forward(ExampleBatch(x, y)).loss

    def _episode_forward(self, ways: int):
        if ways not in self._episode_models:
            twin = copy.deepcopy(self.model)
            twin.head = nn.Linear(twin.head.in_features, ways).to(
                next(self.model.parameters()).device
            )
            self._episode_models[ways] = (twin, task_forward(twin, self.impl)[0])
        return self._episode_models[ways][1]

    def query_predictions(self, support_x, support_y, query_x, steps, lr=None, reduce=None):
        ways = int(support_y.max()) + 1
        forward = self._episode_forward(ways)
        body = {
            n: p.detach()
            for n, p in adaptable_params(self.model).items()
            if not n.startswith("head.")
        }
        head = self.model.head
        body["head.weight"] = head.weight.new_zeros(ways, head.in_features)
        body["head.bias"] = head.bias.new_zeros(ways)
        body = {n: p.requires_grad_() for n, p in body.items()}
        params = stack_params(body, support_x.shape[0])
        preds = []

        def record(_s, phi):
            with torch.no_grad():
                pred = forward(phi, query_x)
                preds.append(pred if reduce is None else reduce(pred))

        with torch.enable_grad():
            inner_loop(
                params,
                supervised_support_loss(forward, support_x, support_y, F.cross_entropy),
                FixedStepSize(self.eval_inner_lr if lr is None else lr),
                steps,
                first_order=True,
                on_step=record,
                keep_graph=False,
            )
        return preds

