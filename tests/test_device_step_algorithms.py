"""The device-step path (the one `train.cuda_graphs: auto` takes on a GPU) trains every
registered algorithm exactly as the eager loop does, or refuses it and trains eagerly.

Run on the CPU with the device step's code uncaptured (``Trainer._device_step_on_cpu``); the
same test on a GPU machine (``pytest -k cuda``) is issue "On a GPU"'s. Reptile once trained
as first-order MAML here: it inherited MAML's ``capturable`` while its update is its own
``outer_step``, which the device step never called."""

from __future__ import annotations

import pytest
import torch

import mamlkit.rl  # noqa: F401  (its learners, maml_trpo and trpo, are registered algorithms)
from mamlkit.algorithms import ALGORITHMS, MetaLearner
from mamlkit.build import build_learner, build_tasks, metric_for
from mamlkit.config import load_config
from mamlkit.training import Trainer, seed_everything

from .conftest import data_root

TINY = ["train.iterations=3", "train.meta_batch=2", "train.log_every=1",
        "train.checkpoint_every=100", "train.tensorboard=false", "train.val_every=0"]  # fmt: skip


def _config(name: str):
    """A tiny config of ``name``: its sine preset where it has one, else its Omniglot one
    (an RL learner: its 2D-navigation preset)."""
    rl = {"maml_trpo": "rl_nav2d_maml", "trpo": "rl_nav2d_pretrained"}
    if name in rl:
        tiny_rl = ["model.hidden=[8,8]", "task.rollouts=2", "task.horizon=10", "eval.tasks=2"]
        return load_config(rl[name], [*TINY, *tiny_rl])
    sine = f"sine_{name}" if name in ("maml", "metasgd", "pretrained") else None
    if sine is None and name in ("fomaml", "reptile", "mamlpp", "anil"):
        try:  # a regression task where the algorithm takes one
            return load_config("sine_maml", [*TINY, f"algorithm.name={name}"])
        except Exception:
            pass
    if sine is not None:
        return load_config(sine, TINY)
    data_root()
    return load_config(
        f"omniglot_{name}_5w1s",
        [*TINY, "model.filters=8", "eval.tasks=2", "algorithm.inner_steps=1"]
        if name != "protonet"
        else [*TINY, "model.filters=8", "eval.tasks=2", "task.train_ways=5"],
    )


def _train(config, device_step: bool, monkeypatch, tmp_path):
    monkeypatch.setattr(Trainer, "_device_step_on_cpu", device_step)
    config.train.cuda_graphs = "auto" if device_step else "off"
    seed_everything(config.train.seed)
    learner = build_learner(config)
    tasks = build_tasks(config, "train")
    trainer = Trainer(learner, tasks, config, None, metric=metric_for(config), progress=False)
    trainer.fit()
    return trainer.engine, {k: v.clone() for k, v in learner.state_dict().items()}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_the_device_step_equals_the_eager_loop_or_is_refused(name, monkeypatch, tmp_path):
    config = _config(name)
    _, eager = _train(config, False, monkeypatch, tmp_path)
    engine, device = _train(_config(name), True, monkeypatch, tmp_path)
    assert engine in ("device-eager", "eager")
    assert eager.keys() == device.keys()
    for key in eager:
        assert torch.equal(eager[key], device[key]), f"{name} ({engine}): {key} differs"
    if type(build_learner(config)).outer_step is not MetaLearner.outer_step:
        assert engine == "eager"  # an own outer update: refused, trained eagerly
