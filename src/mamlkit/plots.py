"""Figures of a run (matplotlib, imported lazily so ``import mamlkit`` stays light); the sine
experiment's figures are in :mod:`mamlkit.experiments.sine_plots`."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mamlkit.errors import UserError

if TYPE_CHECKING:
    from matplotlib.figure import Figure


__all__ = ["learning_curves"]

#: how a metric's axis is labelled
LABELS = {
    "loss": "training loss",
    "mse": "mean squared error",
    "accuracy": "accuracy",
    "return": "average return",
    "lr": "outer learning rate",
}


def _figure(**kwargs: Any) -> Figure:
    """A figure outside pyplot's global state (nothing to close, nothing leaks between
    calls), with an Agg canvas so that it can be drawn and measured."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, dpi: int) -> None:
    """Render, then write atomically: a full disk never leaves a half-written figure."""
    from mamlkit.rundir.checkpoint import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    atomic_write_bytes(Path(path), lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def plain_log_ticks(axis: Any) -> None:
    """Tick labels of a log-scaled axis as plain numbers (``3``, ``0.5``, ``2e+04`` only
    beyond 10⁴), not ``3.5325 × 10^0``; matplotlib still decides which ticks carry one."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return f"{x:.4g}"

    axis.set_major_formatter(Plain())
    axis.set_minor_formatter(Plain(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    from mamlkit.rundir.records import read_metrics

    return read_metrics(run_dir / "metrics.jsonl")  # a torn last line is skipped


def _series(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float, float | None]]:
    """(step, value, its 95% CI or None) of ``key`` wherever a record has a number."""
    out = []
    for r in rows:
        value = r.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            ci = r.get(f"{key}_ci95")
            ci = float(ci) if isinstance(ci, (int, float)) and not isinstance(ci, bool) else None
            out.append((r["step"], float(value), ci))
    return out


def _same(a: list[tuple], b: list[tuple]) -> bool:
    """Two series with the same steps and (to float precision) the same values."""
    return [p[0] for p in a] == [p[0] for p in b] and all(
        math.isclose(x[1], y[1], rel_tol=1e-5, abs_tol=1e-9) for x, y in zip(a, b, strict=True)
    )


def curve_panels(records: dict[str, list[dict[str, Any]]]) -> list[tuple[str, list[str]]]:
    """The panels of :func:`learning_curves`: (y label, series keys) with each training
    series and its ``val_`` series in one panel, metrics first; the training loss only
    where it is not the metric itself (sine's MSE); ``lr`` only where it changes."""
    keys = {
        k
        for rows in records.values()
        for r in rows
        for k, v in r.items()
        if k != "step"
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and not k.endswith("_ci95")
    }
    bases = sorted({k[len("val_") :] if k.startswith("val_") else k for k in keys})
    series = {
        k: {label: _series(rows, k) for label, rows in records.items()} for k in keys
    }  # fmt: skip
    label_of = {b: LABELS.get(b, b) for b in bases}
    if "loss" in bases:
        twins = [
            b
            for b in bases
            if b not in ("loss", "lr")
            and b in keys
            and all(_same(series["loss"][r], series[b][r]) for r in records)
        ]
        if twins:
            bases.remove("loss")
            label_of[twins[0]] += " (= training loss)"
    if "lr" in bases and not any(len({p[1] for p in s}) > 1 for s in series["lr"].values()):
        bases.remove("lr")  # a constant rate (or none: TRPO, Reptile) says nothing
    order = {"loss": 1, "lr": 2}
    bases.sort(key=lambda b: (order.get(b, 0), b))
    return [(label_of[b], [k for k in (b, f"val_{b}") if k in keys]) for b in bases]


def learning_curves(run_dir: Path, path: Path, runs: dict[str, Path] | None = None) -> Figure:
    """Plot the series of ``metrics.jsonl`` against the step (panels: :func:`curve_panels`):
    training values solid, validation values dashed with their 95% CI as a band. With
    ``runs`` (label -> run directory, e.g. the models of one `reproduce sine`), each run
    has one colour in every panel. Points carry markers unless a series is long, so that
    a run with few logged steps still shows them. One legend, below the panels. Returns the
    figure (saved to ``path``)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    records = {label: _metrics(run) for label, run in (runs or {run_dir.name: run_dir}).items()}
    panels = curve_panels(records)
    if not panels:
        raise UserError(f"{run_dir}: nothing logged yet; plot again after the first logged step")
    fig = _figure(figsize=(7.5, 2.3 * len(panels) + 1.0))
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    colours = {label: f"C{i % 10}" for i, label in enumerate(records)}
    for ax, (ylabel, keys) in zip(axes, panels, strict=True):
        positive = True
        for key in keys:
            val = key.startswith("val_")
            for label, rows in records.items():
                pts = _series(rows, key)
                if not pts:
                    continue
                steps, values = [p[0] for p in pts], [p[1] for p in pts]
                positive = positive and all(v > 0 for v in values)
                ax.plot(
                    steps, values, color=colours[label], ls="--" if val else "-",
                    marker=("s" if val else "o") if len(pts) <= 100 else None, ms=3.5,
                    gid=f"{label}:{key}",
                )  # fmt: skip
                cis = [p[2] for p in pts]
                if val and all(c is not None for c in cis):
                    ax.fill_between(
                        steps, [v - c for v, c in zip(values, cis, strict=True)],
                        [v + c for v, c in zip(values, cis, strict=True)],
                        color=colours[label], alpha=0.2 if len(records) == 1 else 0.1, lw=0,
                        gid=f"{label}:{key}_ci95",
                    )  # fmt: skip
        ax.set_ylabel(ylabel)
        if keys[0] in ("loss", "mse") and positive:
            ax.set_yscale("log")
            plain_log_ticks(ax.yaxis)
        ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    axes[-1].set_xlabel("iteration")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    one = "k" if runs else colours[next(iter(records))]
    styles: list[Any] = [Line2D([], [], color=one, marker="o", ms=3.5, label="training batches")]
    if any(k.startswith("val_") for _, keys in panels for k in keys):
        styles.append(Line2D([], [], color=one, ls="--", marker="s", ms=3.5, label="validation"))
        styles.append(Patch(color=one, alpha=0.2, label="validation 95% CI"))
    handles = styles
    if runs:  # one row of runs (colours) above one row of styles
        named = [Line2D([], [], color=c, lw=2, label=label) for label, c in colours.items()]
        columns = max(len(named), len(styles))
        blank = Line2D([], [], alpha=0.0, label=" ")
        named += [blank] * (columns - len(named))
        styles += [blank] * (columns - len(styles))
        handles = [h for pair in zip(named, styles, strict=True) for h in pair]
    columns = len(handles) // (2 if runs else 1)
    fig.legend(handles=handles, loc="outside lower center", ncols=columns, fontsize=8)
    last = max((r["step"] for rows in records.values() for r in rows), default=0)
    fig.suptitle(f"{run_dir.name} ({'up to ' if runs else ''}{last:,} iterations)", fontsize=11)
    _save(fig, path, dpi=110)
    return fig
