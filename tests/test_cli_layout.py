"""The layout of the sources (issue 25: "no file over ~400 lines mixing concerns"): no module
of mamlkit is longer than :data:`LIMIT` lines unless it is listed below with the reason;
the CLI, a package of one module per command group, keeps its entry points (``mamlkit.cli:
main``, the console script, ``python -m mamlkit.cli``) and every subcommand's ``--help``;
Omniglot's reader, split by concern, keeps its public names; ``scripts/gpu_table1.sh``'s
deterministic stop refuses a value it cannot use."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mamlkit

PACKAGE = Path(mamlkit.__file__).parent
ROOT = Path(__file__).resolve().parents[1]

#: The most lines a module of mamlkit may have (400 lines of one concern, and some slack).
LIMIT = 450

#: Modules above LIMIT that are one concern, with the reason (path relative to src/mamlkit).
ONE_CONCERN = {
    # The hand-written derivatives of task-batched convolution, ReLU and BatchNorm: autograd
    # Functions that differentiate into each other (_Conv <-> _ConvInputGrad <->
    # _ConvWeightGrad, _BatchNorm -> _BatchNormGrad), each checked by gradgradcheck; the
    # module docstring is their shared derivation. Split, a reader would chase one
    # derivative chain across files. (functional.py, the inner loop and its step-size
    # rules, is one concern too and stays under LIMIT, so it needs no entry.)
    "models/ops.py": "one concern: the hand-written derivatives of the batched conv/BN ops",
}

#: Modules above LIMIT that mix concerns and are being split by another item of issue 25;
#: each entry goes when its split lands (the test below then says to remove it).
BEING_SPLIT: dict[str, str] = {}  # config.py and training.py were split (issue 25)


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_module_is_longer_than_the_limit():
    """Before: cli.py (801 lines: parsing, eight commands and the entry point) and
    data/omniglot.py (645: archives, decoding, cache, splits, download) were over it."""
    sizes = {p.relative_to(PACKAGE).as_posix(): _lines(p) for p in PACKAGE.rglob("*.py")}
    allowed = {**ONE_CONCERN, **BEING_SPLIT}
    too_long = {name: n for name, n in sizes.items() if n > LIMIT and name not in allowed}
    assert too_long == {}, (
        f"modules over {LIMIT} lines: {too_long}; split them by concern (a new concern goes "
        "into a new small module), or, if one is a single concern, list it in ONE_CONCERN "
        "with the reason"
    )
    stale = {name: sizes.get(name) for name in allowed if sizes.get(name, 0) <= LIMIT}
    assert stale == {}, f"exceptions no longer needed (or gone): {stale}; remove them here"


def test_the_cli_is_a_package_of_small_modules():
    cli = PACKAGE / "cli"
    assert not (PACKAGE / "cli.py").exists() and (cli / "__init__.py").is_file()
    modules = {p.stem for p in cli.glob("*.py")}
    assert {"parser", "common", "train", "evaluate", "adapt", "listing", "plot"} <= modules
    assert {"reproduce", "data", "__main__"} <= modules


# every command of `mamlkit`, as the words that name it
COMMANDS = {
    "train",
    "eval",
    "adapt",
    "presets",
    "presets show",
    "runs",
    "plot",
    "reproduce",
    "reproduce sine",
    "reproduce sine-seeds",
    "data",
    "data download",
}


def _command_paths(group, prefix=()) -> set[str]:
    paths = set()
    for name, command in getattr(group, "commands", {}).items():
        paths.add(" ".join((*prefix, name)))
        paths |= _command_paths(command, (*prefix, name))
    return paths


def test_every_command_is_registered():
    from mamlkit.cli import app

    assert _command_paths(app) == COMMANDS


@pytest.mark.parametrize("words", ["", *sorted(COMMANDS)])
def test_every_subcommand_help_exits_0(capsys, words):
    from mamlkit.cli import main

    argv = words.split()
    assert main([*argv, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: {' '.join(['mamlkit', *argv])} ")
    assert main([*argv, "-h"]) == 0
    assert capsys.readouterr().out == out


def test_the_entry_points_keep_their_names():
    """The console script of pyproject.toml, ``mamlkit.cli.main`` and ``python -m
    mamlkit.cli`` (one subprocess: ``-m`` needs the package's ``__main__``)."""
    import importlib

    import mamlkit.cli

    pyproject = (ROOT / "pyproject.toml").read_text()
    script = re.search(r'^\[project\.scripts\]\nmamlkit = "([\w.]+):(\w+)"', pyproject, re.M)
    assert script, "pyproject.toml: no `mamlkit = ...` under [project.scripts]"
    module, name = script.groups()
    assert getattr(importlib.import_module(module), name) is mamlkit.cli.console
    assert callable(mamlkit.cli.main)
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    done = subprocess.run(
        [sys.executable, "-m", "mamlkit.cli", "presets", "--help"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: mamlkit presets ")


def test_omniglot_names_keep_working_from_mamlkit_data_omniglot():
    """Split into omniglot_data / _archive / _cache / _split_schemes, the reader's names (public,
    and the private ones tests and benchmarks use) still come from mamlkit.data.omniglot."""
    from mamlkit.data import omniglot, omniglot_cache, omniglot_data, omniglot_split_schemes

    assert omniglot.OmniglotData is omniglot_data.OmniglotData
    assert omniglot.omniglot_splits is omniglot_split_schemes.omniglot_splits
    assert omniglot.MAML_N_TRAIN == 1200 and omniglot.SETS == omniglot_data.SETS
    assert omniglot._Counts is omniglot_data._Counts
    assert omniglot._read_cache is omniglot_cache._read_cache
    for name in omniglot.__all__:
        assert hasattr(omniglot, name), name
    assert callable(omniglot._load_omniglot) and callable(omniglot._decode)


@pytest.mark.parametrize("value", ["soon", "-1", "3s"])
def test_gpu_table1_refuses_a_stop_step_it_cannot_use(tmp_path, value):
    """STOP_AT_STEP (the tests' stop at a step instead of the wall clock) takes a step
    number or `end`; anything else stops the script before it writes or trains anything."""
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_table1.sh"), str(out), "1"],
        env={**os.environ, "STOP_AT_STEP": value, "RUNS_DIR": str(tmp_path / "runs")},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and f"STOP_AT_STEP={value}" in done.stderr
    assert not out.exists() and not (tmp_path / "runs").exists()
