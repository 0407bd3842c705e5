"""One registry per kind: an algorithm, a task or a model is one registration (its own file)
plus a preset; unknown names are one-line errors listing the registered ones. A task states
what its batches are (and so which class an algorithm builds for it), an RL task its own
environment, and its evaluation files and figures are its own: no if-chain on names."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from mamlkit.algorithms import (
    ALGORITHMS,
    MAML,
    AlgorithmSpec,
    PretrainedClassifier,
    PretrainedRegression,
    learner_class,
    register,
)
from mamlkit.build import build_learner, build_model, build_tasks, metric_for
from mamlkit.cli import main
from mamlkit.config import load_config
from mamlkit.errors import ConfigError
from mamlkit.models import MLP, MODELS, register_model
from mamlkit.registry import Registry
from mamlkit.rl import MAMLTRPO, Navigation2D, NavigationTasks
from mamlkit.rl.build import rl_split
from mamlkit.rl.plots import rl_run_plots
from mamlkit.runner import eval_run, train_run
from mamlkit.tasks import TASKS, ClassBatches, EpisodeTasks, TaskBatch, register_task, task_spec

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
    monkeypatch.setattr(ALGORITHMS, "_specs", dict(ALGORITHMS._specs))


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


# ---- algorithms: the same Registry of specs; pretrained's classes, one per batch kind ----


def test_algorithms_are_a_registry_of_specs_like_tasks_and_models():
    assert isinstance(ALGORITHMS, Registry) and isinstance(ALGORITHMS["maml"], AlgorithmSpec)
    assert list(ALGORITHMS) == [
        "fomaml", "maml", "anil", "mamlpp", "metasgd", "pretrained", "protonet", "reptile",
        "maml_trpo", "trpo",
    ]  # fmt: skip
    cls, overrides = ALGORITHMS["fomaml"]  # older code unpacks (class, overrides)
    assert cls is MAML and overrides == {"first_order": True}
    with pytest.raises(ConfigError, match=r"config key 'algorithm.name': unknown algorithm 'x'"):
        ALGORITHMS.lookup("x")


def test_pretrained_is_one_class_per_kind_of_batch():
    spec = ALGORITHMS["pretrained"]
    assert spec.learner("points")[0] is PretrainedRegression
    assert spec.learner("episodes")[0] is PretrainedClassifier
    assert not spec.serves("trajectories") or spec.learner("trajectories")[0] in (
        PretrainedRegression, PretrainedClassifier
    )  # an RL task's pretrained baseline is its own learner, trpo (an alias of the task's)
    assert {n: s.batches for n, s in TASKS.items()} == {
        "sine": "points", "omniglot": "episodes", "miniimagenet": "episodes",
        "imagefolder": "episodes", "nav2d": "trajectories", "cheetah_vel": "trajectories",
        "cheetah_dir": "trajectories",
    }  # fmt: skip
    sine = load_config("sine_pretrained", ["train.iterations=1"])
    assert learner_class(sine) is PretrainedRegression
    assert type(build_learner(sine)) is PretrainedRegression
    nav = load_config("rl_nav2d_pretrained")
    assert build_learner(nav).inner_steps == 0
    assert build_learner(load_config("rl_nav2d_maml")).inner_steps == 1


def test_an_episode_task_asks_the_learner_what_it_trains_on(registries):
    """A user's episode task gives the pretrained classifier class minibatches (the learner
    class says it trains on examples), every other learner episodes."""

    @register("examples-maml")
    class ExamplesMAML(MAML):
        trains_on = "examples"

    images = torch.rand(6, 4, 1, 8, 8).numpy()

    @register_task("tiny_episodes", metric="accuracy", inputs="image", channels=1)
    def build_tiny(config, split):
        from mamlkit.tasks.builtin import episodes

        return episodes(config, split, images, default_rotations=False)

    base = {"task": {"name": "tiny_episodes", "ways": 2, "shots": 1, "queries": 1,
                     "batch_size": 4, "image_size": 28}, "model": {"name": "conv4"}}  # fmt: skip
    for name, kind in [("pretrained", ClassBatches), ("maml", EpisodeTasks),
                       ("examples-maml", ClassBatches)]:  # fmt: skip
        config = load_config({**base, "algorithm": {"name": name}})
        assert isinstance(build_tasks(config, "train"), kind), name
        assert isinstance(build_tasks(config, "test"), EpisodeTasks), name


def test_an_algorithm_registers_a_class_for_one_kind_of_batch(registries):
    @register("twice", batches="points")
    class Points(MAML):
        pass

    @register("twice")
    class Default(MAML):
        pass

    spec = ALGORITHMS["twice"]
    assert spec.learner("points")[0] is Points and spec.learner("episodes")[0] is Default
    register("twice", batches="points")(Points)  # a reload: the same class
    with pytest.raises(ValueError, match="already registered for points"):
        register("twice", batches="points")(Default)
    with pytest.raises(ValueError, match="already registered"):
        register("maml")(Points)
    del ALGORITHMS["twice"]
    assert "twice" not in ALGORITHMS


# ---- a new RL task from outside the package: its env and goals, no if-chain edited ----


@dataclass(frozen=True)
class SlowNavigation2D(Navigation2D):
    """2D navigation whose moves are half as long (a variant of mamlkit's environment)."""

    max_action: float = 0.05


def build_slow_env(config):
    return SlowNavigation2D(horizon=config.task.horizon)


def build_far_goals(config, split):
    return rl_split(NavigationTasks(low=0.6, high=0.9), split)  # goals away from the start


RL_TINY = {
    "task": {"name": "far_nav2d", "horizon": 5, "rollouts": 2, "eval_rollouts": 2},
    "model": {"name": "mlp", "hidden": [8]},
    "algorithm": {"name": "maml", "inner_lr": 0.1, "inner_steps": 1},
    "train": {"iterations": 1, "meta_batch": 2, "tensorboard": False, "checkpoint_every": 100},
    "eval": {"tasks": 2, "steps": 1, "chunk": 2},
}


@pytest.fixture
def far_nav2d(registries):
    register_task(
        "far_nav2d",
        metric="return",
        inputs="vector",
        batches="trajectories",
        algorithms=("maml_trpo", "trpo"),
        algorithm_aliases={"maml": "maml_trpo", "pretrained": "trpo"},
        env=build_slow_env,
        plots=rl_run_plots,
    )(build_far_goals)


def test_a_new_rl_task_builds_trains_evaluates_and_plots(far_nav2d, tmp_path, capsys):
    config = load_config(RL_TINY)
    assert task_spec("far_nav2d").rl and metric_for(config) == "return"
    goals = build_tasks(config, "train").sample(8, torch.Generator().manual_seed(0)).task
    assert bool(((goals >= 0.6) & (goals <= 0.9)).all())
    learner = build_learner(config)
    assert isinstance(learner, MAMLTRPO) and learner.inner_steps == 1
    assert isinstance(learner.env, SlowNavigation2D) and learner.env.max_action == 0.05
    pretrained = load_config({**RL_TINY, "algorithm": {"name": "pretrained"}})
    assert build_learner(pretrained).inner_steps == 0
    run = tmp_path / "run"
    assert train_run(config, run, progress=False)["step"] == 1
    record = eval_run(run)
    assert [s["steps"] for s in record["by_step"]] == [0, 1]
    assert record["trajectories_per_step"] == 2
    assert json.loads((run / "eval.json").read_text()) == record
    assert main(["plot", str(run)]) == 0
    assert f"wrote {run / 'returns.png'}" in capsys.readouterr().out
    assert not (run / "trajectories.png").exists()  # nav2d's own figure, not this task's


def test_an_rl_task_names_its_environment(registries):
    # without an env builder, the task's settings build it; the base RL settings cannot
    from mamlkit.rl.settings import RLTaskSettings

    register_task("no_env", metric="return", inputs="vector", rl=True)(build_far_goals)
    config = load_config({**RL_TINY, "task": {"name": "no_env", "horizon": 5}})
    with pytest.raises(NotImplementedError, match="builds no environment"):
        task_spec("no_env").build_env(config)
    assert type(config.task) is RLTaskSettings
    with pytest.raises(ValueError, match="batches must be one of"):
        register_task("odd", metric="mse", inputs="vector", batches="graphs")(build_far_goals)


# ---- evaluation files: named by the task, as before ----


def test_eval_files_keep_their_names_for_sine_episodes_and_nav2d():
    sine, omniglot, nav2d = (TASKS[n] for n in ("sine", "omniglot", "nav2d"))
    for task in (sine, omniglot, nav2d):
        assert task.eval_file_name() == "eval.json"
        assert task.eval_file_name(tasks=10) == "eval-tasks-10.json"
        assert task.eval_file_name(step=20) == "eval-step-00000020.json"
        assert task.eval_file_name(steps=5, split="val") == "eval-steps-5-val.json"
    assert sine.eval_file_name(inner_lr=[0.003]) == "eval-inner-lr-0.003.json"
    assert omniglot.eval_file_name(alphabet="within") == "eval-within-alphabet.json"
    assert omniglot.eval_file_name(alphabet="any", step=3) == "eval-any-alphabet-step-00000003.json"
    assert nav2d.eval_file_name(samples=4000) == "eval-samples-4000.json"
    assert nav2d.eval_file_name(inner_lr=[0.1, 0.05], split="val") == (
        "eval-inner-lr-0.1-0.05-val.json"
    )
    with pytest.raises(ValueError, match="no alphabets"):
        sine.eval_file_name(alphabet="within")
    with pytest.raises(ValueError, match="no environment samples"):
        omniglot.eval_file_name(samples=10)


def test_eval_records_hold_what_their_task_has():
    config = load_config("sine_maml")
    assert TASKS["sine"].eval_record(config, []) == {"k_shot": config.task.k_support}
    config = load_config("omniglot_maml_5w1s")
    assert TASKS["omniglot"].eval_record(config, []) == {"ways": 5, "shots": 1}
    config = load_config("rl_nav2d_maml", ["task.eval_samples=100"])
    rows = [{"steps": 0, "return": -1.0}]
    assert TASKS["nav2d"].eval_record(config, rows) == {
        "by_step": rows, "trajectories_per_step": 40, "samples_per_step": 100
    }  # fmt: skip


# ---- no dispatch on names outside the files that define them ----

SRC = Path(__file__).resolve().parents[1] / "src" / "mamlkit"
NAME_TESTS = {
    # pattern -> the files that define the name (and so may test it)
    r"""[=!]=\s*["']pretrained["']|["']pretrained["']\s*[=!]=""": {"algorithms/pretrained.py"},
    r"""[=!]=\s*["']nav2d["']|["']nav2d["']\s*[=!]=""": {"tasks/builtin.py", "rl/build.py"},
    r"""metric\s*[=!]=\s*["']return["']""": set(),
}


@pytest.mark.parametrize("pattern", NAME_TESTS)
def test_no_module_dispatches_on_pretrained_nav2d_or_the_return_metric(pattern):
    found = [
        f"{path.relative_to(SRC).as_posix()}:{n}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).as_posix() not in NAME_TESTS[pattern]
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(pattern, line)
    ]
    assert not found, "\n".join(found)
