"""A user's callback sees every step and every logged record, on a fresh and a resumed run."""

from __future__ import annotations

import torch.nn.functional as F

from mamlkit import MAML, SineTasks
from mamlkit.callbacks import Callback
from mamlkit.config import load_config
from mamlkit.models import MLP
from mamlkit.training import Trainer


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_start(self, trainer, resumed):
        self.events.append(("start", trainer.step, resumed))

    def on_step(self, trainer):
        self.events.append(("step", trainer.step))

    def on_log(self, trainer, record):
        self.events.append(("log", record["step"]))

    def on_end(self, trainer):
        self.events.append(("end", trainer.step))


def test_callback_hooks_on_a_fresh_and_a_resumed_run(tmp_path):
    sets = ["train.iterations=6", "train.log_every=3", "train.checkpoint_every=3",
            "train.tensorboard=false", "train.meta_batch=2"]  # fmt: skip
    config = load_config("sine_maml", sets)
    first = Recorder()
    learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    Trainer(learner, SineTasks(), config, tmp_path / "r", "mse", progress=False,
            callbacks=[first]).fit()  # fmt: skip
    steps = [("step", s) for s in range(1, 7)]
    assert first.events == [("start", 0, False), *steps[:3], ("log", 3), *steps[3:],
                            ("log", 6), ("end", 6)]  # fmt: skip
    config.train.iterations = 9
    again = Recorder()
    learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    Trainer(learner, SineTasks(), config, tmp_path / "r", "mse", progress=False,
            callbacks=[again]).fit(resume=True)  # fmt: skip
    assert again.events[0] == ("start", 6, True) and again.events[-1] == ("end", 9)
    assert ("log", 9) in again.events
