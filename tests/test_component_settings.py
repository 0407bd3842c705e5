"""Each registered algorithm, task and model owns its settings (issue 25, redesign item 1,
and its goal): a settings dataclass with its own keys and validation; a config records
only the keys its components have; configs saved by an older mamlkit (every key of every
component, ``algorithm.name: maml`` on RL tasks) still load, evaluate and resume as they
trained; and a new algorithm with its own hyperparameter, and a new RL task, register and
train from outside the package with no edit anywhere else."""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mamlkit import MAML, load_config
from mamlkit.algorithms import ALGORITHMS, register
from mamlkit.algorithms.base import MetaOutput
from mamlkit.config import Config
from mamlkit.config_legacy import OLD_DEFAULTS
from mamlkit.errors import ConfigError
from mamlkit.rl.envs import task_batch
from mamlkit.rl.settings import RLTaskSettings
from mamlkit.runner import eval_run, load_run, train_run
from mamlkit.settings import AlgorithmSettings, require
from mamlkit.tasks import TASKS, TaskBatch, register_task

from .test_cli_bad_input import assert_user_error, run_cli

#: the last commit before each component owned its settings: its code writes the old runs
OLD_COMMIT = "6555a70"
_TINY = ["train.meta_batch=2", "train.keep_checkpoints=2", "train.log_every=1",
         "train.tensorboard=false", "train.val_every=0", "model.hidden=[8,8]"]  # fmt: skip
_OLD_RUN_SETS = {
    "sine_maml": [*_TINY, "train.iterations=4", "train.checkpoint_every=2", "eval.tasks=4"],
    "rl_nav2d_maml": [*_TINY, "train.iterations=2", "train.checkpoint_every=1", "task.rollouts=2",
                      "task.horizon=10", "task.eval_rollouts=2", "eval.tasks=2"],
}  # fmt: skip


@pytest.fixture(scope="module")
def old_runs(tmp_path_factory) -> Path:
    """Tiny runs written by the code of :data:`OLD_COMMIT` (taken from this checkout's git
    history, so no weights are kept in the repository): every key of every component in
    their config.yaml, ``maml`` as the RL algorithm's name."""
    root = Path(__file__).resolve().parents[1]
    base = tmp_path_factory.mktemp("old")
    try:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", OLD_COMMIT, "src"],
            capture_output=True, check=True, timeout=120,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"needs mamlkit's git history (commit {OLD_COMMIT}): not a full clone")
    tarfile.open(fileobj=io.BytesIO(archive)).extractall(base / "code", filter="data")
    env = {**os.environ, "PYTHONPATH": str(base / "code" / "src")}
    for name, sets in _OLD_RUN_SETS.items():
        args = [a for s in sets for a in ("--set", s)]
        subprocess.run(
            [sys.executable, "-m", "mamlkit.cli", "train", name, *args, "--no-progress",
             "--out", str(base / "runs" / name)],
            env=env, cwd=base, check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    return base / "runs"


TINY_SINE = {
    "task": {"name": "sine", "k_support": 5, "k_query": 5},
    "model": {"name": "mlp", "hidden": [8, 8]},
    "train": {
        "iterations": 2,
        "meta_batch": 2,
        "tensorboard": False,
        "checkpoint_every": 100,
        "log_every": 1,
    },
    "eval": {"tasks": 2, "steps": 1},
}


# ---- what a user's file holds: an algorithm with a hyperparameter of its own ----
@dataclass
class WeightedMAMLSettings(AlgorithmSettings):
    """``algorithm.name: weighted_maml``."""

    name: str = "weighted_maml"
    query_weight: float = 1.0  # weighted_maml: the factor of the query loss

    def validate(self, config: Any) -> None:
        super().validate(config)
        require(
            self.query_weight > 0,
            "algorithm.query_weight",
            f"must be > 0, got {self.query_weight}",
        )


class WeightedMAML(MAML):
    """MAML whose outer loss is scaled by ``query_weight``."""

    settings_class = WeightedMAMLSettings

    def __init__(self, *args: Any, query_weight: float = 1.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.query_weight = query_weight

    @classmethod
    def config_kwargs(cls, algorithm: WeightedMAMLSettings) -> dict:
        return {"query_weight": algorithm.query_weight}

    def meta_forward(self, batch: TaskBatch, iteration: int = 0) -> MetaOutput:
        out = super().meta_forward(batch, iteration)
        return MetaOutput(out.loss * self.query_weight, out.predictions)


# ---- and a 1-D point-goal RL task: its environment, task distribution and settings ----
@dataclass(frozen=True)
class PointGoal1D:
    """A point on a line moves by at most 0.1 per step toward a goal; reward: minus the
    distance to the goal."""

    horizon: int = 5
    task_dim = 1
    act_dim = 1
    obs_dim = 1

    def reset(self, task: torch.Tensor, n: int, streams: Any = None):
        state = (task.new_zeros(task.shape[0], n, 1), task.unsqueeze(1).expand(-1, n, -1))
        return state, state[0]

    def step(self, state: Any, action: torch.Tensor):
        position, goal = state
        position = position + action.clamp(-1.0, 1.0) * 0.1
        reward = -(position - goal).abs().squeeze(-1)
        done = torch.zeros_like(reward, dtype=torch.bool)
        return (position, goal), position, reward, done


@dataclass(frozen=True)
class PointGoals:
    """Goals uniform in [-0.5, 0.5]."""

    def sample(self, tasks: int, generator: torch.Generator):
        goal = torch.rand((tasks, 1), generator=generator, device=generator.device) - 0.5
        return task_batch(goal, generator)


@dataclass
class PointGoalSettings(RLTaskSettings):
    """``task.name: point1d``."""

    name: str = "point1d"

    def build_env(self) -> PointGoal1D:
        return PointGoal1D(horizon=self.horizon)


def build_point_goals(config: Config, split: str) -> PointGoals:
    return PointGoals()


@pytest.fixture
def user_components(monkeypatch):
    """The user's registrations, undone after the test."""
    monkeypatch.setattr(TASKS, "_specs", dict(TASKS._specs))
    monkeypatch.setattr(ALGORITHMS, "_specs", dict(ALGORITHMS._specs))
    register("weighted_maml")(WeightedMAML)
    register_task(
        "point1d",
        metric="return",
        inputs="vector",
        rl=True,
        algorithms=("maml_trpo", "trpo"),
        settings=PointGoalSettings,
    )(build_point_goals)
    yield


def test_a_user_algorithm_with_its_own_setting_trains_from_a_config_dict(user_components, tmp_path):
    config = load_config({**TINY_SINE, "algorithm": {"name": "weighted_maml", "query_weight": 3}})
    assert isinstance(config.algorithm, WeightedMAMLSettings)
    train_run(config, tmp_path / "run", progress=False)
    _config, learner, _step = load_run(tmp_path / "run")
    assert isinstance(learner, WeightedMAML) and learner.query_weight == 3.0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["algorithm"]["query_weight"] == 3.0
    assert eval_run(tmp_path / "run")["tasks"] == 2
    with pytest.raises(ConfigError, match=r"^config key 'algorithm\.query_weight': must be > 0"):
        load_config({**TINY_SINE, "algorithm": {"name": "weighted_maml", "query_weight": -1}})
    with pytest.raises(ConfigError, match=r"'algorithm\.query_weight': algorithm 'maml' has no"):
        load_config(TINY_SINE, ["algorithm.query_weight=2"])


def test_a_user_rl_task_trains_maml_trpo_from_a_config_dict(user_components, tmp_path):
    config = load_config(
        {
            "task": {"name": "point1d", "horizon": 5, "rollouts": 2, "eval_rollouts": 2},
            "model": {"name": "mlp", "hidden": [4]},
            "algorithm": {"name": "maml_trpo", "inner_lr": 0.1, "max_kl": 0.02},
            "train": {**TINY_SINE["train"], "iterations": 1},
            "eval": {"tasks": 2, "steps": 1},
        }
    )
    train_run(config, tmp_path / "run", progress=False)
    _config, learner, _step = load_run(tmp_path / "run")
    assert learner.env == PointGoal1D(horizon=5) and learner.trpo["max_kl"] == 0.02
    record = eval_run(tmp_path / "run")
    assert len(record["by_step"]) == 2 and torch.isfinite(torch.tensor(record["return"]))


def test_a_run_records_only_its_components_keys(capsys, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "sine_maml", "--set", "train.iterations=1",
                           "--set", "train.tensorboard=false", "--set", "eval.tasks=2",
                           "--out", run, "--no-progress")  # fmt: skip
    assert code == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert set(saved["task"]) == {"name", "k_support", "k_query"}
    assert set(saved["algorithm"]) == {f.name for f in dataclasses.fields(AlgorithmSettings)}
    assert "max_kl" not in saved["algorithm"] and "filters" not in saved["model"]
    rl = load_config("rl_nav2d_maml").to_dict()
    assert rl["algorithm"]["name"] == "maml_trpo" and "max_kl" in rl["algorithm"]
    assert "ways" not in rl["task"] and "k_support" not in rl["task"]


def test_a_setting_another_algorithm_has_is_one_line_naming_key_and_algorithm(capsys, tmp_path):
    line = assert_user_error(
        capsys, "train", "sine_maml", "--set", "algorithm.max_kl=0.02", "--out", tmp_path / "r",
        match="algorithm.max_kl",
    )  # fmt: skip
    assert "algorithm 'maml' has no such setting" in line
    assert not (tmp_path / "r").exists()
    line = assert_user_error(
        capsys, "train", "rl_nav2d_maml", "--set", "algorithm.name=reptile", "--out",
        tmp_path / "r", match="algorithm.name",
    )  # fmt: skip
    assert "maml_trpo or trpo" in line


def _old(old_runs: Path, name: str, tmp_path: Path) -> Path:
    run = tmp_path / name
    shutil.copytree(old_runs / name, run)
    return run


@pytest.mark.parametrize("name, algorithm", [("sine_maml", "maml"), ("rl_nav2d_maml", "maml_trpo")])
def test_an_old_run_evaluates_and_resumes_bit_identically(
    capsys, tmp_path, old_runs, name, algorithm
):
    run = _old(old_runs, name, tmp_path)
    old = yaml.safe_load((run / "config.yaml").read_text())
    assert len([k for s in ("task", "model", "algorithm") for k in old[s]]) > 50  # every key
    config = load_config(str(run / "config.yaml"))
    assert config.algorithm.name == algorithm
    code, _, err = run_cli(capsys, "eval", run, "--checkpoint", "latest", "--tasks", 1)
    assert code == 0, err
    first = min(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))
    code, _, err = run_cli(capsys, "train", "--resume", run, "--checkpoint", first,
                           "--no-progress")  # fmt: skip
    assert code == 0, err
    then = load_file(old_runs / name / "model.safetensors")
    now = load_file(run / "model.safetensors")
    assert then.keys() == now.keys()
    assert all(torch.equal(then[k], now[k]) for k in then)
    assert (run / "config.yaml").read_text() == (old_runs / name / "config.yaml").read_text()


def test_an_old_config_drops_old_defaults_and_refuses_a_value_its_component_never_read(
    old_runs,
):
    old = yaml.safe_load((old_runs / "sine_maml" / "config.yaml").read_text())
    for section, defaults in OLD_DEFAULTS.items():  # every key the old flat sections had
        assert set(defaults) | {"name"} >= set(old[section]), section
    assert load_config(old).to_dict()["task"] == {"name": "sine", "k_support": 10, "k_query": 10}
    edited = {**old, "algorithm": {**old["algorithm"], "max_kl": 0.05}}
    with pytest.raises(ConfigError, match=r"^config key 'algorithm\.max_kl': 0\.05, but algo"):
        load_config(edited)
    rl = yaml.safe_load((old_runs / "rl_nav2d_maml" / "config.yaml").read_text())
    rl["algorithm"]["name"] = "pretrained"
    assert load_config(rl).algorithm.name == "trpo"


def test_switching_a_component_by_override_leaves_the_preset_s_keys_for_the_old_one():
    config = load_config("omniglot_maml_5w1s", ["model.name=resnet12", "task.image_size=16"])
    assert not hasattr(config.model, "global_pool") and config.model.channels
    with pytest.raises(ConfigError, match="model.global_pool"):
        load_config("omniglot_maml_5w1s", ["model.name=resnet12", "model.global_pool=true"])


def test_presets_show_documents_each_component_s_own_keys(capsys):
    code, out, _ = run_cli(capsys, "presets", "show", "rl_nav2d_maml")
    assert code == 0
    assert "max_kl:" in out and "TRPO: the KL trust region" in out
    code, out, _ = run_cli(capsys, "presets", "show", "omniglot_reptile_5w1s")
    assert "meta_step_size:" in out and "reptile: the interpolation" in out
    assert "max_kl" not in out and "k_support" not in out
