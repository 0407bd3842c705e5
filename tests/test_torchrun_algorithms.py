"""The torchrun path (two ranks, each with half of every meta-batch, the trainer's
all-reduce) trains every registered algorithm as one process does, or refuses it in one
line: the third training path beside eager and the device step
(tests/test_device_step_algorithms.py), over the same tiny configs.

One job of two gloo ranks trains every algorithm in turn (one process start for all). Two
ranks sum their halves' gradients in another order than one process, so weights agree to
float32 rounding, not bit for bit; a rank that stepped on its own half would be off by the
size of the update."""

from __future__ import annotations

import torch
import torch.multiprocessing as mp

import mamlkit.rl  # noqa: F401  (maml_trpo and trpo are registered algorithms)
from mamlkit.algorithms import ALGORITHMS
from mamlkit.build import build_learner, build_tasks, metric_for
from mamlkit.errors import UserError
from mamlkit.training import Trainer, seed_everything
from tests.test_device_step_algorithms import _config
from tests.test_distributed import _join, free_port

NAMES = sorted(ALGORITHMS)


def _initial(name: str) -> dict[str, torch.Tensor]:
    config = _config(name)
    seed_everything(config.train.seed)
    return {k: v.clone() for k, v in build_learner(config).state_dict().items()}


def _fit(name: str, dist=None) -> dict[str, torch.Tensor] | str:
    config = _config(name)
    config.train.cuda_graphs = "off"
    config.train.iterations = 2
    if name in ("maml_trpo", "trpo"):
        config.algorithm.cg_damping = 0.1  # a well-conditioned CG (test_distributed's NAV2D)
    seed_everything(config.train.seed)
    learner = build_learner(config)
    tasks = build_tasks(config, "train")
    try:
        Trainer(
            learner, tasks, config, None, metric=metric_for(config), progress=False, dist=dist
        ).fit()
    except UserError as exc:  # refused under torchrun, in one line
        return str(exc)
    return {k: v.clone() for k, v in learner.state_dict().items()}


def _rank(rank: int, world: int, port: int, out: str) -> None:
    from mamlkit.distributed import exit_without_teardown, shutdown

    dist = _join(rank, world, port)
    torch.save({name: _fit(name, dist) for name in NAMES}, f"{out}.rank{rank}")
    shutdown()
    exit_without_teardown(0)


def test_every_algorithm_trains_over_two_ranks_as_in_one_process(tmp_path):
    out = str(tmp_path / "weights")
    mp.spawn(_rank, args=(2, free_port(), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.rank{r}") for r in range(2)]
    torch.set_num_threads(1)
    initial = {name: _initial(name) for name in NAMES}
    for name in NAMES:
        alone = _fit(name)
        assert isinstance(alone, dict), f"{name}: {alone}"
        two = ranks[0][name]
        assert isinstance(two, dict), f"{name} refused under torchrun: {two}"
        assert two.keys() == alone.keys()
        for key in alone:
            assert torch.equal(two[key], ranks[1][name][key]), f"{name}: ranks differ at {key}"
            if key.endswith("num_batches_tracked"):  # each rank counts its own episodes
                assert int(two[key]) * 2 == int(alone[key]), f"{name}: {key}"
                continue
            if key.endswith(("running_mean", "running_var")):
                # BatchNorm's running statistics take one momentum step per episode: one
                # process makes meta_batch of them per iteration, each rank its share, and
                # the ranks then average theirs (the same on every rank, a checkpoint of
                # them rank-free): they move the same way, by less early in a run
                # (docs/distributed.md)
                alone_moved, two_moved = (
                    alone[key] - initial[name][key],
                    two[key] - initial[name][key],
                )
                assert bool((alone_moved * two_moved >= 0).all()), f"{name}: {key} direction"
                assert bool((two_moved.abs() <= alone_moved.abs() + 1e-6).all()), f"{name}: {key}"
                assert two_moved.abs().max() > 0, f"{name}: {key} never moved under torchrun"
                continue
            torch.testing.assert_close(
                two[key], alone[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}"
            )
