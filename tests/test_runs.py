"""Run directories: exact resume after SIGKILL, divergence handling, safe checkpoints,
run listing and plots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mamlkit import MAML, SineTasks
from mamlkit.checkpoint import load_checkpoint, save_checkpoint
from mamlkit.cli import main
from mamlkit.config import load_config
from mamlkit.errors import DivergenceError, UserError
from mamlkit.models import MLP
from mamlkit.runner import list_runs
from mamlkit.training import Trainer

SRC = str(Path(__file__).parents[1] / "src")
SETS = [
    "train.iterations=2500",
    "train.checkpoint_every=400",
    "train.log_every=100",
    "train.tensorboard=false",
    "train.seed=3",
]


def cli(*argv) -> subprocess.Popen:
    args = [sys.executable, "-c", "from mamlkit.cli import console; console()", *map(str, argv)]
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def train_args(out):
    args = ["train", "sine_maml", "--out", out, "--no-progress"]
    for s in SETS:
        args += ["--set", s]
    return args


def wait_for_first_checkpoint(proc: subprocess.Popen, run: Path) -> None:
    """Block until the training process has written a checkpoint (and is still running)."""
    deadline = time.time() + 120
    while not list((run / "checkpoints").glob("step-*.safetensors")):
        assert proc.poll() is None, "run finished before it could be stopped"
        assert time.time() < deadline
        time.sleep(0.02)


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert cli(*train_args(straight)).wait(timeout=300) == 0

    proc = cli(*train_args(killed))
    wait_for_first_checkpoint(proc, killed)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "model.safetensors").exists()
    assert [r["status"] for r in list_runs(tmp_path) if r["run"] == str(killed)] == ["crashed"]

    resumed = cli("train", "--resume", killed, "--no-progress")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert (killed / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((killed / "status.json").read_text())["status"] == "finished"


class TroubleAt(MAML):
    """A MAML that runs into trouble at a given iteration: its loss turns NaN (a stand-in
    for divergence) or the user presses Ctrl-C."""

    def __init__(self, trouble, step, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trouble, self.step, self.calls = trouble, step, 0

    def meta_forward(self, batch, iteration=0):
        self.calls += 1
        if self.calls == self.step and self.trouble == "interrupt":
            raise KeyboardInterrupt
        out = super().meta_forward(batch, iteration)
        if self.calls == self.step and self.trouble == "nan":
            out.loss = out.loss * float("nan")
        return out


def test_divergence_stops_with_iteration_and_keeps_last_checkpoint(tmp_path):
    config = load_config(
        "sine_maml", ["train.iterations=20", "train.checkpoint_every=5", "train.tensorboard=false"]
    )
    learner = TroubleAt("nan", 8, MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    with pytest.raises(DivergenceError, match="iteration 8"):
        Trainer(learner, SineTasks(), config, tmp_path / "run", progress=False).fit()
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("*.safetensors"))
    assert [p.name for p in ckpts] == ["step-00000005.safetensors"]
    tensors, meta = load_checkpoint(ckpts[0])
    assert meta["step"] == 5 and all(
        torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()
    )
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "diverged"


def test_interrupt_marks_the_run_interrupted_and_it_resumes(tmp_path):
    config = load_config(
        "sine_maml", ["train.iterations=12", "train.checkpoint_every=5", "train.tensorboard=false"]
    )
    learner = TroubleAt("interrupt", 8, MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    with pytest.raises(KeyboardInterrupt):
        Trainer(learner, SineTasks(), config, tmp_path / "run", progress=False).fit()
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] == 7
    assert [r["status"] for r in list_runs(tmp_path)] == ["interrupted"]

    fresh = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    Trainer(fresh, SineTasks(), config, tmp_path / "run", progress=False).fit(resume=True)
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "finished"


def test_sigterm_stops_at_an_iterations_end_with_a_checkpoint_of_it(tmp_path):
    """`timeout`, `kill` or a cluster's preemption stop a run the way Ctrl-C does: at the end
    of the running iteration, with a checkpoint of it, so that nothing trained is lost; the
    message says where a resume continues, and the resumed run is the uninterrupted one."""
    run = tmp_path / "run"
    proc = cli(*train_args(run))
    wait_for_first_checkpoint(proc, run)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    err = proc.stderr.read().decode().strip().splitlines()
    status = json.loads((run / "status.json").read_text())
    step = status["step"]
    assert status["status"] == "interrupted" and step >= 400
    assert err[-1] == (
        f"mamlkit: interrupted after iteration {step} (signal {signal.SIGTERM.value}), its "
        f"checkpoint written; `mamlkit train --resume {run}` continues from step {step}"
    )
    assert (run / "checkpoints" / f"step-{step:08d}.safetensors").is_file()
    assert not (run / "model.safetensors").exists()
    # a resume continues from there (exactly: tests/test_max_time.py resumes from such
    # off-schedule checkpoints bit-identically)
    resumed = cli("train", "--resume", run, "--no-progress", "--set", f"train.iterations={step}")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    (record,) = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert record["step"] == step


def test_divergence_through_cli_is_exit_2(tmp_path, capsys):
    code = main(
        [
            "train",
            "sine_maml",
            "--out",
            str(tmp_path / "r"),
            "--no-progress",
            "--set",
            "algorithm.inner_lr=1e30",
            "--set",
            "train.iterations=5",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "iteration 1" in err[0]


def test_checkpoints_keep_last_n_and_are_safetensors(tmp_path):
    config = load_config(
        "sine_maml",
        [
            "train.iterations=12",
            "train.checkpoint_every=2",
            "train.keep_checkpoints=3",
            "train.log_every=4",
        ],
    )
    learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    Trainer(learner, SineTasks(), config, tmp_path / "run", progress=False).fit()
    run = tmp_path / "run"
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [
        "step-00000008.safetensors",
        "step-00000010.safetensors",
        "step-00000012.safetensors",
    ]
    for path in (run / "checkpoints").iterdir():
        assert path.read_bytes()[8:9] == b"{"  # safetensors header, not a pickle
    assert (run / "config.yaml").is_file() and (run / "env.json").is_file()
    assert json.loads((run / "env.json").read_text())["torch"] == torch.__version__
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(run.rglob("*.tmp"))


def test_load_checkpoint_refuses_pickle_and_foreign_files(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (Path.write_text, (marker, "x"))

    torch.save({"weights": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="pickle"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    save_checkpoint(tmp_path / "ok.safetensors", {"w": torch.ones(2)}, {"step": 1})
    tensors, meta = load_checkpoint(tmp_path / "ok.safetensors")
    assert meta == {"step": 1} and torch.equal(tensors["w"], torch.ones(2))


def test_runs_listing_and_plot(tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "sine_maml",
                "--out",
                str(tmp_path / "runs" / "a"),
                "--no-progress",
                "--set",
                "train.iterations=20",
                "--set",
                "train.log_every=5",
                "--set",
                "eval.tasks=20",
            ]
        )
        == 0
    )
    assert main(["eval", str(tmp_path / "runs" / "a")]) == 0
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "finished" in out and "eval mse" in out
    assert main(["plot", str(tmp_path / "runs" / "a")]) == 0
    assert (tmp_path / "runs" / "a" / "learning_curves.png").stat().st_size > 1000
    ev = json.loads((tmp_path / "runs" / "a" / "eval.json").read_text())
    assert ev["tasks"] == 20 and ev["split"] == "test" and ev["mse"] > 0


def test_force_replaces_an_old_run_completely(tmp_path, capsys):
    run = tmp_path / "run"
    base = [
        "train",
        "sine_maml",
        "--out",
        str(run),
        "--no-progress",
        "--set",
        "train.tensorboard=false",
        "--set",
        "train.log_every=5",
    ]
    assert main([*base, "--set", "train.iterations=20", "--set", "train.checkpoint_every=10"]) == 0
    assert main(["eval", str(run), "--tasks", "5"]) == 0
    assert (run / "eval-tasks-5.json").is_file()
    assert (
        main(
            [*base, "--force", "--set", "train.iterations=10", "--set", "train.checkpoint_every=5"]
        )
        == 0
    )
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-00000005.safetensors", "step-00000010.safetensors"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10]
    assert not (run / "eval-tasks-5.json").exists()


def test_data_dir_is_a_literal_path(tmp_path, capsys):
    """--data-dir is a path, never YAML: a folder named 2024 or null is still a path."""
    code = main(
        [
            "train",
            "omniglot_maml_5w1s",
            "--data-dir",
            str(tmp_path / "2024"),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "2024" in err and "expected str" not in err


def test_eval_of_checkpoints_of_an_unfinished_run(tmp_path, capsys):
    """An interrupted (or still running) run is evaluated from its checkpoints; the record
    names the training iteration and does not replace the final eval.json."""
    run = tmp_path / "run"
    args = ["train", "sine_maml", "--out", str(run), "--no-progress"]
    sets = ("train.iterations=30", "train.checkpoint_every=10", "train.tensorboard=false")
    for s in (*sets, "eval.tasks=5"):
        args += ["--set", s]
    assert main(args) == 0
    (run / "model.safetensors").unlink()  # as if the run had not finished
    assert main(["eval", str(run)]) == 2
    assert "--checkpoint latest" in capsys.readouterr().err

    assert main(["eval", str(run), "--checkpoint", "latest"]) == 0
    latest = json.loads((run / "eval-step-00000030.json").read_text())
    assert latest["iteration"] == 30 and latest["tasks"] == 5 and latest["mse"] > 0
    assert main(["eval", str(run), "--checkpoint", "20"]) == 0
    older = json.loads((run / "eval-step-00000020.json").read_text())
    assert older["iteration"] == 20 and older["mse"] != latest["mse"]
    assert not (run / "eval.json").exists()
    capsys.readouterr()
    assert main(["runs", str(tmp_path)]) == 0
    assert "eval@30 mse" in capsys.readouterr().out


def test_resume_extends_a_finished_run_exactly(tmp_path):
    """--resume --set train.iterations=N continues a finished run as if it had been asked for
    N iterations from the start (bit-identical), and records the new length."""
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    base = [
        "train",
        "sine_maml",
        "--no-progress",
        "--set",
        "train.checkpoint_every=400",
        "--set",
        "train.log_every=100",
        "--set",
        "train.tensorboard=false",
    ]
    assert cli(*base, "--out", straight, "--set", "train.iterations=1200").wait(timeout=300) == 0
    assert cli(*base, "--out", extended, "--set", "train.iterations=800").wait(timeout=300) == 0
    more = cli(
        "train",
        "--resume",
        extended,
        "--no-progress",
        "--set",
        "train.iterations=1200",
        "--set",
        "train.threads=1",
    )
    assert more.wait(timeout=300) == 0, more.stderr.read().decode()
    assert (extended / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    a, b = load_file(straight / "model.safetensors"), load_file(extended / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "iterations: 1200" in (extended / "config.yaml").read_text()


def test_zero_iterations_is_the_initialisation_and_evaluates(tmp_path, capsys):
    """``train.iterations=0``: the run holds the untrained model (the papers' "random
    init" baseline), and ``mamlkit eval`` scores it like any run."""
    run = tmp_path / "init"
    sets = ["--set", "train.iterations=0", "--set", "train.seed=5", "--set", "eval.tasks=20"]
    assert main(["train", "sine_maml", "--out", str(run), "--no-progress", *sets]) == 0
    torch.manual_seed(5)
    fresh = MAML(MLP((1, 40, 40, 1)), F.mse_loss, inner_lr=0.01)
    saved, meta = load_checkpoint(run / "model.safetensors")
    assert meta["step"] == 0
    for name, value in fresh.state_dict().items():
        assert torch.equal(saved[name], value), name
    assert main(["eval", str(run)]) == 0
    assert json.loads((run / "eval.json").read_text())["tasks"] == 20


@pytest.mark.parametrize("where", ["callback_end", "final_weights"])
def test_a_failure_after_the_last_iteration_marks_the_run_crashed(tmp_path, monkeypatch, where):
    """A full disk that shows only when the callbacks close (TensorBoard flushes then) or
    when the final weights are written: the run says crashed, not running."""
    import errno

    import mamlkit.rundir.directory as directory
    from mamlkit.callbacks import Callback

    class FailsAtEnd(Callback):
        def on_end(self, trainer):
            raise OSError(errno.ENOSPC, "No space left on device")

    callbacks = [FailsAtEnd()] if where == "callback_end" else []
    if where == "final_weights":
        real = directory.save_checkpoint

        def save(path, tensors, meta):
            if Path(path).name == "model.safetensors":
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real(path, tensors, meta)

        monkeypatch.setattr(directory, "save_checkpoint", save)
    config = load_config(
        "sine_maml", ["train.iterations=4", "train.checkpoint_every=2", "train.tensorboard=false"]
    )
    learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)
    trainer = Trainer(learner, SineTasks(), config, tmp_path / "run", progress=False,
                      callbacks=callbacks)  # fmt: skip
    with pytest.raises(OSError):
        trainer.fit()
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "crashed"
