"""What `mamlkit train`, `eval` and `runs` do, as functions (the CLI only parses)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mamlkit.build import build_learner, build_tasks, check_code_trust, check_device, metric_for
from mamlkit.checkpoint import atomic_write_text, load_checkpoint
from mamlkit.config import Config, load_config
from mamlkit.errors import UserError
from mamlkit.evaluation import evaluate
from mamlkit.precision import cuda_precision
from mamlkit.training import (
    CHECKPOINT_DIR,
    Trainer,
    prepare_run_dir,
    run_checkpoints,
    seed_everything,
)


def train_run(
    config: Config,
    run_dir: Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    update_config: bool = False,
) -> dict[str, Any]:
    """Build everything first (bad data or impossible episodes fail before the run directory
    is created), then train. ``update_config`` (with ``resume``) records the config in the
    run's config.yaml once the checkpoint is restored, e.g. after ``--set train.iterations=N``."""
    check_device(config)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    train_tasks = build_tasks(config, "train")
    val_tasks = build_tasks(config, "val") if config.train.val_every else None
    learner = build_learner(config)
    if not resume:
        prepare_run_dir(run_dir, force)
    trainer = Trainer(
        learner,
        train_tasks,
        config,
        run_dir,
        metric=metric_for(config),
        val_tasks=val_tasks,
        progress=progress,
        description=run_dir.name,
    )
    summary = trainer.fit(resume=resume, config_changed=update_config)
    return {"run_dir": str(run_dir), **summary}


def data_dir_update(data_dir: Path | None) -> dict[str, Any] | None:
    """``--data-dir`` as a config update (a path, never parsed as YAML)."""
    return {"task": {"data_dir": str(data_dir)}} if data_dir is not None else None


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    """``checkpoints/step-N.safetensors`` of a run for ``checkpoint`` = N or ``latest``."""
    found = run_checkpoints(run_dir)
    if not found:
        raise UserError(f"{run_dir}: no checkpoints in {run_dir / CHECKPOINT_DIR}")
    if checkpoint == "latest":
        return found[max(found)]
    if not checkpoint.isdigit() or int(checkpoint) not in found:
        steps = ", ".join(str(s) for s in sorted(found))
        raise UserError(
            f"--checkpoint {checkpoint!r}: not a saved step of {run_dir}; "
            f"use latest or one of {steps}"
        )
    return found[int(checkpoint)]


def load_run(
    run_dir: Path,
    data_dir: Path | None = None,
    checkpoint: str | None = None,
    trust_code: bool = False,
) -> tuple[Config, Any, int | None]:
    """The config, the learner and its training step (None if unknown) of a run directory:
    the final weights, or with ``checkpoint`` (a step or ``latest``) a checkpoint's. A
    ``model.target`` outside mamlkit is imported only with ``trust_code``."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise UserError(f"{run_dir}: no config.yaml; not a mamlkit run directory")
    config = load_config(str(cfg_path), updates=data_dir_update(data_dir))
    check_code_trust(config, cfg_path, trust_code)
    check_device(config)
    if checkpoint is not None:
        weights = checkpoint_path(run_dir, checkpoint)
    else:
        weights = run_dir / "model.safetensors"
        if not weights.is_file():
            raise UserError(
                f"{run_dir}: no model.safetensors; the run has not finished (continue it "
                f"with `mamlkit train --resume {run_dir}`, or evaluate a checkpoint with "
                "--checkpoint latest)"
            )
    learner = build_learner(config)
    tensors, meta = load_checkpoint(weights)
    if checkpoint is not None:  # a training checkpoint: weights are stored as learner.*
        tensors = {k[len("learner.") :]: v for k, v in tensors.items() if k.startswith("learner.")}
    try:
        learner.load_state_dict(tensors)
    except RuntimeError:
        raise UserError(
            f"{weights} does not match the model in {cfg_path} (edited config or "
            "a file from another run)"
        ) from None
    step = meta.get("step") if isinstance(meta, dict) else None
    return config, learner.to(config.train.device).eval(), step


def eval_run(
    run_dir: Path,
    tasks: int | None = None,
    split: str | None = None,
    steps: int | None = None,
    data_dir: Path | None = None,
    checkpoint: str | None = None,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Evaluate a run; writes ``eval.json`` (final weights) or ``eval-step-N.json``
    (``checkpoint``) into the run directory and returns the same record."""
    config, learner, step = load_run(run_dir, data_dir, checkpoint, trust_code)
    tasks = config.eval.tasks if tasks is None else tasks
    split = config.eval.split if split is None else split
    steps = config.eval.steps if steps is None else steps
    if tasks < 1:
        raise UserError(f"--tasks must be >= 1, got {tasks}")
    if steps < 0:
        raise UserError(f"--steps must be >= 0, got {steps}")
    if split not in ("train", "val", "test"):
        raise UserError(f"--split must be train, val or test, got {split!r}")
    metric = metric_for(config)
    with cuda_precision(config.train.precision):  # as the run trained and validated
        by_step = evaluate(
            learner,
            build_tasks(config, split),
            tasks,
            steps=steps,
            metric=metric,
            seed=config.eval.seed,
            device=config.train.device,
            chunk=config.eval.chunk,
        )
    result = by_step[-1]
    out: dict[str, Any] = {metric: result[metric], "ci95": result["ci95"], "tasks": tasks}
    if metric == "return":  # RL: the return after every step (the paper's figures)
        out["by_step"] = by_step
        out["trajectories_per_step"] = config.task.eval_rollouts
    elif config.task.name != "sine":
        out.update({"ways": config.task.ways, "shots": config.task.shots})
    else:
        out["k_shot"] = config.task.k_support
    out.update({"steps": result["steps"], "split": split})
    name = "eval.json"  # exactly the documented record
    if checkpoint is not None:  # a checkpoint's record also says which iteration it is
        out["iteration"] = int(step)
        name = f"eval-step-{int(step):08d}.json"
    atomic_write_text(run_dir / name, json.dumps(out, indent=1))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _eval_text(path: Path, at: str = "") -> str:
    ev = json.loads(path.read_text())
    key = next((k for k in ("accuracy", "return") if k in ev), "mse")
    return f"eval{at} {key} {ev[key]:.4g} ± {ev['ci95']:.2g}"


def list_runs(root: Path) -> list[dict[str, Any]]:
    """Run directories under ``root`` (any depth) with status and their best result: the
    final evaluation, else the best validation metric and the newest checkpoint evaluation."""
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; pass the folder that holds your runs")
    rows = []
    for status_file in sorted(root.rglob("status.json")):
        run = status_file.parent
        try:
            status = json.loads(status_file.read_text())
        except (OSError, json.JSONDecodeError):
            status = {"status": "unknown"}
        state = status.get("status", "unknown")
        if state == "running" and not _alive(int(status.get("pid", -1))):
            state = "crashed"
        best = status.get("best")
        step_evals = sorted(run.glob("eval-step-*.json"))
        if (run / "eval.json").is_file():
            best_text = _eval_text(run / "eval.json")
        else:
            parts = [f"{best['metric']} {best['value']:.4g} @ {best['step']}"] if best else []
            if step_evals:
                iteration = json.loads(step_evals[-1].read_text()).get("iteration", "?")
                parts.append(_eval_text(step_evals[-1], f"@{iteration}"))
            best_text = "; ".join(parts) or "-"
        rows.append(
            {"run": str(run), "status": state, "step": status.get("step", 0), "best": best_text}
        )
    return rows
