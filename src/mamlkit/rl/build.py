"""The RL objects of a validated config: the learner (called from :mod:`mamlkit.build`),
and each RL task's environment and task distribution (the builders its registration in
:mod:`mamlkit.tasks.builtin` names; :func:`build_env` asks the task for its own)."""

from __future__ import annotations

from typing import Any

from mamlkit.algorithms.registry import ALGORITHMS
from mamlkit.config import Config
from mamlkit.rl.cheetah import CheetahDirectionTasks, CheetahVelocityTasks, HalfCheetah
from mamlkit.rl.envs import HeldOutTasks, Navigation2D, NavigationTasks
from mamlkit.rl.learner import MAMLTRPO
from mamlkit.rl.policy import GaussianMLPPolicy
from mamlkit.tasks.registry import task_spec

__all__ = [
    "build_cheetah_dir_env",
    "build_cheetah_dir_tasks",
    "build_cheetah_vel_env",
    "build_cheetah_vel_tasks",
    "build_env",
    "build_nav2d_env",
    "build_nav2d_tasks",
    "build_rl_learner",
    "build_rl_tasks",
    "rl_split",
]


def build_env(c: Config) -> Any:
    """The environment of ``c``'s RL task (its registered ``env`` builder)."""
    return task_spec(c.task.name).build_env(c)


def rl_split(tasks: Any, split: str) -> Any:
    """The tasks of ``split`` from a distribution with nothing held out: train and test
    draw from the same one (evaluation's fixed seed gives every method the same test
    tasks), and ``val`` draws other tasks than ``test`` for the same seed."""
    return HeldOutTasks(tasks) if split == "val" else tasks


def build_nav2d_env(c: Config) -> Navigation2D:
    return Navigation2D(
        horizon=c.task.horizon,
        oracle=c.task.oracle,
        normalized_actions=c.task.normalized_actions,
    )


def build_nav2d_tasks(c: Config, split: str = "train") -> Any:
    return rl_split(NavigationTasks(), split)


def build_cheetah_vel_env(c: Config) -> HalfCheetah:
    HalfCheetah.check_installed()  # before a run directory is written
    return HalfCheetah("vel", horizon=c.task.horizon, oracle=c.task.oracle)


def build_cheetah_vel_tasks(c: Config, split: str = "train") -> Any:
    return rl_split(CheetahVelocityTasks(), split)


def build_cheetah_dir_env(c: Config) -> HalfCheetah:
    HalfCheetah.check_installed()
    return HalfCheetah("dir", horizon=c.task.horizon, oracle=c.task.oracle)


def build_cheetah_dir_tasks(c: Config, split: str = "train") -> Any:
    return rl_split(CheetahDirectionTasks(), split)


def build_rl_tasks(c: Config, split: str = "train") -> Any:
    """The task distribution of ``c``'s RL task (its registered builder; kept for older
    code: :func:`mamlkit.build.build_tasks` builds every task)."""
    return task_spec(c.task.name).build(c, split)


def build_rl_learner(c: Config) -> MAMLTRPO:
    """MAML-TRPO on the task's environment, with the overrides the algorithm registered
    for trajectories (``pretrained``: no inner steps in training, i.e. TRPO on the task
    distribution, fine-tuned by the same test-time steps)."""
    a = c.algorithm
    env = build_env(c)
    policy = GaussianMLPPolicy(env.obs_dim, env.act_dim, c.model.hidden)
    eval_lrs = a.eval_inner_lrs or [a.eval_inner_lr or a.inner_lr]
    overrides = ALGORITHMS.lookup(a.name).overrides_for("trajectories")
    return MAMLTRPO(
        env,
        policy,
        inner_lr=a.inner_lr,
        inner_steps=overrides.get("inner_steps", a.inner_steps),
        rollouts=c.task.rollouts,
        first_order=overrides.get("first_order", a.first_order),
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
    )
