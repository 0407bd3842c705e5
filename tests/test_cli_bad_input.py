"""The catalogue of user mistakes: each exits with code 2, prints exactly one line on stderr
(no traceback), leaves no half-written run directory and overwrites nothing.

 1. reproduce sine --iterations 0
 2. a negative learning rate (train --set train.outer_lr=-0.001)
 3. a negative inner learning rate in reproduce (--set algorithm.inner_lr=-0.01)
 4. an unwritable --out (a path below a regular file)
 5. an existing non-empty --out without --force (its file stays intact)
 6. an unknown preset name
 7. an unknown config key (--set train.foo=1)
 8. a wrong type (--set train.iterations=abc)
 9. a --set without '='
10. negative inner steps
11. a YAML config with a syntax error
12. --device cuda on a machine without CUDA
13. --resume on a directory without checkpoints
14. a pickle file offered as a checkpoint (refused, never unpickled)
15. eval on a directory that is not a run
16. more ways than classes (Omniglot)
17. shots + queries > 20 images per class (Omniglot)
18. a missing data directory (names where it looked)
19. a corrupt Omniglot zip
20. an unknown data set for `data download`
21. --force on a non-empty folder that is not a mamlkit run (nothing deleted)
22. train_ways for an algorithm that trains on its test episodes (MAML)
23. a YAML config whose top level is not a mapping
24. an image size too small for four max-pooling blocks
25. train --resume combined with --out / --force
26. eval --checkpoint with a step that was not saved (names the saved ones)
27. train --resume with a --set that would change what was trained (config.yaml unchanged)
28. eval --inner-lr that is not positive, or per-step sizes for a supervised run
29. eval --samples (environment steps) for a supervised run, or negative
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mamlkit.build import build_learner, build_tasks
from mamlkit.cli import main
from mamlkit.evaluation import evaluate
from mamlkit.runner import load_run_config

from .conftest import data_root


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(capsys, *argv, match: str = ""):
    code, _, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("mamlkit: error:")
    assert match.lower() in lines[0].lower(), lines[0]
    return lines[0]


CONFIG_MISTAKES = [  # (catalogue number, preset, --set value, what the message must name)
    ("02", "sine_maml", "train.outer_lr=-0.001", "train.outer_lr"),
    ("07", "sine_maml", "train.foo=1", "train.foo"),
    ("08", "sine_maml", "train.iterations=abc", "train.iterations"),
    ("09", "sine_maml", "train.iterations", "key=value"),
    ("10", "sine_maml", "algorithm.inner_steps=-1", "algorithm.inner_steps"),
    ("22", "omniglot_maml_5w1s", "task.train_ways=20", "task.train_ways"),
]


@pytest.mark.parametrize(
    "number,preset,setting,match", CONFIG_MISTAKES, ids=[c[0] for c in CONFIG_MISTAKES]
)
def test_config_mistakes(capsys, tmp_path, number, preset, setting, match):
    out = tmp_path / "r"
    assert_user_error(capsys, "train", preset, "--set", setting, "--out", out, match=match)
    assert not out.exists()


def test_01_zero_iterations(capsys, tmp_path):
    out = tmp_path / "run"
    assert_user_error(
        capsys, "reproduce", "sine", "--out", out, "--iterations", "0", match="train.iterations"
    )
    assert not out.exists()


def test_03_negative_inner_lr_in_reproduce(capsys, tmp_path):
    out = tmp_path / "run"
    assert_user_error(
        capsys,
        "reproduce",
        "sine",
        "--out",
        out,
        "--set",
        "algorithm.inner_lr=-0.01",
        match="algorithm.inner_lr",
    )
    assert not out.exists()


def test_04_unwritable_out(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert_user_error(
        capsys, "reproduce", "sine", "--out", blocker / "run", "--iterations", "5", match="--out"
    )
    assert blocker.read_text() == "x"


def test_05_existing_out_without_force(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("precious")
    assert_user_error(
        capsys, "reproduce", "sine", "--out", out, "--iterations", "5", match="--force"
    )
    assert (out / "results.json").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


def test_06_unknown_preset(capsys, tmp_path):
    assert_user_error(
        capsys, "train", "omniglot_maml_7w3s", "--out", tmp_path / "r", match="omniglot_maml_7w3s"
    )
    assert not (tmp_path / "r").exists()


def test_11_yaml_syntax_error(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {iterations: 10\n  meta_batch: [")
    assert_user_error(capsys, "train", bad, "--out", tmp_path / "r", match="bad.yaml")
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_12_cuda_without_cuda(capsys, tmp_path):
    assert_user_error(
        capsys, "reproduce", "sine", "--out", tmp_path / "r", "--device", "cuda", match="cuda"
    )
    assert not (tmp_path / "r").exists()


def test_13_resume_without_checkpoint(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task: {name: sine}\n")
    assert_user_error(capsys, "train", "--resume", run, match="checkpoint")


def test_14_pickle_checkpoint_is_refused(capsys, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("task: {name: sine}\ntrain: {iterations: 10}\n")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    (run / "checkpoints" / "step-00000005.safetensors").write_bytes(pickle.dumps(Exploit()))
    assert_user_error(capsys, "train", "--resume", run, match="pickle")
    assert not marker.exists()


def test_15_eval_on_non_run(capsys, tmp_path):
    assert_user_error(capsys, "eval", tmp_path, match="not a mamlkit run")


def test_16_more_ways_than_classes(capsys, tmp_path):
    root = data_root()
    assert_user_error(
        capsys,
        "train",
        "omniglot_maml_5w1s",
        "--set",
        f"task.data_dir={root}/omniglot",
        "--set",
        "task.ways=5000",
        "--out",
        tmp_path / "r",
        match="task.ways",
    )
    assert not (tmp_path / "r").exists()


def test_17_shots_plus_queries_too_many(capsys, tmp_path):
    root = data_root()
    assert_user_error(
        capsys,
        "train",
        "omniglot_maml_5w1s",
        "--set",
        f"task.data_dir={root}/omniglot",
        "--set",
        "task.shots=15",
        "--set",
        "task.queries=10",
        "--out",
        tmp_path / "r",
        match="task.shots",
    )
    assert not (tmp_path / "r").exists()


def test_18_missing_data_directory(capsys, tmp_path):
    line = assert_user_error(
        capsys,
        "train",
        "omniglot_maml_5w1s",
        "--set",
        f"task.data_dir={tmp_path / 'nowhere'}",
        "--out",
        tmp_path / "r",
        match="nowhere",
    )
    assert "download" in line
    assert not (tmp_path / "r").exists()


def test_19_corrupt_zip(capsys, tmp_path, monkeypatch):
    root = Path(data_root()) / "omniglot"
    bad = tmp_path / "omniglot"
    bad.mkdir()
    shutil.copyfile(root / "images_evaluation.zip", bad / "images_evaluation.zip")
    data = (root / "images_background.zip").read_bytes()
    (bad / "images_background.zip").write_bytes(data[: len(data) // 2])
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path / "cache"))
    assert_user_error(
        capsys,
        "train",
        "omniglot_maml_5w1s",
        "--set",
        f"task.data_dir={bad}",
        "--out",
        tmp_path / "r",
        match="images_background.zip",
    )
    assert not (tmp_path / "r").exists()


def test_20_unknown_dataset_download(capsys, tmp_path):
    assert_user_error(capsys, "data", "download", "imagenet", "--dest", tmp_path, match="imagenet")


def test_console_script_prints_no_traceback(tmp_path):
    """The real entry point, in a subprocess: exit code 2 and one stderr line."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mamlkit.cli import console; console()",
            "reproduce",
            "sine",
            "--iterations",
            "0",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_21_force_on_a_foreign_folder(capsys, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    assert_user_error(
        capsys,
        "train",
        "sine_maml",
        "--out",
        home,
        "--force",
        "--set",
        "train.iterations=5",
        match="not a mamlkit run",
    )
    assert (home / "thesis.tex").read_text() == "years of work"


def test_23_yaml_not_a_mapping(capsys, tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    assert_user_error(capsys, "train", bad, "--out", tmp_path / "r", match="mapping")


def test_24_image_too_small_for_max_pooling(capsys, tmp_path):
    assert_user_error(
        capsys,
        "train",
        "omniglot_protonet_5w1s",
        "--set",
        "task.image_size=8",
        "--out",
        tmp_path / "r",
        match="task.image_size",
    )


def test_25_resume_with_out(capsys, tmp_path):
    assert_user_error(
        capsys, "train", "--resume", tmp_path, "--out", tmp_path / "x", match="--resume"
    )


def short_run_with_checkpoints(capsys, tmp_path) -> Path:
    """A finished 10-iteration sine run with checkpoints at steps 5 and 10."""
    run = tmp_path / "run"
    sets = ("train.iterations=10", "train.checkpoint_every=5", "train.tensorboard=false")
    argv = ["train", "sine_maml", "--out", run, "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    assert run_cli(capsys, *argv)[0] == 0
    return run


def test_26_eval_checkpoint_not_saved(capsys, tmp_path):
    run = short_run_with_checkpoints(capsys, tmp_path)
    line = assert_user_error(capsys, "eval", run, "--checkpoint", "7", match="--checkpoint")
    assert "5, 10" in line
    assert not list(run.glob("eval*.json"))


def test_27_resume_cannot_change_what_was_trained(capsys, tmp_path):
    run = short_run_with_checkpoints(capsys, tmp_path)
    before = (run / "config.yaml").read_text()
    line = assert_user_error(
        capsys,
        "train",
        "--resume",
        run,
        "--set",
        "algorithm.inner_lr=0.1",
        match="algorithm.inner_lr",
    )
    assert "train.iterations" in line  # names what may change
    assert (run / "config.yaml").read_text() == before


def test_28_eval_inner_lr(capsys, tmp_path):
    run = short_run_with_checkpoints(capsys, tmp_path)
    assert_user_error(capsys, "eval", run, "--inner-lr", "0", match="--inner-lr")
    line = assert_user_error(
        capsys, "eval", run, "--inner-lr", "0.1", "--inner-lr", "0.05", match="--inner-lr"
    )
    assert "one test-time step size" in line
    # 29: environment steps are RL's
    line = assert_user_error(capsys, "eval", run, "--samples", "4000", match="--samples")
    assert "RL runs" in line
    assert_user_error(capsys, "eval", run, "--samples", "-5", match="--samples")
    assert not list(run.glob("eval*.json"))
    # one step size is a supervised run's eval_inner_lr: the same numbers as a config saying so
    code, out, _ = run_cli(capsys, "eval", run, "--inner-lr", "0.003", "--tasks", "20", "--json")
    assert code == 0
    record = json.loads(out)
    assert record["inner_lr"] == [0.003]
    assert json.loads((run / "eval-inner-lr-0.003-tasks-20.json").read_text()) == record
    config = load_run_config(run, ["algorithm.eval_inner_lr=0.003"])
    learner = build_learner(config)
    learner.load_state_dict(load_file(run / "model.safetensors"))
    expected = evaluate(
        learner,
        build_tasks(config, "test"),
        20,
        steps=config.eval.steps,
        metric="mse",
        seed=config.eval.seed,
        chunk=config.eval.chunk,
    )[-1]
    assert record["mse"] == pytest.approx(expected["mse"], rel=1e-12)
