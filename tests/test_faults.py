"""Fault injection: training killed at random moments resumes bit-identically for every
algorithm family; full disks, two trainers on one run and links out of a run directory end
in one line and exit code 2 and leave the run resumable.

The moment of each kill is drawn from a seeded generator (after the checkpoint of a random
step, plus a random delay), so a failure names the seed that reproduces it."""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mamlkit.algorithms import ALGORITHMS
from mamlkit.cli import main
from mamlkit.config import load_config
from mamlkit.progress import is_progress_line

from .conftest import data_root

SRC = str(Path(__file__).parents[1] / "src")
ITERATIONS = 40
KILL_AFTER = range(2, 12)  # the checkpoint after which the kill comes; many steps remain
COMMON = [
    f"train.iterations={ITERATIONS}",
    "train.checkpoint_every=1",
    "train.log_every=2",
    "train.val_every=10",
    "train.val_tasks=4",
    "train.tensorboard=false",
    "train.threads=1",
    "eval.steps=1",
    "eval.tasks=20",  # what eval.ensemble (the MAML++ preset's) predicts at validations
]
OMNIGLOT = ["model.filters=8", "train.meta_batch=2", "task.val_classes=20"]
# One preset per algorithm family, made tiny; every algorithm in ALGORITHMS must appear.
FAMILIES = {
    "sine_maml": ["train.meta_batch=4", "train.iterations=120"],  # fast steps: more of them
    "sine_pretrained": ["train.meta_batch=4", "train.iterations=120"],
    "omniglot_maml_5w1s": OMNIGLOT,
    "omniglot_fomaml_5w1s": OMNIGLOT,
    "omniglot_protonet_5w1s": [*OMNIGLOT, "task.train_ways=20", "eval.steps=0"],
    "omniglot_pretrained_5w1s": [*OMNIGLOT, "task.batch_size=8"],
    "sine_metasgd": ["train.meta_batch=4", "train.iterations=120"],
    "omniglot_anil_5w1s": OMNIGLOT,
    # epochs of 5 iterations: the resumed run crosses changes of the multi-step loss weights
    # and of the cosine learning rate
    "omniglot_mamlpp_5w1s": [
        *OMNIGLOT,
        "algorithm.inner_steps=2",
        "algorithm.iterations_per_epoch=5",
        "algorithm.msl_epochs=3",
    ],
    "omniglot_reptile_5w1s": [*OMNIGLOT, "algorithm.inner_steps=2"],
}
KILL_SEEDS = {"omniglot_protonet_5w1s": (0, 1), "sine_maml": (0, 1)}


def cli_process(*argv, **kwargs) -> subprocess.Popen:
    args = [sys.executable, "-c", "from mamlkit.cli import console; console()", *map(str, argv)]
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def train_argv(preset: str, out: Path, extra=()) -> list[str]:
    argv = ["train", preset, "--out", str(out), "--no-progress"]
    for s in [*COMMON, *FAMILIES.get(preset, ()), *extra]:
        argv += ["--set", s]
    return argv


def weights_equal(a: Path, b: Path) -> bool:
    x, y = load_file(a), load_file(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def kill_at_random_moment(proc: subprocess.Popen, run: Path, seed: int) -> int:
    """SIGKILL ``proc`` some time after the checkpoint of a seeded-random step was written."""
    rng = random.Random(seed)
    step = rng.choice(KILL_AFTER)
    target = run / "checkpoints" / f"step-{step:08d}.safetensors"
    deadline = time.monotonic() + 300
    while not target.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.01))
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return step


def test_every_algorithm_has_a_resume_family():
    import mamlkit.rl  # noqa: F401  (registers the RL learners, whatever ran before)

    # the RL learners' bit-identical resumes: tests/test_rl.py, tests/test_rl_cheetah.py
    rl = {"maml_trpo", "trpo"}
    assert rl <= set(ALGORITHMS)
    assert {load_config(p).algorithm.name for p in FAMILIES} == set(ALGORITHMS) - rl


CASES = [(p, s) for p in FAMILIES for s in KILL_SEEDS.get(p, (0,))]


@pytest.mark.parametrize("preset,seed", CASES, ids=[f"{p}-kill{s}" for p, s in CASES])
def test_sigkill_at_random_moment_then_resume_is_bit_identical(tmp_path, preset, seed):
    if preset.startswith("omniglot"):
        data_root()
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(train_argv(preset, straight)) == 0

    proc = cli_process(*train_argv(preset, killed))
    kill_at_random_moment(proc, killed, seed)
    assert not (killed / "model.safetensors").exists()

    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    assert (killed / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    assert weights_equal(straight / "model.safetensors", killed / "model.safetensors")
    ensemble = sorted(p.name for p in (straight / "ensemble").glob("*"))  # eval.ensemble's
    assert ensemble == sorted(p.name for p in (killed / "ensemble").glob("*"))
    assert len(ensemble) == (ITERATIONS // 10 if "mamlpp" in preset else 0)  # 4 validations
    assert all(weights_equal(straight / "ensemble" / n, killed / "ensemble" / n) for n in ensemble)
    status = json.loads((killed / "status.json").read_text())
    assert (
        status["status"] == "finished"
        and status["best"] == json.loads((straight / "status.json").read_text())["best"]
    )
    assert not list(killed.rglob("*.tmp"))


def latest_checkpoint_step(run: Path) -> int:
    return max(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*"))


def test_two_trainers_on_one_run(tmp_path, capsys):
    """The second command names who holds the run and exits 2; the first's lock dies with
    it (SIGKILL), and the run then resumes with every step logged once."""
    run = tmp_path / "run"
    first = cli_process(*train_argv("sine_maml", run, ["train.iterations=3000"]))
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        assert first.poll() is None, first.stderr.read()
        time.sleep(0.01)
    capsys.readouterr()
    for argv in (
        ["train", "--resume", str(run), "--no-progress"],
        [*train_argv("sine_maml", run, ["train.iterations=3"]), "--force"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pid {first.pid}" in err[0] and "in use" in err[0], err
    assert first.poll() is None  # untouched by the refused commands
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)

    target = latest_checkpoint_step(run) + 3
    assert (
        main(
            ["train", "--resume", str(run), "--no-progress", "--set", f"train.iterations={target}"]
        )
        == 0
    )
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2, target + 1, 2)) + ([target] if target % 2 else [])


def limited_cli(limit: int, *argv) -> subprocess.CompletedProcess:
    """Run the CLI with a file-size limit (RLIMIT_FSIZE): every write past ``limit`` bytes
    fails as on a full disk (EFBIG), partway through when a write crosses it."""

    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = cli_process(*argv, preexec_fn=preexec)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def error_lines(text: str) -> list[str]:
    """stderr without the progress lines (``--no-progress`` logs a line per logged step)."""
    return [line for line in text.strip().splitlines() if not is_progress_line(line)]


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    lines = error_lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


DISK_SETS = [
    "model.hidden=[8]",
    "train.log_every=1",
    "train.checkpoint_every=50",
    "train.val_every=0",
]


@pytest.mark.parametrize("during", ["metrics", "checkpoint"])
def test_full_disk_leaves_the_run_resumable(tmp_path, during):
    """The write that fills the disk fails with one line and exit 2; nothing written before
    is lost, no torn line stays, and once there is space the run resumes bit-identically."""
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert main(train_argv("sine_maml", straight, [*DISK_SETS, "train.iterations=600"])) == 0
    first = 400 if during == "metrics" else 100
    assert main(train_argv("sine_maml", run, [*DISK_SETS, f"train.iterations={first}"])) == 0
    metrics = (run / "metrics.jsonl").read_text()
    checkpoint = (run / "checkpoints" / f"step-{first:08d}.safetensors").stat().st_size
    if during == "metrics":  # the log outgrows the limit; checkpoints still fit
        limit = len(metrics) + 500
        assert limit > checkpoint
    else:  # the next checkpoint does not fit; the log still does
        limit = checkpoint - 2000
        assert limit > len(metrics) + 50 * 100
    more = ["train", "--resume", run, "--no-progress", "--set", "train.iterations=600"]
    failed = limited_cli(limit, *more)
    assert_one_error_line(failed, "--resume", str(run))
    text = (run / "metrics.jsonl").read_text()
    assert text.startswith(metrics) and text.endswith("\n")
    assert all(json.loads(line) for line in text.splitlines())
    assert json.loads((run / "status.json").read_text())["status"] == "crashed"
    assert (run / "checkpoints" / f"step-{first:08d}.safetensors").is_file()
    assert not list(run.rglob("*.tmp"))

    assert main(["plot", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    assert weights_equal(straight / "model.safetensors", run / "model.safetensors")


def test_full_disk_during_eval_and_plot_keeps_the_old_files(tmp_path):
    run = tmp_path / "run"
    assert main(train_argv("sine_maml", run, ["train.iterations=4", "train.val_every=0"])) == 0
    assert main(["eval", str(run), "--tasks", "3"]) == 0
    assert main(["plot", str(run)]) == 0
    before = {p: (run / p).read_bytes() for p in ("eval-tasks-3.json", "learning_curves.png")}
    assert_one_error_line(limited_cli(64, "eval", run, "--tasks", "3"), "eval-tasks-3.json")
    assert_one_error_line(limited_cli(64, "plot", run), "learning_curves.png")
    assert {p: (run / p).read_bytes() for p in before} == before
    assert not list(run.rglob("*.tmp"))


def test_a_tensorboard_write_failure_is_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    """TensorBoard writes in a thread and re-raises its OSError at the next call."""
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    sets = ["train.iterations=6", "train.val_every=0", "train.tensorboard=true"]
    calls = {"n": 0}
    add_scalar = SummaryWriter.add_scalar

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 7:
            raise OSError(errno.ENOSPC, "No space left on device", str(run / "tensorboard"))
        return add_scalar(self, *args, **kwargs)

    monkeypatch.setattr(SummaryWriter, "add_scalar", failing)
    capsys.readouterr()
    assert main(train_argv("sine_maml", run, sets)) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "tensorboard" in err[0] and "--resume" in err[0], err
    monkeypatch.setattr(SummaryWriter, "add_scalar", add_scalar)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
