"""README.md's Python blocks run as written, and so do the Examples of every docstring that
has one; a user's callbacks see the training loop.

Every ```python block of the README is run in order, each in a fresh namespace (a reader
copies one block, not the README), in one Python process started in an empty folder: a
block that begins with ``# NAME.py`` is a file the README asks the reader to save, so it is
saved there under that name (the next block imports it). ``ITERATIONS`` shrinks the blocks'
training loops (each reads it with the README's number as default).
"""

from __future__ import annotations

import doctest
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mamlkit import load_config
from mamlkit.build import build_learner, build_tasks
from mamlkit.callbacks import Callback
from mamlkit.runner import train_run
from mamlkit.training import Trainer
from tests.test_docs import MODULES as DOCTESTED

README = Path(__file__).resolve().parents[1] / "README.md"
SRC = README.parent / "src"
FILE_BLOCK = re.compile(r"#\s*([\w.]+\.py)\s*$")

# Runs in the child process: argv[1] the blocks (JSON), argv[2] where the results go.
DRIVER = """
import json, sys, time, traceback
from pathlib import Path

blocks, results = json.loads(Path(sys.argv[1]).read_text()), {}
for line, code, file_name in blocks:
    started = time.perf_counter()
    try:
        if file_name:
            Path(file_name).write_text(code, encoding="utf-8")
            __import__(file_name[:-3])  # a file to save: it imports
        else:
            exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__main__"})
        results[line] = None
    except BaseException:
        results[line] = traceback.format_exc()[-3000:]
    took = time.perf_counter() - started
    print(f"README.md:{line}: {'ok' if results[line] is None else 'FAILED'} {took:.1f} s")
Path(sys.argv[2]).write_text(json.dumps(results))
"""


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line of the opening fence, code, file name or None)`` of every ```python block,
    an indented one (inside a list) dedented."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        fence = re.fullmatch(r"(\s*)```python\s*", lines[i])
        i += 1
        if not fence:
            continue
        start, body = i, []
        while not re.fullmatch(r"\s*```\s*", lines[i]):
            body.append(lines[i])
            i += 1
        i += 1
        code = textwrap.dedent("\n".join(body)) + "\n"
        named = FILE_BLOCK.match(code.splitlines()[0]) if code.strip() else None
        blocks.append((start, code, named.group(1) if named else None))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_extractor_finds_the_blocks_and_their_files():
    text = "intro\n```python\nx = 1\n```\n- item\n\n  ```python\n  # a.py\n  y = 2\n  ```\n"
    assert python_blocks(text) == [(2, "x = 1\n", None), (7, "# a.py\ny = 2\n", "a.py")]
    found = "\n".join(code for _, code, _ in BLOCKS)
    shown = ("MAML(", "MetaSGD(", "inner_loop(", "callbacks=[", "from_run(", "register_task(")
    for needed in shown:
        assert needed in found, f"no README python block shows {needed}"


@pytest.fixture(scope="module")
def readme_results(tmp_path_factory) -> dict[str, str | None]:
    """Every block's traceback (None: it ran), from one child process in an empty folder."""
    work = tmp_path_factory.mktemp("readme")
    (work / "blocks.json").write_text(json.dumps(BLOCKS))
    src = str(SRC)
    env = {
        **os.environ,
        "ITERATIONS": "3",
        "MAMLKIT_CACHE": str(work / "cache"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "MPLBACKEND": "Agg",
        "TMPDIR": str(work / "tmp"),  # the blocks' tempfile folders, kept with the test's
    }
    cwd = work / "cwd"
    cwd.mkdir()
    (work / "tmp").mkdir()
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(work / "blocks.json"), str(work / "results.json")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((work / "results.json").read_text())


@pytest.mark.parametrize("line", [b[0] for b in BLOCKS], ids=lambda n: f"README.md:{n}")
def test_readme_python_block_runs(readme_results, line):
    failure = readme_results[str(line)]
    assert failure is None, f"the python block at README.md:{line} fails:\n{failure}"


class Seen(Callback):
    """Records which hook saw what."""

    def __init__(self):
        self.calls: list[tuple[str, object]] = []

    def on_start(self, trainer, resumed):
        self.calls.append(("start", (trainer.step, resumed)))

    def on_step(self, trainer):
        self.calls.append(("step", trainer.step))

    def on_log(self, trainer, record):
        self.calls.append(("log", dict(record)))

    def on_end(self, trainer):
        self.calls.append(("end", trainer.step))


def _check_seen(seen: Seen, iterations: int, log_every: int) -> None:
    kinds = [kind for kind, _ in seen.calls]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("end") == 1
    assert seen.calls[0][1] == (0, False) and seen.calls[-1][1] == iterations
    assert [s for k, s in seen.calls if k == "step"] == list(range(1, iterations + 1))
    logged = [r for k, r in seen.calls if k == "log"]
    assert [r["step"] for r in logged] == list(range(log_every, iterations + 1, log_every))
    assert all("loss" in r for r in logged)


def _tiny_sine(iterations: int = 4, log_every: int = 2):
    return load_config(
        "sine_maml",
        [f"train.iterations={iterations}", f"train.log_every={log_every}", "train.meta_batch=2"],
    )


def test_train_run_calls_a_users_callbacks(tmp_path):
    seen = Seen()
    train_run(_tiny_sine(), tmp_path / "run", progress=False, callbacks=[seen])
    _check_seen(seen, 4, 2)
    # what the callback saw is what the run logged
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [r for k, r in seen.calls if k == "log"]


def test_trainer_calls_a_users_callbacks_without_a_run_directory():
    config = _tiny_sine()
    seen = Seen()
    trainer = Trainer(
        build_learner(config),
        build_tasks(config, "train"),
        config,
        progress=False,
        callbacks=[seen],
    )
    trainer.fit()
    _check_seen(seen, 4, 2)


def modules_with_examples() -> list[str]:
    """Every mamlkit module whose source holds a docstring example (``>>>``)."""
    found = []
    for path in sorted((SRC / "mamlkit").rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(SRC).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


@pytest.mark.parametrize(
    "name", [m for m in modules_with_examples() if m not in DOCTESTED] or ["(none)"]
)
def test_docstring_examples_outside_test_docs_run(name, tmp_path, monkeypatch):
    """tests/test_docs.py runs a fixed list of modules; an Example elsewhere runs here."""
    if name == "(none)":
        pytest.skip("tests/test_docs.py covers every module with Examples")
    monkeypatch.setenv("MAMLKIT_CACHE", str(tmp_path))
    torch.manual_seed(0)
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
