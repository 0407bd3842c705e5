"""Reinforcement learning on the MAML engine: vectorised environments, a Gaussian MLP
policy, the linear feature baseline with GAE, TRPO, and MAML-TRPO (Finn et al. 2017, §5.3)."""

from mamlkit.rl.envs import Navigation2D, NavigationTasks, RLTaskBatch
from mamlkit.rl.learner import MAMLTRPO
from mamlkit.rl.policy import GaussianMLPPolicy
from mamlkit.rl.trpo import conjugate_gradient, trpo_step

__all__ = [
    "MAMLTRPO",
    "GaussianMLPPolicy",
    "Navigation2D",
    "NavigationTasks",
    "RLTaskBatch",
    "conjugate_gradient",
    "trpo_step",
]
