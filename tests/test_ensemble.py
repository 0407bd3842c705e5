"""``eval.ensemble`` (MAML++'s test protocol): a run keeps the test predictions of its best
validation checkpoints, and ``mamlkit eval`` scores their average. Checked against each
member's own weights predicting the test tasks one task at a time; keeping them changes no
training; a resume from an earlier step redoes them; turned on mid-run, the validations it
missed are named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mamlkit.budget import TimeBudget
from mamlkit.build import build_tasks
from mamlkit.cli import main
from mamlkit.evaluation import mean_ci95, task_batches, task_mse
from mamlkit.rundir import RunDirectory
from mamlkit.rundir.checkpoint import load_checkpoint
from mamlkit.runner import load_run

SINE = [
    "train.iterations=60",
    "train.val_every=10",
    "train.val_tasks=8",
    "train.log_every=10",
    "train.checkpoint_every=10",
    "train.keep_checkpoints=10",
    "train.tensorboard=false",
    "train.meta_batch=4",
    "train.seed=3",
    "eval.tasks=30",
    "eval.steps=2",
    "eval.chunk=20",
]


def train(run: Path, *values: str, force: bool = False) -> None:
    args = ["train", "sine_maml", "--no-progress", "--out", str(run), *["--force"][:force]]
    assert main([*args, *(a for v in (*SINE, *values) for a in ("--set", v))]) == 0


def validations(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["val_mse"] for r in records if "val_mse" in r}


def kept(run: Path) -> dict[int, dict[str, torch.Tensor]]:
    return {s: load_file(p) for s, p in RunDirectory(run).predictions().items()}


def test_eval_scores_the_average_of_the_best_validation_checkpoints(tmp_path, capsys):
    run = tmp_path / "run"
    train(run, "eval.ensemble=3")
    vals = validations(run)
    best = sorted(vals, key=lambda s: (vals[s], -s))[:3]  # lowest MSE first; ties: later
    assert len(vals) == 6 and sorted(kept(run)) == sorted(best)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    ensemble = json.loads((run / "eval.json").read_text())["ensemble"]
    assert [m["step"] for m in ensemble["members"]] == best
    assert [m["val_mse"] for m in ensemble["members"]] == [vals[s] for s in best]
    assert "not_kept" not in ensemble
    # the reference: every member's own weights (its checkpoint) adapt to each test task
    # alone and predict its query set; the ensemble's prediction is their mean
    preds, targets = [], []
    for step in best:
        config, learner, _ = load_run(run, checkpoint=str(step))
        ours = []
        for batch in task_batches(build_tasks(config, "test"), 30, config.eval.seed, "cpu", 20):
            for i in range(batch.num_tasks):
                ours.append(learner.predict_task(
                    batch.support_x[i], batch.support_y[i], batch.query_x[i], steps=2
                ).double())  # fmt: skip
                targets.append(batch.query_y[i]) if step == best[0] else None
        preds.append(torch.stack(ours))
    mean, ci = mean_ci95(task_mse(torch.stack(preds).mean(0), torch.stack(targets)))
    assert ensemble["mse"] == pytest.approx(mean, rel=1e-5)
    assert ensemble["ci95"] == pytest.approx(ci, rel=1e-5)
    assert f"ensemble of the 3 best validation checkpoints (steps {best[0]}, " in out
    # a member alone is its checkpoint's own evaluation
    assert main(["eval", str(run), "--checkpoint", str(best[0])]) == 0
    alone = json.loads((run / f"eval-step-{best[0]:08d}.json").read_text())
    member = load_checkpoint(RunDirectory(run).predictions()[best[0]])[0]
    assert mean_ci95(task_mse(member["predictions"].double(), member["targets"]))[0] == (
        pytest.approx(alone["mse"], rel=1e-5)
    )
    assert "ensemble" not in alone
    # another protocol (other tasks) has no ensemble: the predictions are of the run's own
    assert main(["eval", str(run), "--tasks", "7"]) == 0
    assert "ensemble" not in json.loads((run / "eval-tasks-7.json").read_text())


def test_keeping_predictions_changes_no_training_and_a_resume_redoes_them(tmp_path):
    plain, ensemble, resumed = tmp_path / "plain", tmp_path / "ensemble", tmp_path / "resumed"
    train(plain)
    train(ensemble, "eval.ensemble=2")
    assert (plain / "metrics.jsonl").read_bytes() == (ensemble / "metrics.jsonl").read_bytes()
    a, b = load_file(plain / "model.safetensors"), load_file(ensemble / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (plain / "ensemble").exists()
    # back to step 20: the predictions of later validations go with them...
    shutil.copytree(ensemble, resumed)
    assert sorted(kept(resumed)) == [50, 60]
    args = ["train", "--resume", str(resumed), "--checkpoint", "20", "--no-progress"]
    assert main([*args, "--set", "train.iterations=20"]) == 0
    assert set(kept(resumed)) <= {10, 20}
    # ...and training on to the end from there keeps the same ones, bit for bit
    assert main([*args, "--set", "train.iterations=60"]) == 0
    ours, theirs = kept(resumed), kept(ensemble)
    assert ours.keys() == theirs.keys() and len(ours) == 2
    assert all(torch.equal(ours[s][k], theirs[s][k]) for s in ours for k in ours[s])
    # a new run in its place (--force) starts without the old run's predictions
    train(ensemble, "train.iterations=10", force=True)
    assert not (ensemble / "ensemble").exists()


def test_an_ensemble_set_on_resume_names_the_validations_it_missed(tmp_path, capsys):
    run = tmp_path / "run"
    train(run, "train.iterations=30")
    assert not (run / "ensemble").exists()
    args = ["train", "--resume", str(run), "--no-progress", "--set", "train.iterations=60"]
    assert main([*args, "--set", "eval.ensemble=5"]) == 0
    assert "ensemble: 5" in (run / "config.yaml").read_text()
    assert sorted(kept(run)) == [40, 50, 60]
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    ensemble = json.loads((run / "eval.json").read_text())["ensemble"]
    vals = validations(run)
    top = sorted(vals, key=lambda s: (vals[s], -s))[:5]  # the protocol's 5 of the 6
    missed = sorted(s for s in top if s < 40)
    assert len(missed) >= 2 and ensemble["not_kept"] == missed  # one of the 6 is out
    text = ", ".join(map(str, missed))
    assert f"not in it: validations at steps {text} (no" in capsys.readouterr().out


@pytest.mark.parametrize(
    "preset, values, needs",
    [
        ("sine_maml", ["eval.ensemble=3", "train.val_every=0"], "set train.val_every"),
        ("sine_maml", ["eval.ensemble=0"], "must be >= 1"),
        ("rl_nav2d_maml", ["eval.ensemble=3"], "use eval.ensemble=1"),
    ],
)
def test_an_ensemble_it_cannot_keep_is_refused_in_one_line(tmp_path, capsys, preset, values, needs):
    args = ["train", preset, "--out", str(tmp_path / "run"), "--dry-run"]
    assert main([*args, *(a for v in values for a in ("--set", v))]) == 2
    err = capsys.readouterr().err.strip()
    assert "eval.ensemble" in err and needs in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_the_time_budget_plans_for_the_test_predictions():
    budget = TimeBudget(100.0, started=0.0)
    budget.note("iteration", 1.0)
    budget.note("validation", 10.0)
    # 60 s, then an iteration (1.25), the pause's checkpoint (1.5), a validation (15)
    assert budget.fits(60.0, validation=True, checkpoint=False)
    budget.ensemble_ratio = 3.0  # unmeasured: three validations' time (45 s more)
    assert not budget.fits(60.0, validation=True, checkpoint=False)
    assert budget.fits(60.0, validation=False, checkpoint=False)
    budget.note("ensemble", 5.0)  # measured: 7.5 s more
    assert budget.fits(60.0, validation=True, checkpoint=False)
    budget.note("ensemble", 2.0)  # the slowest counts
    assert not budget.fits(76.0, validation=True, checkpoint=False)


def test_the_summary_shows_a_published_ensembles_number_beside_the_ensemble():
    from mamlkit.cli_info import eval_summary
    from mamlkit.config import load_config

    members = [{"step": 10, "val_accuracy": 99.0}]
    record = {"tasks": 600, "split": "test", "accuracy": 99.0, "ci95": 0.3,
              "ensemble": {"accuracy": 99.4, "ci95": 0.3, "members": members}}  # fmt: skip
    by_step = [{"steps": s, "accuracy": 99.0, "ci95": 0.3} for s in range(6)]
    config = load_config("omniglot_mamlpp_5w1s")
    lines = eval_summary(record, by_step, config, Path("run/eval.json"))
    assert lines[-3].endswith("(steps 10): 99.4 ± 0.3  paper 99.47")
    assert not any("99.47" in line for line in lines[:-3])
    # without an ensemble the number stays beside the last step
    del record["ensemble"]
    lines = eval_summary(record, by_step, config, Path("run/eval.json"))
    assert lines[-3].split() == ["5", "99", "±", "0.3", "99.47"]


def test_a_paused_run_keeps_its_predictions_and_resumes_to_the_same_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMLKIT_TEST_CLOCK", "0.05")  # every clock read: 50 ms, on any machine
    paused, straight = tmp_path / "paused", tmp_path / "straight"
    longer = ["eval.ensemble=2", "train.iterations=200"]
    train(paused, *longer, "train.max_time=15s")
    state = json.loads((paused / "status.json").read_text())
    assert state["status"] == "paused" and 20 <= state["step"] < 200
    assert state["used_seconds"] <= state["budget_seconds"]  # predictions planned for
    assert kept(paused) and max(kept(paused)) <= state["step"]
    resume = ["train", "--resume", str(paused), "--no-progress", "--set", "train.max_time=1h"]
    assert main(resume) == 0
    train(straight, *longer)
    ours, theirs = kept(paused), kept(straight)
    assert ours.keys() == theirs.keys() and len(ours) == 2
    assert all(torch.equal(ours[s][k], theirs[s][k]) for s in ours for k in ours[s])


def test_a_trainer_with_a_budget_plans_for_its_predictions(tmp_path):
    from mamlkit.build import build_learner
    from mamlkit.config import load_config
    from mamlkit.ensemble import run_ensemble
    from mamlkit.training import Trainer

    config = load_config("sine_maml", [*SINE, "eval.ensemble=2"])
    learner, run, budget = build_learner(config), RunDirectory(tmp_path / "run"), TimeBudget(60)
    ensemble = run_ensemble(run, learner, config)
    Trainer(learner, build_tasks(config), config, run, budget=budget, ensemble=ensemble)
    assert budget.ensemble_ratio == 30 / 8  # eval.tasks / train.val_tasks
    assert run_ensemble(run, learner, load_config("sine_maml", SINE)) is None  # ensemble=1


def test_damaged_predictions_are_one_line_and_a_removed_file_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    train(run, "eval.ensemble=2", "train.iterations=30")
    members = RunDirectory(run).predictions()
    worst = min(members)
    data = bytearray(members[worst].read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the tensors: their checksum no longer matches
    members[worst].write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(members[worst]) in err and "remove it" in err
    members[worst].unlink()  # as the message says: the ensemble leaves that step out
    assert main(["eval", str(run)]) == 0
    ensemble = json.loads((run / "eval.json").read_text())["ensemble"]
    assert [m["step"] for m in ensemble["members"]] == [max(members)]
    assert ensemble["not_kept"] == [worst]


def test_the_device_step_keeps_the_same_predictions_as_the_eager_loop(tmp_path, monkeypatch):
    from mamlkit.training import Trainer

    eager, device = tmp_path / "eager", tmp_path / "device"
    train(eager, "eval.ensemble=2")
    monkeypatch.setattr(Trainer, "_device_step_on_cpu", True)  # the CUDA-graph step's code
    train(device, "eval.ensemble=2")
    assert json.loads((device / "status.json").read_text())["engine"] == "device-eager"
    assert (eager / "metrics.jsonl").read_bytes() == (device / "metrics.jsonl").read_bytes()
    ours, theirs = kept(device), kept(eager)
    assert ours.keys() == theirs.keys() and len(ours) == 2
    assert all(torch.equal(ours[s][k], theirs[s][k]) for s in ours for k in ours[s])
