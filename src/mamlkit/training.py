"""The one meta-training loop: sample tasks, step the outer optimiser, log, validate,
checkpoint, resume. Every algorithm and task distribution goes through :class:`Trainer`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from mamlkit import records
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
from mamlkit.errors import DivergenceError, UserError
from mamlkit.evaluation import METRICS, evaluate
from mamlkit.rundir import CHECKPOINT_DIR, clear_run_dir, has_content, is_reproduce_dir, is_run_dir
from mamlkit.tasks.base import TaskDistribution


def prepare_run_dir(out: str | Path, force: bool = False, clear: bool = True) -> Path:
    """Check that a new run may be written to ``out``; with ``force``, clear the old run
    there first (only a folder that is itself a mamlkit run, and only mamlkit's files in it:
    the user's own files stay; ``--force`` on any other folder is refused; ``clear=False``
    only checks). Call it after everything else is validated."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a directory; choose another path")
    if has_content(out) and not force:
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
    if force and has_content(out):
        if not (is_run_dir(out) or is_reproduce_dir(out)):
            raise UserError(
                f"--out {out} is not a mamlkit run directory itself; --force replaces only a "
                "run (not a folder holding runs or other files), so choose a new directory"
            )
        if clear:
            clear_run_dir(out)
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
    try:
        from importlib.metadata import version

        info["mamlkit"] = version("mamlkit")
    except Exception:  # not installed (PYTHONPATH=src)
        info["mamlkit"] = "source"
    try:
        root = Path(__file__).resolve().parents[2]
        info["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except Exception:
        info["git_commit"] = None
    return info


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    data = {"status": status, "pid": os.getpid(), "updated": time.time(), **extra}
    atomic_write_text(run_dir / "status.json", records.dumps(data))


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


_META_TYPES = {"step": int, "optimizer": dict, "rng": dict}
_TENSORS = ("window", "rng.torch", "rng.numpy.keys")


def load_training_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A training checkpoint's tensors and metadata, with the metadata checked: a missing
    or mistyped entry is a :class:`UserError` naming the file, not a crash mid-restore."""
    tensors, meta = load_checkpoint(path)
    for key, kind in _META_TYPES.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise UserError(
                f"checkpoint {path}: metadata entry {key!r} is missing or not a "
                f"{kind.__name__} (damaged or hand-edited); resume from an older checkpoint "
                "(--checkpoint STEP)"
            )
    missing = [name for name in _TENSORS if name not in tensors]
    if missing or meta["step"] < 0 or not isinstance(meta.get("best"), (dict, type(None))):
        raise UserError(
            f"checkpoint {path}: incomplete training state ({', '.join(missing) or 'step'}); "
            "resume from an older checkpoint (--checkpoint STEP)"
        )
    return tensors, meta


def resume_checkpoint(run_dir: Path, step: int | None = None) -> Path:
    """The checkpoint to resume from: the newest, or the one of ``step``. A damaged newest
    one is refused, naming the newest intact one; resuming from an older step sets the
    damaged newer ones aside as ``*.damaged`` (kept, but never read again)."""
    found = run_checkpoints(run_dir)
    if not found:
        raise UserError(f"{run_dir} has no checkpoint to resume from")
    if step is not None and step not in found:
        saved = ", ".join(str(s) for s in found)
        raise UserError(f"--checkpoint {step}: not a saved step of {run_dir}; saved: {saved}")
    chosen = max(found) if step is None else step
    try:
        load_training_checkpoint(found[chosen])
    except UserError as exc:
        older = [s for s in sorted(found, reverse=True) if s < chosen]
        intact = next((s for s in older if _is_intact(found[s])), None)
        if intact is None:
            raise UserError(
                f"{exc} -- no older intact checkpoint is left: restore it from a backup or "
                "start the run again with --force"
            ) from None
        raise UserError(
            f"{found[chosen]} is damaged; step {intact} is intact: continue from it with "
            f"`mamlkit train --resume {run_dir} --checkpoint {intact}`"
        ) from exc
    for newer, path in found.items():
        if newer > chosen and not _is_intact(path):
            path.rename(path.with_name(path.name + ".damaged"))
    return found[chosen]


def _is_intact(path: Path) -> bool:
    try:
        load_training_checkpoint(path)
    except UserError:
        return False
    return True


class Trainer:
    """Meta-trains ``learner`` on ``train_tasks`` as ``config.train`` says.

    With a ``run_dir`` it writes ``config.yaml``, ``env.json``, ``metrics.jsonl`` (one JSON
    object per logged step), TensorBoard events, ``checkpoints/step-N.safetensors`` (the last
    ``keep_checkpoints``), ``status.json`` and ``model.safetensors`` at the end.
    ``metric`` ("accuracy" or "mse") is computed on the query predictions when logging.
    """

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
        tensors, meta = load_training_checkpoint(path)
        state = {k[len("learner.") :]: v for k, v in tensors.items() if k.startswith("learner.")}
        try:
            self.learner.load_state_dict(state)
        except RuntimeError:
            raise UserError(
                f"checkpoint {path} does not match the model of this run's "
                "config.yaml (was the config edited?)"
            ) from None
        try:
            optimizer_from_tensors(self.optimizer, tensors, meta["optimizer"])
            rng_from_tensors(tensors, meta["rng"], {"tasks": self.generator})
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
            raise UserError(
                f"checkpoint {path}: its optimiser or random-generator state is damaged "
                f"({type(exc).__name__}); resume from an older checkpoint (--checkpoint STEP)"
            ) from None
        self.window = tensors["window"].clone()
        self.step, self.best = int(meta["step"]), meta.get("best")

    def _log(self, record: dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        records.append_line(self.run_dir / "metrics.jsonl", record)
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def _start_tensorboard(self, purge_step: int | None) -> None:
        if self.run_dir is None or not self.cfg.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional: the run still has metrics.jsonl
            return
        self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)

    # ---- the loop -----------------------------------------------------------------------
    def fit(
        self, resume: bool = False, config_changed: bool = False, from_step: int | None = None
    ) -> dict[str, Any]:
        """Train to ``iterations``; ``resume`` continues from the newest checkpoint (or the
        one of ``from_step``), and ``config_changed`` then records the (allowed) changes in
        config.yaml once restored."""
        if self.run_dir is not None:
            if resume:
                self.restore(resume_checkpoint(self.run_dir, from_step))
                if self.step > self.cfg.iterations:
                    raise UserError(
                        f"--set train.iterations={self.cfg.iterations}: {self.run_dir} is "
                        f"already at step {self.step} and training cannot go back; ask for "
                        f"{self.step} or more (or evaluate an earlier step with --checkpoint)"
                    )
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
            self._final_status("diverged")
            raise
        except KeyboardInterrupt:
            # Ctrl-C is a decision, not a failure: the run resumes from its last checkpoint
            self._final_status("interrupted")
            raise
        except BaseException:
            self._final_status("crashed")
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
            write_status(self.run_dir, "finished", step=self.step, best=self.best)
        return {"step": self.step, "best": self.best}

    def _final_status(self, status: str) -> None:
        """Record how training stopped, if the disk still lets us: the error that stopped
        it (perhaps that very disk) is what the user must see."""
        if self.run_dir is not None:
            with contextlib.suppress(OSError):
                write_status(self.run_dir, status, step=self.step, best=self.best)

    def _loop(self) -> None:
        from tqdm.auto import tqdm

        cfg = self.cfg
        params = [p for p in self.learner.parameters() if p.requires_grad]
        metric_fn = METRICS.get(self.metric) if self.metric else None
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
            loss, pred = self.learner.meta_forward(*batch)
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
            if self.step % cfg.log_every == 0 or self.step == cfg.iterations:
                record = self._window_record()
                if (
                    cfg.val_every
                    and self.val_tasks is not None
                    and (self.step % cfg.val_every == 0 or self.step == cfg.iterations)
                ):
                    record.update(self.validate())
                self._log(record)
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k != "step"})
            if self.run_dir is not None and self.step % cfg.checkpoint_every == 0:
                self.save()
        bar.close()

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
        better = self.best is None or (value > self.best["value"]) == (metric == "accuracy")
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
    """Drop records written after the checkpoint being resumed (they will be redone), and a
    line torn by a crash mid-append."""
    if not path.exists():
        return
    keep = [r for r in records.read_metrics(path) if r["step"] <= step]
    atomic_write_text(path, "".join(records.dumps(r) + "\n" for r in keep))
