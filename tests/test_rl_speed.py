"""Issue 27: a faster MAML-TRPO meta-iteration with the same result. The Gauss-Newton
Fisher-vector products on pieces built once per iteration equal the products through the
inner update's graph and the KL's Hessian (float64); a TRPO step takes the same step either
way; the support advantages are computed once; the benchmark splits a meta-iteration."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mamlkit.rl import MAMLTRPO, GaussianMLPPolicy, Navigation2D, NavigationTasks
from mamlkit.rl.envs import environment_streams
from mamlkit.rl.returns import old_policy, surrogate_and_kl

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def learner_and_batch(inner_steps: int, first_order: bool = False, **kwargs):
    torch.manual_seed(0)
    learner = MAMLTRPO(
        Navigation2D(horizon=8),
        GaussianMLPPolicy(2, 2, (8, 8)),
        inner_lr=[0.3, 0.2],
        inner_steps=inner_steps,
        first_order=first_order,
        rollouts=4,
        **kwargs,
    )
    return learner, NavigationTasks().sample(3, torch.Generator().manual_seed(2))


@pytest.mark.parametrize(
    ("inner_steps", "first_order"), [(0, False), (1, False), (2, False), (1, True)]
)
def test_precomputed_gauss_newton_equals_the_product_through_the_graph(
    float64, inner_steps, first_order
):
    learner, batch = learner_and_batch(inner_steps, first_order)
    support, phi, query, adv, adv_s = learner._sample_and_adapt(batch, environment_streams(batch))
    old = old_policy(learner.policy, phi, query)
    _, kl = surrogate_and_kl(learner.policy, phi, query, adv, old)
    through_graph = learner.fisher_vector_product(phi, query, old, kl)
    precomputed = learner.fisher_vector_product(phi, query, old, kl, support, adv_s)
    v = torch.randn(sum(p.numel() for p in learner.policy.parameters()))
    expected = through_graph(v)
    assert expected.abs().max() > 0
    torch.testing.assert_close(precomputed(v), expected, rtol=1e-10, atol=1e-12)
    if not first_order:  # at θ_old the Gauss-Newton matrix is the KL's Hessian
        learner.fisher = "hessian"
        hessian = learner.fisher_vector_product(phi, query, old, kl)(v)
        torch.testing.assert_close(precomputed(v), hessian, rtol=1e-8, atol=1e-10)


def test_the_trpo_step_is_the_same_with_the_precomputed_products(float64, monkeypatch):
    # a damping where TRPO's direction is a well-conditioned function of F (as in
    # tests/test_rl_trpo_gn.py): conjugate gradient then does not amplify rounding
    learner, batch = learner_and_batch(1, cg_damping=0.1, fisher="gauss_newton")
    reference = copy.deepcopy(learner)
    through_graph = reference.fisher_vector_product

    def without_support(phi, query, old, kl, support=None, support_adv=None):
        return through_graph(phi, query, old, kl)

    monkeypatch.setattr(reference, "fisher_vector_product", without_support)
    out = learner.outer_step(batch, None, 0)
    ref = reference.outer_step(batch, None, 0)
    assert learner.last_step.step_fraction > 0
    assert learner.last_step.step_fraction == reference.last_step.step_fraction
    for p, q in zip(learner.policy.parameters(), reference.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-10, atol=1e-12)


def test_the_support_advantages_are_computed_once_per_meta_iteration(monkeypatch):
    import mamlkit.rl.learner as learner_module

    learner, batch = learner_and_batch(1)
    calls = []
    advantages = learner_module.advantages

    def counted(traj, *args):
        calls.append(traj)
        return advantages(traj, *args)

    monkeypatch.setattr(learner_module, "advantages", counted)
    learner.outer_step(batch, None, 0)
    # support and query once each, however many line-search candidates were evaluated
    assert len(calls) == 2 and calls[0] is not calls[1]


def _rl_split():
    spec = importlib.util.spec_from_file_location("rl_split", BENCHMARKS / "rl_split.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("rl_split", module)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_splits_a_meta_iteration_into_its_phases():
    rl_split = _rl_split()
    learner, batch = learner_and_batch(1)
    split = rl_split.meta_iteration_split(learner, batch)
    assert set(split["seconds"]) == set(rl_split.PHASES)
    assert all(s >= 0 for s in split["seconds"].values())
    assert sum(split["seconds"].values()) == pytest.approx(split["total_s"], abs=2e-3)
    for phase in ("pre_update_sampling", "post_update_sampling", "inner_step"):
        assert split["seconds"][phase] > 0
    # conjugate gradient's products (and with fisher != "rop" one for the step length)
    assert learner.fisher == "rop"
    assert split["fisher_vector_products"] == learner.trpo["cg_iterations"]
    assert split["line_search_evaluations"] >= 1


def test_the_physics_floor_counts_environment_steps():
    pytest.importorskip("mujoco")
    pytest.importorskip("gymnasium")
    assert _rl_split().physics_floor(4, 3, 5, threads=1) > 0
