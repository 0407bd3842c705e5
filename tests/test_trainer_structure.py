"""The trainer's structure (issue 25, items 3 and 4).

Item 3: what the trainer may do with a learner is derived from the hooks its class
defines (``mamlkit.algorithms.capabilities``), never from flags a subclass inherits while
it replaces the hook: a MAML subclass with its own ``meta_forward`` is not capturable until
it marks it; a Reptile subclass with its own ``outer_step`` does not run under torchrun
until it marks it; the learner receives the job's reduction through a method of its own.

Item 4: one iteration body (``mamlkit.iteration.meta_gradient``) is what every way of
running an iteration calls; one function writes the divergence message; every file of a
run is written by its :class:`~mamlkit.rundir.RunDirectory`; the run-directory modules live
in one package, their old import paths still working. (That the eager and the device step
train identical weights for every registered algorithm: tests/test_device_step_algorithms.py.)
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mamlkit
from mamlkit import MAML
from mamlkit.algorithms import ALGORITHMS, Reptile
from mamlkit.algorithms.base import MetaLearner
from mamlkit.config import load_config
from mamlkit.errors import DivergenceError
from mamlkit.models import MLP
from mamlkit.tasks import SineTasks
from mamlkit.training import Trainer

PACKAGE = Path(mamlkit.__file__).parent


def tiny_config(iterations=3, **train):
    sets = [f"train.iterations={iterations}", "train.meta_batch=2", "train.tensorboard=false",
            "train.log_every=1", "train.val_every=0", "train.checkpoint_every=2"]  # fmt: skip
    sets += [f"train.{k}={v}" for k, v in train.items()]
    return load_config("sine_maml", sets)


def small_maml(cls=MAML, sizes=(1, 8, 1), **kwargs):
    torch.manual_seed(0)
    return cls(MLP(sizes), F.mse_loss, 0.01, **kwargs)


# ---- item 3: capabilities derived from the hooks ------------------------------------------
class OwnForward(MAML):
    """A MAML whose meta_forward is its own (and might read values back to the host)."""

    def meta_forward(self, batch, iteration=0):
        return super().meta_forward(batch, iteration)


def test_a_maml_subclass_with_its_own_meta_forward_is_not_capturable_unless_it_says_so(
    monkeypatch,
):
    from mamlkit.algorithms.capabilities import capturable, is_capturable
    from mamlkit.device_step import CaptureUnsupported, check_capturable

    class SaysSo(OwnForward):
        @capturable
        def meta_forward(self, batch, iteration=0):
            return super().meta_forward(batch, iteration)

    assert is_capturable(MAML) and not is_capturable(OwnForward) and is_capturable(SaysSo)
    learner = small_maml(OwnForward)
    adam = torch.optim.Adam(learner.parameters(), 1e-3, fused=True)
    with pytest.raises(CaptureUnsupported, match="not marked @capturable"):
        check_capturable(learner, adam)
    # the trainer, asked for the device step where it can, trains it eagerly
    monkeypatch.setattr(Trainer, "_device_step_on_cpu", True)
    for cls, engine in ((OwnForward, "eager"), (SaysSo, "device-eager")):
        trainer = Trainer(small_maml(cls), SineTasks(), tiny_config(2), progress=None)
        trainer.fit()
        assert trainer.engine == engine, cls


def test_the_capture_key_belongs_to_the_meta_forward_it_describes():
    from mamlkit.algorithms import MAMLPlusPlus
    from mamlkit.algorithms.capabilities import capturable, capture_key

    class OwnPlusPlus(MAMLPlusPlus):
        @capturable  # its objective ignores the iteration: no key
        def meta_forward(self, batch, iteration=0):
            return super().meta_forward(batch, iteration)

    kwargs = dict(iterations_per_epoch=10, msl_epochs=3)
    plusplus = small_maml(MAMLPlusPlus, **kwargs)
    assert capture_key(plusplus, 0) != capture_key(plusplus, 25)  # annealing epochs
    assert capture_key(plusplus, 25) == plusplus.capture_key(25)
    assert capture_key(small_maml(OwnPlusPlus, **kwargs), 25) is None
    assert capture_key(small_maml(), 25) is None


def test_an_own_outer_step_runs_under_torchrun_only_where_it_says_so():
    from mamlkit.algorithms.capabilities import (
        averages_over_ranks,
        outer_step_distributes,
        owns_outer_step,
    )
    from mamlkit.rl.learner import MAMLTRPO

    class OwnReptile(Reptile):
        def outer_step(self, batch, optimizer, iteration):
            return super().outer_step(batch, optimizer, iteration)

    class SaysSo(OwnReptile):
        @averages_over_ranks
        def outer_step(self, batch, optimizer, iteration):
            return super().outer_step(batch, optimizer, iteration)

    assert owns_outer_step(Reptile) and outer_step_distributes(Reptile)
    assert outer_step_distributes(MAMLTRPO)
    assert owns_outer_step(OwnReptile) and not outer_step_distributes(OwnReptile)
    assert outer_step_distributes(SaysSo)
    assert not owns_outer_step(MAML) and not outer_step_distributes(MAML)


def test_the_old_flags_count_only_beside_the_hook_they_describe():
    from mamlkit.algorithms.capabilities import is_capturable

    class Flagged(OwnForward):
        capturable = True  # the old spelling, in the class that defines meta_forward

        def meta_forward(self, batch, iteration=0):
            return super().meta_forward(batch, iteration)

    class Inherits(Flagged):
        def meta_forward(self, batch, iteration=0):
            return super().meta_forward(batch, iteration)

    assert is_capturable(Flagged) and not is_capturable(Inherits)


def test_the_protocol_holds_hooks_not_flags():
    """No class of the library sets a capability flag for the trainer to read."""
    from mamlkit.rl.learner import MAMLTRPO

    flags = {"capturable", "outer_step_distributes", "capture_key"}
    assert not flags & set(vars(MetaLearner))
    for cls in [c for c, _ in ALGORITHMS.values()] + [MAMLTRPO]:
        for owner in cls.__mro__:
            assert not {"capturable", "outer_step_distributes"} & set(vars(owner)), owner


def test_the_learner_receives_the_reduction_through_its_own_method():
    learner = small_maml(Reptile)
    seen: list[int] = []

    def mean_(tensors):
        seen.append(len(tensors))
        for t in tensors:
            t.mul_(0.5)

    value = torch.ones(2)
    learner.mean_over_ranks([value])  # one process: nothing to do
    with learner.averaging_over_ranks(mean_):
        learner.mean_over_ranks([value])
    learner.mean_over_ranks([value])
    assert seen == [1] and value.tolist() == [0.5, 0.5]
    assert "mean_over_ranks" not in vars(learner)
    tree = ast.parse((PACKAGE / "training.py").read_text())
    assigned = [
        t.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for t in node.targets
        if isinstance(t, ast.Attribute)
    ]
    assert "mean_over_ranks" not in assigned  # the trainer sets nothing on the learner


# ---- item 4: one iteration body --------------------------------------------------------
class Recorded(MAML):
    """A capturable MAML that records which function called its meta_forward."""

    callers: list[str] = []

    @mamlkit.algorithms.capabilities.capturable
    def meta_forward(self, batch, iteration=0):
        caller = inspect.stack(0)[1]
        self.callers.append(f"{caller.frame.f_globals['__name__']}.{caller.function}")
        return super().meta_forward(batch, iteration)


class FallsBack(Recorded):
    """An own outer step that leaves every update to the usual one (returns None)."""

    def outer_step(self, batch, optimizer, iteration):
        return None


@pytest.mark.parametrize(
    "cls, device_step, engine",
    [(Recorded, False, "eager"), (Recorded, True, "device-eager"), (FallsBack, False, "eager")],
)
def test_every_path_runs_the_one_iteration_body(cls, device_step, engine, monkeypatch):
    monkeypatch.setattr(Trainer, "_device_step_on_cpu", device_step)
    monkeypatch.setattr(Recorded, "callers", [])
    trainer = Trainer(small_maml(cls), SineTasks(), tiny_config(3), progress=None)
    trainer.fit()
    assert trainer.engine == engine
    assert Recorded.callers == ["mamlkit.iteration.meta_gradient"] * 3


def _calls_and_strings(module: str) -> tuple[set[str], list[str]]:
    tree = ast.parse((PACKAGE / module).read_text())
    calls = {
        n.func.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    }
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
    return calls, [s for s in strings if isinstance(s, str)]


def test_the_engines_call_meta_forward_and_backward_only_through_the_shared_body():
    for module in ("training.py", "steps.py", "device_step.py"):
        calls, _ = _calls_and_strings(module)
        assert not {"meta_forward", "backward", "clip_grad_value_"} & calls, module
    calls, _ = _calls_and_strings("iteration.py")
    assert {"meta_forward", "backward", "clip_grad_value_"} <= calls


def test_the_divergence_message_is_written_once():
    holders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(
            "NaN/Inf at iteration" in s
            for s in _calls_and_strings(str(path.relative_to(PACKAGE)))[1]
        )
    ]
    assert holders == ["iteration.py"]


class NaNAt:
    """Sine tasks whose ``at``-th batch has a NaN query target."""

    def __init__(self, at: int):
        self.tasks, self.at, self.calls = SineTasks(), at, 0

    def sample(self, tasks, generator):
        self.calls += 1
        batch = self.tasks.sample(tasks, generator)
        if self.calls == self.at:
            batch.query_y[0, 0] = float("nan")
        return batch


@pytest.mark.parametrize("path", ["eager", "device", "own_outer_step"])
def test_every_path_stops_a_diverged_run_with_the_one_message(path, monkeypatch):
    from mamlkit.iteration import Health, divergence_error

    monkeypatch.setattr(Trainer, "_device_step_on_cpu", path == "device")
    cls = Reptile if path == "own_outer_step" else MAML
    trainer = Trainer(small_maml(cls), NaNAt(2), tiny_config(4), progress=None)
    with pytest.raises(DivergenceError) as caught:
        trainer.fit()
    expected = {
        "eager": divergence_error(Health(2, True)),
        "device": divergence_error(Health(2, True), updates_skipped=True),
        "own_outer_step": divergence_error(Health(2, True), grad_clip_helps=False),
    }[path]
    assert str(caught.value) == str(expected)


# ---- item 4: every write through RunDirectory ----------------------------------------------
def test_a_run_directory_records_every_file_the_trainer_writes(tmp_path):
    from mamlkit.rundir import RunDirectory

    run = RunDirectory(tmp_path / "run")
    config = tiny_config(5, keep_checkpoints=1, tensorboard="true", val_every=2, val_tasks=2)
    config.eval.steps = 1
    learner = small_maml(sizes=(1, 40, 40, 1))  # the config's model: a run must rebuild it
    trainer = Trainer(learner, SineTasks(), config, run, "mse", SineTasks(), progress=None)
    trainer.fit()
    assert trainer.run_dir == run.path and trainer.directory is run
    on_disk = {p for p in run.path.rglob("*") if p.is_file()}
    tensorboard = {p for p in on_disk if p.parent == run.tensorboard_folder()}
    assert tensorboard  # the folder it handed to TensorBoard's writer
    written = {p for p in run.written if p != run.tensorboard_folder()}
    assert on_disk - tensorboard == written
    names = {str(p.relative_to(run.path)) for p in written}
    assert names == {"env.json", "config.yaml", "status.json", "metrics.jsonl",
                     "model.safetensors", "checkpoints/step-00000005.safetensors"}  # fmt: skip
    # a resume goes through it too
    config.train.iterations = 6
    resumed = RunDirectory(run.path)
    learner = small_maml(sizes=(1, 40, 40, 1))
    trainer = Trainer(learner, SineTasks(), config, resumed, "mse", SineTasks(), progress=None)
    trainer.fit(resume=True, config_changed=True)
    assert {p.name for p in resumed.written} >= {"resumes.jsonl", "metrics.jsonl", "config.yaml"}


def test_the_trainer_has_no_writer_of_its_own():
    """training.py imports no file writer and opens, writes, creates or deletes no path."""
    tree = ast.parse((PACKAGE / "training.py").read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    writers = {"atomic_write_text", "atomic_write_bytes", "save_checkpoint", "append_line",
               "write_status", "write_env", "truncate_metrics", "records", "yaml"}  # fmt: skip
    assert not writers & imported
    calls, _ = _calls_and_strings("training.py")
    assert not {"write_text", "write_bytes", "mkdir", "unlink", "rename", "open"} & calls


@pytest.mark.parametrize(
    "old, new",
    [
        ("run_files", "files"),
        ("records", "records"),
        ("checkpoint", "checkpoint"),
        ("run_identity", "identity"),
        ("run_data", "data"),
        ("run_resume", "resume"),
        ("run_list", "listing"),
    ],  # fmt: skip
)
def test_the_old_module_paths_are_the_moved_modules(old, new):
    assert importlib.import_module(f"mamlkit.{old}") is importlib.import_module(
        f"mamlkit.rundir.{new}"
    )


def test_the_old_rundir_names_still_import():
    from mamlkit.rundir import CHECKPOINT_DIR, RunDirectory, lock_run_dir
    from mamlkit.rundir.directory import RunDirectory as Same
    from mamlkit.rundir.ownership import lock_run_dir as same_lock

    assert RunDirectory is Same and lock_run_dir is same_lock and CHECKPOINT_DIR == "checkpoints"
    with pytest.raises(ImportError):
        from mamlkit.rundir import no_such_name  # noqa: F401


def test_the_trainer_and_the_run_directory_modules_stay_small():
    for path in [PACKAGE / "training.py", *sorted((PACKAGE / "rundir").glob("*.py"))]:
        assert len(path.read_text().splitlines()) <= 420, path


@pytest.mark.parametrize(
    "name", ["mamlkit.algorithms.capabilities", "mamlkit.iteration", "mamlkit.rundir.directory"]
)
def test_the_new_modules_examples_run(name):
    import doctest

    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
