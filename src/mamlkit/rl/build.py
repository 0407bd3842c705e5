"""The RL objects of a validated config: the learner (called from :mod:`mamlkit.build`)
and the tasks (the RL tasks' builder in :data:`mamlkit.tasks.TASKS`)."""

from __future__ import annotations

from mamlkit.config import Config
from mamlkit.rl.cheetah import CheetahDirectionTasks, CheetahVelocityTasks, HalfCheetah
from mamlkit.rl.envs import HeldOutTasks, Navigation2D, NavigationTasks
from mamlkit.rl.learner import MAMLTRPO
from mamlkit.rl.policy import GaussianMLPPolicy

CHEETAH = {"cheetah_vel": "vel", "cheetah_dir": "dir"}


def build_env(c: Config):
    if c.task.name == "nav2d":
        return Navigation2D(
            horizon=c.task.horizon,
            oracle=c.task.oracle,
            normalized_actions=c.task.normalized_actions,
        )
    if c.task.name in CHEETAH:
        HalfCheetah.check_installed()  # before a run directory is written
        return HalfCheetah(CHEETAH[c.task.name], horizon=c.task.horizon, oracle=c.task.oracle)
    raise ValueError(f"not an RL task: {c.task.name!r}")  # validate() refuses it first


def build_rl_tasks(c: Config, split: str = "train"):
    """Tasks are drawn from continuous (or two-valued) distributions with nothing held
    out: train and test draw from the same one (evaluation's fixed seed gives every method
    the same test tasks), and ``val`` draws other tasks than ``test`` for the same seed."""
    if c.task.name == "cheetah_vel":
        tasks = CheetahVelocityTasks()
    elif c.task.name == "cheetah_dir":
        tasks = CheetahDirectionTasks()
    else:
        tasks = NavigationTasks()
    return HeldOutTasks(tasks) if split == "val" else tasks


def build_rl_learner(c: Config) -> MAMLTRPO:
    """MAML-TRPO; ``pretrained`` is the same learner without inner steps in training
    (TRPO on the task distribution), fine-tuned by the same test-time steps."""
    a = c.algorithm
    env = build_env(c)
    policy = GaussianMLPPolicy(env.obs_dim, env.act_dim, c.model.hidden)
    eval_lrs = a.eval_inner_lrs or [a.eval_inner_lr or a.inner_lr]
    return MAMLTRPO(
        env,
        policy,
        inner_lr=a.inner_lr,
        inner_steps=0 if a.name == "pretrained" else a.inner_steps,
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
    )
