"""A trainer's state as a checkpoint's tensors and metadata, and back: the learner's
weights, the outer optimiser's state, the random generators, the logging window, the step
and the best validation result. Where the checkpoint is written is
:class:`~mamlkit.rundir.RunDirectory`'s concern."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mamlkit.errors import UserError
from mamlkit.rundir.checkpoint import (
    optimizer_from_tensors,
    optimizer_to_tensors,
    rng_from_tensors,
    rng_to_tensors,
    state_mismatch,
)

__all__ = ["TrainState", "restore_state", "seed_everything", "state_bytes", "state_tensors"]

#: (window, step, best) of a restored trainer
TrainState = tuple[torch.Tensor, int, "dict[str, Any] | None"]


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
) -> TrainState:
    """Load a training checkpoint's (``path``'s) weights, optimiser and task-RNG state into
    ``learner``, ``optimizer`` and ``generator``; return its window, step and best. A
    checkpoint of another model, or with damaged state, is a :class:`UserError`."""
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
        rng_from_tensors(tensors, meta["rng"], {"tasks": generator})
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise UserError(
            f"checkpoint {path}: its optimiser or random-generator state is damaged "
            f"({type(exc).__name__}); resume from an older checkpoint (--checkpoint STEP)"
        ) from None
    for group in optimizer.param_groups:  # the CUDA-graph step sets it where it runs
        group["capturable"] = False
    return tensors["window"].clone(), int(meta["step"]), meta.get("best")


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
