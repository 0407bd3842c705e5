"""`mamlkit reproduce sine`: the paper's sine-regression experiment end to end
(MAML and the pretrained baseline, Table 2 and Figures 2–3). Its report is written by
:mod:`mamlkit.experiments.sine_report`, its figures drawn by
:mod:`mamlkit.experiments.sine_plots`."""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from mamlkit.build import build_learner, build_tasks
from mamlkit.config import Config, load_config
from mamlkit.errors import ConfigError
from mamlkit.evaluation import mean_ci95, per_task_metric_by_step
from mamlkit.progress import Progress, bars
from mamlkit.rundir.checkpoint import atomic_write_text, load_checkpoint
from mamlkit.rundir.files import prepare_run_dir
from mamlkit.rundir.ownership import clear_run_dir, lock_run_dir
from mamlkit.tasks import SineTasks
from mamlkit.training import Trainer, seed_everything

PAPER_TABLE2 = {"maml": {1: 0.67, 5: 0.38, 10: 0.35}, "pretrained": {1: 2.41, 5: 2.23, 10: 2.19}}
FINE_TUNE_GRID = (0.001, 0.003, 0.01, 0.02, 0.05, 0.1)
K_SHOTS = (5, 10, 20)
# a task's error above this after fixed-size steps counts as diverged (steps overshooting)
DIVERGED_MSE = 1e3


MAML_TRAIN_SHOTS = (5, 10)


def maml_model_for(k: int, trained: tuple[int, ...]) -> int:
    """The K a MAML model was trained with that serves evaluation at K (the largest <= K)."""
    return max([t for t in trained if t <= k] or [min(trained)])


def check_reproduce_iterations(iterations: int) -> None:
    """A reproduction trains: 0 iterations (allowed for ``mamlkit train``) is refused."""
    if iterations < 1:
        raise ConfigError(f"config key 'train.iterations': must be >= 1, got {iterations}")


def sine_configs(
    iterations: int | None,
    seed: int,
    device: str,
    overrides: list[str] | tuple[str, ...] = (),
    maml_shots: tuple[int, ...] = MAML_TRAIN_SHOTS,
) -> dict[str, Config]:
    """One MAML config per training K (K support + K query points, as the paper trains each
    K-shot model) and one pretrained config; all validated before anything is written."""
    common = [f"train.seed={seed}", f"train.device={device}", *overrides]
    if iterations is not None:
        check_reproduce_iterations(iterations)
        common.append(f"train.iterations={iterations}")
    configs = {
        f"maml_k{k}": load_config(
            "sine_maml", [f"task.k_support={k}", f"task.k_query={k}", *common]
        )
        for k in maml_shots
    }
    configs["pretrained"] = load_config("sine_pretrained", common)
    return configs


def choose_fine_tune_lr(
    learner, config: Config, k: int, device: str, tick: Callable[[], None] = lambda: None
) -> tuple[float, dict]:
    """The pretrained model's test-time step size for K-shot tasks, chosen on validation
    tasks (a seed the test tasks never use) by mean MSE over 1..10 steps (``tick``: after
    each step size tried)."""
    gen = torch.Generator().manual_seed(config.eval.seed + 1000 + k)  # the same on any device
    batch = SineTasks(k, k, query_grid=100).sample(200, gen).to(device)
    scores = {}
    for lr in FINE_TUNE_GRID:
        mse = per_task_metric_by_step(learner, batch, config.eval.steps, "mse", lr=lr)
        mse = mse[1:].mean().item()
        scores[str(lr)] = mse if math.isfinite(mse) else float("inf")
        tick()
    best = min(scores, key=scores.get)
    return float(best), scores


def sine_test_tasks(config: Config, k: int, device: str, tasks: int | None = None):
    """The K-shot test tasks every sine model is scored on (``tasks``, default
    ``eval.tasks``; the same seed for every method, so the same tasks)."""
    gen = torch.Generator().manual_seed(config.eval.seed + k)  # the same tasks on any device
    return SineTasks(k, k, query_grid=100).sample(
        config.eval.tasks if tasks is None else tasks, gen
    ).to(device)


def mse_by_step(learner, batch, config: Config, lr: float | None = None) -> list[dict[str, Any]]:
    """One record per step 0..``eval.steps``: mean MSE over the tasks with its 95% CI, the
    median, and how many tasks diverged (error non-finite or above :data:`DIVERGED_MSE`)."""
    mse = per_task_metric_by_step(
        learner, batch, config.eval.steps, "mse", chunk=config.eval.chunk, lr=lr
    )
    # a task whose fixed-size steps overflow has infinite error, not "no number"
    mse = torch.nan_to_num(mse, nan=math.inf)
    records = []
    for steps, row in enumerate(mse):
        mean, ci = mean_ci95(row)
        records.append(
            {
                "steps": steps,
                "mse": mean,
                "ci95": ci,
                "median": row.median().item(),
                "diverged_tasks": int((~torch.isfinite(row) | (row > DIVERGED_MSE)).sum()),
            }
        )
    return records


def evaluate_sine(
    learners: dict,
    config: Config,
    device: str,
    fine_tune: dict[int, float],
    tick: Callable[[], None] = lambda: None,
) -> list[dict[str, Any]]:
    """MSE after 0..10 steps for K = 5, 10, 20 on the same test tasks for every method
    (``tick``: after each method and K)."""
    trained = tuple(
        sorted(int(name[len("maml_k") :]) for name in learners if name.startswith("maml_k"))
    )
    records = []
    for k in K_SHOTS:
        batch = sine_test_tasks(config, k, device)
        # method -> (learner, the K it was trained for, its fine-tuning step size)
        chosen = {
            "maml": (
                learners[f"maml_k{maml_model_for(k, trained)}"],
                maml_model_for(k, trained),
                None,
            ),
            "pretrained": (learners["pretrained"], None, fine_tune[k]),
        }
        for method, (learner, trained_k, lr) in chosen.items():
            for step_record in mse_by_step(learner, batch, config, lr):
                record = {"method": method, "k_shot": k, **step_record}
                if trained_k is not None:
                    record["trained_k"] = trained_k
                else:
                    record["fine_tune_lr"] = fine_tune[k]
                records.append(record)
            tick()
    return records


def fit_panels(learners: dict, device: str, seed: int, fine_tune: dict[int, float]):
    """Figure 2: one test task per K, MAML (the model trained at that K) beside pretrained."""
    trained = tuple(sorted(int(n[len("maml_k") :]) for n in learners if n.startswith("maml_k")))
    panels = []
    for k in (5, 10):
        gen = torch.Generator().manual_seed(seed + 100 + k)
        batch = SineTasks(k, k, query_grid=200).sample(1, gen).to(device)
        for title, learner, lr in (
            (f"MAML, K={k}", learners[f"maml_k{maml_model_for(k, trained)}"], None),
            (f"pretrained, K={k} (step size {fine_tune[k]})", learners["pretrained"], fine_tune[k]),
        ):
            preds = learner.query_predictions(
                batch.support_x, batch.support_y, batch.query_x, 10, lr=lr
            )
            panels.append(
                {
                    "title": title,
                    "grid": batch.query_x[0, :, 0].cpu(),
                    "truth": batch.query_y[0, :, 0].cpu(),
                    "support_x": batch.support_x[0, :, 0].cpu(),
                    "support_y": batch.support_y[0, :, 0].cpu(),
                    "curves": {s: preds[s][0, :, 0].cpu() for s in (0, 1, 10)},
                }
            )
    return panels


def train_one(
    name: str, config: Config, run: Path, resume: bool, progress: bool, position: int = 0
) -> None:
    """Train one model of the experiment into ``run`` (also the entry point of a worker
    process when the models are trained in parallel)."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.train.seed)
    learner = build_learner(config)
    trainer = Trainer(
        learner,
        build_tasks(config),
        config,
        run,
        metric="mse",
        progress=progress,
        description=f"sine {name}",
        position=position,
    )
    has_checkpoint = bool(list((run / "checkpoints").glob("*.safetensors")))
    if run.exists() and not (resume and has_checkpoint):
        clear_run_dir(run)  # interrupted before its first checkpoint: start it afresh
    trainer.fit(resume=resume and has_checkpoint)


def train_models(
    configs: dict[str, Config],
    out: Path,
    resume: bool,
    progress: bool,
    jobs: int | None,
    device: str,
) -> None:
    """Train every model of ``configs`` into ``out/<name>``; with ``resume``, skip those
    that have their final weights and continue the others from their checkpoints."""
    todo = [
        (name, config, out / name, resume, progress, i)
        for i, (name, config) in enumerate(configs.items())
        if not (resume and (out / name / "model.safetensors").exists())
    ]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
    if jobs == 1 or device != "cpu":
        for args in todo:
            train_one(*args)
        return
    # the models are independent and single-threaded: train them side by side
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        for future in [pool.submit(_train_in_worker, *args) for args in todo]:
            future.result()


def _train_in_worker(*args: Any) -> None:
    """:func:`train_one` in a worker process: its progress lines go to stderr too."""
    from mamlkit.progress import log_to_stderr

    with log_to_stderr():
        train_one(*args)


def load_learners(configs: dict[str, Config], out: Path, device: str) -> dict[str, Any]:
    """The trained learner of every model in ``out/<name>``, in eval mode on ``device``."""
    learners = {}
    for name, config in configs.items():
        learner = build_learner(config)
        tensors, _ = load_checkpoint(out / name / "model.safetensors")
        learner.load_state_dict(tensors)
        learners[name] = learner.to(device).eval()
    return learners


@contextlib.contextmanager
def reproduce_dir(out: str | Path, force: bool, resume: bool) -> Iterator[Path]:
    """Hold the output folder of a reproduce command (its lock) for the block: a new one is
    checked before anything is created, and with ``force`` mamlkit's files in it are cleared
    (the user's stay); ``resume`` continues the folder as it is. Validate configs first."""
    out = Path(out)
    if not resume:
        prepare_run_dir(out, force, clear=False)
    with lock_run_dir(out, create=not resume):
        if not resume:
            prepare_run_dir(out, force)
        out.mkdir(parents=True, exist_ok=True)
        yield out


def reproduce_sine(
    out: str | Path,
    iterations: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    overrides: list[str] | tuple[str, ...] = (),
    jobs: int | None = None,
) -> dict[str, Any]:
    """Train (or, with ``resume``, finish training) every model, then evaluate and write
    results.json, sine_fits.png, sine_mse.png and report.md into ``out``, holding the
    folder's lock throughout (a second command on it exits with one line)."""
    configs = sine_configs(iterations, seed, device, overrides)  # before anything is created
    with reproduce_dir(out, force, resume) as out:
        from mamlkit.experiments import sine_plots as plots
        from mamlkit.experiments.sine_report import report_markdown
        from mamlkit.rundir.files import environment_info

        train_models(configs, out, resume, progress, jobs, device)
        learners = load_learners(configs, out, device)
        pre_cfg = configs["pretrained"]
        fine_tune = {}
        # the evaluation takes far longer than training at the paper's length: show it
        work = len(K_SHOTS) * (len(FINE_TUNE_GRID) + 2)
        with bars(progress), Progress(work, "sine: evaluation", unit="part") as bar:
            for k in K_SHOTS:
                chosen, scores = choose_fine_tune_lr(
                    learners["pretrained"], pre_cfg, k, device, bar.update
                )
                fine_tune[k] = {"chosen": chosen, "scores": scores}
            lrs = {k: v["chosen"] for k, v in fine_tune.items()}
            records = evaluate_sine(learners, pre_cfg, device, lrs, bar.update)
        env = environment_info(device)
        atomic_write_text(out / "results.json", json.dumps(records, indent=1))
        note = plots.iterations_note({n: c.train.iterations for n, c in configs.items()})
        panels = fit_panels(learners, device, pre_cfg.eval.seed, lrs)
        plots.sine_fits(panels, out / "sine_fits.png", note=note)
        plots.sine_mse(records, out / "sine_mse.png", note=note)
        atomic_write_text(out / "report.md", report_markdown(records, configs, fine_tune, env))
        return {"records": records, "fine_tune_lr": lrs, "out": str(out)}
