"""The benchmark scripts run and print the JSON their documentation promises (tiny runs: the
numbers themselves are measured by hand, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", ["auto", "learn2learn-loop"])
def test_meta_iteration_prints_timings(impl):
    result = _run(
        "meta_iteration.py", "--workload", "sine", "--impl", impl, "--iters", "3", "--warmup", "1"
    )
    assert result["workload"] == "sine" and result["iters"] == 3
    assert result["ms_per_iter_median"] > 0 and result["ms_per_iter_p10"] > 0


def test_meta_iteration_paired_unfolded_and_float32_error():
    paired = _run(
        "meta_iteration.py", "--workload", "omniglot-5w1s", "--paired-unfolded",
        "--iters", "2", "--warmup", "1",
    )  # fmt: skip
    assert paired["ms_per_iter_median"] > 0 and paired["unfolded_ms_per_iter_median"] > 0
    assert "unfolded_minus_folded_ms_median" in paired
    error = _run("float32_error.py", "--tasks", "2")
    assert error["tasks"] == 2
    # float32 against float64: small, but not zero (a zero would mean the same dtype ran);
    # a ReLU whose input is near 0 may switch sides between the dtypes, so the bound is loose
    assert 0 < error["rel_error_folded"] < 1e-1
    assert 0 < error["rel_error_unfolded"] < 1e-1


def test_op_breakdown_prints_the_top_operators():
    result = _run("op_breakdown.py", "--workload", "sine", "--iters", "1", "--top", "3")
    assert result["ms_in_ops"] > 0 and len(result["top"]) == 3
    assert all(entry["calls_per_iter"] > 0 for entry in result["top"])


def test_gpu_session_script_dry_run_on_the_cpu(tmp_path):
    """`scripts/gpu_omniglot.sh` end to end on the CPU with one tiny cell: it trains until its
    time budget stops the run (SIGTERM), evaluates the last checkpoint and packs the run."""
    import os
    import tarfile

    from .conftest import data_root

    env = {
        **os.environ,
        "MAMLKIT_DATA": data_root(),
        "PYTHON": sys.executable,
        "BENCH": "0",
        "CELLS": "omniglot_protonet_5w1s",
        # log every step: metrics.jsonl must exist however few steps the budget allows
        "SETS": " ".join(
            [
                "train.checkpoint_every=2",
                "train.log_every=1",
                "train.val_every=0",
                "task.train_ways=5",
                "train.threads=1",
                "train.tensorboard=false",
            ]
        ),
        "EVAL_TASKS": "5",
        "RUNS_DIR": str(tmp_path / "runs"),
    }
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_omniglot.sh"
    out = tmp_path / "out"
    subprocess.run(
        ["bash", str(script), str(out), "30", "cpu"],
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    run = tmp_path / "runs" / "omniglot_protonet_5w1s"
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and status["step"] >= 2
    (evaluation,) = run.glob("eval-step-*.json")
    result = json.loads(evaluation.read_text())
    assert result["tasks"] == 5 and 0 <= result["accuracy"] <= 100
    assert "omniglot_protonet_5w1s" in (out / "summary.txt").read_text()
    with tarfile.open(out / "runs.tar.gz") as packed:
        names = packed.getnames()
    assert any(n.endswith("metrics.jsonl") for n in names)
    assert not any(n.endswith(".safetensors") for n in names)
