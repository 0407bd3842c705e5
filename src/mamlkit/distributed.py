"""Data-parallel meta-training on ``torch.distributed``, launched by ``torchrun``.

Every rank draws the same global meta-batch from the same task generator and keeps its
slice of the tasks, so the tasks of a W-process run are exactly those of a single process
with the same seed. The outer loss is a mean over tasks and BatchNorm statistics are per
task, so averaging the ranks' meta-gradients gives the single-process meta-gradient.
``DistributedDataParallel`` is not used: its reducer does not support the double backward
of second-order MAML (pytorch/pytorch#63929), so the gradients are all-reduced here, as
one flattened bucket after the outer backward. Rank 0 alone writes the run directory.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import Tensor

from mamlkit.errors import LostRank, UserError
from mamlkit.tasks.base import TaskBatch

#: how long a collective waits for a rank before the job fails (a dead or stuck rank)
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("MAMLKIT_DIST_TIMEOUT", 60)))


@contextmanager
def collective(rank: int, what: str) -> Iterator[None]:
    """Turn the failure of a collective into :class:`LostRank`, naming this rank and the
    transport's own reason in one line."""
    try:
        yield
    except RuntimeError as exc:  # gloo raises RuntimeError; nccl and timeouts its subclasses
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        # "[.../gloo/transport/tcp/pair.cc:537] Read error ...: Connection reset by peer. This
        # is typically caused by ..." -> "Read error ...: Connection reset by peer"
        reason = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]).split(". ")[0]
        raise LostRank(
            f"rank {rank}: {what} failed ({reason}): another process of this job died, hung "
            "or left; its own message says why"
        ) from exc


@dataclass(frozen=True)
class Distributed:
    """This process's place in a ``torchrun`` job."""

    rank: int
    world: int
    local_rank: int
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """``cuda`` becomes this process's own GPU (``cuda:LOCAL_RANK``)."""
        return f"cuda:{self.local_rank}" if device.startswith("cuda") else device

    def shard(self, batch: TaskBatch) -> TaskBatch:
        """This rank's contiguous share of a global batch's tasks (equal shares when the
        number of tasks divides by the world, as in training)."""
        n = batch.num_tasks
        return batch.slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def broadcast_(self, tensors: list[Tensor]) -> None:
        """Rank 0's values of ``tensors`` on every rank (the starting weights)."""
        with collective(self.rank, "broadcasting rank 0's weights"):
            for t in tensors:
                dist.broadcast(t, 0)

    def mean_(self, tensors: list[Tensor]) -> None:
        """Average ``tensors`` over the ranks in place, with one collective."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        with collective(self.rank, "averaging over the ranks"):
            dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def gather_tasks(self, values: Tensor) -> Tensor:
        """Concatenate every rank's per-task values along the last axis, in rank order
        (ranks may hold different numbers of tasks)."""
        count = torch.tensor([values.shape[-1]], device=values.device)
        counts = [torch.zeros_like(count) for _ in range(self.world)]
        with collective(self.rank, "gathering the ranks' tasks"):
            dist.all_gather(counts, count)
            width = int(max(c.item() for c in counts))
            shape = (*values.shape[:-1], width)
            padded = torch.zeros(shape, dtype=values.dtype, device=values.device)
            padded[..., : values.shape[-1]] = values
            parts = [torch.zeros_like(padded) for _ in range(self.world)]
            dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[..., : int(c.item())] for p, c in zip(parts, counts)], dim=-1)

    def gather_rng_states(self) -> dict[str, Tensor]:
        """Every rank's global torch RNG states (CPU, and its GPU's), for rank 0's
        checkpoint: ``rng.rankR.torch`` / ``rng.rankR.cuda``. The task generator needs no
        gathering: every rank holds the same one."""
        mine = {"torch": torch.get_rng_state()}
        if self.backend == "nccl":
            mine["cuda"] = torch.cuda.get_rng_state()
        out = {}
        for kind, state in mine.items():
            # nccl moves only GPU tensors; gloo takes them on the CPU
            local = state.to(f"cuda:{self.local_rank}") if self.backend == "nccl" else state
            parts = [torch.empty_like(local) for _ in range(self.world)]
            with collective(self.rank, "gathering the ranks' random states"):
                dist.all_gather(parts, local)
            out.update({f"rng.rank{r}.{kind}": p.cpu() for r, p in enumerate(parts)})
        return out

    def restore_rng_states(self, tensors: dict[str, Tensor]) -> None:
        """This rank's own RNG states from a checkpoint (older checkpoints have none)."""
        state = tensors.get(f"rng.rank{self.rank}.torch")
        if state is not None:
            torch.set_rng_state(state)
        state = tensors.get(f"rng.rank{self.rank}.cuda")
        if state is not None and self.backend == "nccl":
            torch.cuda.set_rng_state(state)

    def check_meta_batch(self, meta_batch: int) -> None:
        if meta_batch % self.world:
            raise UserError(
                f"config key 'train.meta_batch': {meta_batch} tasks do not split over "
                f"{self.world} processes; use a multiple of {self.world} (or another "
                "--nproc-per-node)"
            )


def from_environment(device: str) -> Distributed | None:
    """The process group ``torchrun`` asks for (``WORLD_SIZE`` > 1), initialised once
    (gloo on the CPU, nccl on GPUs), or None for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    backend = "nccl" if device.startswith("cuda") else "gloo"
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        with collective(rank, "joining the job"):
            dist.init_process_group(backend, timeout=TIMEOUT)
    return Distributed(rank, world, local_rank, backend)


def shutdown(wait: bool = True) -> None:
    """Leave the job, if this process joined one. ``wait``: first wait for every rank, as
    at the end of a command that succeeded: gloo aborts a process (SIGABRT) whose peer
    exits while it still holds its connections, so a rank that finishes first must not
    simply exit. After an error the other ranks may never arrive; leave at once then."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def exit_without_teardown(code: int = 0) -> NoReturn:
    """End a process that has left its job (:func:`shutdown`), skipping the interpreter's
    teardown: with gloo that teardown aborted finished workers (SIGABRT, "terminate called
    without an active exception") in 3 of 40 2-process trainings here (torch 2.13;
    docs/distributed.md), failing jobs whose work was done. Output is flushed first; files
    must already be closed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
