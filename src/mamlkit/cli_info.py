"""What the informational commands print: ``presets``, ``presets show``, ``runs`` and the
summary of ``eval`` (the CLI parses; this module formats)."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path
from typing import Any

from mamlkit.config import Config

__all__ = ["eval_summary", "preset_lines", "preset_summary", "run_table"]

_NAME_WIDTH = 30


def preset_summary(text: str) -> str:
    """A preset's first sentence, from the comment lines at its top (never cut mid-sentence:
    a sentence ends at a full stop followed by a space, or where the comment ends)."""
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("# ").strip())
    words = " ".join(" ".join(comment).split())
    end = re.search(r"(?<![.§])(?<!\bet al)(?<!\be\.g)(?<!\bi\.e)\.(\s|$)", words)
    return words[: end.start() + 1] if end else words


def preset_lines(width: int = 100) -> list[str]:
    """``mamlkit presets``: each preset's name and first sentence, wrapped to ``width``."""
    from mamlkit.config import shipped_presets

    lines = []
    for name, resource in shipped_presets().items():
        summary = preset_summary(resource.read_text()) or "-"
        wrapped = textwrap.wrap(summary, width - _NAME_WIDTH - 1) or [""]
        lines.append(f"{name:<{_NAME_WIDTH}} {wrapped[0]}")
        lines += [" " * (_NAME_WIDTH + 1) + rest for rest in wrapped[1:]]
    return lines


def run_table(rows: list[dict[str, Any]]) -> list[str]:
    """``mamlkit runs``: a header row, then one row per run."""
    width = max([40, *(len(r["run"]) for r in rows)])
    state = max([9, *(len(str(r["status"])) for r in rows)])  # "interrupted" is 11 long
    out = [f"{'RUN':<{width}} {'STATUS':<{state}} {'STEP':<13} RESULT"]
    out += [
        f"{r['run']:<{width}} {r['status']:<{state}} step {r['step']:<8} {r['best']}"
        for r in rows
    ]
    return out


def _cell(value: Any, ci: Any) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "not finite"
    text = f"{value:.4g}"
    return text + (f" ± {ci:.2g}" if isinstance(ci, (int, float)) else "")


def eval_summary(
    record: dict[str, Any], by_step: list[dict[str, Any]], config: Config, path: Path
) -> list[str]:
    """``mamlkit eval``'s one-screen summary: the protocol, the metric ± its 95% interval
    after each adaptation step, the paper's number beside it where the run is a preset's
    that reproduces one, and the file that holds the record."""
    from mamlkit.build import metric_for
    from mamlkit.published import published_for

    metric = metric_for(config)
    protocol = [f"{record.get('tasks')} {record.get('split')} tasks"]
    if "ways" in record:
        protocol.append(f"{record['ways']}-way {record['shots']}-shot")
    if "k_shot" in record:
        protocol.append(f"K={record['k_shot']}")
    if record.get("step") is not None:
        protocol.append(f"weights of step {record['step']}")
    lines = [f"{path.parent}: {metric}, {', '.join(protocol)} (95% interval)"]
    found = published_for(config)
    paper = found[1].by_step if found else {}
    ensemble = record.get("ensemble")
    beside_ensemble = paper.get(None) if ensemble and found and found[1].ensemble else None
    if beside_ensemble:  # the paper's number is an ensemble's: beside ours, not the last step
        paper = {k: v for k, v in paper.items() if k is not None}
    last = by_step[-1]["steps"] if by_step else None
    head = f"  {'steps':>5}  {metric:<20}"
    lines.append(head + ("  paper" if paper else ""))
    for row in by_step:
        step = row["steps"]
        text = f"  {step:>5}  {_cell(row.get(metric), row.get('ci95')):<20}"
        number = paper.get(step, paper.get(None) if step == last else None)
        lines.append((text + f"  {number}" if number else text).rstrip())
    if ensemble:  # eval.ensemble: the best validation checkpoints' averaged predictions
        from mamlkit.ensemble import describe

        lines.append(
            f"  {describe(ensemble)}: {_cell(ensemble.get(metric), ensemble.get('ci95'))}"
            + (f"  paper {beside_ensemble}" if beside_ensemble else "")
        )
        if ensemble.get("not_kept"):
            missed = ", ".join(str(s) for s in ensemble["not_kept"])
            lines.append(f"  not in it: validations at steps {missed} (no predictions kept)")
    if found:
        lines.append(f"  paper: {found[1].source} (preset {found[0]})")
    lines.append(f"wrote {path} (--json prints the record)")
    return lines
