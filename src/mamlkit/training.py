"""The one meta-training loop: sample tasks, step the outer optimiser, log, validate,
checkpoint, resume. Every algorithm and task distribution goes through :class:`Trainer`;
its parts live beside it: one iteration body run three ways (:mod:`mamlkit.iteration`,
:mod:`mamlkit.steps`), every file written by a :class:`~mamlkit.rundir.RunDirectory`,
early stops (:mod:`mamlkit.stopping`), the optimiser (:mod:`mamlkit.optim`)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from mamlkit.algorithms.base import MetaLearner
from mamlkit.algorithms.capabilities import owns_outer_step
from mamlkit.budget import TimeBudget
from mamlkit.callbacks import Callback, run_callbacks
from mamlkit.config import Config
from mamlkit.distributed import Distributed
from mamlkit.ensemble import Ensemble
from mamlkit.errors import DivergenceError, Interrupted, LostRank, UserError
from mamlkit.optim import make_optimizer, make_scheduler
from mamlkit.precision import cuda_precision
from mamlkit.progress import bars
from mamlkit.rundir.directory import RunDirectory
from mamlkit.rundir.files import load_training_checkpoint
from mamlkit.steps import Step, capture_failed, make_step, refuse_undistributed
from mamlkit.stopping import Stop, Stopper
from mamlkit.tasks.base import TaskDistribution
from mamlkit.train_state import restore_state, seed_everything, state_bytes, state_tensors
from mamlkit.validation import improves, validate

__all__ = ["Trainer", "make_optimizer", "make_scheduler", "seed_everything"]


class Trainer:
    """Meta-trains ``learner`` on ``train_tasks`` as ``config.train`` says.

    With a ``run_dir`` (a folder, or a :class:`~mamlkit.rundir.RunDirectory`, which writes
    every file) it writes ``config.yaml``, ``env.json``, ``metrics.jsonl`` (one JSON
    object per logged step, every ``log_every`` and the last (and the first, in a run of
    fewer than 2 ``log_every``), and per validation, every ``val_every``: a
    validation between logged steps is a record of the validation metrics alone),
    TensorBoard events, ``checkpoints/step-N.safetensors`` (the last
    ``keep_checkpoints``), ``status.json`` and ``model.safetensors`` at the end; each
    resume appends the step it continues from and its own environment to
    ``resumes.jsonl``. An ``ensemble`` (:func:`mamlkit.ensemble.run_ensemble`) keeps the
    test predictions of the best validation checkpoints in ``ensemble/``.
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
        run_dir: str | Path | RunDirectory | None = None,
        metric: str | None = None,
        val_tasks: TaskDistribution | None = None,
        progress: bool | None = True,
        description: str = "meta-train",
        position: int = 0,
        dist: Distributed | None = None,
        callbacks: list[Callback] | None = None,
        budget: TimeBudget | None = None,
        ensemble: Ensemble | None = None,
    ):
        self.learner, self.train_tasks, self.val_tasks = learner, train_tasks, val_tasks
        self.dist = dist  # torchrun's data parallelism: each rank runs a share of the tasks
        self.config = config  # its train section: self.config.train
        if run_dir is not None and not isinstance(run_dir, RunDirectory):
            run_dir = RunDirectory(run_dir)
        self.directory: RunDirectory | None = run_dir  # every write to the run goes here
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
        self.engine = "eager"  # or "cuda-graph", "device-eager": how the last fit ran
        self._rank_rng: dict[str, torch.Tensor] = {}
        self._moved: dict[str, Any] | None = None  # a resume on another kind of device
        self.callbacks = list(callbacks or [])  # the user's; the run's own join in fit()
        self._active: list[Callback] = []
        # --max-time: this piece of training pauses, with a checkpoint, before it runs out
        self.budget = budget
        # eval.ensemble: after each validation, the test predictions of the best checkpoints
        self.ensemble = ensemble
        if ensemble is not None and budget is not None:  # its time is planned for
            budget.ensemble_ratio = config.eval.tasks / config.train.val_tasks
        self._stopper = Stopper(budget)
        self._piece_steps = 0  # iterations run by this fit() call

    @property
    def cfg(self) -> Any:
        """Deprecated: the old second name of ``config.train`` (read that instead)."""
        warnings.warn(
            "Trainer.cfg is deprecated; use trainer.config.train", DeprecationWarning, stacklevel=2
        )
        return self.config.train

    @property
    def run_dir(self) -> Path | None:
        """The run's folder (None: no run directory, or a distributed job's other ranks)."""
        return self.directory.path if self.directory is not None else None

    # ---- the run's state ----------------------------------------------------------------
    def save(self) -> Path:
        """A checkpoint of the current step (and ``status.json`` to say so)."""
        parts = (self.learner, self.optimizer, self.generator, self.window, self._rank_rng)
        tensors, meta = state_tensors(*parts, self.step, self.best)
        keep = self.config.train.keep_checkpoints
        path = self.directory.save_checkpoint(self.step, tensors, meta, self.config.to_dict(), keep)
        self._write_status("running")
        return path

    def restore(self, path: Path) -> None:
        """Continue from the checkpoint at ``path`` (its weights, optimiser, RNGs, step)."""
        tensors, meta = load_training_checkpoint(path)
        state = restore_state(path, tensors, meta, self.learner, self.optimizer,
                              self.generator, self.config.train.seed)  # fmt: skip
        self.window, self.step, self.best, self._moved = state
        if state.moved is not None and (self.dist is None or self.dist.main):
            print(state.describe_move(self.description), file=sys.stderr)
        if self.dist is not None:
            self.dist.restore_rng_states(tensors)
        # the restored rate is the one the last update used: the schedule's at step − 1
        self.scheduler.last_epoch = self.step - 1

    def _log(self, record: dict[str, Any]) -> None:
        if self.directory is not None:
            self.directory.append_metrics(record)
        self._emit("on_log", record)

    def _emit(self, hook: str, *args: Any) -> None:
        for callback in self._active:
            getattr(callback, hook)(self, *args)

    def _side_jobs(self) -> list[Callback]:
        """The run's own callbacks and the user's (distributed: rank 0's alone)."""
        if self.dist is not None and not self.dist.main:
            return []
        tensorboard = self.directory is not None and self.config.train.tensorboard
        folder = self.directory.tensorboard_folder() if tensorboard else None
        return run_callbacks(self.progress, self.description, self.position, folder) + (
            self.callbacks
        )

    # ---- the loop -----------------------------------------------------------------------
    def fit(
        self, resume: bool = False, config_changed: bool = False, from_step: int | None = None
    ) -> dict[str, Any]:
        """Train to ``iterations``; ``resume`` continues from the newest checkpoint (or the
        one of ``from_step``), and ``config_changed`` then records the (allowed) changes in
        config.yaml once restored."""
        if self.dist is not None:
            self._join_job(resume, from_step)
        if self.directory is not None:
            self._open_run(resume, config_changed, from_step)
        if self.budget is not None:  # until a checkpoint is timed: a guess from its size
            self.budget.checkpoint_guess = TimeBudget.checkpoint_seconds(
                state_bytes(self.learner, self.optimizer)
            )
        mean = self.dist.mean_ if self.dist is not None else None
        self._stopper.mean = mean
        try:
            if self.dist is not None:  # every rank starts from rank 0's weights
                self.dist.broadcast_(list(self.learner.state_dict().values()))
            self._active = self._side_jobs()
            self._emit("on_start", resume)
            main = self.dist is None or self.dist.main
            with self._stopper.on_signals(self.description, main):
                # an own outer step averages its per-task means over the ranks with this
                with (
                    self.learner.averaging_over_ranks(mean),
                    cuda_precision(self.config.train.precision),
                ):
                    self._train()
        except Stop as stop:
            if stop.refusal:  # a budget shorter than one iteration: keep nothing of it
                self._final_status(stop.reason)
                raise UserError(stop.refusal) from None
            return self._stop(stop.reason)
        except (DivergenceError, KeyboardInterrupt) as exc:
            # Ctrl-C is a decision, not a failure: the run resumes from its last checkpoint
            self._final_status("diverged" if isinstance(exc, DivergenceError) else "interrupted")
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
            self._end_side_jobs()
        try:
            self._finish()
        except BaseException:
            self._final_status("crashed")  # e.g. a full disk at the final weights
            raise
        return {"step": self.step, "best": self.best}

    def _open_run(self, resume: bool, config_changed: bool, from_step: int | None) -> None:
        """A new run's first files, or a resumed run's state and its record of the resume."""
        run = self.directory
        if resume:
            run.continue_clock()
            self.restore(run.resume_checkpoint(from_step))
            if self.step > self.config.train.iterations:
                raise UserError(
                    f"--set train.iterations={self.config.train.iterations}: {run.path} is "
                    f"already at step {self.step} and training cannot go back; ask for "
                    f"{self.step} or more (or evaluate an earlier step with --checkpoint)"
                )
            run.truncate_metrics(self.step)
            run.remove_predictions(after=self.step)  # as the metrics: redone from here
            if config_changed:
                run.write_config(self.config.to_dict())
            run.append_resume(self.step, self.config.train.device, self._job())
        else:
            from mamlkit.build import check_config_describes

            check_config_describes(self.config, self.learner)
            run.create_run(self.config.to_dict(), self.config.train.device, self._job())
        self._write_status("running")

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
        if self.directory is not None:
            if self.step % self.config.train.checkpoint_every:
                self.save()
            self.directory.save_weights(self.learner.state_dict(), self.step)
            self._write_status("finished", engine=self.engine)

    def _stop(self, reason: str) -> dict[str, Any]:
        """End this piece of training at the last completed iteration: a checkpoint of it,
        the status ``paused`` (the time budget) or ``interrupted`` (a signal), and the step a
        resume continues from."""
        saved = self.directory is not None and self.step in self.directory.checkpoints()
        if self.dist is not None and self.step % self.config.train.checkpoint_every:
            self._rank_rng = self.dist.gather_rng_states()  # a collective: every rank
        if self.directory is not None:
            if not saved:
                self.save()
            used = self._stopper.used() if reason == "paused" else {}
            self._write_status(reason, **used)
        if reason == "interrupted":
            where = f"; `mamlkit train --resume {self.run_dir}`" if self.run_dir else ""
            raise Interrupted(
                f"interrupted after iteration {self.step} (signal {self._stopper.signal}), its "
                f"checkpoint written{where} continues from step {self.step}"
            )
        return {"step": self.step, "best": self.best, "paused": True}

    def _write_status(self, status: str, **extra: Any) -> None:
        """status.json: ``status`` at the current step, with the best validation so far."""
        self.directory.write_status(status, step=self.step, best=self.best, **extra)

    def _final_status(self, status: str) -> None:
        if self.directory is not None:  # if the disk lets us (the error is what matters)
            self.directory.final_status(status, step=self.step, best=self.best)

    def _job(self) -> dict[str, Any]:
        """What env.json and resumes.jsonl record of a distributed job."""
        dist = self.dist
        job = {} if dist is None else {"world_size": dist.world, "backend": dist.backend}
        return {**job, **({"moved": self._moved} if self._moved else {})}

    def _join_job(self, resume: bool, from_step: int | None) -> None:
        """Distributed: every rank starts from the same state and only rank 0 writes (the
        other ranks read the checkpoint they resume from, then hold no run directory)."""
        self.dist.check_meta_batch(self.config.train.meta_batch)
        refuse_undistributed(self.learner)
        if not self.dist.main:
            if resume and self.directory is not None and self.directory.checkpoints():
                self.restore(self.directory.resume_checkpoint(from_step))
            self.directory, self.progress = None, False

    def _make_step(self) -> Step:
        """The iteration's engine (:func:`mamlkit.steps.make_step`): the captured (CUDA
        graph) step that ``train.cuda_graphs`` asks for on CUDA (``auto``: wherever the
        learner allows it), else the eager one or the learner's own outer step."""
        dist, cuda = self.dist, self.device.type == "cuda"
        step = make_step(
            self.learner, self.optimizer, self.config.train, self.metric, self.window, self.step,
            mean=dist.mean_ if dist is not None else None,
            on_device=(cuda or self._device_step_on_cpu) and dist is None,
            capture=cuda, describe=self.description,
        )  # fmt: skip
        self.window, self.engine = step.window, step.name
        return step

    def _train(self) -> None:
        cfg = self.config.train
        step = self._make_step()
        self._float_buffers = [b for b in self.learner.buffers() if b.is_floating_point()]
        while self.step < cfg.iterations:
            self._check_stop()
            self._schedule_lr()
            batch = self.train_tasks.sample(cfg.meta_batch, self.generator)
            if self.dist is not None:  # every rank drew the same batch: keep this rank's tasks
                batch = self.dist.shard(batch)
            # the device step keeps the health check and the logging sums on the device
            step(batch, self.step)
            if self.dist is not None and self._float_buffers:  # BatchNorm's running stats:
                self.dist.mean_(self._float_buffers)  # each rank saw its share of the tasks
            if step.name != self.engine:  # a CUDA graph's capture failed: uncaptured from now
                self.engine = step.name
                print(capture_failed(step, self.description), file=sys.stderr)
            self.step += 1
            self._after_step(step)

    def _check_stop(self) -> None:
        """Before an iteration: stop for a signal, or pause for the time budget."""
        _, val, save = self._due(self.step + 1)
        self._stopper.check(self._piece_steps == 1, val, save)

    def _due(self, step: int) -> tuple[bool, bool, bool]:
        """Whether ``step`` logs, validates and checkpoints. A run shorter than two logging
        intervals logs its first step too: a curve, not a point."""
        cfg = self.config.train
        log = step % cfg.log_every == 0 or step == cfg.iterations
        log = log or (step == 1 and cfg.iterations < 2 * cfg.log_every)
        val = bool(cfg.val_every) and self.val_tasks is not None
        val = val and (step % cfg.val_every == 0 or step == cfg.iterations)
        return log, val, self.directory is not None and step % cfg.checkpoint_every == 0

    def _schedule_lr(self) -> None:
        """Set the rate of the coming update: the schedule's at the current step."""
        with warnings.catch_warnings():
            # torch warns when a scheduler steps before the optimiser has (after a resume, or
            # for a learner with its own outer step); here it sets the next update's rate
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            while self.scheduler.last_epoch < self.step:
                self.scheduler.step()

    def _after_step(self, step: Step) -> None:
        """Log, validate and checkpoint where the step count says so (after the host has
        read the device step's health flag, where there is one)."""
        self._piece_steps += 1
        self._emit("on_step")
        log, val, save = self._due(self.step)
        if self.dist is not None and self.step % self.config.train.checkpoint_every == 0:
            self._rank_rng = self.dist.gather_rng_states()  # a collective: every rank
        if log or val or save:
            step.check()  # the device step's health flag: one host read
        if log or val:  # a validation between logging steps is a record of its own
            record = self._window_record() if log else {"step": self.step}
            if val:
                with self._stopper.timed("validation"):
                    record.update(self.validate())
                self._keep_predictions(record)
            self._log(record)
        if save:
            with self._stopper.timed("checkpoint"):
                self.save()

    def _keep_predictions(self, record: dict[str, Any]) -> None:
        """``eval.ensemble``: the test predictions of the weights just validated, where their
        validation ranks among the best (:class:`~mamlkit.ensemble.Ensemble`)."""
        if self.ensemble is None or (self.dist is not None and not self.dist.main):
            return
        with self._stopper.timed("ensemble"):
            self.ensemble.offer(self.step, record[f"val_{self.metric or 'mse'}"])

    def _window_record(self) -> dict[str, Any]:
        loss_sum, metric_sum, n = self.window.tolist()
        self.window.zero_()
        record: dict[str, Any] = {"step": self.step, "loss": loss_sum / n}
        if self.metric:
            record[self.metric] = metric_sum / n
        if not owns_outer_step(self.learner):
            # the outer optimiser's rate; a learner with its own outer step (TRPO, Reptile)
            # does not use that optimiser, so its rate would mean nothing
            record["lr"] = self.optimizer.param_groups[0]["lr"]
        return record

    def validate(self) -> dict[str, float]:
        """Metric on ``val_tasks`` after the test-time number of steps (fixed val tasks)."""
        metric = self.metric or "mse"
        with bars(bool(self.progress)):  # --no-progress: no validation bar either
            result = validate(
                self.learner, self.val_tasks, self.config, metric, self.device, self.dist,
                self.progress,
            )  # fmt: skip
        if improves(self.best, result[metric], metric):
            self.best = {"metric": f"val_{metric}", "value": result[metric], "step": self.step}
        return {f"val_{metric}": result[metric], f"val_{metric}_ci95": result["ci95"]}
