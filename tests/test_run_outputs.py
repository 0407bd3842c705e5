"""What a run directory gives its users: file modes a team can share, and provenance."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mamlkit.checkpoint import atomic_write_text
from mamlkit.cli import main


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_run_files_get_the_umask_mode_not_0600(tmp_path, umask, capsys):
    """config.yaml, model.safetensors, checkpoints, status, env and eval records are readable
    by whoever the umask lets read a newly created file (0644 under the usual 022)."""
    run = tmp_path / "run"
    argv = ["train", "sine_maml", "--out", str(run), "--no-progress"]
    for s in ("train.iterations=4", "train.checkpoint_every=2", "train.tensorboard=false"):
        argv += ["--set", s]
    assert main(argv) == 0
    assert main(["eval", str(run), "--tasks", "5"]) == 0
    written = [p for p in run.rglob("*") if p.is_file()]
    names = {p.name for p in written}
    assert {"config.yaml", "model.safetensors", "env.json", "status.json", "eval.json"} <= names
    assert any(p.parent.name == "checkpoints" for p in written)
    assert {p.name: oct(_mode(p)) for p in written} == {
        p.name: oct(0o666 & ~umask) for p in written
    }
    atomic_write_text(tmp_path / "results.json", "[]")
    assert _mode(tmp_path / "results.json") == 0o666 & ~umask
