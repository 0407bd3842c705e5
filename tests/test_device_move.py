"""A run moves between devices on ``--resume --device`` (a lent GPU takes a piece of a CPU
run, and the CPU takes it back): weights, optimiser and global random states carry over;
the task sampler's state fits only its own kind of generator (CPU: Mersenne twister, CUDA:
Philox), so it starts again from :func:`~mamlkit.train_state.moved_task_seed`, which the
resume prints and ``resumes.jsonl`` records. Without a GPU, a checkpoint is rewritten as a
CUDA run's would be (its config's device, its generator record and a Philox-sized state)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mamlkit.cli import main
from mamlkit.rundir.checkpoint import load_checkpoint, rng_from_tensors, rng_to_tensors
from mamlkit.rundir.checkpoint import save_checkpoint as write_checkpoint
from mamlkit.train_state import moved_task_seed

from .conftest import DEVICES
from .test_cli_bad_input import assert_user_error
from .test_trust import check_suggested_flags

SINE = [
    "train.iterations=10",
    "train.checkpoint_every=5",
    "train.log_every=1",
    "train.meta_batch=3",
    "train.tensorboard=false",
    "train.seed=3",
    "eval.tasks=2",
]


def sets(values: list[str]) -> list[str]:
    return [a for s in values for a in ("--set", s)]


def train(*argv) -> None:
    assert main([str(a) for a in argv]) == 0


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def resumes(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> Path:
    """A sine run trained on the CPU to step 10, with its checkpoint of step 10."""
    run = tmp_path_factory.mktemp("move") / "sine"
    train("train", "sine_maml", *sets(SINE), "--out", run, "--no-progress")
    return run


def as_if_trained_on_cuda(source: Path, dest: Path) -> Path:
    """A copy of ``source`` whose config and newest checkpoint say CUDA, as a run trained
    on a GPU would leave them (the task generator's state: Philox's 16 bytes)."""
    shutil.copytree(source, dest)
    config = yaml.safe_load((dest / "config.yaml").read_text())
    config["train"]["device"] = "cuda"
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    path = max((dest / "checkpoints").glob("step-*.safetensors"))
    tensors, meta = load_checkpoint(path)
    meta["config"]["train"]["device"] = "cuda"
    meta["rng"]["devices"] = {"tasks": "cuda"}
    tensors["rng.generator.tasks"] = torch.arange(16, dtype=torch.uint8)
    write_checkpoint(path, tensors, meta)
    return dest


def test_a_cuda_run_moves_to_the_cpu_and_draws_its_tasks_from_a_new_seed(
    cpu_run, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    more = sets(["train.iterations=20"])
    moved = as_if_trained_on_cuda(cpu_run, tmp_path / "moved")
    before = (moved / "metrics.jsonl").read_bytes()

    # without --device: one line that names the fix, and nothing written
    argv = ["train", "--resume", moved, "--no-progress", *more]
    line = assert_user_error(capsys, *argv, match=f"`mamlkit train --resume {moved} --device cpu`")
    check_suggested_flags(argv, line)
    assert (moved / "metrics.jsonl").read_bytes() == before

    train(*argv, "--device", "cpu")
    err = capsys.readouterr().err
    seed = moved_task_seed(3, 10, "cpu")
    assert "moves from cuda to cpu at step 10" in err and f"seed {seed}" in err
    assert resumes(moved)[-1]["moved"] == {"from": "cuda", "to": "cpu", "task_seed": seed}
    assert yaml.safe_load((moved / "config.yaml").read_text())["train"]["device"] == "cpu"
    assert json.loads((moved / "status.json").read_text())["status"] == "finished"

    # the same move again draws the same tasks: the continuation is fixed by the run
    again = as_if_trained_on_cuda(cpu_run, tmp_path / "again")
    train("train", "--resume", again, "--no-progress", *more, "--device", "cpu")
    assert metrics(again) == metrics(moved)

    # a run resumed where it trained keeps its task stream: the moved one's differs after
    # step 10 (new tasks), and equals it before (the same weights and optimiser went on)
    stayed = tmp_path / "stayed"
    shutil.copytree(cpu_run, stayed)
    train("train", "--resume", stayed, "--no-progress", *more)
    assert "moved" not in resumes(stayed)[-1]
    assert metrics(stayed)[:10] == metrics(moved)[:10]
    assert metrics(stayed)[10:] != metrics(moved)[10:]
    assert len(metrics(moved)) == len(metrics(stayed)) == 20


def test_the_task_generator_is_reseeded_only_when_its_device_kind_changed():
    """``rng_from_tensors``: the record of each generator's device decides; a checkpoint
    older than that record is judged by the device its run trained on."""
    gen = torch.Generator().manual_seed(5)
    gen.manual_seed(5)
    torch.rand(3, generator=gen)
    tensors, meta = rng_to_tensors({"tasks": gen})
    assert meta["devices"] == {"tasks": "cpu"}

    def reseed(name, generator):
        generator.manual_seed(11)

    for record, trained_on, reseeded in [
        ({"tasks": "cpu"}, None, []),
        ({"tasks": "cuda"}, None, ["tasks"]),
        (None, "cpu", []),  # an older checkpoint: its run's config
        (None, "cuda:0", ["tasks"]),
        (None, None, []),  # nothing says otherwise: the state is taken as it is
    ]:
        old = {k: v for k, v in meta.items() if k != "devices"}
        if record is not None:
            old["devices"] = record
        target = torch.Generator().manual_seed(0)
        assert rng_from_tensors(tensors, old, {"tasks": target}, trained_on, reseed) == reseeded
        expected = torch.Generator().manual_seed(11).get_state() if reseeded else gen.get_state()
        assert torch.equal(target.get_state(), expected)
    with pytest.raises(ValueError, match="saved on cuda"):
        rng_from_tensors(tensors, {**meta, "devices": {"tasks": "cuda"}}, {"tasks": gen})


@pytest.mark.parametrize("device", DEVICES)
def test_a_cpu_run_moves_to_device_and_back(cpu_run, tmp_path, capsys, device):
    """On the CPU alone: `--device cpu` on a CPU run is no move, and the resume is bit for
    bit the uninterrupted run. With CUDA: the run trains a piece there and comes back."""
    run = tmp_path / "run"
    shutil.copytree(cpu_run, run)
    train("train", "--resume", run, "--no-progress", "--device", device,
          *sets(["train.iterations=15"]))  # fmt: skip
    train("train", "--resume", run, "--no-progress", "--device", "cpu",
          *sets(["train.iterations=20"]))  # fmt: skip
    err = capsys.readouterr().err
    records = resumes(run)[-2:]
    assert [r["device"] for r in records] == [device, "cpu"]
    if device == "cpu":
        assert "moves from" not in err and not any("moved" in r for r in records)
        straight = tmp_path / "straight"
        train("train", "sine_maml", *sets([*SINE, "train.iterations=20"]), "--out", straight,
              "--no-progress")  # fmt: skip
        assert metrics(run) == metrics(straight)
        ours, theirs = (load_checkpoint(r / "model.safetensors")[0] for r in (run, straight))
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    else:
        assert [r["moved"]["to"] for r in records] == ["cuda", "cpu"]
        assert len(metrics(run)) == 20
        assert main(["eval", str(run), "--tasks", "2"]) == 0


def test_a_copy_without_git_records_the_commit_its_sender_declares(monkeypatch):
    """A lent GPU machine gets the sources without ``.git``: ``MAMLKIT_COMMIT`` is recorded
    as ``declared_commit``, never as the ``git_commit`` that git itself reads, and the zoo
    table marks it."""
    import sys

    from mamlkit.rundir import files

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from zoo_table import _machines

    monkeypatch.setenv("MAMLKIT_COMMIT", "0123456789abcdef")
    monkeypatch.setattr(files, "source_checkout", lambda *a: None)
    info = files.environment_info("cpu")
    assert info["declared_commit"] == "0123456789abcdef" and "git_commit" not in info
    assert _machines([{**info, "gpu": "NVIDIA H100"}]) == "NVIDIA H100 @ 0123456 (declared)"
    monkeypatch.setattr(files, "_git_state", lambda root: {"git_commit": "f" * 40})
    monkeypatch.setattr(files, "source_checkout", lambda *a: Path("."))
    info = files.environment_info("cpu")
    assert info["git_commit"] == "f" * 40 and "declared_commit" not in info


@pytest.mark.parametrize("device", DEVICES)
def test_every_device_scores_the_same_tasks(device):
    """Validation, test and ensemble tasks (``task_batches``) are drawn with a CPU generator
    and gathered where the data lies: a CUDA generator draws other numbers from the same
    seed, so a run moved to a GPU would otherwise be validated (and its ensemble's members
    predicted) on other tasks than on the CPU. Episodes within one group (Lake's
    alphabets) and with rotations, and sine tasks."""
    from mamlkit.evaluation import task_batches
    from mamlkit.tasks.episodes import EpisodeTasks
    from mamlkit.tasks.sine import SineTasks

    images = torch.randint(0, 256, (30, 6, 8, 8), dtype=torch.uint8)
    groups = torch.arange(30) // 10
    for make in (
        lambda where: EpisodeTasks(images, 5, 1, 2, device=where, groups=groups),
        lambda where: EpisodeTasks(images, 5, 2, 1, rotations=True, device=where),
        lambda where: SineTasks(5, 5),
    ):
        here = list(task_batches(make("cpu"), 7, 123, "cpu", chunk=3))
        there = list(task_batches(make(device), 7, 123, device, chunk=3))
        assert len(here) == len(there) == 3
        for a, b in zip(here, there):
            assert all(torch.equal(x, y.cpu()) for x, y in zip(a, b))
            assert all(y.device.type == torch.device(device).type for y in b)


def test_tasks_for_a_gpu_are_drawn_on_the_cpu_and_then_moved():
    """Checkable without a GPU: ``task_batches`` for ``cuda`` draws with a CPU generator
    and moves each batch with ``.to``."""
    from mamlkit.evaluation import task_batches

    seen = []

    class Batch:
        def to(self, device):
            seen.append(("to", str(device)))
            return self

    class Tasks:
        def sample(self, tasks, generator):
            seen.append((tasks, generator.device.type))
            return Batch()

    assert len(list(task_batches(Tasks(), 5, 0, "cuda", chunk=3))) == 2
    assert seen == [(3, "cpu"), ("to", "cuda"), (2, "cpu"), ("to", "cuda")]


def test_reliability_md_lists_every_key_a_resume_may_change():
    """The list in docs/reliability.md is the code's (it had fallen behind by three keys)."""
    import re

    from mamlkit.rundir.resume import RESUME_MAY_ALSO_CHANGE, RESUME_OVERRIDES

    text = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    listed = re.search(r"`mamlkit\.rundir\.resume\.RESUME_OVERRIDES`:(.*?)\)", text, re.S)
    assert listed is not None
    keys = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", listed.group(1)))
    assert keys == RESUME_OVERRIDES | RESUME_MAY_ALSO_CHANGE
