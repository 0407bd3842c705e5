"""The RL objects of a validated config: the TRPO learners (``algorithm.name: maml_trpo``
or ``trpo``, through :meth:`mamlkit.rl.learner.MAMLTRPO.from_config`) and the tasks (the
RL tasks' builders in :data:`mamlkit.tasks.TASKS`). The environment is the task's own
(:meth:`mamlkit.rl.settings.RLTaskSettings.build_env`)."""

from __future__ import annotations

from typing import Any

from mamlkit.config import Config
from mamlkit.rl.cheetah import CheetahDirectionTasks, CheetahVelocityTasks
from mamlkit.rl.envs import HeldOutTasks, NavigationTasks
from mamlkit.rl.learner import MAMLTRPO
from mamlkit.rl.policy import GaussianMLPPolicy
from mamlkit.tasks.registry import task_spec


def build_env(c: Config) -> Any:
    """The environment of the config's RL task (its registered ``env`` builder, else its
    settings' own)."""
    return task_spec(c.task.name).build_env(c)


def rl_split(tasks: Any, split: str) -> Any:
    """Tasks are drawn from continuous (or two-valued) distributions with nothing held
    out: train and test draw from the same one (evaluation's fixed seed gives every method
    the same test tasks), and ``val`` draws other tasks than ``test`` for the same seed."""
    return HeldOutTasks(tasks) if split == "val" else tasks


def build_nav2d_tasks(c: Config, split: str = "train") -> Any:
    return rl_split(NavigationTasks(), split)


def build_cheetah_vel_tasks(c: Config, split: str = "train") -> Any:
    return rl_split(CheetahVelocityTasks(), split)


def build_cheetah_dir_tasks(c: Config, split: str = "train") -> Any:
    return rl_split(CheetahDirectionTasks(), split)


def build_rl_learner(c: Config, pretrain: bool = False) -> MAMLTRPO:
    """MAML-TRPO; with ``pretrain`` (``trpo``) the same learner without inner steps in
    training (TRPO on the task distribution), fine-tuned by the same test-time steps."""
    a = c.algorithm
    env = build_env(c)
    policy = GaussianMLPPolicy(env.obs_dim, env.act_dim, c.model.hidden)
    eval_lrs = a.eval_inner_lrs or [a.eval_inner_lr or a.inner_lr]
    return MAMLTRPO(
        env,
        policy,
        inner_lr=a.inner_lr,
        inner_steps=0 if pretrain else a.inner_steps,
        rollouts=c.task.rollouts,
        first_order=a.first_order,
        eval_inner_lr=eval_lrs,
        eval_rollouts=c.task.eval_rollouts,
        eval_samples=c.task.eval_samples,
        discount=a.discount,
        gae_lambda=a.gae_lambda,
        max_kl=a.max_kl,
        cg_iterations=a.cg_iterations,
        cg_damping=a.cg_damping,
        backtrack_ratio=a.backtrack_ratio,
        max_backtracks=a.max_backtracks,
        fisher=a.fisher,
        fisher_subsample=a.fisher_subsample,
    )


def build_rl_tasks(c: Config, split: str = "train") -> Any:
    """The tasks of the config's RL task (its registered builder), kept for older code."""
    return task_spec(c.task.name).build(c, split)
