"""MAML-TRPO's Gauss-Newton Fisher-vector products Jᵀ F_z J against the Hessian of the KL
through the inner update (the reference): equal at θ_old in float64 for 0, 1 and 2 inner
steps, so the conjugate-gradient direction and the TRPO step are the same."""

from __future__ import annotations

import copy

import pytest
import torch

from mamlkit.build import build_learner
from mamlkit.config import load_config
from mamlkit.functional import stack_params
from mamlkit.rl import MAMLTRPO, GaussianMLPPolicy, Navigation2D, NavigationTasks
from mamlkit.rl.envs import environment_streams
from mamlkit.rl.fisher import flat, gauss_newton_vector_product
from mamlkit.rl.learner import FISHER
from mamlkit.rl.returns import old_policy, surrogate_and_kl
from mamlkit.rl.trpo import conjugate_gradient, trpo_step

DAMPING = 0.1  # where TRPO's direction is a well-conditioned function of F (see below)


def learner_and_batch(inner_steps: int, **kwargs) -> tuple[MAMLTRPO, object]:
    torch.manual_seed(0)
    learner = MAMLTRPO(
        Navigation2D(horizon=8),
        GaussianMLPPolicy(2, 2, (8, 8)),
        inner_lr=0.3,
        inner_steps=inner_steps,
        rollouts=4,
        **kwargs,
    )
    return learner, NavigationTasks().sample(3, torch.Generator().manual_seed(2))


def products(learner: MAMLTRPO, batch, perturb: float = 0.0):
    """The Hessian product, the learner's Gauss-Newton product (z = the query action
    distributions) and the Gauss-Newton product with z = φ (F_φ by a Hessian-vector product
    in the adapted parameters) of the query KL at θ_old, or at θ_old moved by
    ``perturb``·noise (φ(θ) then no longer minimises the KL); the parameters; the loss."""
    streams = environment_streams(batch)
    support, phi, query, adv = learner._rollout_and_adapt(batch, streams)
    old = old_policy(learner.policy, phi, query)
    if perturb:
        with torch.no_grad():
            for p in learner.policy.parameters():
                p.add_(perturb * torch.randn_like(p))
        theta = stack_params(learner.theta(), 3)
        phi = learner.adapt_on(theta, support, learner.update, learner.inner_steps, False)
    loss, kl = surrogate_and_kl(learner.policy, phi, query, adv, old)
    params = list(learner.theta().values())

    def kl_of_phi(phi_leaves):
        return surrogate_and_kl(learner.policy, phi_leaves, query, adv, old)[1]

    found = {}
    for fisher in FISHER:
        learner.fisher = fisher
        found[fisher] = learner.fisher_vector_product(phi, query, old, kl)
    found["gauss_newton_phi"] = gauss_newton_vector_product(params, phi, kl_of_phi)
    return found, params, loss


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("inner_steps", [0, 1, 2])
@pytest.mark.parametrize("z", ["gauss_newton", "gauss_newton_phi"])
def test_gauss_newton_product_is_the_kl_hessian_at_the_old_policy(float64, inner_steps, z):
    learner, batch = learner_and_batch(inner_steps)
    found, params, loss = products(learner, batch)
    hessian, gauss_newton = found["hessian"], found[z]
    size = sum(p.numel() for p in params)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(size, generator=g)
        reference = hessian(v)
        assert reference.norm() > 0
        assert relative_error(gauss_newton(v), reference) <= 1e-8

    # TRPO's direction: 10 conjugate-gradient steps on F + damping·I. This tiny batch's F
    # is rank-deficient (26 of 116 eigenvalues above 1e-6 at one inner step), and at the
    # default damping 1e-5 the direction moves by 8e-4 to 0.1 when the Hessian product
    # itself is perturbed by 1e-15 relative noise; damping 0.1 makes it well-posed
    grad = flat(torch.autograd.grad(loss, params, retain_graph=True))

    def damped(product):
        return lambda v: product(v) + DAMPING * v

    reference = conjugate_gradient(damped(hessian), -grad, 10)
    direction = conjugate_gradient(damped(gauss_newton), -grad, 10)
    assert relative_error(direction, reference) <= 1e-8


def test_away_from_the_old_policy_the_two_products_differ(float64):
    """The test above can fail: off θ_old the curvature of z(θ) weighted by ∂KL/∂z ≠ 0 is in
    the Hessian and not in Jᵀ F_z J."""
    learner, batch = learner_and_batch(1)
    found, params, _ = products(learner, batch, perturb=0.05)
    v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(1))
    for z in ("gauss_newton", "gauss_newton_phi"):
        assert relative_error(found[z](v), found["hessian"](v)) > 1e-6


@pytest.mark.parametrize("inner_steps", [0, 1, 2])
def test_the_trpo_step_is_the_same_with_either_product(float64, inner_steps):
    learner, batch = learner_and_batch(inner_steps, fisher="hessian", cg_damping=DAMPING)
    reference = copy.deepcopy(learner)
    learner.fisher = "gauss_newton"
    reference.outer_step(batch, None, 0)
    learner.outer_step(batch, None, 0)
    a, b = learner.last_step, reference.last_step
    assert a.step_fraction == b.step_fraction > 0
    assert a.kl_after == pytest.approx(b.kl_after, rel=1e-8) and a.kl_after <= 0.01
    assert a.loss_after == pytest.approx(b.loss_after, rel=1e-8)
    assert a.expected_improvement == pytest.approx(b.expected_improvement, rel=1e-8)
    for p, q in zip(learner.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-8, atol=1e-12)


def test_the_config_chooses_the_product_and_rop_is_the_default():
    tiny = ["task.horizon=5", "task.rollouts=2", "model.hidden=[4]"]
    assert build_learner(load_config("rl_nav2d_maml", tiny)).fisher == "rop"  # issue 27
    config = load_config("rl_nav2d_maml", [*tiny, "algorithm.fisher=hessian"])
    assert build_learner(config).fisher == "hessian"
    with pytest.raises(ValueError, match="fisher"):
        MAMLTRPO(Navigation2D(), GaussianMLPPolicy(2, 2, (4,)), fisher="newton")
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="kl or fisher_vector"):
        trpo_step([x], (x - 1).pow(2).sum(), None, lambda: (torch.tensor(0.0),) * 2)
