"""Half-cheetah with a goal velocity or direction (Finn et al. 2017, §5.3), simulated by
MuJoCo for T tasks × N trajectories at once.

The model (bodies, joints, actuators, 0.01 s physics step) is gymnasium's
``half_cheetah.xml``, the same cheetah as rllab's. Two MDPs on it (``env``):

* ``"rllab"``, the paper's (cbfinn/maml_rl's ``HalfCheetahEnvRand`` and
  ``HalfCheetahEnvRandDirec`` on rllab's ``MujocoEnv``): one physics step per environment
  step (0.01 s: 200 steps are 2 s), reset noise 0.01·N(0, 1) on qpos and 0.1·N(0, 1) on
  qvel, observation ``qpos[1:]``, ``qvel`` and the cheetah's centre of mass (20 numbers),
  and the reward's velocity that of the centre of mass (rllab's ``get_body_comvel``);
* ``"gymnasium"``, ``HalfCheetah-v5``'s: 5 physics steps per environment step (0.05 s),
  reset noise uniform ±0.1 on qpos, observation ``qpos[1:]`` and ``qvel`` (17), the
  velocity the root's displacement over the step (mamlkit's only MDP before session 16).

Either way the reward is the paper's: velocity tasks −|vₓ − goal| − 0.05‖a‖², direction
tasks dir·vₓ − 0.05‖a‖² (a the applied, clipped action). Every environment step is one
MuJoCo rollout that advances all T·N simulations by the frame skip with the policy's
action, on ``threads`` thread-local ``MjData`` and a thread pool kept for the simulator's
life.
"""

from __future__ import annotations

import ctypes
import importlib.resources
import os
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from mamlkit.errors import UserError
from mamlkit.rl.envs import TaskStreams, task_batch
from mamlkit.rl.mujoco_com import SubtreeCom
from mamlkit.rl.settings import CHEETAH_ENVS as ENVS

INSTALL = "pip install 'mamlkit[rl]' (gymnasium[mujoco] and mujoco)"


def _mujoco():
    try:
        import mujoco
        import mujoco.rollout
    except ImportError:
        raise UserError(f"half-cheetah needs MuJoCo, which is not installed; {INSTALL}") from None
    return mujoco


def _cheetah_xml() -> str:
    try:
        assets = importlib.resources.files("gymnasium.envs.mujoco") / "assets"
    except ModuleNotFoundError:
        raise UserError(
            f"half-cheetah uses gymnasium's HalfCheetah model; gymnasium is not installed; "
            f"{INSTALL}"
        ) from None
    return str(assets / "half_cheetah.xml")


# MuJoCo thread pools started by this process. A forked child has none of their threads:
# destroying one there joins threads that do not exist and aborts the process, so after a
# fork each inherited pool's C++ object gets one reference that is never released.
_POOLS: weakref.WeakSet = weakref.WeakSet()


def _keep_inherited_pools() -> None:
    for pool in list(_POOLS):
        if pool.rollout_ is not None:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(pool.rollout_))
    _POOLS.clear()


os.register_at_fork(after_in_child=_keep_inherited_pools)


@dataclass
class _Simulator:
    """The compiled model, thread-local data and the state layout (built on first use)."""

    threads: int
    model: object = field(init=False)
    datas: list = field(init=False)

    def __post_init__(self):
        mujoco = _mujoco()
        self.mujoco = mujoco
        # gymnasium's XML uses an attribute MuJoCo deprecates; its warning would otherwise be
        # appended to MUJOCO_LOG.TXT in the working directory on every build
        previous = mujoco.get_mju_user_warning()
        mujoco.set_mju_user_warning(lambda message: None)
        try:
            self.model = mujoco.MjModel.from_xml_path(_cheetah_xml())
        finally:
            mujoco.set_mju_user_warning(previous)
        self.datas = [mujoco.MjData(self.model) for _ in range(self.threads)]
        self.spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self.nstate = mujoco.mj_stateSize(self.model, self.spec)
        data = mujoco.MjData(self.model)
        self.init_qpos, self.init_qvel = data.qpos.copy(), data.qvel.copy()
        self.nq, self.nv = self.model.nq, self.model.nv
        torso = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, "torso")
        self.com = SubtreeCom(self.model, torso)  # the cheetah's centre of mass, batched
        self._pool = None  # (pid, mujoco.rollout.Rollout): the threads, made on first use

    def rollout(self, physics: np.ndarray, control: np.ndarray, nstep: int) -> np.ndarray:
        """``mujoco.rollout`` of the simulations from ``physics`` with ``control`` on this
        simulator's thread pool, started once per process (``mujoco.rollout.rollout``
        starts and stops one every call: 200 a sampling pass) and stopped with the
        simulator. The same states as ``rollout`` bit for bit: each simulation runs on
        one thread either way."""
        pid = os.getpid()
        if self._pool is None or self._pool[0] != pid:  # (a forked child starts its own)
            threads = len(self.datas) if len(self.datas) > 1 else 0  # as rollout() does
            pool = self.mujoco.rollout.Rollout(nthread=threads)
            _POOLS.add(pool)
            weakref.finalize(self, pool.close)
            self._pool = (pid, pool)
        out, _ = self._pool[1].rollout(self.model, self.datas, physics, control, nstep=nstep)
        return out

    def centre_of_mass(self, physics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cheetah's centre of mass and its velocity [B, 3] in FULLPHYSICS states."""
        qpos = physics[:, 1 : 1 + self.nq]
        return self.com(qpos, physics[:, 1 + self.nq : 1 + self.nq + self.nv])

    def full_state(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """FULLPHYSICS states (time, qpos, qvel; no actuator state in this model)."""
        state = np.zeros((qpos.shape[0], self.nstate))
        state[:, 1 : 1 + self.nq] = qpos
        state[:, 1 + self.nq : 1 + self.nq + self.nv] = qvel
        return state


@dataclass
class HalfCheetah:
    """Goal-velocity (``task="vel"``) or goal-direction (``task="dir"``) half-cheetah."""

    task: str = "vel"
    horizon: int = 200
    env: str = "gymnasium"
    ctrl_cost: float = 0.05
    threads: int = 2
    oracle: bool = False

    task_dim = 1
    act_dim = 6

    def __post_init__(self):
        if self.task not in ("vel", "dir"):
            raise ValueError(f"task must be 'vel' or 'dir', got {self.task!r}")
        if self.env not in ENVS:
            raise ValueError(f"env must be one of {sorted(ENVS)}, got {self.env!r}")
        self._sim: _Simulator | None = None

    @property
    def frame_skip(self) -> int:
        """Physics steps per environment step."""
        return 1 if self.env == "rllab" else 5

    @staticmethod
    def check_installed() -> None:
        """Refuse early (one line naming the install command) where MuJoCo is missing."""
        _mujoco()
        _cheetah_xml()

    @property
    def sim(self) -> _Simulator:
        if self._sim is None:
            self._sim = _Simulator(self.threads)
        return self._sim

    @property
    def obs_dim(self) -> int:
        return (20 if self.env == "rllab" else 17) + (1 if self.oracle else 0)

    @property
    def dt(self) -> float:
        return float(self.sim.model.opt.timestep) * self.frame_skip

    def reset(self, task: Tensor, n: int, streams: TaskStreams | None = None):
        """Initial positions and velocities with the noise of :attr:`env`, task t's drawn
        from ``streams``' t-th stream (qpos's noise first, then qvel's)."""
        sim, tasks = self.sim, task.shape[0]
        batch = tasks * n
        streams = streams if streams is not None else TaskStreams.seeded(0, tasks)
        if self.env == "rllab":
            u = streams.randn((n, sim.nq), dtype=torch.float64).reshape(batch, sim.nq)
            qpos = sim.init_qpos + 0.01 * u.cpu().numpy()
        else:
            u = streams.rand((n, sim.nq), dtype=torch.float64).reshape(batch, sim.nq)
            qpos = sim.init_qpos + (u.cpu().numpy() * 2 - 1) * 0.1
        z = streams.randn((n, sim.nv), dtype=torch.float64).reshape(batch, sim.nv)
        qvel = sim.init_qvel + 0.1 * z.cpu().numpy()
        state = (sim.full_state(qpos, qvel), task.reshape(tasks, 1).expand(tasks, n), n)
        return state, self.observe(state, task.dtype, task.device)

    def observe(self, state, dtype, device, com: np.ndarray | None = None) -> Tensor:
        """The observation of ``state`` (``com``: its centre of mass, where known)."""
        physics, goal, n = state
        sim = self.sim
        obs = physics[:, 2 : 1 + sim.nq + sim.nv]  # qpos[1:], qvel
        if self.env == "rllab":
            com = sim.centre_of_mass(physics)[0] if com is None else com
            obs = np.concatenate([obs, com], axis=1)
        obs = torch.from_numpy(np.ascontiguousarray(obs))
        obs = obs.to(device=device, dtype=dtype).reshape(goal.shape[0], n, -1)
        return torch.cat([obs, goal.unsqueeze(-1)], -1) if self.oracle else obs

    def step(self, state, action: Tensor):
        """All T·N cheetahs advance by ``frame_skip`` physics steps with ``action``."""
        physics, goal, n = state
        sim = self.sim
        applied = action.clamp(-1.0, 1.0)
        control = applied.detach().reshape(-1, 1, self.act_dim).double().cpu().numpy()
        control = np.repeat(control, self.frame_skip, axis=1)
        new_physics = sim.rollout(physics, control, self.frame_skip)[:, -1]
        com = None
        if self.env == "rllab":  # the centre of mass's velocity, at the new state
            com, com_velocity = sim.centre_of_mass(new_physics)
            velocity = com_velocity[:, 0]
        else:  # the root's displacement over the step (qpos[0] is its x)
            velocity = (new_physics[:, 1] - physics[:, 1]) / self.dt
        vx = torch.from_numpy(velocity).to(action.device, action.dtype).view(goal.shape)
        cost = self.ctrl_cost * applied.pow(2).sum(-1)
        if self.task == "vel":
            reward = -(vx - goal).abs() - cost
        else:
            reward = goal * vx - cost
        state = (new_physics, goal, n)
        done = torch.zeros_like(reward, dtype=torch.bool)  # the cheetah never terminates
        return state, self.observe(state, action.dtype, action.device, com), reward, done


@dataclass(frozen=True)
class CheetahVelocityTasks:
    """Goal velocities uniform in ``[low, high]`` (the paper: [0, 2])."""

    low: float = 0.0
    high: float = 2.0

    def sample(self, tasks: int, generator: torch.Generator):
        u = torch.rand((tasks, 1), generator=generator, device=generator.device)
        return task_batch(u * (self.high - self.low) + self.low, generator)


@dataclass(frozen=True)
class CheetahDirectionTasks:
    """Directions +1 (forward) or −1 (backward), each with probability ½."""

    def sample(self, tasks: int, generator: torch.Generator):
        coin = torch.randint(0, 2, (tasks, 1), generator=generator, device=generator.device)
        return task_batch(coin.to(torch.get_default_dtype()) * 2 - 1, generator)
