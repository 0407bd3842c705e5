"""``--max-time``: a piece of training pauses with a checkpoint before its budget ends (status
``paused``), and ``--resume`` continues it bit-identically: sine, RL and torchrun runs.

Time is the deterministic test clock (``MAMLKIT_TEST_CLOCK``: every read advances it by a
fixed step), so where a run pauses does not depend on how busy the machine is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mamlkit.budget import TimeBudget, parse_duration
from mamlkit.cli import main
from mamlkit.config import load_config
from mamlkit.errors import UserError
from mamlkit.runner import train_run

from .test_rl import TINY

SINE = [
    "train.iterations=120",
    "train.checkpoint_every=50",
    "train.log_every=10",
    "train.tensorboard=false",
    "train.meta_batch=5",
    "train.seed=4",
]


def sets(values):
    return [a for s in values for a in ("--set", s)]


def status(run: Path) -> dict:
    return json.loads((run / "status.json").read_text())


def assert_same_run(a: Path, b: Path) -> None:
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def assert_paused_mid_run(run: Path, length: int) -> int:
    state = status(run)
    assert state["status"] == "paused"
    assert 0 < state["step"] < length
    assert state["used_seconds"] <= state["budget_seconds"]  # it stopped before the budget
    assert (run / "checkpoints" / f"step-{state['step']:08d}.safetensors").is_file()
    assert not (run / "model.safetensors").exists()
    return state["step"]


def test_a_sine_run_pauses_before_its_budget_and_resumes_bit_identically(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MAMLKIT_TEST_CLOCK", "0.05")
    paused, straight = tmp_path / "paused", tmp_path / "straight"
    args = ["train", "sine_maml", "--no-progress", *sets(SINE)]
    assert main([*args, "--out", str(paused), "--max-time", "2s"]) == 0
    out, err = capsys.readouterr()
    step = assert_paused_mid_run(paused, 120)
    assert json.loads(out)["paused"] is True
    assert f"paused at step {step} of 120" in err
    assert f"continue with: mamlkit train --resume {paused} --max-time 2s" in err
    # a second piece with a budget goes on and pauses again further on
    assert main(["train", "--resume", str(paused), "--no-progress", "--max-time", "1s"]) == 0
    assert assert_paused_mid_run(paused, 120) > step
    assert main(["train", "--resume", str(paused), "--no-progress"]) == 0
    assert status(paused)["status"] == "finished"
    assert main([*args, "--out", str(straight)]) == 0
    assert_same_run(paused, straight)
    assert status(paused)["train_seconds"] > status(straight)["train_seconds"] > 0


def test_the_budget_may_come_from_the_config_and_change_on_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMLKIT_TEST_CLOCK", "0.05")
    run = tmp_path / "run"
    config = ["train", "sine_maml", "--no-progress", *sets([*SINE, "train.max_time=1s"])]
    assert main([*config, "--out", str(run)]) == 0
    step = assert_paused_mid_run(run, 120)
    longer = ["train", "--resume", str(run), "--no-progress", "--set", "train.max_time=1h"]
    assert main(longer) == 0
    assert status(run)["status"] == "finished" and status(run)["step"] == 120 > step


def test_a_budget_shorter_than_one_iteration_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MAMLKIT_TEST_CLOCK", "1")  # every clock read: one second
    run = tmp_path / "run"
    code = main(["train", "sine_maml", "--out", str(run), "--no-progress", *sets(SINE),
                 "--max-time", "2s"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("mamlkit: error: --max-time 2s: shorter than starting this run")
    assert status(run)["status"] == "interrupted"
    assert not list(run.glob("checkpoints/*.safetensors"))  # nothing of the piece kept


@pytest.mark.parametrize("text", ["2x", "90", "0s", "-5m", "h"])
def test_a_malformed_or_tiny_budget_is_one_line(tmp_path, capsys, text):
    code = main(["train", "sine_maml", "--out", str(tmp_path / "r"), "--max-time", text])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--max-time" in err
    assert not (tmp_path / "r").exists()


def test_durations_and_the_plan():
    assert parse_duration("2h30m") == 9000 and parse_duration("1d") == 86400
    assert parse_duration("0:45:00") == 2700 and parse_duration("1.5h") == 5400
    with pytest.raises(UserError):
        parse_duration("5")
    budget = TimeBudget(100.0, started=0.0)
    assert budget.fits(99.0, validation=True, checkpoint=True)  # nothing measured yet
    budget.note("iteration", 4.0)
    assert budget.fits(85.0, validation=False, checkpoint=False)  # 85 + 4×1.25 + 4×1.5 <= 100
    assert not budget.fits(85.0, validation=False, checkpoint=True)  # a checkpoint more
    assert not budget.fits(50.0, validation=True, checkpoint=False)  # 20 iterations' val
    budget.note("validation", 10.0)
    assert budget.fits(70.0, validation=True, checkpoint=False)
    # a long iteration (RL) does not make an unmeasured checkpoint as long: its size does
    slow = TimeBudget(1000.0, started=0.0)
    slow.note("iteration", 300.0)
    assert not slow.fits(100.0, validation=False, checkpoint=True)  # 375 + 2 × 450
    slow.checkpoint_guess = TimeBudget.checkpoint_seconds(2_000_000)  # 2.1 s
    assert slow.fits(600.0, validation=False, checkpoint=True)  # 375 + 2 × 3.15


RL_TINY = [*TINY, "train.checkpoint_every=4", "train.iterations=8"]  # the RL tests' tiny run


def test_an_rl_run_pauses_and_resumes_bit_identically(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMLKIT_TEST_CLOCK", "1")
    paused, straight = tmp_path / "paused", tmp_path / "straight"
    summary = train_run(
        load_config("rl_nav2d_maml", RL_TINY), paused, progress=False, max_time="6s"
    )
    assert summary["paused"] and assert_paused_mid_run(paused, 8) == summary["step"]
    train_run(load_config("rl_nav2d_maml", RL_TINY), paused, resume=True, progress=False)
    train_run(load_config("rl_nav2d_maml", RL_TINY), straight, progress=False)
    assert_same_run(paused, straight)


def test_a_torchrun_job_pauses_together_and_resumes_bit_identically(tmp_path):
    from .test_distributed import ENV, SINE, torchrun

    env = {**ENV, "MAMLKIT_TEST_CLOCK": "0.05"}
    paused, straight = tmp_path / "paused", tmp_path / "straight"
    common = ["train", "sine_maml", "--no-progress", *sets(SINE)]
    for args in (
        [*common, "--out", str(paused), "--max-time", "1s"],
        ["train", "--resume", str(paused), "--no-progress"],
        [*common, "--out", str(straight)],
    ):
        job = torchrun(*args, env=env)
        _, err = job.communicate(timeout=300)
        assert job.returncode == 0, err.decode()[-4000:]
        if args[-1] == "1s":
            assert_paused_mid_run(paused, 20)
    assert_same_run(paused, straight)
    (resume,) = [json.loads(x) for x in (paused / "resumes.jsonl").read_text().splitlines()]
    assert resume["world_size"] == 2
