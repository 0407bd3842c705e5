"""Table 1 (Omniglot) of Finn et al. (2017) from the run directories under RUNS_DIR, ours beside
the paper, as Markdown on stdout.

    python scripts/table1.py RUNS_DIR

Each cell is a run directory named after its preset (``omniglot_maml_5w1s``, ...). A cell's
number is its ``eval.json`` (final weights) or, for an unfinished run, its newest
``eval-step-N.json``; the iterations column says how far the evaluated weights trained,
and the segments column how many training processes (first start plus resumes) the run
took, from the ``CELL.segments`` log that ``scripts/gpu_table1.sh`` keeps beside it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

# Finn et al. (2017), Table 1 (MAML) and Snell et al. (2017) as quoted there (ProtoNets).
PAPER = {
    "maml": {
        "5w1s": "98.7 ± 0.4",
        "5w5s": "99.9 ± 0.1",
        "20w1s": "95.8 ± 0.3",
        "20w5s": "98.9 ± 0.2",
    },
    "protonet": {"5w1s": "98.8", "5w5s": "99.7", "20w1s": "96.0", "20w5s": "98.9"},
}
NAMES = {"maml": "MAML", "protonet": "ProtoNets"}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cell_row(runs: Path, algorithm: str, cell: str) -> str:
    run = runs / f"omniglot_{algorithm}_{cell}"
    paper = PAPER[algorithm][cell]
    label = f"{NAMES[algorithm]} {cell}"
    config = run / "config.yaml"
    if not config.is_file():
        return f"| {label} | not run | {paper} | – | – | – |"
    length = yaml.safe_load(config.read_text())["train"]["iterations"]
    status = _read_json(run / "status.json") or {}
    evaluation = _read_json(run / "eval.json")
    evaluated_at = status.get("step") if evaluation else None
    if evaluation is None:
        partial = sorted(run.glob("eval-step-*.json"))
        evaluation = _read_json(partial[-1]) if partial else None
        evaluated_at = evaluation.get("iteration") if evaluation else None
    segments_file = runs / f"omniglot_{algorithm}_{cell}.segments"
    segments = len(segments_file.read_text().splitlines()) if segments_file.is_file() else "?"
    if evaluation is None:
        ours = "not evaluated"
    else:
        ours = (
            f"{evaluation['accuracy']:.2f} ± {evaluation['ci95']:.2f} "
            f"({evaluation['tasks']} tasks, {evaluation['steps']} steps)"
        )
    full = " (full length)" if evaluated_at == length else ""
    iterations = f"{evaluated_at:,} of {length:,}{full}" if evaluated_at is not None else "–"
    state = status.get("status", "?")
    engine = status.get("engine", "")
    return f"| {label} | {ours} | {paper} | {iterations} | {segments} | {state} {engine} |"


def main() -> None:
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python scripts/table1.py RUNS_DIR")
    runs = Path(sys.argv[1])
    print("| cell | ours (test accuracy %) | paper | iterations | segments | status |")
    print("|---|---|---|---|---|---|")
    for algorithm in ("maml", "protonet"):
        for cell in ("5w1s", "5w5s", "20w1s", "20w5s"):
            print(cell_row(runs, algorithm, cell))


if __name__ == "__main__":
    main()
