"""Turn a validated :class:`Config` into the objects a run needs (model, learner, tasks),
each looked up by name in its registry (algorithms, models, tasks).

Everything that can be refused (missing data, impossible episodes) is refused here or in
the builders it calls, before a run directory is written."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mamlkit.algorithms import (
    MetaLearner,
    PretrainedClassifier,
)
from mamlkit.config import Config, algorithm_entry
from mamlkit.errors import ConfigError, UserError
from mamlkit.models import MODELS, model_spec
from mamlkit.models.target import build_target_model, untrusted_reason
from mamlkit.tasks import TaskDistribution, task_spec


def check_device(c: Config, fix: str = "use --set train.device=cpu") -> None:
    """Refuse a CUDA config on a machine without CUDA (also for resumed and evaluated runs);
    ``fix`` is what the command at hand offers instead."""
    if c.train.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"config key 'train.device': {c.train.device!r} but CUDA is not available here; {fix}"
        )


def metric_for(c: Config) -> str:
    """The task's score: mse, accuracy or return (RL)."""
    return task_spec(c.task.name).metric


def check_code_trust(c: Config, source: Path, trust_code: bool) -> None:
    """Refuse a ``model.target`` that ``source`` (a run directory's config) names unless it
    is a model class of mamlkit itself, or the user said they trust it: importing and
    calling anything else runs its code (see :func:`untrusted_reason`). Nothing outside
    mamlkit is imported to decide."""
    target = c.model.target
    if not target or trust_code:
        return
    reason = untrusted_reason(target)
    if reason is not None:
        raise UserError(
            f"{source} names model.target {target!r}, which is not one of mamlkit's model "
            f"classes ({reason}); importing and calling it runs that code: pass --trust-code "
            "(trust_code=True) only if you trust where this run came from"
        )


def image_channels(c: Config) -> int:
    """Channels of the images of an image task: 1 (grey) or 3 (RGB)."""
    return task_spec(c.task.name).image_channels(c.task)


def build_model(c: Config, out_features: int | None = None) -> nn.Module:
    """The network ``model.target`` imports, else the registered model ``model.name`` (see
    :func:`mamlkit.models.register_model`), which must take the task's inputs."""
    if c.model.target is not None:
        return build_target_model(c.model.target, c.model.kwargs)
    model, task = model_spec(c.model.name), task_spec(c.task.name)
    if model.inputs != task.inputs:
        fitting = [name for name, spec in MODELS.items() if spec.inputs == task.inputs]
        fix = (
            f"model.name={' or '.join(fitting)}"
            if fitting
            else "model.target='package.module:ClassName'"
        )
        raise ConfigError(
            f"config key 'model.name': {c.model.name} takes {model.inputs} inputs but task "
            f"{c.task.name!r} has {task.inputs} inputs; it needs {fix}"
        )
    return model.build(c, out_features)


def build_learner(c: Config, num_train_classes: int | None = None) -> MetaLearner:
    """The learner ``algorithm.name`` names for its task's batches (see
    :func:`mamlkit.algorithms.register`: ``pretrained`` registers a class per kind of batch;
    an RL task's learners, ``maml_trpo`` and ``trpo``, are :mod:`mamlkit.rl`'s)."""
    cls, overrides = algorithm_entry(c.algorithm.name, task_spec(c.task.name).batches)
    loss = F.mse_loss if metric_for(c) == "mse" else F.cross_entropy

    def train_classes() -> int:
        if num_train_classes is not None:
            return num_train_classes
        return build_tasks(c, "train").num_classes

    return cls.from_config(c, functools.partial(build_model, c), loss, train_classes, **overrides)


def check_config_describes(c: Config, learner: MetaLearner) -> None:
    """Refuse a config that would not rebuild ``learner`` (another algorithm, another
    network): a run directory's config.yaml must rebuild the model its weights belong to,
    or ``mamlkit eval``/``adapt`` cannot load them."""
    classes = None
    if isinstance(learner, PretrainedClassifier):
        classes = learner.model.head.out_features
    with torch.random.fork_rng(devices=[]):  # building initialises: keep the global RNG
        try:
            reference = build_learner(c, num_train_classes=classes)
        except UserError as exc:
            problem = f"it cannot build a learner ({exc})"
        else:
            ours = {k: tuple(v.shape) for k, v in learner.state_dict().items()}
            theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
            if not isinstance(learner, type(reference)):
                problem = (
                    f"it builds a {type(reference).__name__}, the learner is a "
                    f"{type(learner).__name__}"
                )
            elif ours != theirs:
                diff = sorted(set(ours.items()) ^ set(theirs.items()))[:2]
                problem = f"its model has other parameters ({diff} ...)"
            else:
                return
    raise UserError(
        f"the config does not describe the learner being trained: {problem}; set "
        "algorithm.name and model.target='package.module:ClassName' with model.kwargs so "
        "that the run's config.yaml rebuilds this model (or train without a run directory)"
    )


def build_tasks(c: Config, split: str = "train") -> TaskDistribution:
    """The task distribution of ``split`` (train / val / test) on ``train.device``, built by
    the registered task ``task.name`` (see :func:`mamlkit.tasks.register_task`)."""
    return task_spec(c.task.name).build(c, split)
