"""The JSON files of a run: strict JSON even for a diverged model, and readers that skip a
line torn by a crash mid-append."""

from __future__ import annotations

import json

import torch

from mamlkit.checkpoint import load_checkpoint, save_checkpoint
from mamlkit.cli import main
from mamlkit.records import read_metrics
from mamlkit.runner import list_runs


def strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def short_run(out):
    argv = ["train", "sine_maml", "--out", str(out), "--no-progress"]
    for s in ("train.iterations=4", "train.log_every=1", "train.tensorboard=false", "eval.tasks=3"):
        argv += ["--set", s]
    assert main(argv) == 0
    return out


def test_eval_of_a_diverged_model_is_strict_json(tmp_path, capsys):
    run = short_run(tmp_path / "run")
    weights, meta = load_checkpoint(run / "model.safetensors")
    weights = {k: torch.full_like(v, float("nan")) for k, v in weights.items()}
    save_checkpoint(run / "model.safetensors", weights, meta)  # as a diverged run leaves it
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    record = strict((run / "eval.json").read_text())
    assert record["mse"] is None and "mse" in record["not_finite"]
    assert strict(capsys.readouterr().out)["not_finite"] == record["not_finite"]
    assert "not finite" in list_runs(tmp_path)[0]["best"]


def test_readers_skip_a_torn_last_line(tmp_path, capsys):
    run = short_run(tmp_path / "run")
    path = run / "metrics.jsonl"
    complete = path.read_text()
    path.write_text(complete + '{"step": 5, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]
    assert main(["plot", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert path.read_text() == complete


def test_a_non_finite_validation_metric_keeps_status_and_metrics_strict(tmp_path, monkeypatch):
    """A validation metric that is NaN (a diverged model) is written as null everywhere."""
    from mamlkit import validation  # the trainer validates through it

    monkeypatch.setattr(
        validation, "evaluate", lambda *a, **k: [{"steps": 1, "mse": float("nan"), "ci95": 0.0}]
    )
    run = tmp_path / "run"
    argv = ["train", "sine_maml", "--out", str(run), "--no-progress"]
    for s in ("train.iterations=2", "train.val_every=1", "train.tensorboard=false"):
        argv += ["--set", s]
    assert main(argv) == 0
    status = strict((run / "status.json").read_text())
    assert status["best"]["value"] is None and status["not_finite"] == ["best.value"]
    for line in (run / "metrics.jsonl").read_text().splitlines():
        assert strict(line)["val_mse"] is None
