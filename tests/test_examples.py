"""The scripts in examples/ run as documented, on tiny data (issue 11, capability 4)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(script: str, *args, cache: Path) -> str:
    env = {**os.environ, "MAMLKIT_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, script, *map(str, args)],
        cwd=EXAMPLES,  # as documented: my_models.py is imported from here
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_custom_regression_example_adapts_to_a_new_task(tmp_path):
    out = run_example("custom_regression.py", "--iterations", "30", cache=tmp_path)
    before, after = map(float, re.search(r"MSE ([\d.]+) before, ([\d.]+) after", out).groups())
    assert after < before


def test_image_folder_cnn_then_adapt_new_images(tmp_path):
    run = tmp_path / "run"
    out = run_example(
        "imagefolder_cnn.py",
        "--out",
        run,
        "--iterations",
        "3",
        "--image-size",
        "16",
        cache=tmp_path,
    )
    assert "test tasks: accuracy" in out
    assert "my_models:SmallCNN" in (run / "config.yaml").read_text()
    assert (run / "eval.json").is_file()

    spec = importlib.util.spec_from_file_location(
        "imagefolder_cnn", EXAMPLES / "imagefolder_cnn.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.write_shapes(tmp_path / "support", classes=5, per_class=1)
    example.write_shapes(tmp_path / "more", classes=5, per_class=2)
    queries = sorted((tmp_path / "more").glob("*/1.png"))
    out = run_example(
        "adapt_new_images.py",
        run,
        tmp_path / "support",
        *queries,
        "--trust-code",
        cache=tmp_path,
    )
    lines = out.strip().splitlines()
    assert len(lines) == 5
    classes = {p.name for p in (tmp_path / "support").iterdir()}
    assert all(line.split(": ")[1].split(" (")[0] in classes for line in lines)
