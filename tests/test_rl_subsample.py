"""TRPO's Fisher-vector products on a subsample of the post-update trajectories (issue 27,
item 3: ``algorithm.fisher_subsample``, rllab's ``subsample_factor``): 1 leaves runs as they
were, a subsample's product is the product on the chosen trajectories, a resumed run
chooses the same ones, and a bad value is a one-line config error."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mamlkit.config import load_config
from mamlkit.errors import ConfigError
from mamlkit.rl import MAMLTRPO, GaussianMLPPolicy, Navigation2D, NavigationTasks
from mamlkit.rl.envs import TaskStreams, environment_streams
from mamlkit.rl.returns import mean_kl, old_policy, surrogate_and_kl
from mamlkit.rl.subsample import (
    choose_trajectories,
    kept_count,
    select_old,
    select_trajectories,
)
from mamlkit.runner import train_run

from .test_cli_bad_input import assert_user_error
from .test_rl import TINY


def weights(run) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train(path, *overrides: str, resume: bool = False) -> None:
    config = load_config("rl_nav2d_maml", [*TINY, "task.rollouts=4", *overrides])
    train_run(config, path, progress=False, resume=resume, update_config=resume)


def test_subsample_one_leaves_the_run_as_it_was_and_a_subsample_changes_it(tmp_path):
    train(tmp_path / "default", "train.iterations=2")
    train(tmp_path / "one", "train.iterations=2", "algorithm.fisher_subsample=1.0")
    train(tmp_path / "half", "train.iterations=2", "algorithm.fisher_subsample=0.5")
    assert same(weights(tmp_path / "default"), weights(tmp_path / "one"))
    assert (tmp_path / "default" / "metrics.jsonl").read_text() == (
        tmp_path / "one" / "metrics.jsonl"
    ).read_text()
    assert not same(weights(tmp_path / "default"), weights(tmp_path / "half"))


def test_resume_with_a_subsample_is_bit_identical(tmp_path):
    train(tmp_path / "a", "train.iterations=4", "algorithm.fisher_subsample=0.5")
    train(tmp_path / "b", "train.iterations=2", "algorithm.fisher_subsample=0.5")
    train(tmp_path / "b", "train.iterations=4", "algorithm.fisher_subsample=0.5", resume=True)
    assert same(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (
        tmp_path / "b" / "metrics.jsonl"
    ).read_text()


def test_the_choice_is_each_tasks_own_and_reproducible():
    assert [kept_count(20, f) for f in (1.0, 0.2, 0.3, 0.01)] == [20, 4, 6, 1]
    seeds = torch.tensor([[3], [5], [7]])
    chosen = choose_trajectories(TaskStreams(seeds), 10, 0.3)
    assert chosen.shape == (3, 3)
    assert torch.equal(chosen, choose_trajectories(TaskStreams(seeds), 10, 0.3))
    for row in chosen:  # distinct, ascending, in range
        assert row.tolist() == sorted(set(row.tolist())) and 0 <= row.min() and row.max() < 10
    alone = choose_trajectories(TaskStreams(seeds[1:2]), 10, 0.3)
    assert torch.equal(alone[0], chosen[1])  # the tasks beside it do not matter


@pytest.mark.parametrize("fisher", ["rop", "gauss_newton", "hessian"])
def test_a_subsamples_product_is_the_product_on_the_chosen_trajectories(float64, fisher):
    torch.manual_seed(0)
    env = Navigation2D(horizon=8)
    policy = GaussianMLPPolicy(env.obs_dim, env.act_dim, [8, 8])
    learner = MAMLTRPO(env, policy, inner_lr=0.5, rollouts=5, fisher=fisher)
    batch = NavigationTasks().sample(3, torch.Generator().manual_seed(1))
    streams = environment_streams(batch)
    support, phi, query, adv, adv_s = learner._sample_and_adapt(batch, streams)
    old = old_policy(policy, phi, query)
    subset = choose_trajectories(streams, 5, 0.4)
    assert subset.shape == (3, 2)
    part, part_old = select_trajectories(query, subset), select_old(old, subset)

    def products(q, o, kl, chosen):
        fvp = learner.fisher_vector_product(phi, q, o, kl, support, adv_s, chosen)
        return fvp, torch.stack([fvp(v) for v in vectors])

    n = sum(p.numel() for p in policy.parameters())
    vectors = torch.randn(3, n, generator=torch.Generator().manual_seed(2))
    _, kl = surrogate_and_kl(policy, phi, query, adv, old)
    kl_part = mean_kl(part_old, *policy.distribution(phi, part.obs), part.mask)
    sub, by_subset = products(query, old, kl, subset)
    _, on_chosen = products(part, part_old, kl_part, None)
    full, on_all = products(query, old, kl, None)
    torch.testing.assert_close(by_subset, on_chosen, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(by_subset, on_all, rtol=1e-3)  # a different matrix
    if fisher == "rop":  # the surrogate and its gradient keep every trajectory
        for a, b in zip(sub.surrogate(adv), full.surrogate(adv), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5", "nan", "true", "half"])
def test_a_bad_subsample_is_a_config_error_naming_the_key(value):
    with pytest.raises(ConfigError, match="'algorithm.fisher_subsample'"):
        load_config("rl_nav2d_maml", [f"algorithm.fisher_subsample={value}"])


def test_the_cli_says_it_in_one_line(capsys, tmp_path):
    assert_user_error(
        capsys,
        "train",
        "rl_nav2d_maml",
        "--out",
        tmp_path / "run",
        "--set",
        "algorithm.fisher_subsample=2",
        match="algorithm.fisher_subsample",
    )
    assert not (tmp_path / "run").exists()


def test_the_learner_refuses_a_bad_fraction():
    env = Navigation2D(horizon=4)
    with pytest.raises(ValueError, match="fisher_subsample"):
        MAMLTRPO(env, GaussianMLPPolicy(env.obs_dim, env.act_dim, [4]), fisher_subsample=0.0)
