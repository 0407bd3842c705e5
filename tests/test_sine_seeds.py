"""`mamlkit reproduce sine-seeds`: the study's folders and files, a summary that is what its
per-model records say, determinism, --resume and --force as `reproduce sine` has them, and
one-line refusals of bad input. Tiny settings: 30 iterations, 2 seeds, 16 test tasks."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest

from mamlkit.cli import main

TINY = ["--iterations", "30", "--seeds", "2", "--inner-lrs", "0.01,0.001", "--tasks", "16"]
MODELS = [
    f"{method}_seed{seed}"
    for method in ("maml_lr0.01", "maml_lr0.001", "metasgd")
    for seed in (0, 1)
]


def study(out: Path, *extra: str) -> int:
    return main(["reproduce", "sine-seeds", "--out", str(out), *TINY, "--jobs", "1",
                 "--no-progress", *extra])  # fmt: skip


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mamlkit: error:") and "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    """One finished tiny study, shared: tests that change a study work on a copy."""
    out = tmp_path_factory.mktemp("study") / "seeds"
    assert study(out) == 0
    return out


def copy_of(done: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(done, tmp_path / "copy"))  # copy2: mtimes kept


def mtimes(out: Path) -> dict[str, int]:
    return {name: (out / name / "model.safetensors").stat().st_mtime_ns for name in MODELS}


def test_writes_every_run_and_the_results(done):
    assert sorted(p.name for p in done.iterdir() if p.is_dir()) == sorted(MODELS)
    for name in MODELS:
        assert (done / name / "model.safetensors").is_file()
    data = results(done)
    assert data["tasks"] == 16 and set(data["models"]) == set(MODELS)
    assert {r["model"] for r in data["records"]} == set(MODELS)
    assert all(len([r for r in data["records"] if r["model"] == m]) == 11 for m in MODELS)
    assert data["models"]["maml_lr0.001_seed1"]["inner_lr"] == 0.001
    report = (done / "report.md").read_text()
    assert data["conclusion"] in report and "0.67" in report
    assert "Meta-SGD's learned step sizes" in report and "net.0.weight" in report


def test_summary_is_recomputed_from_the_per_model_records(done):
    data = results(done)
    by = {(r["method"], r["seed"], r["steps"]): r for r in data["records"]}
    for method, summary in data["summary"].items():
        assert summary["seeds"] == [0, 1]
        for step, st in summary["steps"].items():
            means = [by[method, seed, int(step)]["mse"] for seed in (0, 1)]
            assert st["mean"] == pytest.approx(statistics.fmean(means), rel=1e-12)
            assert st["std"] == pytest.approx(statistics.stdev(means), rel=1e-12)
            assert (st["min"], st["max"]) == (min(means), max(means))
            tasks = [by[method, seed, int(step)]["diverged_tasks"] for seed in (0, 1)]
            assert st["diverged_tasks"] == tasks
        meets = {
            str(seed): all(by[method, seed, s]["mse"] <= p for s, p in ((1, 0.67), (5, 0.38),
                                                                        (10, 0.35)))
            for seed in (0, 1)
        }  # fmt: skip
        assert summary["meets_paper"] == meets
        assert summary["meets_robustly"] == all(meets.values())
    counts = [f"{s['seeds_meeting_paper']}/2" for s in data["summary"].values()]
    assert all(c in data["conclusion"] for c in counts)


def test_meta_sgd_step_sizes_per_tensor_and_over_seeds(done):
    sizes = results(done)["step_sizes"]
    assert set(sizes["per_seed"]) == {"0", "1"}
    for name, overall in sizes["overall"].items():
        per_seed = [sizes["per_seed"][s][name] for s in ("0", "1")]
        assert overall["mean"] == pytest.approx(statistics.fmean(v["mean"] for v in per_seed))
        assert overall["min"] == min(v["min"] for v in per_seed)
        for v in per_seed:
            assert v["min"] <= v["mean"] <= v["max"]
    assert "net.0.weight" in sizes["overall"]


def test_same_seeds_same_numbers_in_another_folder(done, tmp_path):
    assert study(tmp_path / "again") == 0
    assert results(tmp_path / "again") == results(done)


def test_resume_of_a_finished_study_retrains_nothing(done, tmp_path):
    out = copy_of(done, tmp_path)
    before = mtimes(out)
    assert study(out, "--resume") == 0
    assert mtimes(out) == before
    assert results(out) == results(done)


def test_resume_trains_only_what_is_missing(done, tmp_path):
    out = copy_of(done, tmp_path)
    before = mtimes(out)
    shutil.rmtree(out / "metasgd_seed1")
    assert study(out, "--resume") == 0
    after = mtimes(out)
    assert after["metasgd_seed1"] != before["metasgd_seed1"]
    assert {n: after[n] for n in MODELS[:-1]} == {n: before[n] for n in MODELS[:-1]}
    assert results(out) == results(done)


def test_force_replaces_the_study_and_keeps_the_users_files(done, tmp_path):
    out = copy_of(done, tmp_path)
    (out / "notes.txt").write_text("mine")
    (out / "maml_lr0.01_seed0" / "plot.png").write_bytes(b"png")
    before = mtimes(out)
    assert study(out, "--force") == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "maml_lr0.01_seed0" / "plot.png").read_bytes() == b"png"
    assert all(mtimes(out)[n] != before[n] for n in MODELS)  # trained again
    assert results(out) == results(done)


def test_force_on_a_folder_that_is_not_a_study_is_refused(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    assert study(home, "--force") == 2
    assert "not a mamlkit run" in one_error_line(capsys)
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--inner-lrs", "abc"], "--inner-lrs"),
        (["--inner-lrs", "-1"], "--inner-lrs"),
        (["--inner-lrs", "0.01,0"], "--inner-lrs"),
        (["--seed-list", "0,x"], "--seed-list"),
        (["--seeds", "0"], "--seeds"),
        (["--iterations", "0"], "train.iterations"),
        (["--jobs", "0"], "--jobs"),
        (["--tasks", "0"], "--tasks"),
        (["--resume"], "--resume"),
    ],
    ids=["lr-abc", "lr-negative", "lr-zero", "seed-list", "seeds", "iters", "jobs", "tasks",
         "resume-nothing"],  # fmt: skip
)
def test_bad_input_is_one_line(tmp_path, capsys, extra, match):
    out = tmp_path / "out"
    argv = ["reproduce", "sine-seeds", "--out", str(out), "--no-progress", *extra]
    assert main(argv) == 2
    assert match in one_error_line(capsys)
    assert not out.exists()


def test_the_presets_alpha_seed_0_model_is_reproduce_sines_5_shot_maml(done, tmp_path):
    """The same config and test tasks as `reproduce sine`'s maml_k5 (the sine_maml
    preset's α): the same numbers."""
    from mamlkit.config import load_config

    preset_lr = load_config("sine_maml").algorithm.inner_lr
    out = tmp_path / "sine"
    argv = ["reproduce", "sine", "--out", str(out), "--iterations", "30", "--jobs", "1",
            "--set", "eval.tasks=16", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    sine = [r for r in results(out) if r["method"] == "maml" and r["k_shot"] == 5]
    name = f"maml_lr{preset_lr!r}_seed0"
    seeds = [r for r in results(done)["records"] if r["model"] == name]
    assert seeds
    keys = ("steps", "mse", "median", "diverged_tasks")
    assert [{k: r[k] for k in keys} for r in seeds] == [{k: r[k] for k in keys} for r in sine]


def test_models_trained_side_by_side_give_the_same_numbers(done, tmp_path):
    out = tmp_path / "parallel"
    argv = ["reproduce", "sine-seeds", "--out", str(out), *TINY, "--jobs", "2", "--no-progress"]
    assert main(argv) == 0
    assert results(out)["records"] == results(done)["records"]


def test_a_diverged_seed_makes_the_mean_infinite_and_leaves_the_median():
    from mamlkit.experiments.sine_seeds import summarize

    def record(seed, steps, mse):
        diverged = int(mse == float("inf"))
        return {"method": "m", "seed": seed, "steps": steps, "mse": mse, "median": 0.1,
                "diverged_tasks": diverged}  # fmt: skip

    records = [record(seed, s, 0.2) for seed in (0, 1, 2) for s in (1, 5)]
    records += [record(0, 10, 0.3), record(1, 10, float("inf")), record(2, 10, 0.34)]
    summary = summarize(records, ["m"])["m"]
    ten = summary["steps"]["10"]
    assert ten["mean"] == float("inf") and ten["std"] is None
    assert ten["median"] == 0.34 and ten["min"] == 0.3 and ten["max"] == float("inf")
    assert ten["diverged_seeds"] == 1 and ten["diverged_tasks"] == [0, 1, 0]
    assert summary["meets_paper"] == {"0": True, "1": False, "2": True}
    assert summary["seeds_meeting_paper"] == 2 and not summary["meets_robustly"]
