"""The settings of mamlkit's reinforcement learning: the RL tasks' ``task:`` section
(episode length, trajectories per task; each task builds its environment) and the TRPO
learners' ``algorithm:`` section (returns, advantages and the TRPO outer step). Imports
no torch and no MuJoCo: validating an RL config needs neither."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mamlkit.settings import AlgorithmSettings, TaskSettings, require, require_at_least

if TYPE_CHECKING:
    from mamlkit.config import Config

__all__ = ["CheetahSettings", "Nav2DSettings", "RLTaskSettings", "TRPOSettings"]


@dataclass
class RLTaskSettings(TaskSettings):
    """What every RL task has. A task's own subclass builds its environment
    (:meth:`build_env`), which the TRPO learners act in."""

    horizon: int = 100  # RL: environment steps per trajectory (the episode length)
    rollouts: int = 20  # RL: trajectories per task for each inner step in training
    eval_rollouts: int = 40  # RL: trajectories per task for each test-time step
    # test steps of at least this many environment steps per task, in rounds of
    # eval_rollouts trajectories (rllab's batch_size in maml_rl's test scripts); 0: exactly
    # eval_rollouts trajectories
    eval_samples: int = 0
    oracle: bool = False  # RL: the oracle baseline sees the task's goal in its observation

    def validate(self, config: Config) -> None:
        require_at_least(1, "task", self, "horizon", "rollouts", "eval_rollouts")
        require(
            self.eval_samples >= 0,
            "task.eval_samples",
            f"must be >= 0 (0: eval_rollouts trajectories), got {self.eval_samples}",
        )
        require(config.model.name == "mlp", "model.name", "the policy of an RL task is an mlp")

    def batch_examples(self, config: Config) -> tuple[int, int, str]:
        # the environment steps the policy reads in one meta-batch's support rollouts
        examples = config.train.meta_batch * self.rollouts * self.horizon
        return examples, 1, "train.meta_batch, task.rollouts, task.horizon"

    def build_env(self) -> Any:
        """The environment of this task (an object with ``obs_dim``, ``act_dim``, ``horizon``
        and the step functions :mod:`mamlkit.rl.envs` describes)."""
        raise NotImplementedError(f"task {self.name!r} builds no environment")


@dataclass
class Nav2DSettings(RLTaskSettings):
    """``task.name: nav2d``: 2D point navigation to a goal."""

    name: str = "nav2d"
    # 2D navigation: the policy acts in [-1, 1] and moves 0.1 x that (rllab's normalize, as
    # maml_rl); false: the action is the move, clipped to +-0.1 (mamlkit up to session 8)
    normalized_actions: bool = True

    def build_env(self) -> Any:
        from mamlkit.rl.envs import Navigation2D

        return Navigation2D(
            horizon=self.horizon, oracle=self.oracle, normalized_actions=self.normalized_actions
        )


#: the half-cheetah tasks and the goal each rewards
CHEETAH = {"cheetah_vel": "vel", "cheetah_dir": "dir"}
#: the half-cheetah MDPs (:mod:`mamlkit.rl.cheetah`; kept here: settings import no MuJoCo)
CHEETAH_ENVS = ("rllab", "gymnasium")


@dataclass
class CheetahSettings(RLTaskSettings):
    """``task.name: cheetah_vel`` or ``cheetah_dir``: MuJoCo's half-cheetah."""

    name: str = "cheetah_vel"
    # half-cheetah: whose MDP on the cheetah model. rllab: the paper's (maml_rl's; 1 physics
    # step of 0.01 s per environment step, the centre of mass observed and its velocity
    # rewarded; the presets). gymnasium: HalfCheetah-v5's (5 physics steps, 0.05 s; root
    # velocity; runs from before session 16, whose configs lack the key, are these)
    env: str = "gymnasium"

    def validate(self, config: Config) -> None:
        super().validate(config)
        require(
            self.env in CHEETAH_ENVS,
            "task.env",
            f"must be one of {', '.join(CHEETAH_ENVS)}, got {self.env!r}",
        )

    def build_env(self) -> Any:
        from mamlkit.rl.cheetah import HalfCheetah

        HalfCheetah.check_installed()  # before a run directory is written
        return HalfCheetah(
            CHEETAH[self.name], horizon=self.horizon, env=self.env, oracle=self.oracle
        )


@dataclass
class TRPOSettings(AlgorithmSettings):
    """``algorithm.name: maml_trpo`` (MAML-TRPO) or ``trpo`` (TRPO on the task
    distribution, the pretrained baseline): an RL task's learners."""

    name: str = "maml_trpo"
    # test-time step sizes, one per step (the last repeats); empty: eval_inner_lr (RL only)
    eval_inner_lrs: list[float] = field(default_factory=list)
    # reinforcement learning: returns, advantages and the TRPO outer step
    discount: float = 0.99
    gae_lambda: float = 1.0
    max_kl: float = 0.01
    cg_iterations: int = 10
    cg_damping: float = 1e-5
    backtrack_ratio: float = 0.8
    max_backtracks: int = 15
    # TRPO's Fisher-vector products: rop (Jᵀ F J by hand-written derivatives, and the step
    # length from conjugate gradient's products) | gauss_newton (Jᵀ F J by autograd) | hessian
    fisher: str = "rop"
    # rllab's subsample_factor: the surrogate, its gradient and the line search keep all data
    fisher_subsample: float = 1.0  # share of post-update trajectories in Fisher products; 1: all

    def validate(self, config: Config) -> None:
        super().validate(config)
        require(
            isinstance(config.task, RLTaskSettings),
            "algorithm.name",
            f"{self.name} learns policies for RL tasks (nav2d, cheetah_vel, cheetah_dir, ...); "
            f"task {config.task.name!r} is not one",
        )
        require_at_least(1, "algorithm", self, "cg_iterations", "max_backtracks")
        for key in ("max_kl", "cg_damping"):
            value = getattr(self, key)
            require(
                math.isfinite(value) and value > 0, f"algorithm.{key}", f"must be > 0, got {value}"
            )
        for key in ("discount", "gae_lambda"):
            value = getattr(self, key)
            require(0 <= value <= 1, f"algorithm.{key}", f"must be in [0, 1], got {value}")
        require(
            0 < self.backtrack_ratio < 1,
            "algorithm.backtrack_ratio",
            f"must be in (0, 1), got {self.backtrack_ratio}",
        )
        require(
            self.fisher in ("rop", "gauss_newton", "hessian"),
            "algorithm.fisher",
            f"must be rop, gauss_newton or hessian, got {self.fisher!r}",
        )
        require(
            isinstance(self.fisher_subsample, (int, float))
            and not isinstance(self.fisher_subsample, bool)
            and 0 < self.fisher_subsample <= 1,
            "algorithm.fisher_subsample",
            f"must be in (0, 1] (1: all trajectories), got {self.fisher_subsample!r}",
        )
        require(
            all(math.isfinite(a) and a > 0 for a in self.eval_inner_lrs),
            "algorithm.eval_inner_lrs",
            f"step sizes must be positive numbers, got {self.eval_inner_lrs}",
        )
