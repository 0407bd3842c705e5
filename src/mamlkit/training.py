"""The one meta-training loop: sample tasks, step the outer optimiser, log, validate,
checkpoint, resume. Every algorithm and task distribution goes through :class:`Trainer`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from mamlkit import __version__
from mamlkit.algorithms.base import MetaLearner
from mamlkit.checkpoint import (
    atomic_write_text,
    load_checkpoint,
    optimizer_from_tensors,
    optimizer_to_tensors,
    rng_from_tensors,
    rng_to_tensors,
    save_checkpoint,
)
from mamlkit.config import Config
from mamlkit.device_step import CaptureUnsupported, DeviceStep
from mamlkit.errors import DivergenceError, UserError
from mamlkit.evaluation import HIGHER_IS_BETTER, METRICS, evaluate
from mamlkit.precision import cuda_precision
from mamlkit.tasks.base import TaskDistribution

CHECKPOINT_DIR = "checkpoints"


def _is_run_dir(path: Path) -> bool:
    """A run directory (or a reproduce directory of runs) that mamlkit wrote."""
    markers = ("status.json", "config.yaml", "results.json")
    return any((path / m).exists() for m in markers) or any(
        (child / "status.json").exists() for child in path.iterdir() if child.is_dir()
    )


def prepare_run_dir(out: str | Path, force: bool = False) -> Path:
    """Check that a new run may be written to ``out``; with ``force``, clear the old run
    there first (only something mamlkit wrote: ``--force`` on any other folder is refused).
    Call it after everything else is validated."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(
            f"--out {out} already exists and is not empty; pass --force to overwrite it, "
            "--resume to continue it, or choose another directory"
        )
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise UserError(f"--out {out} is not writable: {probe} is a file; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(
            f"--out {out} is not writable ({probe} denies writing); choose another path"
        )
    if force and out.is_dir() and any(out.iterdir()):
        if not _is_run_dir(out):
            raise UserError(
                f"--out {out} is not a mamlkit run directory; --force only replaces runs, so "
                "choose an empty or new directory"
            )
        shutil.rmtree(out)
    return out


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (model initialisation, anything outside the task sampler)."""
    import random

    import numpy

    random.seed(seed)
    numpy.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def environment_info(device: str) -> dict[str, Any]:
    import numpy

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "argv": sys.argv,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    info["mamlkit"] = __version__
    checkout = source_checkout()
    if checkout is not None:  # an installed mamlkit has no commit of its own to record
        info.update(_git_state(checkout))
    return info


def source_checkout(package_dir: str | Path | None = None) -> Path | None:
    """The root of mamlkit's own git checkout when the package in ``package_dir`` (default:
    the one running) is imported from one: a folder above it holding ``.git`` and a
    ``pyproject.toml`` of the project ``mamlkit``. None for an installed copy, also when the
    environment it is installed in lies inside some other git repository."""
    package = Path(package_dir or Path(__file__).parent).resolve()
    for root in (package.parent, package.parent.parent):  # flat or src/ layout
        pyproject = root / "pyproject.toml"
        if (root / ".git").exists() and pyproject.is_file():
            return root if _project_name(pyproject) == "mamlkit" else None
    return None


def _project_name(pyproject: Path) -> str | None:
    try:
        text = pyproject.read_text()
    except OSError:
        return None
    try:
        import tomllib
    except ImportError:  # Python 3.10: no TOML parser, and one line is all that is needed
        import re

        found = re.search(r"""^name\s*=\s*["']([^"']+)["']""", text, re.M)
        return found.group(1) if found else None
    try:
        project = tomllib.loads(text).get("project")
    except tomllib.TOMLDecodeError:
        return None
    return project.get("name") if isinstance(project, dict) else None


def _git_state(root: Path) -> dict[str, Any]:
    """``git_commit`` of the checkout at ``root`` and ``git_dirty`` (uncommitted changes to
    tracked files), where git can tell."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    changes = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": None if changes is None else bool(changes)}


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    data = {"status": status, "pid": os.getpid(), "updated": time.time(), **extra}
    atomic_write_text(run_dir / "status.json", json.dumps(data))


def _make_optimizer(params, lr: float) -> torch.optim.Optimizer:
    try:  # the fused kernel is fastest; older torch on CPU lacks it
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def run_checkpoints(run_dir: Path) -> dict[int, Path]:
    """The saved checkpoints of a run directory by training step, oldest first."""
    found = {}
    for path in (run_dir / CHECKPOINT_DIR).glob("step-*.safetensors"):
        step = path.stem.split("-")[1]
        if step.isdigit():
            found[int(step)] = path
    return dict(sorted(found.items()))


class Trainer:
    """Meta-trains ``learner`` on ``train_tasks`` as ``config.train`` says.

    With a ``run_dir`` it writes ``config.yaml``, ``env.json``, ``metrics.jsonl`` (one JSON
    object per logged step, every ``log_every``, and per validation, every ``val_every``: a
    validation between logged steps is a record of the validation metrics alone),
    TensorBoard events, ``checkpoints/step-N.safetensors`` (the last
    ``keep_checkpoints``), ``status.json`` and ``model.safetensors`` at the end.
    ``metric`` ("accuracy" or "mse") is computed on the query predictions when logging.
    A ``run_dir`` needs a ``config`` that rebuilds ``learner`` (for a model of your own:
    ``model.target``/``model.kwargs``), so that ``mamlkit eval`` can load the run; ``fit``
    refuses another one before writing anything.
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
        progress: bool = True,
        description: str = "meta-train",
        position: int = 0,
    ):
        self.learner, self.train_tasks, self.val_tasks = learner, train_tasks, val_tasks
        self.config, self.cfg = config, config.train
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.metric, self.progress, self.description = metric, progress, description
        self.position = position  # progress-bar line, when several runs train side by side
        self.device = torch.device(self.cfg.device)
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.learner.to(self.device)
        self.optimizer = _make_optimizer(self.learner.parameters(), self.cfg.outer_lr)
        self.generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        self.step = 0
        self.best: dict[str, Any] | None = None
        # running sums over the current logging window (checkpointed, for exact resume)
        self.window = torch.zeros(3, dtype=torch.float64)
        self.engine = "eager"  # or "cuda-graph": how the last fit ran its iterations
        self._tb = None

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
        meta = {"step": self.step, "optimizer": opt_meta, "rng": rng_meta, "best": self.best}
        path = self.run_dir / CHECKPOINT_DIR / f"step-{self.step:08d}.safetensors"
        save_checkpoint(path, tensors, meta)
        for old in self._checkpoints()[: -self.cfg.keep_checkpoints]:
            old.unlink()
        write_status(self.run_dir, "running", step=self.step, best=self.best)
        return path

    def restore(self, path: Path) -> None:
        tensors, meta = load_checkpoint(path)
        state = {k[len("learner.") :]: v for k, v in tensors.items() if k.startswith("learner.")}
        try:
            self.learner.load_state_dict(state)
        except RuntimeError:
            raise UserError(
                f"checkpoint {path} does not match the model of this run's "
                "config.yaml (was the config edited?)"
            ) from None
        optimizer_from_tensors(self.optimizer, tensors, meta["optimizer"])
        for group in self.optimizer.param_groups:  # the CUDA-graph step sets it where it runs
            group["capturable"] = False
        rng_from_tensors(tensors, meta["rng"], {"tasks": self.generator})
        self.window = tensors["window"].clone()
        self.step, self.best = int(meta["step"]), meta.get("best")

    def _log(self, record: dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def _start_tensorboard(self, purge_step: int | None) -> None:
        if self.run_dir is None or not self.cfg.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional (the `tensorboard` extra): metrics.jsonl has it all
            warnings.warn(
                "train.tensorboard is on but tensorboard is not installed; metrics go to "
                "metrics.jsonl only (pip install 'mamlkit[tensorboard]', or set "
                "train.tensorboard=false)",
                stacklevel=2,
            )
            return
        self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)

    # ---- the loop -----------------------------------------------------------------------
    def fit(self, resume: bool = False, config_changed: bool = False) -> dict[str, Any]:
        """Train to ``iterations``; ``resume`` continues from the newest checkpoint, and
        ``config_changed`` then records the (allowed) changes in config.yaml once restored."""
        if self.run_dir is not None:
            if not resume:
                from mamlkit.build import check_config_describes

                check_config_describes(self.config, self.learner)
            if resume:
                checkpoints = self._checkpoints()
                if not checkpoints:
                    raise UserError(f"{self.run_dir} has no checkpoint to resume from")
                self.restore(checkpoints[-1])
                _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
                if config_changed:
                    self._write_config()
            else:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._write_config()
                atomic_write_text(
                    self.run_dir / "env.json",
                    json.dumps(environment_info(self.cfg.device), indent=2),
                )
            write_status(self.run_dir, "running", step=self.step, best=self.best)
            self._start_tensorboard(self.step + 1 if resume else None)
        try:
            with _sigterm_as_interrupt():
                self._loop()
        except DivergenceError:
            if self.run_dir is not None:
                write_status(self.run_dir, "diverged", step=self.step, best=self.best)
            raise
        except KeyboardInterrupt:
            # Ctrl-C is a decision, not a failure: the run resumes from its last checkpoint
            if self.run_dir is not None:
                write_status(self.run_dir, "interrupted", step=self.step, best=self.best)
            raise
        except BaseException:
            if self.run_dir is not None:
                write_status(self.run_dir, "crashed", step=self.step, best=self.best)
            raise
        finally:
            if self._tb is not None:
                self._tb.close()
        if self.run_dir is not None:
            if self.step % self.cfg.checkpoint_every:
                self.save()
            save_checkpoint(
                self.run_dir / "model.safetensors",
                self.learner.state_dict(),
                {"step": self.step, "kind": "weights"},
            )
            write_status(
                self.run_dir, "finished", step=self.step, best=self.best, engine=self.engine
            )
        return {"step": self.step, "best": self.best}

    def _loop(self) -> None:
        with cuda_precision(self.cfg.precision):
            self._train()

    def _device_step(self) -> DeviceStep | None:
        """The captured (CUDA graph) step that ``train.cuda_graphs`` asks for, or None for the
        eager loop. ``auto`` uses graphs on CUDA wherever the learner allows it."""
        mode = self.cfg.cuda_graphs
        on_device = self.device.type == "cuda" or self._device_step_on_cpu
        if mode == "off" or not on_device:
            self.engine = "eager"
            return None
        metric_fn = METRICS.get(self.metric) if self.metric else None
        try:
            step = DeviceStep(
                self.learner,
                self.optimizer,
                metric_fn,
                grad_clip=self.cfg.grad_clip,
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
        from tqdm.auto import tqdm

        cfg = self.cfg
        params = [p for p in self.learner.parameters() if p.requires_grad]
        metric_fn = METRICS.get(self.metric) if self.metric else None
        device_step = self._device_step()
        bar = tqdm(
            total=cfg.iterations,
            initial=self.step,
            desc=self.description,
            disable=not self.progress,
            mininterval=0.5,
            dynamic_ncols=True,
            position=self.position,
        )
        while self.step < cfg.iterations:
            if cfg.lr_halve_every:
                for group in self.optimizer.param_groups:
                    group["lr"] = cfg.outer_lr * 0.5 ** (self.step // cfg.lr_halve_every)
            batch = self.train_tasks.sample(cfg.meta_batch, self.generator)
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
                bar.update(1)
                self._after_step(bar, device_step)
                continue
            custom = self.learner.outer_step(batch, self.optimizer, self.step)
            if custom is not None:
                self._finish_custom_step(custom, metric_fn, batch, bar)
                continue
            out = self.learner.meta_forward(batch, self.step)
            loss, pred = out.loss, out.predictions
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for p in params if p.grad is not None]
            with torch.no_grad():
                value = loss.detach()
                # NaN/Inf anywhere in the loss or the meta-gradient makes this sum non-finite
                health = value + torch.stack(torch._foreach_norm(grads)).sum()
                metric = value if metric_fn is None else metric_fn(pred, batch.query_y).mean()
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
            bar.update(1)
            self._after_step(bar, None)
        bar.close()

    def _finish_custom_step(self, out, metric_fn, batch, bar) -> None:
        """Bookkeeping after a learner's own outer step (:meth:`MetaLearner.outer_step`)."""
        with torch.no_grad():
            value = out.loss.detach()
            metric = out.metrics.get(self.metric) if self.metric else None
            if metric is None:
                fn_ok = metric_fn is not None and out.predictions is not None
                metric = metric_fn(out.predictions, batch.query_y).mean() if fn_ok else value
            loss_value, metric_value = torch.stack([value.double(), metric.double()]).tolist()
        if not math.isfinite(loss_value):
            raise DivergenceError(
                f"the loss became NaN/Inf at iteration {self.step + 1}; training stopped "
                "(the last checkpoint is intact); lower the learning rates"
            )
        self.step += 1
        self.window += torch.tensor([loss_value, metric_value, 1.0], dtype=torch.float64)
        bar.update(1)
        self._after_step(bar, None)

    def _after_step(self, bar, device_step: DeviceStep | None) -> None:
        """Log, validate and checkpoint where the step count says so (after the host has
        read the device step's health flag, where there is one)."""
        cfg = self.cfg
        log = self.step % cfg.log_every == 0 or self.step == cfg.iterations
        val = bool(cfg.val_every) and self.val_tasks is not None
        val = val and (self.step % cfg.val_every == 0 or self.step == cfg.iterations)
        save = self.run_dir is not None and self.step % cfg.checkpoint_every == 0
        if device_step is not None and (log or val or save):
            self._check_health(device_step)
        if log or val:  # a validation between logging steps is a record of its own
            record = self._window_record() if log else {"step": self.step}
            if val:
                record.update(self.validate())
            self._log(record)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "step"})
        if save:
            self.save()

    def _window_record(self) -> dict[str, Any]:
        loss_sum, metric_sum, n = self.window.tolist()
        self.window.zero_()
        record: dict[str, Any] = {"step": self.step, "loss": loss_sum / n}
        if self.metric:
            record[self.metric] = metric_sum / n
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        return record

    def validate(self) -> dict[str, float]:
        """Metric on ``val_tasks`` after the test-time number of steps (fixed val tasks)."""
        metric = self.metric or "mse"
        self.learner.eval()  # e.g. ProtoNets' BatchNorm: running statistics at test time
        try:
            result = evaluate(
                self.learner,
                self.val_tasks,
                self.cfg.val_tasks,
                steps=self.config.eval.steps,
                metric=metric,
                seed=self.config.eval.seed + 1,
                device=self.device,
                chunk=self.config.eval.chunk,
            )[-1]
        finally:
            self.learner.train()
        value = result[metric]
        better = self.best is None or (value > self.best["value"]) == (metric in HIGHER_IS_BETTER)
        if better:
            self.best = {"metric": f"val_{metric}", "value": value, "step": self.step}
        return {f"val_{metric}": value, f"val_{metric}_ci95": result["ci95"]}


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (a scheduler's preemption, `timeout`, `kill`) stops training like Ctrl-C: the run
    is marked ``interrupted`` and resumes from its last checkpoint. Only the main thread can
    install signal handlers; elsewhere SIGTERM keeps its default meaning."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records written after the checkpoint being resumed (they will be redone)."""
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= step
    ]
    atomic_write_text(path, "".join(line + "\n" for line in keep))
