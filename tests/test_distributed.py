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

from .conftest import DEVICES

SRC = str(Path(__file__).parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", "MAMLKIT_DIST_TIMEOUT": "30"}
# Where a test shows that a lost rank stops the job by itself (not after the collectives'
# timeout): a timeout far beyond the tests' hang guards, so that no wall-clock bound decides
# the result (a job that waited for the timeout fails at the hang guard, however busy the
# machine is; before, a `< 60 s` bound could fail under load).
NO_TIMEOUT = {**ENV, "MAMLKIT_DIST_TIMEOUT": "3600"}


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


def _join(rank: int, world: int, port: int):
    """Join a gloo job of ``world`` processes as ``rank``, as torchrun's environment would."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from mamlkit.distributed import from_environment

    return from_environment("cpu")


def _rank_meta_gradient(rank: int, world: int, port: int, out: str) -> None:
    from mamlkit.distributed import exit_without_teardown, shutdown
    from mamlkit.tasks.base import TaskBatch

    dist = _join(rank, world, port)
    learner, batch = _case()
    shard = dist.shard(TaskBatch(*batch))
    learner.meta_loss(*shard).backward()
    grads = [p.grad for p in learner.parameters()]
    dist.mean_(grads)
    if rank == 0:
        torch.save([g.clone() for g in grads], out)
    shutdown()
    exit_without_teardown(0)


def _one_rank_collectives(backend: str, port: int, out: str) -> None:
    import torch.distributed as tdist

    from mamlkit.distributed import Distributed, exit_without_teardown, shutdown

    device = "cuda:0" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(0)
    tdist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
    )
    ranks = Distributed(rank=0, world=1, local_rank=0, backend=backend)
    grads = [torch.arange(6.0, device=device).view(2, 3), torch.full((4,), 3.0, device=device)]
    ranks.mean_(grads)
    ranks.broadcast_(grads)
    tasks = ranks.gather_tasks(torch.arange(10.0, device=device).view(2, 5))
    states = ranks.gather_rng_states()
    torch.save({"grads": [g.cpu() for g in grads], "tasks": tasks.cpu(),
                "devices": [str(g.device) for g in (*grads, tasks)],
                "states": sorted(states)}, out)  # fmt: skip
    shutdown()
    exit_without_teardown(0)


@pytest.mark.parametrize("device", DEVICES)
def test_the_collectives_run_on_the_backend_of_each_device(tmp_path, device):
    """Every collective mamlkit calls, on the backend torchrun gets for the device: gloo on
    the CPU, nccl on a GPU (the `cuda` case, run by `pytest -k cuda` on a GPU machine). One
    rank, since nccl wants a GPU per rank: this checks the tensors' devices, which is
    where nccl differs; the arithmetic over two ranks is checked on gloo above."""
    backend = "nccl" if device == "cuda" else "gloo"
    out = str(tmp_path / "out.pt")
    # a process of its own: the default process group must not outlive the check
    proc = mp.get_context("spawn").Process(
        target=_one_rank_collectives, args=(backend, free_port(), out)
    )
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    got = torch.load(out)
    torch.testing.assert_close(got["grads"][0], torch.arange(6.0).view(2, 3))
    torch.testing.assert_close(got["grads"][1], torch.full((4,), 3.0))
    torch.testing.assert_close(got["tasks"], torch.arange(10.0).view(2, 5))
    assert all(d.startswith(device) for d in got["devices"])
    assert got["states"] == (["rng.rank0.cuda", "rng.rank0.torch"] if device == "cuda"
                             else ["rng.rank0.torch"])  # fmt: skip


def test_two_ranks_average_to_the_single_process_meta_gradient(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(_rank_meta_gradient, args=(2, free_port(), out), nprocs=2, join=True)
    learner, batch = _case()
    learner.meta_loss(*batch).backward()
    ours = torch.load(out)
    for p, g in zip(learner.parameters(), ours, strict=True):
        scale = p.grad.norm().clamp_min(1e-300)
        assert (g - p.grad).norm() / scale <= 1e-10


def _rank_meets_a_nonfinite_task(rank: int, world: int, port: int, out: str) -> None:
    from mamlkit import SineTasks
    from mamlkit.build import build_learner
    from mamlkit.config import load_config
    from mamlkit.distributed import exit_without_teardown, shutdown
    from mamlkit.errors import DivergenceError
    from mamlkit.training import Trainer

    class Poisoned(SineTasks):
        """The 7th meta-batch's last task, in rank 1's share only, has a NaN input."""

        drawn = 0

        def sample(self, tasks, generator):
            batch = super().sample(tasks, generator)
            self.drawn += 1
            if self.drawn == 7:
                batch.support_x[-1] = float("nan")
            return batch

    dist = _join(rank, world, port)
    config = load_config("sine_maml", ["train.iterations=20", "train.meta_batch=4",
                                       "train.checkpoint_every=5", "train.val_every=0",
                                       "train.tensorboard=false", "train.threads=1"])  # fmt: skip
    torch.manual_seed(0)
    learner = build_learner(config)
    run = Path(out) / "run" if rank == 0 else None  # rank 0 alone writes, as in the CLI
    try:
        Trainer(learner, Poisoned(), config, run, progress=False, dist=dist).fit()
        said = "finished"
    except DivergenceError as exc:
        said = str(exc)
    (Path(out) / f"rank{rank}.txt").write_text(said)
    shutdown()
    exit_without_teardown(0)


def test_a_nonfinite_task_on_one_rank_stops_every_rank_at_the_same_iteration(tmp_path):
    """Divergence is decided collectively: a NaN in rank 1's tasks alone stops both ranks
    with the same message, naming the iteration; rank 0 marks the run diverged and keeps
    its last healthy checkpoint."""
    mp.spawn(_rank_meets_a_nonfinite_task, args=(2, free_port(), str(tmp_path)), nprocs=2)
    said = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert said[0] == said[1] and "iteration 7" in said[0], said
    run = tmp_path / "run"
    assert json.loads((run / "status.json").read_text())["status"] == "diverged"
    assert [p.name for p in (run / "checkpoints").glob("*.safetensors")] == [
        "step-00000005.safetensors"
    ]


def _own_update_cases():
    """Float64 learners whose outer update is their own, with a 4-task batch each, the
    same in every process: MAML-TRPO on 2D navigation and Reptile on sine regression (all of
    a task's data at every inner step, and minibatches)."""
    import torch.nn.functional as F

    from mamlkit import Reptile, SineTasks
    from mamlkit.models import MLP
    from mamlkit.rl import MAMLTRPO, GaussianMLPPolicy, Navigation2D, NavigationTasks

    torch.manual_seed(0)
    # conjugate gradient on the preset's nearly singular F + 1e-5·I amplifies rounding (a
    # 1e-16 change of the gradient moves its 10th iterate by 1e-3): a damping of 0.1 keeps
    # the system well conditioned, so that the comparison tests the averaging, not CG
    policy = GaussianMLPPolicy(2, 2, (16, 16))
    trpo = MAMLTRPO(Navigation2D(horizon=12), policy, rollouts=5, cg_damping=0.1)
    reptile = Reptile(MLP((1, 16, 16, 1)), F.mse_loss, inner_lr=0.02, inner_steps=3)
    # minibatches of 8 of a task's 20 examples: a task's draw is its own on every rank
    minibatched = Reptile(MLP((1, 16, 16, 1)), F.mse_loss, 0.02, inner_steps=3, inner_batch=8)
    # inner Adam: its state (the tasks' mean moments) is averaged over the ranks too
    adam = Reptile(MLP((1, 16, 16, 1)), F.mse_loss, 0.01, inner_steps=3, inner_optimizer="adam")
    return [
        (trpo, NavigationTasks().sample(4, torch.Generator().manual_seed(2))),
        (reptile, SineTasks().sample(4, torch.Generator().manual_seed(3))),
        (minibatched, SineTasks().sample(4, torch.Generator().manual_seed(4))),
        (adam, SineTasks().sample(4, torch.Generator().manual_seed(5))),
    ]


def _rank_own_updates(rank: int, world: int, port: int, out: str) -> None:
    from mamlkit.distributed import exit_without_teardown, shutdown

    torch.set_default_dtype(torch.float64)
    dist = _join(rank, world, port)
    states = []
    for learner, batch in _own_update_cases():
        with learner.averaging_over_ranks(dist.mean_):  # what the trainer does under torchrun
            learner.outer_step(dist.shard(batch), None, 0)
        states.append({k: v.clone() for k, v in learner.state_dict().items()})
    torch.save(states, f"{out}.rank{rank}")
    shutdown()
    exit_without_teardown(0)


def test_own_outer_updates_over_two_ranks_are_the_single_process_update(tmp_path, float64):
    """Reptile's interpolation (and its inner Adam's state) and MAML-TRPO's step (gradient,
    conjugate gradient on the averaged Fisher-vector products, line search on averaged
    losses and KLs), each rank with half of the tasks: the weights of one process, and the
    same on both ranks."""
    out = str(tmp_path / "weights")
    mp.spawn(_rank_own_updates, args=(2, free_port(), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.rank{r}") for r in range(2)]
    for i, (learner, batch) in enumerate(_own_update_cases()):
        before = {k: v.clone() for k, v in learner.state_dict().items()}
        learner.outer_step(batch, None, 0)
        for name, value in learner.state_dict().items():
            assert torch.equal(ranks[0][i][name], ranks[1][i][name])  # one update, not two
            if not value.is_floating_point():  # a count (inner Adam's steps)
                assert torch.equal(ranks[0][i][name], value), name
                continue
            moved = (value - before[name]).norm()
            if moved > 0:
                assert (ranks[0][i][name] - value).norm() / moved <= 1e-10, name
        assert any(not torch.equal(v, before[k]) for k, v in learner.state_dict().items())


def test_an_own_outer_update_that_does_not_average_is_refused_under_torchrun():
    import torch.nn.functional as F

    from mamlkit import MAML, SineTasks
    from mamlkit.config import load_config
    from mamlkit.distributed import Distributed
    from mamlkit.errors import UserError
    from mamlkit.models import MLP
    from mamlkit.training import Trainer

    class OwnStep(MAML):
        def outer_step(self, batch, optimizer, iteration):
            return super().meta_forward(batch)

    config = load_config("sine_maml", ["train.meta_batch=4", "train.iterations=1"])
    learner = OwnStep(MLP((1, 8, 1)), F.mse_loss, 0.01)
    dist = Distributed(rank=0, world=2, local_rank=0, backend="gloo")
    trainer = Trainer(learner, SineTasks(), config, progress=False, dist=dist)
    with pytest.raises(UserError, match="OwnStep makes its own outer update"):
        trainer.fit()


def torchrun(
    *args: str, nproc: int = 2, launch: tuple[str, ...] = ("--standalone",), **popen
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *launch,
        f"--nproc-per-node={nproc}",
        "-m",
        "mamlkit",
        *args,
    ]
    popen.setdefault("env", ENV)
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        **popen,
    )


def two_nodes(*args: str, env: dict[str, str] = ENV) -> list[subprocess.Popen]:
    """A job of two "nodes" on this machine: one torchrun agent each, with one process,
    meeting through torchrun's c10d rendezvous as on a cluster (docs/distributed.md's SLURM
    example). Both processes have LOCAL_RANK 0; which node gets rank 0 is the
    rendezvous's choice."""
    port = free_port()
    launch = (
        "--nnodes=2",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        f"--rdzv-id=job{port}",
    )
    return [torchrun(*args, nproc=1, launch=launch, env=env) for _ in range(2)]


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
    # with eval.ensemble: rank 0 alone predicts the test tasks at each validation
    ensemble = [*SINE, "train.val_every=10", "train.val_tasks=5", "eval.tasks=10",
                "eval.ensemble=2"]  # fmt: skip
    job = torchrun(
        "train", "sine_maml", "--out", str(tmp_path / "two"), "--no-progress", *sets(ensemble)
    )
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err.decode()[-8000:]
    assert sorted(p.name for p in (tmp_path / "two" / "ensemble").iterdir()) == [
        "step-00000010.safetensors", "step-00000020.safetensors"
    ]  # fmt: skip
    one = single(
        "train", "sine_maml", "--out", str(tmp_path / "one"), "--no-progress", *sets(ensemble)
    )
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
    shared = json.loads((tmp_path / "two" / "eval-tasks-50.json").read_text())
    alone = single("eval", str(tmp_path / "two"), "--tasks", "50", "--json")
    assert alone.returncode == 0
    assert shared["mse"] == pytest.approx(json.loads(alone.stdout)["mse"], rel=1e-5)


NAV2D = [
    "algorithm.cg_damping=0.1",  # a well-conditioned conjugate gradient (_own_update_cases)
    "task.horizon=12",
    "task.rollouts=5",
    "task.eval_rollouts=5",
    "model.hidden=[16,16]",
    "train.iterations=4",
    "train.meta_batch=4",
    "train.log_every=2",
    "train.checkpoint_every=2",
    "train.tensorboard=false",
    "eval.tasks=6",
]


def test_torchrun_rl_training_and_evaluation_equal_one_process(tmp_path):
    """MAML-TRPO (its own outer step) under torchrun: every task samples its own
    trajectories whichever rank holds it, so two ranks train the weights and log the
    returns of one process, and an evaluation shared by the ranks gives its numbers.

    In float32 a TRPO iteration turns the rounding of a sum in another order into about
    1e-5 of the weights (measured: 1.4e-5 after one iteration, 1.1e-4 after three; in
    float64 the step agrees to 1e-10, test above), so the tolerance is 1e-3 here: a rank
    that stepped on its own half of the tasks would be off by far more."""
    common = ["train", "rl_nav2d_maml", "--no-progress", *sets(NAV2D)]
    job = torchrun(*common, "--out", str(tmp_path / "two"))
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err.decode()[-8000:]
    one = single(*common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    a, b = weights(tmp_path / "two"), weights(tmp_path / "one")
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-4)
    logs = [
        [json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for r in ("two", "one")
    ]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [2, 4]
    for x, y in zip(*logs):
        assert x["return"] == pytest.approx(y["return"], rel=1e-3)
    job = torchrun("eval", str(tmp_path / "one"))
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err.decode()[-8000:]
    shared = json.loads((tmp_path / "one" / "eval.json").read_text())
    alone = single("eval", str(tmp_path / "one"), "--json")
    assert alone.returncode == 0, alone.stderr
    by_step = json.loads(alone.stdout)["by_step"]
    assert len(shared["by_step"]) == len(by_step) == 4  # returns after 0..3 steps
    for x, y in zip(shared["by_step"], by_step, strict=True):
        assert x["return"] == pytest.approx(y["return"], rel=1e-5)


def test_resume_with_another_number_of_processes_continues_the_same_training(tmp_path):
    """The global batch does not depend on the number of processes: 10 iterations on two
    ranks resumed by one process to 20 (and the other way round) end where one process's
    20 iterations end."""
    ten = ["train.iterations=10" if s.startswith("train.iterations") else s for s in SINE]
    two_then_one, one_then_two, whole = (tmp_path / n for n in ("21", "12", "whole"))
    job = torchrun("train", "sine_maml", "--out", str(two_then_one), "--no-progress", *sets(ten))
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err.decode()[-8000:]
    resumed = single("train", "--resume", str(two_then_one), "--no-progress",
                     "--set", "train.iterations=20")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    first = single("train", "sine_maml", "--out", str(one_then_two), "--no-progress", *sets(ten))
    assert first.returncode == 0, first.stderr
    job = torchrun("train", "--resume", str(one_then_two), "--no-progress",
                   "--set", "train.iterations=20")  # fmt: skip
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err.decode()[-8000:]
    alone = single("train", "sine_maml", "--out", str(whole), "--no-progress", *sets(SINE))
    assert alone.returncode == 0, alone.stderr
    # each resume records its own environment (env.json stays the first start's)
    for run, first_world, resumed_world in [(two_then_one, 2, None), (one_then_two, None, 2)]:
        assert json.loads((run / "env.json").read_text()).get("world_size") == first_world
        (resume,) = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
        assert resume["step"] == 10 and resume.get("world_size") == resumed_world
    reference = weights(whole)
    for run in (two_then_one, one_then_two):
        ours = weights(run)
        for name in reference:
            torch.testing.assert_close(ours[name], reference[name], rtol=1e-5, atol=1e-7)


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


def _wait_for_checkpoint(jobs: list[subprocess.Popen], run: Path) -> None:
    deadline = time.time() + 180
    while not list((run / "checkpoints").glob("step-*.safetensors")):
        for job in jobs:
            assert job.poll() is None, job.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.1)


def _finish(jobs: list[subprocess.Popen]) -> list[str]:
    """Wait for every agent of a job; their stderr."""
    return [job.communicate(timeout=300)[1].decode() for job in jobs]


def test_a_killed_rank_ends_the_job_and_the_job_resumes_exactly(tmp_path):
    long = [*SINE[:-1], "train.iterations=100000", "train.threads=1"]
    run = tmp_path / "r"
    job = torchrun(
        "train", "sine_maml", "--out", str(run), "--no-progress", *sets(long), env=NO_TIMEOUT
    )
    _wait_for_checkpoint([job], run)
    ranks = _rank_pids(job)
    assert set(ranks) == {0, 1}
    os.kill(ranks[1], signal.SIGKILL)
    job.communicate(timeout=300)  # a hang guard: the job's own collective timeout is longer
    assert job.returncode != 0
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


def test_two_nodes_train_as_one_job_and_a_lost_node_stops_it_in_one_line(tmp_path):
    """torchrun's multi-node flags (--nnodes, --rdzv-*): rank 0 alone writes the run though
    both processes are LOCAL_RANK 0; when the other node's process dies, rank 0 stops
    within seconds with one line naming the iteration; the run then resumes on two nodes
    and ends bit-identical to an uninterrupted one-node 2-process run."""
    long = [*SINE[:-1], "train.iterations=100000", "train.threads=1"]
    run = tmp_path / "r"
    jobs = two_nodes(
        "train", "sine_maml", "--out", str(run), "--no-progress", *sets(long), env=NO_TIMEOUT
    )
    _wait_for_checkpoint(jobs, run)
    ranks = [_rank_pids(job) for job in jobs]
    assert sorted(r for found in ranks for r in found) == [0, 1]
    first = next(i for i, found in enumerate(ranks) if 0 in found)  # rank 0's node
    os.kill(ranks[1 - first][1], signal.SIGKILL)
    errs = _finish(jobs)  # within _finish's hang guard, shorter than NO_TIMEOUT's timeout
    assert all(job.returncode != 0 for job in jobs)
    said = [line for line in errs[first].splitlines() if "mamlkit: error:" in line]
    assert len(said) == 1 and said[0].startswith("mamlkit: error: rank 0: "), errs[first][-8000:]
    assert "failed (" in said[0] and "training stopped in iteration" in said[0]
    assert SRC not in errs[first]  # no traceback through mamlkit's code
    assert json.loads((run / "status.json").read_text())["status"] == "crashed"
    reached = int(sorted((run / "checkpoints").glob("step-*.safetensors"))[-1].stem[5:])
    target = reached + 5
    jobs = two_nodes("train", "--resume", str(run), "--no-progress",
                     "--set", f"train.iterations={target}")  # fmt: skip
    for job, err in zip(jobs, _finish(jobs)):
        assert job.returncode == 0, err[-8000:]
    whole = tmp_path / "whole"
    short = [*SINE[:-1], f"train.iterations={target}", "train.threads=1"]
    job = torchrun("train", "sine_maml", "--out", str(whole), "--no-progress", *sets(short))
    _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err.decode()[-8000:]
    a, b = weights(run), weights(whole)
    assert all(torch.equal(a[k], b[k]) for k in b)
    # one writer: every logged step once, the interrupted tail truncated on resume
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(5, target + 1, 5))
    resumed = [json.loads(x) for x in (run / "resumes.jsonl").read_text().splitlines()]
    assert [(r["step"], r["world_size"]) for r in resumed] == [(reached, 2)]


def test_a_node_that_cannot_see_the_run_directory_is_told_to_share_it(tmp_path, capsys):
    from mamlkit.cli import main

    elsewhere = str(tmp_path / "elsewhere")
    os.environ["WORLD_SIZE"] = "2"  # a torchrun worker, before it joins the job
    try:
        codes = [main(["train", "--resume", elsewhere]), main(["eval", elsewhere])]
    finally:
        del os.environ["WORLD_SIZE"]
    said = capsys.readouterr().err.splitlines()
    assert codes == [2, 2] and len(said) == 2
    assert said[0].startswith(f"mamlkit: error: --resume {elsewhere}: no config.yaml there")
    assert all("keep runs on a filesystem all nodes share" in line for line in said)


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
