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


def test_op_breakdown_prints_the_top_operators():
    result = _run("op_breakdown.py", "--workload", "sine", "--iters", "1", "--top", "3")
    assert result["ms_in_ops"] > 0 and len(result["top"]) == 3
    assert all(entry["calls_per_iter"] > 0 for entry in result["top"])
