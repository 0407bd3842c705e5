"""``mamlkit runs``: the runs under a folder, with their status and their best result."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mamlkit.errors import UserError
from mamlkit.eval_files import is_current
from mamlkit.rundir import records
from mamlkit.rundir.ownership import is_mamlkit_run

__all__ = ["list_runs"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _eval_text(path: Path, at: str = "") -> str:
    try:
        ev = records.read_json(path)
        key = next((k for k in ("accuracy", "return") if k in ev), "mse")
        value, ci = ev[key], ev["ci95"]
    except (UserError, TypeError, KeyError):
        return f"eval{at} unreadable ({path.name})"
    if not isinstance(value, (int, float)) or not isinstance(ci, (int, float)):
        return f"eval{at} {key} not finite"
    return f"eval{at} {key} {value:.4g} ± {ci:.2g}"


def _best_text(best: Any) -> list[str]:
    try:
        return [f"{best['metric']} {best['value']:.4g} @ {best['step']}"] if best else []
    except (TypeError, KeyError, ValueError):
        return []


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Run directories under ``root`` (any depth) with status and their best result: the
    final evaluation, else the best validation metric and the newest checkpoint evaluation.
    A damaged file in one run shows in that run's row; it never hides the others."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; pass the folder that holds your runs")
    rows = []
    for status_file in sorted(root.rglob("status.json")):
        run = status_file.parent
        if not is_mamlkit_run(run):  # another tool's status.json
            continue
        try:
            status = records.read_json(status_file)
        except records.UnreadableFile:  # no permission, or not a regular file: not damage
            status = {"status": "unreadable"}
        except UserError:
            status = None
        if not isinstance(status, dict):
            status = {"status": "damaged"}
        state = status.get("status", "unknown")
        if state == "running" and not _alive(_int(status.get("pid"), -1)):
            state = "crashed"
        step_evals = [p for p in sorted(run.glob("eval-step-*.json")) if _current(p)]
        if (run / "eval.json").is_file() and _current(run / "eval.json"):
            best_text = _eval_text(run / "eval.json")
        else:
            parts = _best_text(status.get("best"))
            if step_evals:
                try:
                    iteration = records.read_json(step_evals[-1]).get("iteration", "?")
                except (UserError, AttributeError):
                    iteration = "?"
                parts.append(_eval_text(step_evals[-1], f"@{iteration}"))
            best_text = "; ".join(parts) or _results_text(run) or "-"
        rows.append(
            {
                "run": str(run),
                "status": str(state),
                "step": _int(status.get("step"), 0),
                "best": best_text,
            }
        )
    return rows


def _results_text(run: Path) -> str:
    """A run of ``mamlkit reproduce sine`` (``maml_kK``, ``pretrained``) has no eval.json:
    its folder's results.json holds its MSE; this is the row of the run's own K (the
    pretrained model's: the smallest K) after the most steps."""
    path = run.parent / "results.json"
    if not path.is_file():
        return ""
    try:
        rows = records.read_json(path)
    except UserError:
        return ""
    if not isinstance(rows, list):
        return ""
    method, _, k = run.name.partition("_k")
    trained = int(k) if k.isdigit() else None
    mine = [
        r
        for r in rows
        if isinstance(r, dict)
        and r.get("method") == method
        and r.get("trained_k") == trained
        and isinstance(r.get("k_shot"), int)
        and isinstance(r.get("steps"), int)
    ]
    if not mine:
        return ""
    shot = trained if any(r["k_shot"] == trained for r in mine) else min(r["k_shot"] for r in mine)
    row = max((r for r in mine if r["k_shot"] == shot), key=lambda r: r["steps"])
    value, ci = row.get("mse"), row.get("ci95")
    if not isinstance(value, (int, float)) or not isinstance(ci, (int, float)):
        return f"results.json mse not finite (K={shot}, {row['steps']} steps)"
    return f"results.json mse {value:.4g} ± {ci:.2g} (K={shot}, {row['steps']} steps)"


def _current(path: Path) -> bool:
    try:
        return is_current(path.parent, records.read_json(path))
    except UserError:
        return True  # shown, as damaged


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
