"""mamlkit as a new user gets it: an sdist and a wheel built from this checkout, installed in
a fresh virtual environment outside the repository, run from an empty folder.

The fresh environment reuses the dependencies already installed for the tests (a ``.pth``
file points at their site-packages, added only after mamlkit itself is installed), so the
test needs no network and installs nothing but mamlkit."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from mamlkit.cli import main

ROOT = Path(__file__).parents[1]
PRESETS = sorted(p.stem for p in (ROOT / "src" / "mamlkit" / "configs").glob("*.yaml"))
BUILD_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in")


def _run(args, cwd, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, **kwargs
    )
    assert proc.returncode == 0, f"{args}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """An sdist built from a clean copy of the checkout's build inputs (no stale build/ or
    egg-info can leak files in), and the wheel built from that sdist, as `python -m build`
    does; offline: no build isolation, no index."""
    tmp = tmp_path_factory.mktemp("dists")
    source = tmp / "checkout"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = tmp / "dist"
    build_sdist = "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))"
    name = _run([sys.executable, "-c", build_sdist, out], cwd=source).stdout.split()[-1]
    sdist = out / name
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    unpacked = next((tmp / "unpacked").iterdir())
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    _run([*pip_wheel, "--no-index", "-q", "-w", out, unpacked], cwd=tmp)
    (wheel,) = out.glob("mamlkit-*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def venv(dists, tmp_path_factory) -> Path:
    """A fresh virtual environment outside the repository with the wheel installed."""
    # inside a user's own git repository, whose commit is not mamlkit's to record
    user_repo = tmp_path_factory.mktemp("user-project")
    if shutil.which("git"):
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", user_repo]
        _run([*git, "init", "-q"], cwd=user_repo)
        _run([*git, "commit", "-q", "--allow-empty", "-m", "user's work"], cwd=user_repo)
    env_dir = user_repo / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", env_dir], cwd=env_dir.parent)
    python = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q"]
    _run([*pip, "--no-deps", "--no-index", dists["wheel"]], cwd=env_dir.parent)
    purelib = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=env_dir.parent,
    ).stdout.strip()
    # the pinned torch & co. of the test environment, after mamlkit's own site-packages
    # (a path in a .pth file is appended to sys.path; .pth files inside it are not run, so
    # the checkout's editable install stays invisible)
    (Path(purelib) / "zz_test_dependencies.pth").write_text("\n".join(site.getsitepackages()))
    return env_dir


def venv_version(venv: Path) -> str:
    (dist_info,) = venv.glob("lib/python*/site-packages/mamlkit-*.dist-info")
    return dist_info.name[len("mamlkit-") : -len(".dist-info")]


def test_sdist_and_wheel_ship_the_presets(dists):
    with tarfile.open(dists["sdist"]) as tar:
        in_sdist = {Path(n).stem for n in tar.getnames() if "/src/mamlkit/configs/" in n}
    with zipfile.ZipFile(dists["wheel"]) as whl:
        in_wheel = {Path(n).stem for n in whl.namelist() if n.startswith("mamlkit/configs/")}
    assert in_sdist == in_wheel == set(PRESETS)


def test_wheel_metadata_tensorboard_is_an_extra_and_license_ships(dists):
    """tensorboard (with grpcio and protobuf) only with `pip install mamlkit[tensorboard]`."""
    with zipfile.ZipFile(dists["wheel"]) as whl:
        (meta,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        lines = whl.read(meta).decode().splitlines()
        names = whl.namelist()
    requires = [
        line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")
    ]
    board = [r for r in requires if r.startswith("tensorboard")]
    assert board and all('extra == "tensorboard"' in r for r in board), board
    assert "Provides-Extra: tensorboard" in lines
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in lines
    with tarfile.open(dists["sdist"]) as tar:
        assert any(n.endswith("/LICENSE") for n in tar.getnames())


def test_installed_wheel_runs_from_an_empty_folder(venv, tmp_path):
    """`mamlkit presets` lists every preset, a 50-iteration `mamlkit reproduce sine` writes
    its results, and `runs` and `plot` work on them without arguments beyond the folder,
    with the installed package (never the checkout) doing the work."""
    work = tmp_path / "empty"
    work.mkdir()
    where = _run(
        [venv / "bin" / "python", "-c", "import mamlkit; print(mamlkit.__file__)"], cwd=work
    ).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where

    listed = _run([venv / "bin" / "mamlkit", "presets"], cwd=work).stdout.splitlines()
    names = [line.split()[0] for line in listed if line and not line[0].isspace()]
    assert names == PRESETS  # (a description wraps onto indented lines)

    args = ["reproduce", "sine", "--iterations", "50", "--jobs", "1", "--no-progress"]
    _run([venv / "bin" / "mamlkit", *args], cwd=work, timeout=600)
    out = work / "runs" / "sine"
    for name in ("results.json", "report.md", "sine_fits.png", "sine_mse.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    version = venv_version(venv)
    for run in ("maml_k5", "maml_k10", "pretrained"):
        assert json.loads((out / run / "status.json").read_text())["status"] == "finished"
        assert json.loads((out / run / "status.json").read_text())["step"] == 50
        env = json.loads((out / run / "env.json").read_text())
        assert env["mamlkit"] == version and "git_commit" not in env
    assert json.loads((out / "results.json").read_text())

    listed = _run([venv / "bin" / "mamlkit", "runs"], cwd=work).stdout.splitlines()[1:]
    assert sorted(line.split()[:2] for line in listed) == [
        [str(Path("runs") / "sine" / run), "finished"]
        for run in ("maml_k10", "maml_k5", "pretrained")
    ]
    _run([venv / "bin" / "mamlkit", "plot", out], cwd=work)
    assert (out / "learning_curves.png").stat().st_size > 0


def test_no_presets_is_an_error_not_an_empty_list(capsys, tmp_path, monkeypatch):
    """An installation without its presets says so (one line, exit 2) instead of listing
    nothing, and `train PRESET` names the problem instead of '(presets: )'."""
    monkeypatch.setattr("mamlkit.config.PRESET_DIR", tmp_path / "configs")
    assert main(["presets"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no presets" in err[0] and "reinstall" in err[0]
    assert main(["train", "sine_maml", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no presets" in err[0]
    assert not (tmp_path / "r").exists()
