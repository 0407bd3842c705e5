"""Figures fit for a paper (issue 26, items 3-5): every plot kind rendered on a tiny run
and checked by its structure — axes labelled, a legend, the legend's box clear of every
plotted point (matplotlib's renderer: the legend's window extent against the data points
in display coordinates), markers on short series, one colour per run in every panel, the
lr panel only where the rate changes, plain log-scale ticks, the validation CI band, all
evaluated adaptation steps in trajectories.png and paths inside the axes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from mamlkit import plots
from mamlkit.build import build_learner
from mamlkit.cli import main
from mamlkit.config import load_config
from mamlkit.experiments import sine_plots
from mamlkit.experiments.sine import evaluate_sine, fit_panels, sine_configs
from mamlkit.records import read_metrics
from mamlkit.rl import plots as rl_plots
from mamlkit.runner import eval_run, load_run, train_run

from .test_rl import TINY as TINY_RL  # the RL tests' tiny settings

# fewer iterations than log_every (the 300 with log_every 500), validated twice
TINY_SINE = [
    "train.iterations=6",
    "train.log_every=10",
    "train.val_every=3",
    "train.val_tasks=5",
    "train.meta_batch=2",
    "train.checkpoint_every=6",
    "train.tensorboard=false",
    "eval.steps=2",
]


# ---- structure checks ----------------------------------------------------------------------


def _data_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.axison and (ax.lines or ax.collections)]


def _display_points(ax) -> np.ndarray:
    """Every plotted point of ``ax`` (line vertices, scatter offsets, band vertices) in
    display coordinates."""
    out = []
    for line in ax.lines:
        xy = np.asarray(line.get_xydata(), dtype=float)
        if len(xy):
            out.append(line.get_transform().transform(xy))
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and len(coll.get_offsets()):
            out.append(coll.get_offset_transform().transform(np.asarray(coll.get_offsets())))
        else:
            for path in coll.get_paths():
                if len(path.vertices):
                    out.append(coll.get_transform().transform(path.vertices))
    return np.concatenate(out) if out else np.empty((0, 2))


def _labelled(ax, axis: str) -> bool:
    """``ax`` has a label on ``axis`` or shares it with an axes that has one."""
    get = (lambda a: a.get_xlabel()) if axis == "x" else (lambda a: a.get_ylabel())
    shared = ax.get_shared_x_axes() if axis == "x" else ax.get_shared_y_axes()
    return any(get(a) for a in shared.get_siblings(ax))


def check_figure(fig: Figure) -> list:
    """A paper's figure: every data panel labelled on both axes, at least one legend with
    entries, each legend inside the figure and covering none of the plotted points.
    Returns the legends."""
    assert isinstance(fig, Figure)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = _data_axes(fig)
    assert axes
    for ax in axes:
        assert _labelled(ax, "x") and _labelled(ax, "y"), ax.get_title()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends, "no legend"
    figure_box = fig.bbox
    for legend in legends:
        assert [t.get_text() for t in legend.get_texts()]
        box = legend.get_window_extent(renderer)
        assert figure_box.x0 - 1 <= box.x0 and box.x1 <= figure_box.x1 + 1
        assert figure_box.y0 - 1 <= box.y0 and box.y1 <= figure_box.y1 + 1
        for ax in axes:
            points = _display_points(ax)
            inside = (
                (points[:, 0] >= box.x0)
                & (points[:, 0] <= box.x1)
                & (points[:, 1] >= box.y0)
                & (points[:, 1] <= box.y1)
            )
            assert not inside.any(), f"the legend covers data of panel {ax.get_ylabel()!r}"
    return legends


def legend_texts(legends: list) -> list[str]:
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def tick_texts(ax) -> list[str]:
    ticks = ax.yaxis.get_majorticklabels() + ax.yaxis.get_minorticklabels()
    return [t.get_text() for t in ticks if t.get_text()]


def panel(fig: Figure, words: str):
    [ax] = [ax for ax in _data_axes(fig) if words in ax.get_ylabel()]
    return ax


# ---- tiny runs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sine_runs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny sine runs in one folder: constant rate, and a cosine schedule."""
    root = tmp_path_factory.mktemp("sine")
    runs = {"constant": root / "constant", "cosine": root / "cosine"}
    train_run(load_config("sine_maml", TINY_SINE), runs["constant"], progress=False)
    schedule = ["train.lr_schedule=cosine", "train.min_lr=1e-5"]
    train_run(load_config("sine_maml", [*TINY_SINE, *schedule]), runs["cosine"], progress=False)
    return runs


@pytest.fixture(scope="module")
def nav_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("nav") / "run"
    train_run(load_config("rl_nav2d_maml", [*TINY_RL, "train.iterations=2"]), run, progress=False)
    eval_run(run)
    return run


# ---- item 3: learning_curves.png -----------------------------------------------------------


def test_a_short_run_logs_its_first_step_and_draws_markers(sine_runs, tmp_path):
    run = sine_runs["constant"]
    logged = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert logged == [1, 6]  # 6 iterations with log_every 10: the first and the last
    fig = plots.learning_curves(run, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0
    legends = check_figure(fig)
    assert {"training batches", "validation", "validation 95% CI"} <= set(legend_texts(legends))
    for ax in _data_axes(fig):
        for line in ax.lines:
            assert line.get_marker() not in (None, "None", ""), line.get_gid()
            assert len(line.get_xdata()) > 1, line.get_gid()


def test_train_and_val_share_a_panel_with_the_logged_ci_band(sine_runs, tmp_path):
    run = sine_runs["constant"]
    fig = plots.learning_curves(run, tmp_path / "curves.png")
    # sine's training loss is its MSE: one panel, not two copies
    assert len(_data_axes(fig)) == 1
    ax = panel(fig, "mean squared error")
    assert {line.get_gid() for line in ax.lines} == {"constant:mse", "constant:val_mse"}
    [band] = [c for c in ax.collections if c.get_gid().endswith("val_mse_ci95")]
    vals = [r for r in read_metrics(run / "metrics.jsonl") if "val_mse" in r]
    vertices = np.concatenate([p.vertices for p in band.get_paths()])
    for r in vals:
        at = vertices[np.isclose(vertices[:, 0], r["step"])][:, 1]
        assert np.isclose(at.min(), r["val_mse"] - r["val_mse_ci95"])
        assert np.isclose(at.max(), r["val_mse"] + r["val_mse_ci95"])


def test_log_scale_ticks_are_plain_numbers(sine_runs, tmp_path):
    fig = plots.learning_curves(sine_runs["constant"], tmp_path / "curves.png")
    fig.canvas.draw()
    ax = panel(fig, "mean squared error")
    assert ax.get_yscale() == "log"
    texts = tick_texts(ax)
    assert texts
    for text in texts:
        assert "times" not in text and "×" not in text and "^" not in text, text
        float(text)  # e.g. "3" or "0.6"


def test_one_colour_per_run_in_every_panel_and_lr_only_where_it_changes(sine_runs, tmp_path):
    fig = plots.learning_curves(sine_runs["constant"].parent, tmp_path / "c.png", runs=sine_runs)
    legends = check_figure(fig)
    assert {"constant", "cosine"} <= set(legend_texts(legends))
    colours: dict[str, set] = {"constant": set(), "cosine": set()}
    for ax in _data_axes(fig):
        for artist in [*ax.lines, *ax.collections]:
            run = artist.get_gid().split(":")[0]
            colour = artist.get_color() if artist in ax.lines else artist.get_facecolor()[0]
            colours[run].add(tuple(np.round(to_rgb(colour), 3)))
    assert all(len(c) == 1 for c in colours.values()), colours
    assert colours["constant"] != colours["cosine"]
    ylabels = [ax.get_ylabel() for ax in _data_axes(fig)]
    assert "outer learning rate" in ylabels  # the cosine run's rate changes
    lr_panel = panel(fig, "outer learning rate")
    assert {line.get_gid() for line in lr_panel.lines} == {"cosine:lr", "constant:lr"}
    single = plots.learning_curves(sine_runs["cosine"], tmp_path / "one.png")
    assert "outer learning rate" in [ax.get_ylabel() for ax in _data_axes(single)]
    constant = plots.learning_curves(sine_runs["constant"], tmp_path / "two.png")
    assert "outer learning rate" not in [ax.get_ylabel() for ax in _data_axes(constant)]


def test_runs_without_an_outer_optimiser_log_and_plot_no_lr(nav_run, tmp_path):
    records = read_metrics(nav_run / "metrics.jsonl")
    assert records and all("lr" not in r for r in records)  # TRPO: no optimiser's rate
    fig = plots.learning_curves(nav_run, tmp_path / "curves.png")
    check_figure(fig)
    assert "outer learning rate" not in [ax.get_ylabel() for ax in _data_axes(fig)]
    # an older run's records carry the unused optimiser's constant rate: no panel either
    old = [{**r, "lr": 0.001} for r in records]
    assert [keys for _, keys in plots.curve_panels({"old": old})] == [["return"], ["loss"]]


# ---- item 4: sine_fits.png, sine_mse.png, trajectories.png, returns.png ---------------------


@pytest.fixture(scope="module")
def sine_report():
    """The report's inputs from untrained tiny models (8 test tasks; the drawing is what is
    tested, not the numbers)."""
    configs = sine_configs(2, 0, "cpu", ["eval.tasks=8", "eval.steps=3"])
    learners = {name: build_learner(config).eval() for name, config in configs.items()}
    lrs = {5: 0.01, 10: 0.01, 20: 0.01}
    pre = configs["pretrained"]
    return {
        "panels": fit_panels(learners, "cpu", pre.eval.seed, lrs),
        "records": evaluate_sine(learners, pre, "cpu", lrs),
        "note": sine_plots.iterations_note({n: c.train.iterations for n, c in configs.items()}),
    }


def test_sine_fits_have_axis_labels_one_legend_and_the_iterations(sine_report, tmp_path):
    assert sine_report["note"] == "trained 2 iterations"
    fig = sine_plots.sine_fits(sine_report["panels"], tmp_path / "f.png", note=sine_report["note"])
    legends = check_figure(fig)
    assert len(legends) == 1 and "ground truth" in legend_texts(legends)
    assert "trained 2 iterations" in fig.get_suptitle()
    for ax in _data_axes(fig):
        assert ax.get_xlabel() and ax.get_ylabel()


def test_sine_mse_legend_covers_no_curve(sine_report, tmp_path):
    fig = sine_plots.sine_mse(sine_report["records"], tmp_path / "m.png", note=sine_report["note"])
    legends = check_figure(fig)  # e.g. the pretrained curve of the k=20 panel
    assert {"maml (mean, 95% CI)", "pretrained (mean, 95% CI)"} <= set(legend_texts(legends))
    assert len(_data_axes(fig)) == 3 and "trained 2 iterations" in fig.get_suptitle()


def test_returns_name_the_iterations_trained(nav_run, tmp_path):
    fig = rl_plots.return_by_step(nav_run / "eval.json", "nav2d", tmp_path / "r.png")
    legends = check_figure(fig)
    assert "MAML (paper)" in legend_texts(legends)
    assert "2 training iterations" in fig.axes[0].get_title()


def test_trajectories_show_every_evaluated_step_unclipped(nav_run, tmp_path):
    _, learner, step = load_run(nav_run, device="cpu")
    fig = rl_plots.nav2d_trajectories(learner, tmp_path / "t.png", steps=3, iterations=step)
    legends = check_figure(fig)
    texts = legend_texts(legends)
    assert len(legends) == 1  # one legend for all panels
    for label in ("before adapting", "after 1 step", "after 2 steps", "after 3 steps", "goal"):
        assert label in texts
    assert "2 training iterations" in fig.get_suptitle()
    for ax in _data_axes(fig):
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        for line in ax.lines:
            xy = np.asarray(line.get_xydata(), dtype=float)
            assert ((xy[:, 0] >= x0) & (xy[:, 0] <= x1)).all(), "a path leaves the axes"
            assert ((xy[:, 1] >= y0) & (xy[:, 1] <= y1)).all(), "a path leaves the axes"
        colours = {line.get_color() for line in ax.lines if line.get_label() != "goal"}
        assert len(colours) >= 4 + 1  # four steps and the start


def test_plot_command_draws_the_rl_figures(nav_run):
    assert main(["plot", str(nav_run)]) == 0
    for name in ("learning_curves.png", "returns.png", "trajectories.png"):
        assert (nav_run / name).stat().st_size > 0
    assert json.loads((nav_run / "eval.json").read_text())["step"] == 2


def test_the_check_sees_a_legend_over_the_data_and_a_missing_label():
    """The structure check can fail: a legend in the middle of a line, an unlabelled axis."""
    fig = plots._figure()
    ax = fig.subplots()
    ax.plot([0, 1, 2], [0, 1, 2], label="data")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(loc="center")
    with pytest.raises(AssertionError, match="covers data"):
        check_figure(fig)
    ax.get_legend().remove()
    fig.legend(loc="outside lower center")
    check_figure(fig)
    ax.set_ylabel("")
    with pytest.raises(AssertionError):
        check_figure(fig)
