"""MAML for reinforcement learning (Finn et al. 2017, §5.3): the engine's inner loop with
a vanilla policy-gradient support loss, and TRPO as the outer step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mamlkit.algorithms.base import MetaLearner, MetaOutput, register
from mamlkit.algorithms.capabilities import averages_over_ranks
from mamlkit.functional import FixedStepSize, Params, inner_loop, stack_params
from mamlkit.rl.envs import RLTaskBatch, TaskStreams, environment_streams
from mamlkit.rl.fisher import (
    FisherVector,
    gauss_newton_vector_product,
    hessian_vector_product,
)
from mamlkit.rl.fisher_rop import RopGaussNewton, policy_activation, rop_gauss_newton
from mamlkit.rl.gauss_newton import inner_update_gauss_newton
from mamlkit.rl.policy import GaussianMLPPolicy
from mamlkit.rl.returns import (
    OldPolicy,
    Trajectories,
    advantages,
    mean_kl,
    old_policy,
    sample_steps,
    sample_trajectories,
    surrogate_and_kl,
    vpg_support_loss,
)
from mamlkit.rl.settings import TRPOSettings
from mamlkit.rl.subsample import choose_trajectories, select_old, select_trajectories
from mamlkit.rl.trpo import TRPOStep, trpo_step

FISHER = ("rop", "gauss_newton", "hessian")  # the Fisher-vector products outer_step can use


@register("maml_trpo")
@register("trpo", pretrain=True)
class MAMLTRPO(MetaLearner):
    """Meta-learn a policy initialisation θ from which ``inner_steps`` policy-gradient
    steps on ``rollouts`` trajectories solve a new task.

    Per meta-iteration, for each task i of the batch: sample ``rollouts`` trajectories with
    θ, adapt φᵢ(θ) by the engine's :func:`~mamlkit.functional.inner_loop` on the VPG
    surrogate (second order unless ``first_order``), sample ``rollouts`` query trajectories
    with φᵢ, and take one TRPO step on θ for the mean over tasks of the query surrogate,
    under mean KL(π_φᵢ(θ_old) ‖ π_φᵢ(θ)) ≤ ``max_kl``. The Fisher-vector products
    (:meth:`fisher_vector_product`) are ``fisher="rop"`` (the default), the Gauss-Newton
    form of ``"gauss_newton"`` by hand-written derivatives of the policy network
    (:mod:`~mamlkit.rl.fisher_rop`, equal to float rounding, with TRPO's step length from
    conjugate gradient's own products), ``"gauss_newton"``, the Gauss-Newton form
    Jᵀ F J through the inner update (exactly the KL's Hessian at θ_old, with no third
    derivative of the support loss), or ``"hessian"``, double backward of the KL through
    the inner update. ``fisher_subsample`` < 1: the products (and TRPO's step length) on
    that fraction of each task's query trajectories (:mod:`~mamlkit.rl.subsample`, rllab's
    ``subsample_factor``; the surrogate, its gradient and the line search on all of them);
    1, the authors' setting, draws nothing. With ``inner_steps=0`` this is plain TRPO on
    the task distribution (the "pretrained" baseline).

    A batch is an :class:`~mamlkit.rl.envs.RLTaskBatch`: the tasks' parameters and the
    seeds of the environment's randomness, one stream per task
    (:class:`~mamlkit.rl.envs.TaskStreams`), so that ``torchrun``'s ranks, each with a
    share of the tasks, sample the trajectories one process would (:meth:`outer_step`
    averages over the ranks).
    """

    settings_class = TRPOSettings

    @classmethod
    def from_config(cls, config, build_model, loss_fn, train_classes, pretrain: bool = False):
        """MAML-TRPO of an RL task's config (``maml_trpo``); ``pretrain=True`` (``trpo``):
        TRPO on the task distribution, without inner steps in training."""
        from mamlkit.rl.build import build_rl_learner

        return build_rl_learner(config, pretrain=pretrain)

    def __init__(
        self,
        env,
        policy: GaussianMLPPolicy,
        inner_lr: float | Sequence[float] = 0.1,
        inner_steps: int = 1,
        rollouts: int = 20,
        first_order: bool = False,
        eval_inner_lr: float | Sequence[float] = (0.1, 0.05),
        eval_rollouts: int = 40,
        eval_samples: int = 0,
        discount: float = 0.99,
        gae_lambda: float = 1.0,
        max_kl: float = 0.01,
        cg_iterations: int = 10,
        cg_damping: float = 1e-5,
        backtrack_ratio: float = 0.8,
        max_backtracks: int = 15,
        fisher: str = "rop",
        fisher_subsample: float = 1.0,
    ):
        super().__init__()
        if inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {inner_steps}")
        if fisher not in FISHER:
            raise ValueError(f"fisher must be one of {', '.join(FISHER)}, got {fisher!r}")
        if not 0 < fisher_subsample <= 1:
            raise ValueError(f"fisher_subsample must be in (0, 1], got {fisher_subsample}")
        self.fisher, self.fisher_subsample = fisher, fisher_subsample
        self.env, self.model = env, policy
        self.update = FixedStepSize(inner_lr)
        self.eval_update = FixedStepSize(eval_inner_lr)
        self.inner_steps, self.rollouts, self.first_order = inner_steps, rollouts, first_order
        self.eval_rollouts, self.eval_samples = eval_rollouts, eval_samples
        self.discount, self.gae_lambda = discount, gae_lambda
        self.trpo = {
            "max_kl": max_kl,
            "cg_iterations": cg_iterations,
            "cg_damping": cg_damping,
            "backtrack_ratio": backtrack_ratio,
            "max_backtracks": max_backtracks,
        }
        self.last_step: TRPOStep | None = None

    @property
    def policy(self) -> GaussianMLPPolicy:
        return self.model

    def theta(self) -> Params:
        return dict(self.policy.named_parameters())

    def sample(
        self, params: Params, task: Tensor, n: int, streams: TaskStreams, min_steps: int = 0
    ) -> Trajectories:
        """``n`` trajectories per task, or with ``min_steps`` rounds of ``n`` until each
        task has that many steps (rllab's batch of samples:
        :func:`~mamlkit.rl.returns.sample_steps`)."""
        detached = {k: v.detach() for k, v in params.items()}
        if min_steps:
            return sample_steps(self.env, self.policy, detached, task, n, min_steps, streams)
        return sample_trajectories(self.env, self.policy, detached, task, n, streams)

    def adapt_on(
        self,
        params: Params,
        traj: Trajectories,
        update,
        steps: int,
        first_order: bool,
        adv: Tensor | None = None,
    ) -> Params:
        """φ after ``steps`` inner updates on the fixed trajectories ``traj`` (the same
        trajectories at every step: training takes one step per batch of samples); ``adv``,
        where given, are ``traj``'s advantages (they depend on ``traj`` alone)."""
        if adv is None:
            adv = advantages(traj, self.discount, self.gae_lambda)
        return inner_loop(
            params, vpg_support_loss(self.policy, traj, adv), update, steps, first_order
        )

    def _rollout_and_adapt(self, batch: RLTaskBatch, streams: TaskStreams):
        """Support trajectories with θ, the adapted φ(θ) (with its graph), the query
        trajectories of φ and their advantages."""
        return self._sample_and_adapt(batch, streams)[:4]

    def _rop_covers(self) -> bool:
        """Whether ``fisher="rop"``'s hand-written derivatives cover this learner (its
        policy network, a step size shared by all parameters)."""
        return (
            self.fisher == "rop"
            and not self.update.per_parameter
            and policy_activation(self.policy) is not None
        )

    def _sample_and_adapt(self, batch: RLTaskBatch, streams: TaskStreams, graph: bool = True):
        """:meth:`_rollout_and_adapt`'s four and the support trajectories' advantages (None
        without inner steps); without ``graph`` φ's values alone (first-order inner steps:
        the same values, no graph of the gradients)."""
        task = batch.task
        theta = stack_params(self.theta(), task.shape[0])
        support = self.sample(theta, task, self.rollouts, streams)
        if self.inner_steps:
            adv_s = advantages(support, self.discount, self.gae_lambda)
            first_order = self.first_order or not graph
            phi = self.adapt_on(theta, support, self.update, self.inner_steps, first_order, adv_s)
            query = self.sample(phi, task, self.rollouts, streams)
        else:
            phi, query, adv_s = theta, support, None
        adv = advantages(query, self.discount, self.gae_lambda)
        return support, phi, query, adv, adv_s

    def meta_forward(self, batch: RLTaskBatch, iteration: int = 0) -> MetaOutput:
        """The TRPO surrogate at θ (differentiable, through the inner update) with the
        returns before and after adaptation; :meth:`outer_step` is the update itself."""
        support, phi, query, adv = self._rollout_and_adapt(batch, environment_streams(batch))
        old = old_policy(self.policy, phi, query)
        loss, kl = surrogate_and_kl(self.policy, phi, query, adv, old)
        return MetaOutput(loss, query.average_return(), self._metrics(support, query, kl))

    def _metrics(self, support: Trajectories, query: Trajectories, kl) -> dict[str, Tensor]:
        return {
            "return": query.average_return().mean(),
            "return_before": support.average_return().mean(),
            "kl": torch.as_tensor(float(torch.as_tensor(kl).detach())),
        }

    @averages_over_ranks
    def outer_step(self, batch: RLTaskBatch, optimizer, iteration: int) -> MetaOutput:
        """One TRPO step on θ (``optimizer`` is not used: TRPO's step is its own)."""
        streams = environment_streams(batch)
        by_hand = self._rop_covers()  # products, loss and gradient without autograd graphs
        support, phi, query, adv, adv_s = self._sample_and_adapt(batch, streams, not by_hand)
        old = old_policy(self.policy, phi, query)
        params = list(self.theta().values())
        task_count = batch.num_tasks
        products_on = {}  # all query trajectories in the products: no draw (the authors')
        if self.fisher_subsample < 1:
            n = query.obs.shape[1]
            products_on["subset"] = choose_trajectories(streams, n, self.fisher_subsample)

        def evaluate() -> tuple[Tensor, Tensor]:
            theta = stack_params(self.theta(), task_count)
            new_phi = theta
            if self.inner_steps:  # φ(θ) on the same support trajectories; no outer graph
                new_phi = self.adapt_on(theta, support, self.update, self.inner_steps, True, adv_s)
            with torch.no_grad():
                return surrogate_and_kl(self.policy, new_phi, query, adv, old)

        if by_hand:
            fisher_vector = self.fisher_vector_product(
                phi, query, old, None, support, adv_s, **products_on
            )
            if not isinstance(fisher_vector, RopGaussNewton):
                raise TypeError("fisher='rop' needs fisher_vector_product's RopGaussNewton")
            loss, gradient = fisher_vector.surrogate(adv)
        else:
            loss, kl = surrogate_and_kl(self.policy, phi, query, adv, old)
            fisher_vector = self.fisher_vector_product(
                phi, query, old, kl, support, adv_s, **products_on
            )
            gradient = None
        step = trpo_step(
            params,
            loss,
            None,
            evaluate,
            fisher_vector=fisher_vector,
            mean_over_ranks=self.mean_over_ranks,
            reuse_products=self.fisher == "rop",
            gradient=gradient,
            **self.trpo,
        )
        self.last_step = step
        metrics = self._metrics(support, query, step.kl_after)
        metrics["step_fraction"] = torch.as_tensor(step.step_fraction)
        return MetaOutput(torch.as_tensor(step.loss_after), query.average_return(), metrics)

    def fisher_vector_product(
        self,
        phi: Params,
        query: Trajectories,
        old: OldPolicy,
        kl: Tensor,
        support: Trajectories | None = None,
        support_adv: Tensor | None = None,
        subset: Tensor | None = None,
    ) -> FisherVector:
        """TRPO's v ↦ F v at θ_old for the mean query KL ``kl`` of the adapted ``phi`` (both
        with their graph to θ).

        ``"gauss_newton"``: Jᵀ F_z J with z = the adapted policies' means and log-stds on
        the query observations, J = ∂z/∂θ through the inner update (with inner_steps = 0,
        plain TRPO's Fisher). F_z, the KL's Hessian in z, is diagonal (1/σ² for a mean, 2
        for a log-std, times each step's weight in the mean): cheaper than with z = φ,
        whose F_φ takes second derivatives of the policy network. ``"hessian"``: ∇²_θ kl.

        With the ``support`` trajectories (and their advantages ``support_adv`` where there
        are inner steps), the Gauss-Newton product is built from pieces computed once
        (:func:`~mamlkit.rl.gauss_newton.inner_update_gauss_newton`: the same matrix in
        fewer operations per product; ``phi``'s graph is then not used); with ``"rop"`` from
        hand-written derivatives (:func:`~mamlkit.rl.fisher_rop.rop_gauss_newton`; autograd
        where the policy's network is not covered).

        ``subset`` (``[T, k]`` trajectory indices, :mod:`~mamlkit.rl.subsample`): the KL,
        and so the products, on those query trajectories only (``"rop"``'s surrogate keeps
        all of ``query``).
        """
        params = list(self.theta().values())
        full_query, full_old = query, old
        if subset is not None:
            query, old = select_trajectories(query, subset), select_old(old, subset)
            if self.fisher == "hessian":
                kl = mean_kl(old, *self.policy.distribution(phi, query.obs), query.mask)
        if self.fisher == "hessian":
            return hessian_vector_product(kl, params)

        def kl_of_z(z: dict[str, Tensor]) -> Tensor:
            return mean_kl(old, z["mean"], z["log_std"], query.mask)

        if support is not None and not self.update.per_parameter:
            steps = self.inner_steps
            step_sizes = [float(self.update.step_size("", s)) for s in range(steps)]
            if self.fisher == "rop":
                product = rop_gauss_newton(
                    self.policy,
                    self.theta(),
                    support,
                    support_adv,
                    step_sizes,
                    self.first_order,
                    full_query,
                    full_old,
                    None if subset is None else (query, old),
                )
                if product is not None:
                    return product
            return inner_update_gauss_newton(
                self.theta(),
                query.obs.shape[0],
                vpg_support_loss(self.policy, support, support_adv) if steps else None,
                step_sizes,
                self.first_order,
                lambda p: self.policy.distribution(p, query.obs),
                kl_of_z,
            )
        mean, log_std = self.policy.distribution(phi, query.obs)

        return gauss_newton_vector_product(params, {"mean": mean, "log_std": log_std}, kl_of_z)

    def predictions_by_step(
        self, batch: RLTaskBatch, steps: int, lr=None, reduce=None
    ) -> list[Tensor]:
        """The average return per task ``[T]`` after 0, 1, …, ``steps`` policy-gradient
        steps (test protocol: each step samples ``eval_rollouts`` fresh trajectories, or
        ``eval_samples`` steps' worth, with the current policy, reports their return and
        adapts on them with the evaluation step sizes, e.g. 0.5 then 0.25; ``lr``, one or
        one per step with the last repeating, replaces them); ``reduce`` maps each step's
        returns as they come (the evaluation's per-task metric)."""
        rule = self.eval_update if lr is None else FixedStepSize(lr)
        streams = environment_streams(batch)
        task = batch.task
        with torch.enable_grad():
            params = {
                n: p.detach().requires_grad_()
                for n, p in stack_params(self.theta(), task.shape[0]).items()
            }
            out = []
            for s in range(steps + 1):
                traj = self.sample(params, task, self.eval_rollouts, streams, self.eval_samples)
                returns = traj.average_return()
                out.append(returns if reduce is None else reduce(returns))
                if s == steps:
                    break
                # one engine step with the step size of test step s
                update = FixedStepSize(rule.step_size("", s))
                phi = self.adapt_on(params, traj, update, 1, first_order=True)
                params = {n: p.detach().requires_grad_() for n, p in phi.items()}
        return out
