"""The figures of `mamlkit reproduce sine`: the paper's Figures 2 (fits to one task) and 3
(error against test-time gradient steps), drawn with :mod:`mamlkit.plots`' helpers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mamlkit.plots import _figure, _save

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["iterations_note", "sine_fits", "sine_mse"]


def iterations_note(iterations: dict[str, int]) -> str:
    """``trained 70,000 iterations`` (one count for all models) or one count per model."""
    counts = set(iterations.values())
    if len(counts) == 1:
        n = counts.pop()
        return f"trained {n:,} iteration{'s' if n != 1 else ''}"
    return "trained " + ", ".join(f"{name}: {n:,}" for name, n in iterations.items())


def sine_fits(panels: list[dict[str, Any]], path: Path, note: str | None = None) -> Figure:
    """Like Figure 2 of the paper. Each panel: ``title``, ``grid``, ``truth``, ``support_x``,
    ``support_y`` and ``curves`` = {steps: predictions on the grid}; ``note`` (e.g. the
    iterations trained, :func:`iterations_note`) goes into the figure's title. One legend
    for all panels, below them. Returns the figure (saved to ``path``)."""
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig = _figure(figsize=(5.5 * cols, 3.2 * rows + 0.9))
    axes = fig.subplots(rows, cols, squeeze=False)
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
        ax.set_title(panel["title"], fontsize=10)
        ax.set_xlim(-5, 5)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    title = "Sine regression: fits to one test task after 0, 1 and 10 gradient steps"
    fig.suptitle(f"{title}\n({note})" if note else title, fontsize=11)
    _save(fig, path, dpi=120)
    return fig


def sine_mse(results: list[dict[str, Any]], path: Path, note: str | None = None) -> Figure:
    """Like Figure 3: MSE (mean ± 95% CI, and the median dotted) against the number of
    test-time gradient steps. The y-axis stops just above the pre-update error, so a mean
    blown up by a few diverging tasks shows as leaving the plot (and is annotated). One
    legend for all panels, below them (it covers no curve); ``note`` goes into the title.
    Returns the figure (saved to ``path``)."""
    ks = sorted({r["k_shot"] for r in results})
    fig = _figure(figsize=(4.2 * len(ks), 3.8))
    axes = fig.subplots(1, len(ks), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        top = 1.15 * max(r["mse"] for r in results if r["k_shot"] == k and r["steps"] == 0)
        notes = []
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
            ax.plot(s, m, marker="o", ms=3, color=color, label=f"{method} (mean, 95% CI)")
            ax.fill_between(
                s,
                [a - b for a, b in zip(m, c, strict=True)],
                [a + b for a, b in zip(m, c, strict=True)],
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
                notes.append((f"{method} mean off-scale from step {off[0]['steps']}", color))
        for i, (text, color) in enumerate(notes):
            ax.annotate(
                text, (0.98, 0.97 - 0.07 * i), xycoords="axes fraction", ha="right",
                va="top", fontsize=7, color=color,
            )  # fmt: skip
        ax.set_ylim(0, top)
        ax.set_title(f"k-shot regression, k={k}", fontsize=10)
        ax.set_xlabel("number of gradient steps")
        ax.set_ylabel("mean squared error")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8)
    title = "Sine regression: test error against test-time gradient steps"
    fig.suptitle(f"{title} ({note})" if note else title, fontsize=11)
    _save(fig, path, dpi=120)
    return fig
