"""Data-parallel meta-training with torchrun (gloo, 2 CPU processes): the same tasks, the same
meta-gradient and the same weights as one process; a dead rank ends the job; resume works."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

SRC = str(Path(__file__).parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MAMLKIT_DIST_TIMEOUT": "30"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _case():
    """A float64 Conv4 MAML case: model and an 4-task batch, the same in every process."""
    import torch.nn.functional as F

    from mamlkit import MAML
    from mamlkit.models import Conv4

    torch.manual_seed(0)
    model = Conv4(out_features=5, filters=4, image_size=28).double()
    learner = MAML(model, F.cross_entropy, 0.4, inner_steps=2)
    gen = torch.Generator().manual_seed(1)
    xs = torch.rand(4, 5, 1, 28, 28, generator=gen, dtype=torch.float64)
    xq = torch.rand(4, 5, 1, 28, 28, generator=gen, dtype=torch.float64)
    ys = torch.arange(5).expand(4, -1).contiguous()
    return learner, (xs, ys, xq, ys.clone())


def _rank_meta_gradient(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from mamlkit.distributed import from_environment, shutdown
    from mamlkit.tasks.base import TaskBatch

    dist = from_environment("cpu")
    learner, batch = _case()
    shard = dist.shard(TaskBatch(*batch))
    learner.meta_loss(*shard).backward()
    grads = [p.grad for p in learner.parameters()]
    dist.mean_(grads)
    if rank == 0:
        torch.save([g.clone() for g in grads], out)
    shutdown()


def test_two_ranks_average_to_the_single_process_meta_gradient(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(_rank_meta_gradient, args=(2, free_port(), out), nprocs=2, join=True)
    learner, batch = _case()
    learner.meta_loss(*batch).backward()
    ours = torch.load(out)
    for p, g in zip(learner.parameters(), ours, strict=True):
        scale = p.grad.norm().clamp_min(1e-300)
        assert (g - p.grad).norm() / scale <= 1e-10


def torchrun(*args: str, nproc: int = 2, **popen) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "mamlkit",
        *args,
    ]
    return subprocess.Popen(
        cmd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **popen,
    )


def single(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mamlkit", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


SINE = [
    "train.iterations=20",
    "train.meta_batch=4",
    "train.log_every=5",
    "train.checkpoint_every=5",
    "train.tensorboard=false",
    "train.threads=1",
]


def sets(values):
    return [a for s in values for a in ("--set", s)]


def weights(run: Path) -> dict:
    return load_file(str(run / "model.safetensors"))


def test_torchrun_sine_training_equals_one_process(tmp_path):
    job = torchrun(
        "train", "sine_maml", "--out", str(tmp_path / "two"), "--no-progress", *sets(SINE)
    )
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err.decode()[-8000:]
    one = single("train", "sine_maml", "--out", str(tmp_path / "one"), "--no-progress", *sets(SINE))
    assert one.returncode == 0, one.stderr
    a, b = weights(tmp_path / "two"), weights(tmp_path / "one")
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)
    env = json.loads((tmp_path / "two" / "env.json").read_text())
    assert env["world_size"] == 2 and env["backend"] == "gloo"
    logs = [
        [json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for r in ("two", "one")
    ]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [5, 10, 15, 20]
    for x, y in zip(*logs):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
    # evaluation shards the tasks over the ranks and gathers them: the same number
    job = torchrun("eval", str(tmp_path / "two"), "--tasks", "50")
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err.decode()[-8000:]
    shared = json.loads((tmp_path / "two" / "eval.json").read_text())
    alone = single("eval", str(tmp_path / "two"), "--tasks", "50")
    assert alone.returncode == 0
    assert shared["mse"] == pytest.approx(json.loads(alone.stdout)["mse"], rel=1e-5)


def test_meta_batch_must_split_over_the_ranks(tmp_path):
    job = torchrun(
        "train",
        "sine_maml",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        *sets(["train.meta_batch=5", "train.iterations=2"]),
    )
    _, err = job.communicate(timeout=300)
    assert job.returncode != 0
    assert "'train.meta_batch': 5 tasks do not split over 2 processes" in err.decode()
    # torchrun's agent reports the failed workers with its own traceback; the workers
    # themselves print one line each, no traceback through mamlkit's code
    assert SRC not in err.decode()


def _rank_pids(job: subprocess.Popen) -> dict[int, int]:
    """The worker processes of a torchrun job (children of its agent) by their RANK."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        values = dict(e.split(b"=", 1) for e in environ if b"=" in e)
        if parent == job.pid and b"RANK" in values:
            found[int(values[b"RANK"])] = int(pid)
    return found


def _wait_for_checkpoint(job, run: Path) -> None:
    deadline = time.time() + 180
    while not list((run / "checkpoints").glob("step-*.safetensors")):
        assert job.poll() is None, job.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.1)


def test_a_killed_rank_ends_the_job_and_the_job_resumes_exactly(tmp_path):
    long = [*SINE[:-1], "train.iterations=100000", "train.threads=1"]
    run = tmp_path / "r"
    job = torchrun("train", "sine_maml", "--out", str(run), "--no-progress", *sets(long))
    _wait_for_checkpoint(job, run)
    ranks = _rank_pids(job)
    assert set(ranks) == {0, 1}
    os.kill(ranks[1], signal.SIGKILL)
    start = time.time()
    job.communicate(timeout=120)
    assert job.returncode != 0 and time.time() - start < 60
    # the whole job killed after a checkpoint resumes exactly: compare with an
    # uninterrupted 2-process run to the same length
    ckpts = sorted((run / "checkpoints").glob("step-*.safetensors"))
    reached = int(ckpts[-1].stem.split("-")[1])
    target = reached + 5
    job = torchrun(
        "train", "--resume", str(run), "--no-progress", "--set", f"train.iterations={target}"
    )
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err.decode()[-8000:]
    whole = tmp_path / "whole"
    job = torchrun(
        "train",
        "sine_maml",
        "--out",
        str(whole),
        "--no-progress",
        *sets([*SINE[:-1], f"train.iterations={target}", "train.threads=1"]),
    )
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err.decode()[-8000:]
    a, b = weights(run), weights(whole)
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_torchrun_omniglot_5w1s_equals_one_process(tmp_path):
    from .conftest import data_root

    data = data_root()
    cfg = ["train.iterations=20", "train.meta_batch=4", "model.filters=8", "train.val_every=0",
           "train.log_every=10", "train.checkpoint_every=10", "train.tensorboard=false",
           "train.threads=1"]  # fmt: skip
    common = ["train", "omniglot_maml_5w1s", "--no-progress", "--data-dir", f"{data}/omniglot"]
    job = torchrun(*common, "--out", str(tmp_path / "two"), *sets(cfg))
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err.decode()[-8000:]
    one = single(*common, "--out", str(tmp_path / "one"), *sets(cfg))
    assert one.returncode == 0, one.stderr
    a, b = weights(tmp_path / "two"), weights(tmp_path / "one")
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_every_ranks_rng_state_is_in_the_checkpoint(tmp_path):
    from mamlkit.checkpoint import load_checkpoint

    job = torchrun("train", "sine_maml", "--out", str(tmp_path / "r"), "--no-progress",
                   *sets(["train.iterations=4", "train.meta_batch=4", "train.checkpoint_every=2",
                          "train.tensorboard=false", "train.threads=1"]))  # fmt: skip
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err.decode()[-8000:]
    tensors, _ = load_checkpoint(tmp_path / "r" / "checkpoints" / "step-00000004.safetensors")
    assert {"rng.rank0.torch", "rng.rank1.torch"} <= set(tensors)
    assert torch.equal(tensors["rng.rank0.torch"], tensors["rng.torch"])
