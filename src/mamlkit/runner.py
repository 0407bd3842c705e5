"""What `mamlkit train`, `eval` and `runs` do, as functions (the CLI only parses)."""

from __future__ import annotations

import contextlib
import math
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mamlkit import records
from mamlkit.budget import TimeBudget, parse_duration
from mamlkit.build import build_learner, build_tasks, check_code_trust, check_device, metric_for
from mamlkit.callbacks import Callback
from mamlkit.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    state_mismatch,
    tensors_digest,
)
from mamlkit.config import SAVED_BEFORE_THE_KEY, Config, load_config
from mamlkit.data.cache import forget_recent_entries
from mamlkit.distributed import from_environment
from mamlkit.ensemble import ensemble_record, run_ensemble
from mamlkit.errors import UserError, is_write_failure
from mamlkit.eval_files import WeightsSource
from mamlkit.evaluation import evaluate
from mamlkit.limits import check_eval_work, check_flag
from mamlkit.precision import cuda_precision
from mamlkit.run_data import RecordData, checked_splits, data_record, use_run_data
from mamlkit.run_files import prepare_run_dir, run_checkpoints
from mamlkit.run_identity import check_file_identity, run_id, run_instance
from mamlkit.run_list import list_runs  # noqa: F401  (where it lived before)
from mamlkit.run_resume import (
    RESUME_OVERRIDES,
    check_resume,
    require_mamlkit_run,
    restart_without_checkpoint,
)
from mamlkit.rundir import (
    CHECKPOINT_DIR,
    RunDirectory,
    check_no_links,
    lock_run_dir,
    remove_orphaned_tmp,
)
from mamlkit.tasks.datasets import dataset_of, locate
from mamlkit.tasks.registry import TASKS, task_spec
from mamlkit.training import Trainer, seed_everything

RESUME_ON_CUDA = (
    "this run trains on CUDA: resume it on a machine with CUDA, or move it to this one's CPU "
    "with `mamlkit train --resume {run} --device cpu` (its task sampler then starts from a "
    "new seed; `mamlkit eval {run} --device cpu` evaluates it here without training)"
)


def train_run(
    config: Config,
    run_dir: Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    update_config: bool = False,
    from_step: int | None = None,
    max_time: str | None = None,
    started: float | None = None,
    data_dir: Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Build everything first (bad data or impossible episodes in any split the run uses
    fail before the run directory is created), then train. ``update_config`` (with
    ``resume``) records the config in the run's config.yaml once the checkpoint is
    restored, e.g. after ``--set train.iterations=N``; ``from_step`` resumes from that
    checkpoint instead of the newest; ``data_dir`` (with ``resume``) is the user's
    ``--data-dir``, used only if its data is the data the run trained on
    (:mod:`mamlkit.run_data`; a new run takes it in ``config``). ``max_time`` (else
    ``train.max_time``) is this piece's time budget, counted from ``started`` (a
    :func:`mamlkit.budget.monotonic` reading; default now): training pauses before it ends
    and the summary says ``"paused": true``. ``callbacks`` are the user's own
    :class:`~mamlkit.callbacks.Callback` objects, called after the run's own (data record,
    progress bar, TensorBoard), as ``Trainer(callbacks=...)``."""
    budget = None
    if (max_time or config.train.max_time) is not None:
        text = max_time or config.train.max_time
        option = "--max-time" if max_time else "train.max_time"
        budget = TimeBudget(parse_duration(text, option), started=started, text=text)
    # --resume keeps the device it trained on unless --device (train.device) moves it
    fix = RESUME_ON_CUDA.format(run=shlex.quote(str(run_dir)))
    check_device(config, fix if resume else "use --set train.device=cpu")
    if resume:  # every rank reads the run (before taking its own device): each refuses alike
        require_mamlkit_run(run_dir, "--resume")
        check_resume(run_dir, config, from_step, RESUME_OVERRIDES)
    dist = from_environment(config.train.device)
    if dist is not None:  # torchrun: this process's share of a data-parallel job
        config.train.device = dist.device(config.train.device)
        dist.check_meta_batch(config.train.meta_batch)
        progress = progress and dist.main
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    data, was = None, getattr(config.task, "data_dir", None)  # None: a task without data
    if resume:
        data = use_run_data(run_dir, config, data_dir, checked_splits(config))
    elif data_dir is not None:
        config.task.data_dir = str(data_dir)
    if dataset_of(config) is not None:
        if data is None:  # recorded as the absolute folder it was found in
            config.task.data_dir = str(locate(config))
        update_config = update_config or config.task.data_dir != was
    train_tasks = build_tasks(config, "train")
    val_tasks = build_tasks(config, "val") if config.train.val_every else None
    if dataset_of(config) is not None:
        for split in checked_splits(config)[1 + bool(val_tasks) :]:
            build_tasks(config, split)  # episodes that do not fit fail now, not at eval
        if data is None:
            data = data_record(config, checked_splits(config))
        forget_recent_entries()  # the splits only checked need not stay in memory
    learner = build_learner(config)
    restarted = False
    main = dist is None or dist.main  # torchrun: rank 0 alone prepares, locks and writes
    if not resume and main:
        prepare_run_dir(run_dir, force, clear=False)  # before the lock creates the folder
    lock = lock_run_dir(run_dir, create=not resume) if main else contextlib.nullcontext()
    with lock:
        if main and not resume:
            prepare_run_dir(run_dir, force)  # again under the lock: nobody wrote meanwhile
        elif main:
            check_no_links(run_dir)
            remove_orphaned_tmp(run_dir)
            if not run_checkpoints(run_dir) and from_step is None:
                restarted = restart_without_checkpoint(run_dir)
        directory = RunDirectory(run_dir)
        ensemble = run_ensemble(directory, learner, config) if main else None
        trainer = Trainer(
            learner,
            train_tasks,
            config,
            directory,
            metric=metric_for(config),
            val_tasks=val_tasks,
            progress=progress,
            description=run_dir.name,
            dist=dist,
            budget=budget,
            ensemble=ensemble,
            callbacks=[*([RecordData(data)] if data is not None else []), *callbacks],
        )
        try:
            summary = trainer.fit(
                resume=resume and not restarted,
                config_changed=update_config and not restarted,
                from_step=from_step,
            )
        except OSError as exc:
            if not is_write_failure(exc):
                raise
            raise UserError(
                f"writing {exc.filename or run_dir} failed ({exc.strerror}); {run_dir} is "
                "intact up to its last checkpoint: free space (or fix permissions), then "
                f"`mamlkit train --resume {run_dir}`"
            ) from None
    return {"run_dir": str(run_dir), **summary, **({"restarted": True} if restarted else {})}


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
    if not (checkpoint.isascii() and checkpoint.isdigit()) or int(checkpoint) not in found:
        steps = ", ".join(str(s) for s in sorted(found))
        raise UserError(
            f"--checkpoint {checkpoint!r}: not a saved step of {run_dir}; "
            f"use latest or one of {steps}"
        )
    return found[int(checkpoint)]


def require_run_directory(run_dir: Path, option: str = "") -> None:
    """A one-line :class:`UserError` (naming ``option``, e.g. ``--resume``) unless
    ``run_dir`` holds a run's config.yaml."""
    if (run_dir / "config.yaml").is_file():
        return
    # under torchrun only rank 0 writes the run directory, but every rank reads it to
    # resume or evaluate: a node that cannot see it has no shared filesystem with rank 0
    nodes = (
        " (under torchrun every node reads it: keep runs on a filesystem all nodes share)"
        if int(os.environ.get("WORLD_SIZE", "1")) > 1
        else ""
    )
    raise UserError(f"{option}{run_dir}: no config.yaml there; not a mamlkit run directory{nodes}")


def load_run_config(
    run_dir: Path, overrides: list[str] | tuple[str, ...] = (), updates: dict | None = None
) -> Config:
    """The config of a run directory; a damaged or hand-edited config.yaml is a
    :class:`UserError` that names it."""
    require_run_directory(run_dir)
    cfg_path = run_dir / "config.yaml"
    try:
        empty = not cfg_path.read_bytes().strip()
    except OSError as exc:
        raise UserError(f"{cfg_path} cannot be read ({exc.strerror}); check it") from None
    if empty:
        raise UserError(f"{cfg_path} is empty; restore the run's config (e.g. from a backup)")
    try:
        return load_config(
            str(cfg_path), list(overrides), updates=updates, missing=SAVED_BEFORE_THE_KEY
        )
    except UserError as exc:
        if str(exc).startswith(str(cfg_path)):
            raise
        raise UserError(f"{cfg_path}: {exc} (hand-edited? restore it)") from None


def load_run(
    run_dir: Path,
    data_dir: Path | None = None,
    checkpoint: str | None = None,
    trust_code: bool = False,
    task_updates: dict[str, Any] | None = None,
    device: str | None = None,
) -> tuple[Config, Any, int | None]:
    """The config, the learner and its training step (None if unknown) of a run directory:
    the final weights, or with ``checkpoint`` (a step or ``latest``) a checkpoint's. A
    ``model.target`` outside mamlkit is imported only with ``trust_code``;
    ``task_updates`` replace values of the run's ``task`` config (a test protocol's);
    ``device`` (cpu, cuda) replaces the run's ``train.device`` (``--device``). Weights that
    carry another run's id are refused."""
    config, learner, source = load_run_weights(
        run_dir, data_dir, checkpoint, trust_code, task_updates, device
    )
    return config, learner, source.step


def load_run_weights(
    run_dir: Path,
    data_dir: Path | None = None,
    checkpoint: str | None = None,
    trust_code: bool = False,
    task_updates: dict[str, Any] | None = None,
    device: str | None = None,
) -> tuple[Config, Any, WeightsSource]:
    """:func:`load_run`, with the :class:`WeightsSource` the weights came from in place of
    the step (what an evaluation record names, and checks before it is written)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    updates: dict[str, Any] = data_dir_update(data_dir) or {"task": {}}
    updates["task"].update(task_updates or {})
    if device is not None:
        updates["train"] = {"device": device}
    config = load_run_config(run_dir, updates=updates)
    check_code_trust(config, run_dir / "config.yaml", trust_code)
    check_device(config, "use --device cpu (device='cpu' from Python)")
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
    # the run as it is now, before its weights are read (what an evaluation checks later)
    identity, instance = run_id(run_dir), run_instance(run_dir)
    learner = build_learner(config)
    tensors, meta = load_checkpoint(weights)
    check_file_identity(run_dir, weights, meta)
    digest = tensors_digest(tensors)
    if checkpoint is not None:  # a training checkpoint: weights are stored as learner.*
        tensors = {k[len("learner.") :]: v for k, v in tensors.items() if k.startswith("learner.")}
    try:
        learner.load_state_dict(tensors)
    except RuntimeError:
        raise UserError(
            f"{weights} does not match the model in {cfg_path} "
            f"({state_mismatch(learner, tensors)}): edited config, a file from another run, "
            "or a run of another mamlkit version whose defaults differ"
        ) from None
    step = meta.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        if checkpoint is not None:
            raise UserError(
                f"{weights}: its metadata has no training step (damaged); choose another "
                "--checkpoint"
            )
        step = None
    source = WeightsSource(run_dir, weights, digest, step, identity, instance)
    return config, learner.to(config.train.device).eval(), source


def eval_run(
    run_dir: Path,
    tasks: int | None = None,
    split: str | None = None,
    steps: int | None = None,
    data_dir: Path | None = None,
    checkpoint: str | None = None,
    trust_code: bool = False,
    within_alphabet: bool | None = None,
    inner_lr: Sequence[float] = (),
    samples: int | None = None,
    device: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate a run; writes ``eval.json`` (final weights) or ``eval-step-N.json``
    (``checkpoint``) into the run directory and returns the same record.
    ``within_alphabet`` (Omniglot) overrides the run's test protocol; the record then goes
    to ``eval-within-alphabet.json`` / ``eval-any-alphabet.json`` beside the usual one.
    ``inner_lr`` replaces the test-time step size (RL: one per step, the last repeating);
    the record then goes to ``eval-inner-lr-A-B.json``. ``samples`` (RL) makes each test
    step at least that many environment steps per task (``task.eval_samples``); the record
    then goes to ``eval-samples-N.json``; ``tasks``/``steps`` other than the config's to
    ``eval-tasks-N.json``/``eval-steps-N.json`` (the task names them:
    :meth:`mamlkit.tasks.TaskSpec.eval_file_name`); what a record holds besides the score is
    the task's too (:meth:`~mamlkit.tasks.TaskSpec.eval_record`).
    The record names the weights it scored (step, file, hash, run id), and is written only
    if the run still holds them when the evaluation ends. ``device`` evaluates on another
    device than the run's ``train.device`` (the same record: the device does not change what
    is measured). ``details``, a dict, receives what the record leaves out: ``by_step``
    (the metric after every step), ``config`` and ``path`` (the file written). On the run's
    own protocol and final weights, a run with ``eval.ensemble`` > 1 adds ``ensemble``:
    :func:`mamlkit.ensemble.ensemble_record`."""
    inner_lr = list(inner_lr)
    if not all(math.isfinite(a) and a > 0 for a in inner_lr):
        raise UserError(f"--inner-lr must be positive numbers, got {inner_lr}")
    if samples is not None and samples < 0:
        raise UserError(f"--samples must be >= 0 (0: a number of trajectories), got {samples}")
    for flag, value, kind in (("--tasks", tasks, "tasks"), ("--steps", steps, "steps")):
        check_flag(flag, value, kind)  # before anything is loaded
    check_flag("--samples", samples, "samples")
    names = {
        "tasks": "--tasks" if tasks is not None else "eval.tasks",
        "steps": "--steps" if steps is not None else "eval.steps",
        "samples": "--samples" if samples is not None else "task.eval_samples",
    }
    protocol = {"eval_samples": samples} if samples is not None else None
    config, learner, source = load_run_weights(
        run_dir, None, checkpoint, trust_code, protocol, device=device
    )
    metric = metric_for(config)
    task = task_spec(config.task.name)  # what its records hold and how their files are named
    task.check_eval_options(samples, inner_lr)
    protocol_changed = within_alphabet is not None and within_alphabet != getattr(
        config.task, "within_alphabet", False
    )
    if within_alphabet is not None:
        if not task.alphabets:
            having = ", ".join(name for name, spec in TASKS.items() if spec.alphabets)
            raise UserError(
                f"--within-alphabet/--any-alphabet: {config.task.name} runs have no "
                f"alphabets; only {having} runs have"
            )
        config.task.within_alphabet = within_alphabet
    own = {"tasks": config.eval.tasks, "split": config.eval.split, "steps": config.eval.steps}
    tasks = config.eval.tasks if tasks is None else tasks
    split = config.eval.split if split is None else split
    steps = config.eval.steps if steps is None else steps
    if tasks < 1:
        raise UserError(f"--tasks must be >= 1, got {tasks}")
    if steps < 0:
        raise UserError(f"--steps must be >= 0, got {steps}")
    if split not in ("train", "val", "test"):
        raise UserError(f"--split must be train, val or test, got {split!r}")
    use_run_data(run_dir, config, data_dir, [split])  # the data it trained on, or an error
    check_eval_work(config, tasks, steps, names, rl=task.rl)
    dist = from_environment(config.train.device)  # torchrun: the ranks share the tasks
    if dist is not None:
        config.train.device = dist.device(config.train.device)
        learner.to(config.train.device)
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
            dist=dist,
            lr=task.eval_lr(inner_lr),
            progress=f"eval {Path(run_dir).name}",
        )
    result = by_step[-1]
    out: dict[str, Any] = {metric: result[metric], "ci95": result["ci95"], "tasks": tasks}
    out.update(task.eval_record(config, by_step))
    out.update({"steps": result["steps"], "split": split})
    if getattr(config.task, "within_alphabet", False):
        out["within_alphabet"] = True
    if inner_lr:
        out["inner_lr"] = inner_lr
    if checkpoint is not None:  # a checkpoint's record also says which iteration it is
        out["iteration"] = int(source.step)
    if checkpoint is None and not (inner_lr or protocol_changed) and samples is None:
        if {"tasks": tasks, "split": split, "steps": steps} == own:  # the run's own protocol
            ensemble = ensemble_record(run_dir, config, metric)  # eval.ensemble's
            out.update({"ensemble": ensemble} if ensemble is not None else {})
    out.update(source.record())  # which weights of which run it scored
    # the run's protocol on its final weights is eval.json; every other setting has a file
    name = task.eval_file_name(
        step=source.step if checkpoint is not None else None,
        alphabet=(
            ("within" if within_alphabet else "any") if protocol_changed else None
        ),
        split=split if split != own["split"] else None,
        tasks=tasks if tasks != own["tasks"] else None,
        steps=steps if steps != own["steps"] else None,
        samples=samples,
        inner_lr=inner_lr,
    )
    out = records.finite_record(out)  # a diverged model: null and "not_finite", never NaN
    if details is not None:
        details.update(by_step=by_step, config=config, path=Path(run_dir) / name)
    if dist is None or dist.main:
        atomic_write_text(
            run_dir / name, records.dumps(out, indent=1), before_replace=source.check_unchanged
        )
    return out
