"""What mamlkit may do to a run directory: ``--force`` replaces only a run and only
mamlkit's files in it, ``--resume`` never writes through a link out of the run, cleans up
after interrupted writes, restarts a run that never reached a checkpoint and refuses to
shorten one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mamlkit.cli import main
from mamlkit.rundir import lock_run_dir

SETS = ["train.tensorboard=false", "train.log_every=1", "train.threads=1"]


def train(out: Path, *extra: str, force: bool = False) -> int:
    argv = ["train", "sine_maml", "--out", str(out), "--no-progress"]
    for s in [*SETS, *extra]:
        argv += ["--set", s]
    return main([*argv, "--force"] if force else argv)


def short_run(out: Path) -> Path:
    assert train(out, "train.iterations=4", "train.checkpoint_every=2") == 0
    return out


def resume(run: Path, *sets: str) -> int:
    argv = ["train", "--resume", str(run), "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    return main(argv)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mamlkit: error:") and "Traceback" not in err[0]
    return err[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, except the lock's (who last held the run)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".mamlkit.lock"
    }


def test_force_refuses_a_folder_that_only_contains_a_run(tmp_path, capsys):
    d = tmp_path / "d"
    short_run(d / "r1")
    (d / "notes.txt").write_text("x")
    before = snapshot(d)
    capsys.readouterr()
    assert train(d, "train.iterations=2", force=True) == 2
    assert "not a mamlkit run" in one_error_line(capsys)
    assert snapshot(d) == before


def test_force_replaces_only_mamlkits_files_of_a_run(tmp_path, capsys):
    run = short_run(tmp_path / "run")
    assert main(["eval", str(run), "--tasks", "3"]) == 0
    (run / "notes.txt").write_text("my notes")
    (run / "figures").mkdir()
    (run / "figures" / "fig.png").write_bytes(b"png")
    assert train(run, "train.iterations=2", "train.checkpoint_every=1", force=True) == 0
    assert (run / "notes.txt").read_text() == "my notes"
    assert (run / "figures" / "fig.png").read_bytes() == b"png"
    assert not (run / "eval-tasks-3.json").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000001.safetensors",
        "step-00000002.safetensors",
    ]


def test_resume_removes_orphaned_temporary_files(tmp_path):
    run = short_run(tmp_path / "run")
    orphans = [
        run / ".status.json.k2j3h4.tmp",
        run / ".metrics.jsonl.abc.tmp",
        run / "checkpoints" / ".step-00000006.safetensors.x1y2.tmp",
    ]
    for path in orphans:
        path.write_bytes(b"half a file")
    (run / ".my-editor.tmp").write_text("not mamlkit's")
    assert resume(run, "train.iterations=6") == 0
    assert not any(p.exists() for p in orphans)
    assert (run / ".my-editor.tmp").read_text() == "not mamlkit's"


def test_resume_before_the_first_checkpoint_restarts_from_step_0(tmp_path, capsys):
    straight = short_run(tmp_path / "straight")
    early = short_run(tmp_path / "early")
    # as if killed before its first checkpoint: config, env, status and some metrics only
    for path in (early / "checkpoints").iterdir():
        path.unlink()
    (early / "model.safetensors").unlink()
    lines = (early / "metrics.jsonl").read_text().splitlines()
    (early / "metrics.jsonl").write_text(lines[0] + "\n")
    status = json.loads((early / "status.json").read_text())
    (early / "status.json").write_text(json.dumps({**status, "status": "running", "step": 1}))
    capsys.readouterr()
    assert resume(early) == 0
    assert json.loads(capsys.readouterr().out)["restarted"] is True
    assert (early / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    a, b = load_file(straight / "model.safetensors"), load_file(early / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_to_fewer_iterations_than_done_is_refused(tmp_path, capsys):
    run = short_run(tmp_path / "run")
    before = snapshot(run)
    capsys.readouterr()
    assert resume(run, "train.iterations=2") == 2
    line = one_error_line(capsys)
    assert "train.iterations=2" in line and "step 4" in line
    assert snapshot(run) == before


@pytest.mark.parametrize("name", ["metrics.jsonl", "checkpoints", "status.json"])
def test_resume_never_writes_through_a_link(tmp_path, capsys, name):
    run = short_run(tmp_path / "run")
    outside = tmp_path / "elsewhere"
    (run / name).rename(outside)
    (run / name).symlink_to(outside)
    before = snapshot(tmp_path / "elsewhere") if outside.is_dir() else outside.read_bytes()
    capsys.readouterr()
    assert resume(run, "train.iterations=6") == 2
    assert name in one_error_line(capsys)
    after = snapshot(tmp_path / "elsewhere") if outside.is_dir() else outside.read_bytes()
    assert after == before


def test_reproduce_refuses_a_folder_another_command_holds(tmp_path, capsys):
    out = tmp_path / "sine"
    with lock_run_dir(out, create=True):
        argv = ["reproduce", "sine", "--out", str(out), "--iterations", "2", "--no-progress"]
        assert main(argv) == 2
        assert f"pid {os.getpid()}" in one_error_line(capsys)
    assert not out.exists()  # nothing was written, and the lock's folder went with it


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    run = short_run(tmp_path / "run")
    dead = {"pid": 2**22 + 12345, "host": "elsewhere", "since": 0, "command": "mamlkit train"}
    (run / ".mamlkit.lock").write_text(json.dumps(dead))
    assert resume(run, "train.iterations=6") == 0
    assert json.loads((run / ".mamlkit.lock").read_text())["pid"] == os.getpid()
