"""Figures (matplotlib, imported lazily so ``import mamlkit`` stays light)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from mamlkit.errors import UserError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int) -> None:
    """Render, then write atomically: a full disk never leaves a half-written figure."""
    from mamlkit.checkpoint import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    atomic_write_bytes(Path(path), lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def sine_fits(panels: list[dict[str, Any]], path: Path) -> None:
    """Like Figure 2 of the paper. Each panel: ``title``, ``grid``, ``truth``, ``support_x``,
    ``support_y`` and ``curves`` = {steps: predictions on the grid}."""
    plt = _pyplot()
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    styles = {
        0: ("pre-update", ":", "tab:green"),
        1: ("1 grad step", "--", "tab:orange"),
        10: ("10 grad steps", "-", "tab:red"),
    }
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.plot(panel["grid"], panel["truth"], color="tab:blue", lw=2, label="ground truth")
        for steps, pred in panel["curves"].items():
            label, ls, color = styles.get(steps, (f"{steps} steps", "-.", "gray"))
            ax.plot(panel["grid"], pred, ls=ls, color=color, label=label)
        ax.scatter(
            panel["support_x"],
            panel["support_y"],
            marker="^",
            color="purple",
            zorder=5,
            label="used for grad",
        )
        ax.set_title(panel["title"])
        ax.set_xlim(-5, 5)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path, dpi=120)
    plt.close(fig)


def sine_mse(results: list[dict[str, Any]], path: Path) -> None:
    """Like Figure 3: MSE (mean ± 95% CI, and the median dotted) against the number of
    test-time gradient steps. The y-axis stops just above the pre-update error, so a mean
    blown up by a few diverging tasks shows as leaving the plot (and is annotated)."""
    plt = _pyplot()
    ks = sorted({r["k_shot"] for r in results})
    fig, axes = plt.subplots(1, len(ks), figsize=(4.5 * len(ks), 3.6), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        top = 1.15 * max(r["mse"] for r in results if r["k_shot"] == k and r["steps"] == 0)
        for method, color in (("maml", "tab:red"), ("pretrained", "tab:blue")):
            rows = sorted(
                (r for r in results if r["k_shot"] == k and r["method"] == method),
                key=lambda r: r["steps"],
            )
            if not rows:
                continue
            s = [r["steps"] for r in rows]
            m = [min(r["mse"], 10 * top) for r in rows]
            c = [min(r["ci95"], 10 * top) for r in rows]
            ax.plot(s, m, marker="o", ms=3, color=color, label=f"{method} (mean)")
            ax.fill_between(
                s,
                [a - b for a, b in zip(m, c)],
                [a + b for a, b in zip(m, c)],
                color=color,
                alpha=0.2,
            )
            if "median" in rows[0]:
                ax.plot(
                    s,
                    [min(r["median"], 10 * top) for r in rows],
                    ls=":",
                    color=color,
                    label=f"{method} (median)",
                )
            off = [r for r in rows if r["mse"] > top]
            if off:
                ax.annotate(
                    f"{method} mean off-scale from step {off[0]['steps']}",
                    (0.98, 0.9),
                    xycoords="axes fraction",
                    ha="right",
                    fontsize=7,
                    color=color,
                )
        ax.set_ylim(0, top)
        ax.set_title(f"k-shot regression, k={k}")
        ax.set_xlabel("number of gradient steps")
        ax.set_ylabel("mean squared error")
        ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    _save(fig, path, dpi=120)
    plt.close(fig)


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    from mamlkit.records import read_metrics

    return read_metrics(run_dir / "metrics.jsonl")  # a torn last line is skipped


def learning_curves(run_dir: Path, path: Path, runs: dict[str, Path] | None = None) -> list[str]:
    """Plot every numeric series of ``metrics.jsonl`` against the step; returns their names.
    With ``runs`` (label -> run directory, e.g. the models of one `reproduce sine`), each
    series has one line per run. Points carry markers unless a series is long, so that a
    single logged or validated step is visible."""
    records = {label: _metrics(run) for label, run in (runs or {run_dir.name: run_dir}).items()}
    keys = sorted(
        {
            k
            for rows in records.values()
            for r in rows
            for k, v in r.items()
            if k != "step" and isinstance(v, (int, float)) and not k.endswith("ci95")
        }
    )
    if not keys:
        raise UserError(f"{run_dir}: nothing logged yet; plot again after the first logged step")
    plt = _pyplot()
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.4 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        positive = True
        for label, rows in records.items():
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if not pts:
                continue
            positive = positive and all(p[1] > 0 for p in pts)
            marker = "o" if len(pts) <= 100 else None
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, ms=3, label=label)
        ax.set_ylabel(key)
        if key in ("loss", "mse", "val_mse") and positive:
            ax.set_yscale("log")
        if runs:
            ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("iteration")
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    _save(fig, path, dpi=110)
    plt.close(fig)
    return keys
