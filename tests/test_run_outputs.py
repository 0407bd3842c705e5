"""What a run directory gives its users: `mamlkit runs` and `mamlkit plot` on what mamlkit
wrote, validation when it was asked for, file modes a team can share, and provenance."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mamlkit import MAML, SineTasks
from mamlkit.checkpoint import atomic_write_text
from mamlkit.cli import main
from mamlkit.config import load_config
from mamlkit.models import MLP
from mamlkit.run_files import environment_info, source_checkout
from mamlkit.training import Trainer

from .test_runs import TroubleAt


def train(out, *sets: str) -> None:
    argv = ["train", "sine_maml", "--out", str(out), "--no-progress"]
    for s in ("train.iterations=3", "train.tensorboard=false", *sets):
        argv += ["--set", s]
    assert main(argv) == 0


def test_runs_without_argument_lists_the_default_out_folder_or_cwd(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train("here")  # no runs/ folder yet: the current directory is listed
    capsys.readouterr()
    assert main(["runs"]) == 0
    out = capsys.readouterr().out.splitlines()[1].split()  # under the header row
    assert out[:2] == ["here", "finished"]

    assert main(["train", "sine_maml", "--no-progress", "--set", "train.iterations=3"]) == 0
    capsys.readouterr()
    assert main(["runs"]) == 0  # runs/, where runs go without --out
    rows = [line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows == [[str(Path("runs") / "sine_maml"), "finished"]]


def test_runs_says_when_there_are_none(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["runs"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no mamlkit runs under ." in captured.err


def _pixels_of(png: Path, rgb: tuple[int, int, int]) -> int:
    image = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(image - np.array(rgb)).sum(axis=-1) < 30).sum())


BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's first two line colours


def test_plot_shows_a_single_validation_point(tmp_path, capsys):
    """A run logged once (here with validation) draws visible points, not empty axes."""
    run = tmp_path / "run"
    train(run, "train.val_every=3", "train.val_tasks=5")
    assert main(["plot", str(run)]) == 0
    assert _pixels_of(run / "learning_curves.png", BLUE) > 20


def test_plot_of_a_reproduce_folder_draws_each_of_its_runs(tmp_path, capsys):
    """`reproduce sine` writes one run per model under its --out; plotting that folder
    draws them together, one colour per run."""
    out = tmp_path / "sine"
    for name in ("maml_k5", "pretrained"):
        train(out / name)
    (out / "results.json").write_text("[]")
    assert main(["plot", str(out)]) == 0
    png = out / "learning_curves.png"
    assert _pixels_of(png, BLUE) > 20 and _pixels_of(png, ORANGE) > 20


def test_plot_of_a_folder_without_runs_is_one_line(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no metrics.jsonl" in err[0]
    assert not (tmp_path / "learning_curves.png").exists()


VAL_SETS = [
    "train.iterations=30",
    "train.log_every=4",
    "train.val_every=7",
    "train.val_tasks=5",
    "train.checkpoint_every=10",
    "train.tensorboard=false",
    "eval.steps=2",
]


def _fit(learner, run: Path, resume: bool = False) -> None:
    config = load_config("sine_maml", VAL_SETS)
    trainer = Trainer(learner, SineTasks(), config, run, "mse", SineTasks(), progress=False)
    trainer.fit(resume=resume)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_validation_runs_every_val_every_steps_not_only_on_logging_steps(tmp_path):
    torch.manual_seed(0)
    _fit(MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01), tmp_path / "run")
    records = _records(tmp_path / "run")
    assert [r["step"] for r in records if "val_mse" in r] == [7, 14, 21, 28, 30]
    assert [r["step"] for r in records if "loss" in r] == [4, 8, 12, 16, 20, 24, 28, 30]
    assert [r["step"] for r in records] == sorted({4, 8, 12, 16, 20, 24, 28, 30, 7, 14, 21})


def test_resume_is_exact_with_validation_between_logging_steps(tmp_path):
    torch.manual_seed(0)
    _fit(MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01), tmp_path / "straight")
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):  # after step 16: resumes from step 10
        _fit(TroubleAt("interrupt", 17, MLP((1, 40, 40, 1)), F.mse_loss, 0.01), tmp_path / "cut")
    _fit(MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01), tmp_path / "cut", resume=True)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    assert (cut / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    assert (
        json.loads((cut / "status.json").read_text())["best"]
        == json.loads((straight / "status.json").read_text())["best"]
    )


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
    own = {"config.yaml", "model.safetensors", "env.json", "status.json", "eval-tasks-5.json"}
    assert own <= names
    assert any(p.parent.name == "checkpoints" for p in written)
    assert {p.name: oct(_mode(p)) for p in written} == {
        p.name: oct(0o666 & ~umask) for p in written
    }
    atomic_write_text(tmp_path / "results.json", "[]")
    assert _mode(tmp_path / "results.json") == 0o666 & ~umask


def _git_repo(root: Path) -> str:
    """A git repository at ``root`` with one commit; returns its HEAD."""
    root.mkdir(parents=True, exist_ok=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(root)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "init"], check=True)
    return subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@needs_git
def test_source_checkout_is_only_mamlkits_own(tmp_path):
    """The commit is recorded for mamlkit's own checkout (src/ or flat layout), never for a
    copy installed in an environment that lies inside someone else's repository."""
    clone = tmp_path / "mamlkit-clone"
    _git_repo(clone)
    (clone / "pyproject.toml").write_text('[project]\nname = "mamlkit"\nversion = "0"\n')
    (clone / "src" / "mamlkit").mkdir(parents=True)
    (clone / "mamlkit").mkdir()
    assert source_checkout(clone / "src" / "mamlkit") == clone.resolve()
    assert source_checkout(clone / "mamlkit") == clone.resolve()

    user = tmp_path / "thesis"
    _git_repo(user)
    (user / "pyproject.toml").write_text('[project]\nname = "thesis"\n')
    site_packages = user / ".venv" / "lib" / "python3.11" / "site-packages" / "mamlkit"
    site_packages.mkdir(parents=True)
    (user / "src" / "mamlkit").mkdir(parents=True)  # a vendored copy in another project
    assert source_checkout(site_packages) is None
    assert source_checkout(user / "src" / "mamlkit") is None


def test_env_json_records_the_version_and_the_checkouts_commit():
    from mamlkit import __version__

    info = environment_info("cpu")
    assert info["mamlkit"] == __version__
    root = Path(__file__).parents[1]
    if not (root / ".git").exists():  # e.g. the tests of an unpacked sdist
        assert source_checkout() is None and "git_commit" not in info
        return
    assert source_checkout() == root.resolve()
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    assert info["git_commit"] == head.stdout.strip() and isinstance(info["git_dirty"], bool)


def test_training_without_tensorboard_installed(tmp_path, monkeypatch):
    """tensorboard is an extra: without it a run with train.tensorboard on still trains and
    logs to metrics.jsonl, and says how to get the event files."""
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.delitem(sys.modules, name)
    for name in [m for m in sys.modules if m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails
    config = load_config("sine_maml", ["train.iterations=3", "train.log_every=1"])
    assert config.train.tensorboard
    learner = MAML(MLP((1, 40, 40, 1)), F.mse_loss, 0.01)  # the model config.yaml describes
    with pytest.warns(UserWarning, match=r"mamlkit\[tensorboard\]"):
        Trainer(learner, SineTasks(), config, tmp_path / "run", progress=False).fit()
    assert [r["step"] for r in _records(tmp_path / "run")] == [1, 2, 3]
    assert not (tmp_path / "run" / "tensorboard").exists()
