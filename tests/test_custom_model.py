"""``model.target`` builds any importable ``nn.Module``; a run directory always describes
its model; a target from outside mamlkit is imported on eval/resume only with --trust-code
(issue 11, capability 3 and item 9)."""

from __future__ import annotations

import json

import pytest
import torch.nn.functional as F

from mamlkit import MAML, SineTasks, Trainer, load_config
from mamlkit.build import build_learner
from mamlkit.errors import UserError
from mamlkit.runner import eval_run

from .custom_models import TinyRegressor
from .test_cli_bad_input import assert_user_error, run_cli

TARGET = "tests.custom_models:TinyRegressor"
SHORT = ["train.iterations=3", "train.meta_batch=2", "train.tensorboard=false", "eval.tasks=4"]


def test_target_builds_the_named_module_with_its_kwargs():
    config = load_config("sine_maml", [f"model.target={TARGET}", "model.kwargs={hidden: 5}"])
    learner = build_learner(config)
    assert isinstance(learner.model, TinyRegressor)
    assert learner.model.net[0].out_features == 5
    factory = load_config("sine_maml", ["model.target=tests.custom_models:make_regressor"])
    assert isinstance(build_learner(factory).model, TinyRegressor)


def test_cli_run_with_a_target_records_it_and_eval_needs_trust_code(capsys, tmp_path):
    run = tmp_path / "run"
    args = ["--set", f"model.target={TARGET}", "--set", "model.kwargs.hidden=6"]
    code, _, err = run_cli(
        capsys, "train", "sine_maml", *args, *_sets(), "--out", run, "--no-progress"
    )
    assert code == 0, err
    saved = load_config(str(run / "config.yaml"))
    assert (saved.model.target, saved.model.kwargs) == (TARGET, {"hidden": 6})

    assert_user_error(capsys, "eval", run, match="--trust-code")
    assert not (run / "eval.json").exists()
    assert_user_error(capsys, "train", "--resume", run, match="--trust-code")

    code, out, err = run_cli(capsys, "eval", run, "--trust-code", "--json")
    assert code == 0, err
    assert json.loads(out)["tasks"] == 4 and (run / "eval.json").is_file()


def _sets():
    return [a for s in SHORT for a in ("--set", s)]


@pytest.mark.parametrize(
    "target,match",
    [
        ("tests.no_such_module:Net", "cannot import"),
        ("tests.custom_models:Missing", "has no"),
        ("tests.custom_models:NotAModule", "not an nn.Module"),
        ("tests.custom_models:not_a_model", "not an nn.Module"),
        ("no colon here", "package.module:ClassName"),
    ],
)
def test_bad_targets_are_one_line_and_write_nothing(capsys, tmp_path, target, match):
    out = tmp_path / "run"
    line = assert_user_error(
        capsys,
        "train",
        "sine_maml",
        "--set",
        f"model.target={target}",
        "--out",
        out,
        match=match,
    )
    assert "model.target" in line
    assert not out.exists()


def test_bad_target_kwargs_name_the_key(capsys, tmp_path):
    assert_user_error(
        capsys,
        "train",
        "sine_maml",
        "--set",
        f"model.target={TARGET}",
        "--set",
        "model.kwargs.width=3",
        "--out",
        tmp_path / "r",
        match="model.kwargs",
    )
    assert not (tmp_path / "r").exists()


def test_trainer_refuses_a_config_that_does_not_describe_its_model(tmp_path):
    """Before: config.yaml said the default sine MLP, so `mamlkit eval` failed later."""
    config = load_config("sine_maml", SHORT)
    learner = MAML(TinyRegressor(4), F.mse_loss, 0.01)
    with pytest.raises(UserError, match="model.target"):
        Trainer(learner, SineTasks(), config, tmp_path / "run", progress=False).fit()
    assert not (tmp_path / "run").exists()


def test_trainer_run_of_a_custom_model_described_by_target_evaluates(tmp_path):
    config = load_config(
        "sine_maml", [*SHORT, f"model.target={TARGET}", "model.kwargs={hidden: 4}"]
    )
    learner = MAML(TinyRegressor(4), F.mse_loss, 0.01)
    Trainer(learner, SineTasks(), config, tmp_path / "run", progress=False).fit()
    assert {"mse", "ci95"} <= set(eval_run(tmp_path / "run", trust_code=True))
    with pytest.raises(UserError, match="trust"):
        eval_run(tmp_path / "run")


def test_a_target_inside_mamlkit_needs_no_trust(tmp_path):
    config = load_config(
        "sine_maml", [*SHORT, "model.target=mamlkit.models:MLP", "model.kwargs={sizes: [1, 8, 1]}"]
    )
    learner = build_learner(config)
    Trainer(learner, SineTasks(), config, tmp_path / "run", progress=False).fit()
    assert "mse" in eval_run(tmp_path / "run")
