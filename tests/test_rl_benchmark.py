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


def test_rl_commits_rotates_variants_and_summarises():
    """benchmarks/rl_commits.py: two variants of this checkout, two rounds in rotating order,
    one JSON line per run and a summary of each variant's half-cheetah times."""
    root = SCRIPT.parents[1]
    tiny = "--tasks 2 --rollouts 2 --horizon 3 --iters 1 --warmup 0 --threads 1 "
    tiny += "--cheetah-tasks 2 --cheetah-horizon 3 --cheetah-iters 1 --floor-steps 0"
    out = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "rl_commits.py"), "--rounds", "2",
         "--common", tiny, "--variant", "a", str(root), "--cheetah-env rllab",
         "--variant", "b", str(root), "--cheetah-env gymnasium"],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [json.loads(line) for line in out.stdout.strip().splitlines()]
    assert [(x["variant"], x["round"]) for x in lines[:-1]] == [
        ("a", 1), ("b", 1), ("b", 2), ("a", 2)
    ]  # fmt: skip
    cheetah = lines[0]["result"]["half_cheetah"]
    summary = lines[-1]["summary"]
    if isinstance(cheetah, dict):  # MuJoCo installed
        envs = [x["result"]["half_cheetah"]["env"] for x in lines[:-1]]
        assert envs == ["rllab", "gymnasium", "gymnasium", "rllab"]
        assert {k: len(v["s_per_meta_iteration"]) for k, v in summary.items()} == {"a": 2, "b": 2}
    else:
        assert summary == {"a": {"s_per_meta_iteration": [], "median": None}} | {
            "b": {"s_per_meta_iteration": [], "median": None}
        }
