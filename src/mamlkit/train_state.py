"""A trainer's state as a checkpoint's tensors and metadata, and back: the learner's
weights, the outer optimiser's state, the random generators, the logging window, the step
and the best validation result. Where the checkpoint is written is
:class:`~mamlkit.rundir.RunDirectory`'s concern."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, NamedTuple

import torch

from mamlkit.errors import UserError
from mamlkit.rundir.checkpoint import (
    optimizer_from_tensors,
    optimizer_to_tensors,
    rng_from_tensors,
    rng_to_tensors,
    state_mismatch,
)

__all__ = [
    "TrainState",
    "moved_task_seed",
    "restore_state",
    "seed_everything",
    "state_bytes",
    "state_tensors",
]


class TrainState(NamedTuple):
    """What a restored trainer continues with besides its weights and optimiser."""

    window: torch.Tensor
    step: int
    best: dict[str, Any] | None
    #: a resume on another kind of device: ``{"from": "cpu", "to": "cuda", "task_seed": S}``
    #: (the task sampler's state fits only its own kind of generator, so it starts again
    #: from seed S); None on the device the checkpoint was saved on
    moved: dict[str, Any] | None = None

    def describe_move(self, run: str) -> str:
        """The one line a resume on another kind of device prints.

        >>> state = TrainState(torch.zeros(3), 500, None, {"from": "cpu", "to": "cuda",
        ...                    "task_seed": 7})
        >>> print(state.describe_move("runs/a"))  # doctest: +ELLIPSIS
        mamlkit: runs/a moves from cpu to cuda at step 500: ... from seed 7 ...
        """
        move = self.moved or {}
        return (
            f"mamlkit: {run} moves from {move.get('from')} to {move.get('to')} at step "
            f"{self.step}: weights, optimiser and global random states carry over, but the task "
            f"sampler's state fits only its own device's generator, so tasks are drawn from "
            f"seed {move.get('task_seed')} on (recorded in resumes.jsonl); from here the run "
            "is not the one an unmoved run would have been"
        )


def moved_task_seed(seed: int, step: int, device: str) -> int:
    """The task sampler's seed after a run moves to ``device`` at ``step``: fixed by the
    run's seed, the step and the device, so that two such resumes sample the same tasks
    (and distinct from ``seed`` itself, whose stream the run has already used).

    >>> moved_task_seed(0, 1000, "cuda") == moved_task_seed(0, 1000, "cuda")
    True
    >>> len({moved_task_seed(0, 1000, "cuda"), moved_task_seed(0, 1000, "cpu"),
    ...      moved_task_seed(0, 2000, "cuda"), moved_task_seed(1, 1000, "cuda")})
    4
    """
    digest = hashlib.sha256(f"mamlkit tasks {seed} {step} {device}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # a non-negative int64


def state_tensors(
    learner: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    window: torch.Tensor,
    rank_rng: dict[str, torch.Tensor],
    step: int,
    best: dict[str, Any] | None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and metadata of a training checkpoint at ``step`` (``rank_rng``: a
    distributed job's every rank's RNG states)."""
    tensors = {f"learner.{k}": v for k, v in learner.state_dict().items()}
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    rng_tensors, rng_meta = rng_to_tensors({"tasks": generator})
    tensors.update(opt_tensors)
    tensors.update(rng_tensors)
    tensors["window"] = window
    tensors.update(rank_rng)
    return tensors, {"step": step, "optimizer": opt_meta, "rng": rng_meta, "best": best}


def restore_state(
    path: Path,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    learner: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    seed: int = 0,
) -> TrainState:
    """Load a training checkpoint's (``path``'s) weights, optimiser and task-RNG state into
    ``learner``, ``optimizer`` and ``generator``; return its window, step and best. A
    checkpoint of another model, or with damaged state, is a :class:`UserError`.

    A checkpoint saved on another kind of device (a CPU run resumed on CUDA, or back)
    loads onto the learner's device; only the task sampler's state cannot follow, and
    ``generator`` is seeded with :func:`moved_task_seed` of the run's ``seed`` instead
    (``TrainState.moved`` says so)."""
    state = {k[len("learner.") :]: v for k, v in tensors.items() if k.startswith("learner.")}
    try:
        learner.load_state_dict(state)
    except RuntimeError:
        raise UserError(
            f"checkpoint {path} does not match the model of this run's config.yaml "
            f"({state_mismatch(learner, state)}); was the config edited, or the "
            "run trained by another mamlkit version whose defaults differ?"
        ) from None
    try:
        optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
        saved_on = _trained_on(meta)
        task_seed = moved_task_seed(seed, int(meta["step"]), generator.device.type)
        moved = rng_from_tensors(
            tensors, meta["rng"], {"tasks": generator}, saved_on,
            reseed=lambda _, gen: gen.manual_seed(task_seed),
        )  # fmt: skip
        was = (meta["rng"].get("devices") or {}).get("tasks") or saved_on
        move = {"from": torch.device(was).type, "to": generator.device.type} if moved else None
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
        raise UserError(
            f"checkpoint {path}: its optimiser or random-generator state is damaged "
            f"({type(exc).__name__}); resume from an older checkpoint (--checkpoint STEP)"
        ) from None
    for group in optimizer.param_groups:  # the CUDA-graph step sets it where it runs
        group["capturable"] = False
    if move is not None:
        move["task_seed"] = task_seed
    return TrainState(tensors["window"].clone(), int(meta["step"]), meta.get("best"), move)


def _trained_on(meta: dict[str, Any]) -> str | None:
    """The device of the config a checkpoint records (its run's ``train.device``)."""
    train = meta.get("config", {}).get("train") if isinstance(meta.get("config"), dict) else None
    device = train.get("device") if isinstance(train, dict) else None
    return device if isinstance(device, str) else None


def state_bytes(learner: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """About what a checkpoint holds: the learner's state and the optimiser's moments
    (before the first step, Adam's two moments per parameter, not yet created)."""
    size = sum(t.numel() * t.element_size() for t in learner.state_dict().values())
    moments = [v for st in optimizer.state.values() for v in st.values()]
    opt = sum(t.numel() * t.element_size() for t in moments if torch.is_tensor(t))
    if not opt:
        opt = 2 * sum(p.numel() * p.element_size() for p in learner.parameters())
    return size + opt


def seed_everything(seed: int) -> None:
    """Seed the global RNGs (model initialisation, anything outside the task sampler)."""
    import random

    import numpy

    random.seed(seed)
    numpy.random.seed(seed % 2**32)
    torch.manual_seed(seed)
