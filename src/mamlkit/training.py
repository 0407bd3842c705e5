"""The one meta-training loop: sample tasks, step the outer optimiser, log, validate,
checkpoint, resume. Every algorithm and task distribution goes through :class:`Trainer`."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from mamlkit.algorithms.base import MetaLearner
from mamlkit.budget import TimeBudget, monotonic
from mamlkit.callbacks import Callback, LogLines, ProgressBar, TensorBoard
from mamlkit.config import Config
from mamlkit.device_step import CaptureUnsupported, DeviceStep
from mamlkit.distributed import Distributed
from mamlkit.errors import DivergenceError, Interrupted, LostRank, UserError
from mamlkit.evaluation import HIGHER_IS_BETTER, METRICS, evaluate
from mamlkit.precision import cuda_precision
from mamlkit.progress import bars, show_bars
from mamlkit.rundir import records
from mamlkit.rundir.checkpoint import (
    atomic_write_text,
    optimizer_from_tensors,
    optimizer_to_tensors,
    rng_from_tensors,
    rng_to_tensors,
    save_checkpoint,
    state_mismatch,
)
from mamlkit.rundir.files import (
    environment_info,
    load_training_checkpoint,
    resume_checkpoint,
    run_checkpoints,
    save_identity,
    truncate_metrics,
    write_env,
    write_status,
)
from mamlkit.rundir.ownership import CHECKPOINT_DIR
from mamlkit.tasks.base import TaskDistribution


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (model initialisation, anything outside the task sampler)."""
    import random

    import numpy

    random.seed(seed)
    numpy.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    """The outer optimiser ``train.optimizer`` names, at ``train.outer_lr``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.outer_lr)
    try:  # the fused kernel is fastest; older torch on CPU lacks it
        return torch.optim.Adam(params, lr=cfg.outer_lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=cfg.outer_lr, foreach=True)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """The outer learning-rate schedule as a ``LambdaLR`` of the closed form — halved every
    ``lr_halve_every`` steps (StepLR's), or cosine from ``outer_lr`` to ``min_lr`` over
    ``iterations`` — so that it depends on the step alone: a resumed run needs no scheduler
    state, and a run extended with ``--set train.iterations`` continues its schedule."""

    def factor(step: int) -> float:
        if cfg.lr_halve_every:
            return 0.5 ** (step // cfg.lr_halve_every)
        if cfg.lr_schedule == "cosine":
            cos = 0.5 * (1 + math.cos(math.pi * min(step / cfg.iterations, 1.0)))
            return (cfg.min_lr + (cfg.outer_lr - cfg.min_lr) * cos) / cfg.outer_lr
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    """Meta-trains ``learner`` on ``train_tasks`` as ``config.train`` says.

    With a ``run_dir`` it writes ``config.yaml``, ``env.json``, ``metrics.jsonl`` (one JSON
    object per logged step, every ``log_every`` and the last (and the first, in a run of
    fewer than 2 ``log_every``), and per validation, every ``val_every``: a
    validation between logged steps is a record of the validation metrics alone),
    TensorBoard events, ``checkpoints/step-N.safetensors`` (the last
    ``keep_checkpoints``), ``status.json`` and ``model.safetensors`` at the end; each
    resume appends the step it continues from and its own environment to
    ``resumes.jsonl``.
    ``metric`` ("accuracy" or "mse") is computed on the query predictions when logging.
    A ``run_dir`` needs a ``config`` that rebuilds ``learner`` (for a model of your own:
    ``model.target``/``model.kwargs``), so that ``mamlkit eval`` can load the run; ``fit``
    refuses another one before writing anything.
    ``progress``: a bar on a terminal; without one, or ``False``, a log line per logged
    record (:mod:`mamlkit.progress`, shown by the CLI); ``None``: neither.
    """

    #: tests run the CUDA-graph step's code on the CPU (uncaptured) with this set
    _device_step_on_cpu = False

    def __init__(
        self,
        learner: MetaLearner,
        train_tasks: TaskDistribution,
        config: Config,
        run_dir: str | Path | None = None,
        metric: str | None = None,
        val_tasks: TaskDistribution | None = None,
        progress: bool | None = True,
        description: str = "meta-train",
        position: int = 0,
        dist: Distributed | None = None,
        callbacks: list[Callback] | None = None,
        budget: TimeBudget | None = None,
    ):
        self.learner, self.train_tasks, self.val_tasks = learner, train_tasks, val_tasks
        self.dist = dist  # torchrun's data parallelism: each rank runs a share of the tasks
        self.config = config  # its train section: self.config.train
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.metric, self.progress, self.description = metric, progress, description
        self.position = position  # progress-bar line, when several runs train side by side
        self.device = torch.device(self.config.train.device)
        if self.config.train.threads:
            torch.set_num_threads(self.config.train.threads)
        self.learner.to(self.device)
        self.optimizer = make_optimizer(self.learner.parameters(), self.config.train)
        self.scheduler = make_scheduler(self.optimizer, self.config.train)
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.train.seed)
        self.step = 0
        self.best: dict[str, Any] | None = None
        # running sums over the current logging window (checkpointed, for exact resume)
        self.window = torch.zeros(3, dtype=torch.float64)
        self.engine = "eager"  # or "cuda-graph": how the last fit ran its iterations
        self._rank_rng: dict[str, torch.Tensor] = {}
        self.callbacks = list(callbacks or [])  # the user's; the run's own join in fit()
        self._active: list[Callback] = []
        # --max-time: this piece of training pauses, with a checkpoint, before it runs out
        self.budget = budget
        self._signal: int | None = None  # SIGINT/SIGTERM received: stop at the iteration's end
        self._last_check: float | None = None  # clock at the last _check_stop
        self._aside = 0.0  # validation and checkpoint time since then (not the iteration's)
        self._piece_steps = 0  # iterations run by this fit() call
        self._piece_started = monotonic()
        self._seconds_before = 0.0  # training time of the earlier pieces (status.json)

    @property
    def cfg(self) -> Any:
        """Deprecated: the old second name of ``config.train`` (read that instead)."""
        warnings.warn(
            "Trainer.cfg is deprecated; use trainer.config.train", DeprecationWarning, stacklevel=2
        )
        return self.config.train

    # ---- run directory ------------------------------------------------------------------
    def _checkpoints(self) -> list[Path]:
        return list(run_checkpoints(self.run_dir).values())

    def _write_config(self) -> None:
        atomic_write_text(
            self.run_dir / "config.yaml", yaml.safe_dump(self.config.to_dict(), sort_keys=False)
        )

    def save(self) -> Path:
        tensors = {f"learner.{k}": v for k, v in self.learner.state_dict().items()}
        opt_tensors, opt_meta = optimizer_to_tensors(self.optimizer)
        rng_tensors, rng_meta = rng_to_tensors({"tasks": self.generator})
        tensors.update(opt_tensors)
        tensors.update(rng_tensors)
        tensors["window"] = self.window
        tensors.update(self._rank_rng)  # distributed: every rank's own RNG states
        meta = {"step": self.step, "optimizer": opt_meta, "rng": rng_meta, "best": self.best}
        meta.update(save_identity(self.run_dir, self.config.to_dict()))  # run id, config
        path = self.run_dir / CHECKPOINT_DIR / f"step-{self.step:08d}.safetensors"
        save_checkpoint(path, tensors, meta)
        for old in self._checkpoints()[: -self.config.train.keep_checkpoints]:
            old.unlink()
        self._write_status("running", step=self.step, best=self.best)
        return path

    def restore(self, path: Path) -> None:
        tensors, meta = load_training_checkpoint(path)
        state = {k[len("learner.") :]: v for k, v in tensors.items() if k.startswith("learner.")}
        try:
            self.learner.load_state_dict(state)
        except RuntimeError:
            raise UserError(
                f"checkpoint {path} does not match the model of this run's config.yaml "
                f"({state_mismatch(self.learner, state)}); was the config edited, or the "
                "run trained by another mamlkit version whose defaults differ?"
            ) from None
        try:
            optimizer_from_tensors(self.optimizer, tensors, meta["optimizer"])
            rng_from_tensors(tensors, meta["rng"], {"tasks": self.generator})
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise UserError(
                f"checkpoint {path}: its optimiser or random-generator state is damaged "
                f"({type(exc).__name__}); resume from an older checkpoint (--checkpoint STEP)"
            ) from None
        for group in self.optimizer.param_groups:  # the CUDA-graph step sets it where it runs
            group["capturable"] = False
        if self.dist is not None:
            self.dist.restore_rng_states(tensors)
        self.window = tensors["window"].clone()
        self.step, self.best = int(meta["step"]), meta.get("best")
        # the restored rate is the one the last update used: the schedule's at step − 1
        self.scheduler.last_epoch = self.step - 1

    def _log(self, record: dict[str, Any]) -> None:
        if self.run_dir is not None:
            records.append_line(self.run_dir / "metrics.jsonl", record)
        self._emit("on_log", record)

    def _emit(self, hook: str, *args: Any) -> None:
        for callback in self._active:
            getattr(callback, hook)(self, *args)

    def _side_jobs(self) -> list[Callback]:
        """The run's own callbacks (a progress bar; TensorBoard beside a run directory) and
        the user's. Distributed, only rank 0 has any: it alone writes and shows progress."""
        jobs: list[Callback] = []
        if self.progress and show_bars():
            jobs.append(ProgressBar(self.description, self.position))
        elif self.progress is not None:  # no terminal, or --no-progress: a line per log
            jobs.append(LogLines(self.description))
        if self.run_dir is not None and self.config.train.tensorboard:
            jobs.append(TensorBoard(self.run_dir / "tensorboard"))
        main = self.dist is None or self.dist.main
        return jobs + self.callbacks if main else []

    # ---- the loop -----------------------------------------------------------------------
    def fit(
        self, resume: bool = False, config_changed: bool = False, from_step: int | None = None
    ) -> dict[str, Any]:
        """Train to ``iterations``; ``resume`` continues from the newest checkpoint (or the
        one of ``from_step``), and ``config_changed`` then records the (allowed) changes in
        config.yaml once restored."""
        if self.dist is not None:
            self._join_job(resume, from_step)
        if self.run_dir is not None:
            if not resume:
                from mamlkit.build import check_config_describes

                check_config_describes(self.config, self.learner)
            if resume:
                self._seconds_before = _train_seconds(self.run_dir)
                self.restore(resume_checkpoint(self.run_dir, from_step))
                if self.step > self.config.train.iterations:
                    raise UserError(
                        f"--set train.iterations={self.config.train.iterations}: "
                        f"{self.run_dir} is "
                        f"already at step {self.step} and training cannot go back; ask for "
                        f"{self.step} or more (or evaluate an earlier step with --checkpoint)"
                    )
                truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
                if config_changed:
                    self._write_config()
                # env.json is the first start's; each resume records its own environment
                # (another machine, commit or number of processes may continue a run)
                resumed = {"step": self.step, "time": _utc_now(), **self._environment()}
                records.append_line(self.run_dir / "resumes.jsonl", resumed)
            else:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                environment = {"time": _utc_now(), **self._environment()}
                write_env(self.run_dir, environment, self.config.to_dict())  # written first
                self._write_config()
            self._write_status("running", step=self.step, best=self.best)
        if self.budget is not None:  # until a checkpoint is timed: a guess from its size
            self.budget.checkpoint_guess = TimeBudget.checkpoint_seconds(self._state_bytes())
        try:
            if self.dist is not None:  # every rank starts from rank 0's weights
                self.dist.broadcast_(list(self.learner.state_dict().values()))
            self._active = self._side_jobs()
            self._emit("on_start", resume)
            with _stop_on_signals(self):
                self._loop()
        except _Stop as stop:
            if stop.refusal:  # a budget shorter than one iteration: keep nothing of it
                self._final_status(stop.reason)
                raise UserError(stop.refusal) from None
            return self._stop(stop.reason)
        except DivergenceError:
            self._final_status("diverged")
            raise
        except KeyboardInterrupt:
            # Ctrl-C is a decision, not a failure: the run resumes from its last checkpoint
            self._final_status("interrupted")
            raise
        except LostRank as exc:
            self._final_status("crashed")
            raise LostRank(
                f"{exc}; training stopped in iteration {self.step + 1}, and `--resume` "
                "continues from its last checkpoint"
            ) from exc
        except BaseException:
            self._final_status("crashed")
            raise
        finally:
            if "mean_over_ranks" in vars(self.learner):  # the learner's own again
                del self.learner.mean_over_ranks
            self._end_side_jobs()
        try:
            self._finish()
        except BaseException:
            self._final_status("crashed")  # e.g. a full disk at the final weights
            raise
        return {"step": self.step, "best": self.best}

    def _end_side_jobs(self) -> None:
        """Close the callbacks (TensorBoard's writer flushes here: a full disk may show only
        now, and then the run is marked crashed, not left running)."""
        try:
            self._emit("on_end")
        except BaseException:
            self._final_status("crashed")
            raise

    def _finish(self) -> None:
        """The finished run's files: a checkpoint of the last step, the final weights, the
        status ``finished``."""
        if self.dist is not None and self.step % self.config.train.checkpoint_every:
            self._rank_rng = self.dist.gather_rng_states()  # for the final checkpoint
        if self.run_dir is not None:
            if self.step % self.config.train.checkpoint_every:
                self.save()
            save_checkpoint(
                self.run_dir / "model.safetensors",
                self.learner.state_dict(),
                {"step": self.step, "kind": "weights", **save_identity(self.run_dir, {}, True)},
            )
            self._write_status("finished", step=self.step, best=self.best, engine=self.engine)

    def _stop(self, reason: str) -> dict[str, Any]:
        """End this piece of training at the last completed iteration: a checkpoint of it,
        the status ``paused`` (the time budget) or ``interrupted`` (a signal), and the step a
        resume continues from."""
        saved = self.run_dir is not None and self.step in run_checkpoints(self.run_dir)
        if self.dist is not None and self.step % self.config.train.checkpoint_every:
            self._rank_rng = self.dist.gather_rng_states()  # a collective: every rank
        if self.run_dir is not None:
            if not saved:
                self.save()
            used = {}
            if reason == "paused":  # what this piece had, and what it used
                seconds = monotonic() - self.budget.started
                used = {"budget_seconds": self.budget.seconds, "used_seconds": round(seconds, 1)}
            self._write_status(reason, step=self.step, best=self.best, **used)
        if reason == "interrupted":
            where = f"; `mamlkit train --resume {self.run_dir}`" if self.run_dir else ""
            raise Interrupted(
                f"interrupted after iteration {self.step} (signal {self._signal}), its "
                f"checkpoint written{where} continues from step {self.step}"
            )
        return {"step": self.step, "best": self.best, "paused": True}

    def _check_stop(self) -> None:
        """Before an iteration: stop for a signal received, or pause when the iteration and
        what follows it would not end within the time budget. Under torchrun the ranks
        decide together (any rank's reason stops all), so that they stop at the same step."""
        signalled = self._signal is not None
        pause = too_short = False
        budget = self.budget
        if budget is not None:
            now = monotonic()
            if self._last_check is not None:  # one iteration since: its time, all of it
                budget.note("iteration", now - self._last_check - self._aside)
            self._last_check, self._aside = now, 0.0
            too_short = self._piece_steps == 1 and now - budget.started > budget.seconds
            step = self.step + 1
            cfg = self.config.train
            val = bool(cfg.val_every) and self.val_tasks is not None
            val = val and (step % cfg.val_every == 0 or step == cfg.iterations)
            save = self.run_dir is not None and step % cfg.checkpoint_every == 0
            pause = not budget.fits(now, val, save)
        if self.dist is not None:
            flags = torch.tensor([signalled, pause, too_short], dtype=torch.float64)
            self.dist.mean_([flags])
            signalled, pause, too_short = (bool(f > 0) for f in flags)
        if too_short:
            raise _Stop(
                "interrupted",
                f"--max-time {budget.text}: shorter than starting this run and its first "
                f"iteration ({now - budget.started:.1f} s); nothing of this piece was kept; "
                "give a longer budget",
            )
        if signalled:
            raise _Stop("interrupted")
        if pause:
            raise _Stop("paused")

    def _state_bytes(self) -> int:
        """About what a checkpoint holds: the learner's state and the optimiser's moments
        (before the first step, Adam's two moments per parameter, not yet created)."""
        learner = sum(t.numel() * t.element_size() for t in self.learner.state_dict().values())
        moments = [v for st in self.optimizer.state.values() for v in st.values()]
        optimizer = sum(t.numel() * t.element_size() for t in moments if torch.is_tensor(t))
        if not optimizer:
            optimizer = 2 * sum(p.numel() * p.element_size() for p in self.learner.parameters())
        return learner + optimizer

    def _write_status(self, status: str, **extra: Any) -> None:
        """status.json, with the training time of all pieces so far (``train_seconds``: the
        run's wall time, without the gaps between a pause and its resume)."""
        seconds = self._seconds_before + monotonic() - self._piece_started
        write_status(self.run_dir, status, **extra, train_seconds=round(seconds, 1))

    def _final_status(self, status: str) -> None:
        """Record how training stopped, if the disk still lets us: the error that stopped
        it (perhaps that very disk) is what the user must see."""
        if self.run_dir is not None:
            with contextlib.suppress(OSError):
                self._write_status(status, step=self.step, best=self.best)

    def _loop(self) -> None:
        with cuda_precision(self.config.train.precision):
            self._train()

    def _environment(self) -> dict[str, Any]:
        info = environment_info(self.config.train.device)
        if self.dist is not None:
            info.update(world_size=self.dist.world, backend=self.dist.backend)
        return info

    def _join_job(self, resume: bool, from_step: int | None) -> None:
        """Distributed: every rank starts from the same state and only rank 0 writes (the
        other ranks read the checkpoint they resume from, then hold no run directory)."""
        self.dist.check_meta_batch(self.config.train.meta_batch)
        own_step = type(self.learner).outer_step is not MetaLearner.outer_step
        if own_step and not self.learner.outer_step_distributes:
            raise UserError(
                f"{type(self.learner).__name__} makes its own outer update and does not "
                "say that it averages it over processes (outer_step_distributes); train it "
                "in one process"
            )
        # an own outer step averages its per-task means over the ranks with this
        self.learner.mean_over_ranks = self.dist.mean_
        if not self.dist.main:
            if resume and self.run_dir is not None and run_checkpoints(self.run_dir):
                self.restore(resume_checkpoint(self.run_dir, from_step))
            self.run_dir, self.progress = None, False

    def _device_step(self) -> DeviceStep | None:
        """The captured (CUDA graph) step that ``train.cuda_graphs`` asks for, or None for the
        eager loop. ``auto`` uses graphs on CUDA wherever the learner allows it."""
        mode = self.config.train.cuda_graphs
        on_device = self.device.type == "cuda" or self._device_step_on_cpu
        if mode == "off" or not on_device or self.dist is not None:
            self.engine = "eager"
            return None
        metric_fn = METRICS.get(self.metric) if self.metric else None
        try:
            step = DeviceStep(
                self.learner,
                self.optimizer,
                metric_fn,
                grad_clip=self.config.train.grad_clip,
                capture=self.device.type == "cuda",
                start=self.step,
                window=self.window.to(self.device),
                fallback=mode == "auto",
            )
        except CaptureUnsupported as exc:
            if mode == "on":
                raise UserError(
                    f"train.cuda_graphs=on: {exc}; use train.cuda_graphs=auto or off"
                ) from None
            if self.dist is None or self.dist.main:
                print(f"{self.description}: training eagerly: {exc}", file=sys.stderr)
            self.engine = "eager"
            return None
        self.window = step.window
        self.engine = "cuda-graph" if step.capture else "device-eager"
        return step

    def _check_health(self, step: DeviceStep) -> None:
        health = step.health()
        if health.first_nonfinite:
            what = "loss" if health.loss_was_nonfinite else "meta-gradient"
            raise DivergenceError(
                f"the {what} became NaN/Inf at iteration {health.first_nonfinite}; training "
                "stopped (no update was applied from then on, and the last checkpoint is "
                "intact); lower the learning rates or set train.grad_clip"
            )

    def _train(self) -> None:
        cfg = self.config.train
        params = [p for p in self.learner.parameters() if p.requires_grad]
        metric_fn = METRICS.get(self.metric) if self.metric else None
        device_step = self._device_step()
        while self.step < cfg.iterations:
            self._check_stop()
            self._schedule_lr()
            batch = self.train_tasks.sample(cfg.meta_batch, self.generator)
            if self.dist is not None:  # every rank drew the same batch: keep this rank's tasks
                batch = self.dist.shard(batch)
            if device_step is not None:
                # the health check and the logging sums stay on the device (no sync here)
                device_step(batch, self.step)
                if device_step.capture_error and self.engine == "cuda-graph":
                    self.engine = "device-eager"
                    print(
                        f"{self.description}: CUDA graph capture failed, training continues "
                        f"eagerly ({device_step.capture_error.splitlines()[0][:200]}); set "
                        "train.cuda_graphs=off to skip the attempt",
                        file=sys.stderr,
                    )
                self.step += 1
                self._after_step(device_step)
                continue
            custom = self.learner.outer_step(batch, self.optimizer, self.step)
            if custom is not None:
                self._finish_custom_step(custom, metric_fn, batch)
                continue
            out = self.learner.meta_forward(batch, self.step)
            loss, pred = out.loss, out.predictions
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in params if p.grad is not None]
            with torch.no_grad():
                value = loss.detach()
                metric = value if metric_fn is None else metric_fn(pred, batch.targets).mean()
                if self.dist is not None:
                    # the global batch's meta-gradient, loss and metric: means of the ranks'
                    # equal shares; every rank then sees the same numbers and decides alike
                    self.dist.mean_(grads)
                    both = torch.stack([value.double(), metric.double()])
                    self.dist.mean_([both])
                    value, metric = both[0], both[1]
                # NaN/Inf anywhere in the loss or the meta-gradient makes this sum non-finite
                health = value + torch.stack(torch._foreach_norm(grads)).sum()
                # one device-to-host copy (one GPU sync) per iteration for all three numbers
                health, loss_value, metric_value = (
                    torch.stack([health, value, metric]).double().cpu().tolist()
                )
            if not math.isfinite(health):
                what = "loss" if not math.isfinite(loss_value) else "meta-gradient"
                raise DivergenceError(
                    f"the {what} became NaN/Inf at iteration {self.step + 1}; training stopped "
                    "(the last checkpoint is intact); lower the learning rates or set "
                    "train.grad_clip"
                )
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_value_(params, cfg.grad_clip)
            self.optimizer.step()
            self.step += 1
            self.window += torch.tensor([loss_value, metric_value, 1.0], dtype=torch.float64)
            self._after_step(None)

    def _finish_custom_step(self, out, metric_fn, batch) -> None:
        """Bookkeeping after a learner's own outer step (:meth:`MetaLearner.outer_step`)."""
        with torch.no_grad():
            value = out.loss.detach()
            metric = out.metrics.get(self.metric) if self.metric else None
            if metric is None:
                fn_ok = metric_fn is not None and out.predictions is not None
                metric = metric_fn(out.predictions, batch.targets).mean() if fn_ok else value
            both = torch.stack([value.double(), metric.double()])
            if self.dist is not None:  # the whole batch's: every rank logs and decides alike
                self.dist.mean_([both])
            loss_value, metric_value = both.tolist()
        if not math.isfinite(loss_value):
            raise DivergenceError(
                f"the loss became NaN/Inf at iteration {self.step + 1}; training stopped "
                "(the last checkpoint is intact); lower the learning rates"
            )
        self.step += 1
        self.window += torch.tensor([loss_value, metric_value, 1.0], dtype=torch.float64)
        self._after_step(None)

    def _schedule_lr(self) -> None:
        """Set the rate of the coming update: the schedule's at the current step."""
        with warnings.catch_warnings():
            # torch warns when a scheduler steps before the optimiser has (after a resume, or
            # for a learner with its own outer step); here it sets the next update's rate
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            while self.scheduler.last_epoch < self.step:
                self.scheduler.step()

    def _after_step(self, device_step: DeviceStep | None) -> None:
        """Log, validate and checkpoint where the step count says so (after the host has
        read the device step's health flag, where there is one)."""
        cfg = self.config.train
        self._piece_steps += 1
        self._emit("on_step")
        log = self.step % cfg.log_every == 0 or self.step == cfg.iterations
        # a run shorter than two logging intervals logs its first step too: a curve, not a point
        log = log or (self.step == 1 and cfg.iterations < 2 * cfg.log_every)
        val = bool(cfg.val_every) and self.val_tasks is not None
        val = val and (self.step % cfg.val_every == 0 or self.step == cfg.iterations)
        save = self.run_dir is not None and self.step % cfg.checkpoint_every == 0
        if self.dist is not None and self.step % cfg.checkpoint_every == 0:
            self._rank_rng = self.dist.gather_rng_states()  # a collective: every rank
        if device_step is not None and (log or val or save):
            self._check_health(device_step)
        if log or val:  # a validation between logging steps is a record of its own
            record = self._window_record() if log else {"step": self.step}
            if val:
                with self._timed("validation"):
                    record.update(self.validate())
            self._log(record)
        if save:
            with self._timed("checkpoint"):
                self.save()

    @contextlib.contextmanager
    def _timed(self, kind: str):
        """Measure a validation or checkpoint for the time budget's plan."""
        if self.budget is None:
            yield
            return
        started = monotonic()
        yield
        seconds = monotonic() - started
        self.budget.note(kind, seconds)
        self._aside += seconds

    def _window_record(self) -> dict[str, Any]:
        loss_sum, metric_sum, n = self.window.tolist()
        self.window.zero_()
        record: dict[str, Any] = {"step": self.step, "loss": loss_sum / n}
        if self.metric:
            record[self.metric] = metric_sum / n
        if type(self.learner).outer_step is MetaLearner.outer_step:
            # the outer optimiser's rate; a learner with its own outer step (TRPO, Reptile)
            # does not use that optimiser, so its rate would mean nothing
            record["lr"] = self.optimizer.param_groups[0]["lr"]
        return record

    def validate(self) -> dict[str, float]:
        """Metric on ``val_tasks`` after the test-time number of steps (fixed val tasks)."""
        metric = self.metric or "mse"
        self.learner.eval()  # e.g. ProtoNets' BatchNorm: running statistics at test time
        try:
            with bars(bool(self.progress)):  # --no-progress: no validation bar either
                result = evaluate(
                    self.learner,
                    self.val_tasks,
                    self.config.train.val_tasks,
                    steps=self.config.eval.steps,
                    metric=metric,
                    seed=self.config.eval.seed + 1,
                    device=self.device,
                    chunk=self.config.eval.chunk,
                    dist=self.dist,
                    progress="validation" if self.progress is not None else None,
                )[-1]
        finally:
            self.learner.train()
        value = result[metric]
        better = self.best is None or (value > self.best["value"]) == (metric in HIGHER_IS_BETTER)
        if better:
            self.best = {"metric": f"val_{metric}", "value": value, "step": self.step}
        return {f"val_{metric}": value, f"val_{metric}_ci95": result["ci95"]}


def _train_seconds(run_dir: Path) -> float:
    """The training time a run's status.json records (0 where it has none)."""
    try:
        seconds = json.loads((run_dir / "status.json").read_text()).get("train_seconds")
    except (OSError, ValueError, AttributeError):
        return 0.0
    return float(seconds) if isinstance(seconds, (int, float)) and seconds >= 0 else 0.0


def _utc_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class _Stop(Exception):
    """Raised before an iteration to end this piece of training: ``reason`` is the status
    (``paused`` or ``interrupted``)."""

    def __init__(self, reason: str, refusal: str = ""):
        super().__init__(reason)
        self.reason, self.refusal = reason, refusal


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer):
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption, `timeout`, `kill`) stop training
    at the end of the running iteration, with a checkpoint of it (as Lightning does on
    preemption); a second signal stops at once (the run resumes from its last checkpoint).
    Only the main thread can install signal handlers; elsewhere signals keep their meaning."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        if trainer._signal is not None:
            raise KeyboardInterrupt(f"signal {signum}")
        trainer._signal = signum
        if trainer.dist is None or trainer.dist.main:
            print(
                f"{trainer.description}: stopping at the end of this iteration, with a "
                "checkpoint (signal again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
