"""benchmarks/rl_rollout.py runs and prints the JSON it documents (tiny sizes; the numbers
are measured by hand, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rl_rollout.py"


def test_rl_rollout_prints_throughput():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--tasks", "2", "--rollouts", "2", "--horizon", "5"]
        + ["--iters", "1", "--warmup", "0", "--threads", "1"]
        + ["--fisher", "gauss_newton", "hessian"]
        + ["--cheetah-tasks", "2", "--cheetah-horizon", "3", "--cheetah-iters", "1"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["workload"] == "nav2d" and result["horizon"] == 5
    assert result["env_steps_per_s"] > 0 and result["policy_env_steps_per_s"] > 0
    assert len(result["s_per_meta_iteration_all"]) == 1
    assert {f: len(t) for f, t in result["s_per_meta_iteration_by_fisher"].items()} == {
        "gauss_newton": 1,
        "hessian": 1,
    }
    cheetah = result["half_cheetah"]
    if isinstance(cheetah, dict):  # MuJoCo installed
        assert cheetah["simulations"] == 4 and cheetah["env_steps_per_s"] > 0
        assert len(cheetah["s_per_meta_iteration_all"]) == 1
