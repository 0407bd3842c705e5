"""One registry per kind: a task or a model is one registration (its own file) plus a
preset; unknown names are one-line errors listing the registered ones."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from mamlkit.build import build_learner, build_model, build_tasks, metric_for
from mamlkit.config import load_config
from mamlkit.errors import ConfigError
from mamlkit.models import MLP, MODELS, register_model
from mamlkit.runner import eval_run, train_run
from mamlkit.tasks import TASKS, TaskBatch, register_task

from .test_cli_bad_input import assert_user_error

# ---- what a user's file holds: a task distribution, its builder, a model ----


@dataclass(frozen=True)
class LinearTasks:
    """y = a·x + b with a, b ~ U[-1, 1]; K support and K query points per task."""

    k_support: int = 5
    k_query: int = 5

    def sample(self, tasks: int, generator: torch.Generator) -> TaskBatch:
        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, device=generator.device) * 2 - 1

        slope, intercept = uniform(tasks, 1, 1), uniform(tasks, 1, 1)
        xs, xq = uniform(tasks, self.k_support, 1), uniform(tasks, self.k_query, 1)
        return TaskBatch(xs, slope * xs + intercept, xq, slope * xq + intercept)


def build_linear_tasks(config, split):
    return LinearTasks(config.task.k_support, config.task.k_query)


def build_wide_mlp(config, out_features):
    return MLP((1, 64, 1))


PRESET = """\
task: {name: linear, k_support: 5, k_query: 5}
model: {name: wide_mlp}
algorithm: {name: maml, inner_lr: 0.01}
train: {iterations: 2, meta_batch: 3, tensorboard: false, checkpoint_every: 100}
eval: {tasks: 4, steps: 1}
"""


@pytest.fixture
def registries(monkeypatch):
    """Registrations made by a test are undone after it."""
    monkeypatch.setattr(TASKS, "_specs", dict(TASKS._specs))
    monkeypatch.setattr(MODELS, "_specs", dict(MODELS._specs))


@pytest.fixture
def linear(registries, tmp_path):
    register_task("linear", metric="mse", inputs="vector")(build_linear_tasks)
    register_model("wide_mlp", inputs="vector")(build_wide_mlp)
    preset = tmp_path / "linear_maml.yaml"
    preset.write_text(PRESET)
    return preset


def test_a_registered_task_and_model_are_buildable_from_a_preset(linear):
    config = load_config(str(linear))
    tasks = build_tasks(config, "train")
    assert isinstance(tasks, LinearTasks) and tasks.k_support == 5
    assert metric_for(config) == "mse"
    model = build_model(config)
    assert isinstance(model, MLP) and model.net[0].out_features == 64
    learner = build_learner(config)
    batch = tasks.sample(config.train.meta_batch, torch.Generator().manual_seed(0))
    learner.meta_loss(*batch).backward()


def test_a_registered_task_trains_and_evaluates(linear, tmp_path):
    run = tmp_path / "run"
    train_run(load_config(str(linear)), run, progress=False)
    record = eval_run(run)
    assert record["k_shot"] == 5 and record["tasks"] == 4
    assert json.loads((run / "eval.json").read_text()) == record


def test_a_model_serves_the_tasks_whose_inputs_it_takes(registries):
    register_task("tiny_images", metric="accuracy", inputs="image", channels=1)(build_linear_tasks)
    config = load_config({"task": {"name": "tiny_images"}, "model": {"name": "mlp"}})
    match = r"'model\.name'.*needs model\.name=conv4 or resnet12$"
    with pytest.raises(ConfigError, match=match) as exc:
        build_model(config)
    assert "\n" not in str(exc.value)
    config = load_config({"task": {"name": "sine"}, "model": {"name": "conv4"}})
    with pytest.raises(ConfigError, match=r"'sine' has vector inputs; it needs model\.name=mlp"):
        build_model(config)
    config = load_config({"task": {"name": "tiny_images"}, "model": {"name": "conv4"}})
    first = next(m for m in build_model(config).modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1  # the task's default


def test_an_input_kind_no_model_takes_points_to_model_target(registries):
    register_task("graphs", metric="accuracy", inputs="graph")(build_linear_tasks)
    config = load_config({"task": {"name": "graphs"}, "model": {"name": "mlp"}})
    with pytest.raises(ConfigError, match="model.target='package.module:ClassName'"):
        build_model(config)


@pytest.mark.parametrize("kind, registry", [("task", TASKS), ("model", MODELS)])
def test_an_unknown_name_lists_the_registered_ones(kind, registry):
    with pytest.raises(ConfigError) as exc:
        load_config({kind: {"name": "nope"}})
    message = str(exc.value)
    assert message == f"config key '{kind}.name': unknown {kind} 'nope' ({', '.join(registry)})"


def test_an_unknown_name_lists_a_new_registration_too(linear):
    with pytest.raises(ConfigError, match=r"unknown task 'nope' \(sine, .*, linear\)$"):
        load_config({"task": {"name": "nope"}})


def test_an_unknown_task_on_the_command_line_is_one_line(capsys, tmp_path):
    err = assert_user_error(
        capsys, "train", "sine_maml", "--set", "task.name=nope", "--out", tmp_path / "run"
    )
    assert "unknown task 'nope' (sine, omniglot, miniimagenet, imagefolder, nav2d" in err
    assert not (tmp_path / "run").exists()


def test_a_name_is_registered_once(registries):
    register_task("linear", metric="mse", inputs="vector")(build_linear_tasks)
    register_task("linear", metric="mse", inputs="vector")(build_linear_tasks)  # a reload
    with pytest.raises(ValueError, match="already registered"):
        register_task("linear", metric="mse", inputs="vector")(build_wide_mlp)
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp", inputs="vector")(build_wide_mlp)
    with pytest.raises(ValueError, match="metric"):
        register_task("bad", metric="f1", inputs="vector")(build_linear_tasks)


def test_rl_tasks_is_the_registry_s_rl_entries():
    from mamlkit.config import RL_TASKS

    assert RL_TASKS == ("nav2d", "cheetah_vel", "cheetah_dir")
    assert RL_TASKS == tuple(name for name, spec in TASKS.items() if spec.rl)
    assert all(TASKS[name].metric == "return" for name in RL_TASKS)


def test_the_builtin_registrations():
    assert list(TASKS) == [
        "sine", "omniglot", "miniimagenet", "imagefolder", "nav2d", "cheetah_vel", "cheetah_dir"
    ]  # fmt: skip
    assert list(MODELS) == ["mlp", "conv4", "resnet12"]
    assert {n: s.metric for n, s in TASKS.items() if not s.rl} == {
        "sine": "mse",
        "omniglot": "accuracy",
        "miniimagenet": "accuracy",
        "imagefolder": "accuracy",
    }
    assert {n: s.channels for n, s in TASKS.items() if s.inputs == "image"} == {
        "omniglot": 1,
        "miniimagenet": 3,
        "imagefolder": 3,
    }


def test_rl_tasks_are_registered_without_importing_rl():
    """The RL builders are named by import path: validating a supervised config imports
    no mamlkit.rl; an RL one imports its learners' package (maml_trpo, trpo) but never
    MuJoCo; building nav2d's tasks needs no MuJoCo."""
    code = (
        "import sys\n"
        "from mamlkit.config import load_config\n"
        "from mamlkit.build import build_tasks\n"
        "load_config('sine_maml')\n"
        "assert 'mamlkit.rl' not in sys.modules\n"
        "load_config('rl_cheetah_vel_maml')\n"
        "assert 'mujoco' not in sys.modules and 'mamlkit.rl.cheetah' not in sys.modules\n"
        "build_tasks(load_config('rl_nav2d_maml'))\n"
        "assert 'mamlkit.rl.build' in sys.modules and 'mujoco' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_user_model_is_a_plain_nn_module(registries):
    @register_model("linear_head", inputs="vector")
    def build_linear_head(config, out_features):
        return nn.Sequential(nn.Linear(1, 1))

    config = load_config({"model": {"name": "linear_head"}})
    assert isinstance(build_model(config), nn.Sequential)
