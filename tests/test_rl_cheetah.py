"""The vectorised half-cheetah (MuJoCo through mujoco.rollout) against one environment at a
time: gymnasium's ``HalfCheetah-v5`` for ``env="gymnasium"``, and for ``env="rllab"`` (the
paper's) a direct transcription of rllab's definitions on MuJoCo's own ``MjData``; the
batched centre of mass against MuJoCo's. Skipped where MuJoCo is not installed (the `rl`
extra)."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco")
gym = pytest.importorskip("gymnasium")

from mamlkit.rl.cheetah import (  # noqa: E402
    CheetahDirectionTasks,
    CheetahVelocityTasks,
    HalfCheetah,
)
from mamlkit.rl.envs import TaskStreams  # noqa: E402


@pytest.mark.parametrize("task", ["vel", "dir"])
def test_vectorised_cheetah_equals_single_environments_step_for_step(
    float64, task, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # gymnasium's build writes MuJoCo's warning log to the cwd
    env = HalfCheetah(task, horizon=20, env="gymnasium")
    goal = torch.tensor([[1.5], [-1.0]]) if task == "dir" else torch.tensor([[1.5], [0.3]])
    state, obs = env.reset(goal, 2, TaskStreams.seeded(0, 2))
    physics = state[0].copy()
    g = torch.Generator().manual_seed(1)
    actions = torch.randn(20, 2, 2, 6, generator=g) * 0.8  # some beyond ±1: clipped
    singles = []
    for b in range(4):
        single = gym.make("HalfCheetah-v5").unwrapped
        single.reset(seed=0)
        single.set_state(physics[b, 1:10], physics[b, 10:19])
        singles.append(single)
    for t in range(20):
        state, obs, reward, done = env.step(state, actions[t])
        for b, single in enumerate(singles):
            i, j = divmod(b, 2)
            a = actions[t, i, j].clamp(-1, 1).numpy()
            single_obs, _, _, _, info = single.step(a)
            assert np.allclose(obs[i, j].numpy(), single_obs, atol=1e-9)
            vx, cost = info["x_velocity"], 0.05 * float((a**2).sum())
            g_ = float(goal[i, 0])
            expected = -abs(vx - g_) - cost if task == "vel" else g_ * vx - cost
            assert abs(float(reward[i, j]) - expected) < 1e-9
        assert not done.any()


def test_the_batched_centre_of_mass_is_mujocos():
    import mujoco

    sim = HalfCheetah().sim
    torso = mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_BODY, "torso")
    rng = np.random.default_rng(0)
    qpos, qvel = rng.normal(size=(6, sim.nq)), 3 * rng.normal(size=(6, sim.nv))
    com, velocity = sim.centre_of_mass(sim.full_state(qpos, qvel))
    data = mujoco.MjData(sim.model)
    for b in range(6):
        data.qpos[:], data.qvel[:] = qpos[b], qvel[b]
        mujoco.mj_forward(sim.model, data)
        mujoco.mj_subtreeVel(sim.model, data)
        np.testing.assert_allclose(com[b], data.subtree_com[torso], rtol=0, atol=1e-12)
        np.testing.assert_allclose(velocity[b], data.subtree_linvel[torso], rtol=0, atol=1e-12)
    assert np.abs(velocity[:, 0]).max() > 0.5  # moving: the check compares something


@pytest.mark.parametrize("task", ["vel", "dir"])
def test_rllab_cheetah_equals_rllabs_definitions_step_for_step(float64, task):
    """rllab's ``MujocoEnv`` with maml_rl's ``HalfCheetahEnvRand(Direc)``, written out on one
    ``MjData`` per simulation: ctrl = action, one ``mj_step`` (no frame skip in rllab's
    half_cheetah.xml), ``mj_forward``; observation qpos[1:], qvel, the torso subtree's centre
    of mass; reward with the x velocity of that centre of mass."""
    import mujoco

    env = HalfCheetah(task, horizon=20, env="rllab")
    assert env.frame_skip == 1 and env.obs_dim == 20 and env.dt == pytest.approx(0.01)
    goal = torch.tensor([[1.5], [-1.0]]) if task == "dir" else torch.tensor([[1.5], [0.3]])
    state, obs = env.reset(goal, 2, TaskStreams.seeded(0, 2))
    physics = state[0].copy()
    qpos, qvel = physics[:, 1:10], physics[:, 10:19]
    assert 0.001 < np.abs(qpos - env.sim.init_qpos).max() < 0.05  # 0.01·N(0, 1) noise
    model, torso = env.sim.model, 1
    datas = []
    for b in range(4):
        data = mujoco.MjData(model)
        data.qpos[:], data.qvel[:] = qpos[b], qvel[b]
        mujoco.mj_forward(model, data)
        datas.append(data)
        expected = np.concatenate([data.qpos[1:], data.qvel, data.subtree_com[torso]])
        np.testing.assert_allclose(obs.reshape(4, -1)[b].numpy(), expected, atol=1e-12)
    g = torch.Generator().manual_seed(1)
    actions = torch.randn(20, 2, 2, 6, generator=g) * 0.8  # some beyond ±1: clipped
    for t in range(20):
        state, obs, reward, done = env.step(state, actions[t])
        for b, data in enumerate(datas):
            i, j = divmod(b, 2)
            a = actions[t, i, j].clamp(-1, 1).numpy()
            data.ctrl[:] = a
            mujoco.mj_step(model, data)
            mujoco.mj_forward(model, data)
            mujoco.mj_subtreeVel(model, data)
            expected = np.concatenate([data.qpos[1:], data.qvel, data.subtree_com[torso]])
            np.testing.assert_allclose(obs[i, j].numpy(), expected, atol=1e-9)
            vx, cost = data.subtree_linvel[torso][0], 0.05 * float((a**2).sum())
            g_ = float(goal[i, 0])
            want = -abs(vx - g_) - cost if task == "vel" else g_ * vx - cost
            assert abs(float(reward[i, j]) - want) < 1e-9
        assert not done.any()


def test_cheetah_env_setting(tmp_path):
    """The presets run the paper's MDP; a config without ``task.env`` (every run from before
    it existed) is the gymnasium MDP it trained on; an unknown one is one line."""
    import yaml

    from mamlkit.config import load_config
    from mamlkit.errors import UserError

    assert load_config("rl_cheetah_dir_oracle").task.env == "rllab"
    old = load_config("rl_cheetah_vel_maml").to_dict()
    del old["task"]["env"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert load_config(str(tmp_path / "config.yaml")).task.env == "gymnasium"
    with pytest.raises(UserError, match="task.env") as info:
        load_config("rl_cheetah_vel_maml", ["task.env=mujoco"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_kept_thread_pool_gives_mujoco_rollouts_states_bit_for_bit(threads):
    import mujoco.rollout

    sim = HalfCheetah(threads=threads).sim
    rng = np.random.default_rng(0)
    state = np.tile(sim.full_state(sim.init_qpos[None], sim.init_qvel[None]), (6, 1))
    state[:, 1:10] += rng.uniform(-0.1, 0.1, (6, 9))
    expected, got = state, state
    for _ in range(3):
        control = rng.uniform(-1, 1, (6, 5, 6))
        want, _ = mujoco.rollout.rollout(sim.model, sim.datas, expected, control, nstep=5)
        expected, got = want[:, -1], sim.rollout(got, control, 5)[:, -1]
        np.testing.assert_array_equal(got, expected)
    pool = sim._pool
    sim.rollout(got, control, 5)
    assert sim._pool is pool  # one pool for the simulator's life, not one per call


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_steps_on_its_own_pool_and_drops_the_inherited_one():
    env = HalfCheetah(threads=2)
    state = np.tile(env.sim.full_state(env.sim.init_qpos[None], env.sim.init_qvel[None]), (4, 1))
    control = np.zeros((4, 5, 6))
    expected = env.sim.rollout(state, control, 5)
    pid = os.fork()
    if pid == 0:  # the child: a new pool; collecting the simulator closes the inherited one
        code = 1
        try:
            code = 0 if np.array_equal(env.sim.rollout(state, control, 5), expected) else 3
            del env
            gc.collect()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    np.testing.assert_array_equal(env.sim.rollout(state, control, 5), expected)


def test_cheetah_task_distributions():
    g = torch.Generator().manual_seed(0)
    vel = CheetahVelocityTasks().sample(200, g).task
    assert vel.shape == (200, 1) and 0 <= vel.min() and vel.max() <= 2
    direction = CheetahDirectionTasks().sample(200, g).task
    assert set(direction.unique().tolist()) == {-1.0, 1.0}


def test_missing_mujoco_is_one_line_naming_the_install_command(monkeypatch):
    import sys

    from mamlkit.build import build_learner
    from mamlkit.config import load_config
    from mamlkit.errors import UserError

    monkeypatch.setitem(sys.modules, "mujoco", None)  # import mujoco now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'mamlkit\[rl\]'") as info:
        build_learner(load_config("rl_cheetah_vel_maml"))
    assert "\n" not in str(info.value)


def test_cheetah_run_resumes_bit_identically(tmp_path):
    """Reset noise and action noise come from the batch seeds: a resumed run replays them."""
    from safetensors.torch import load_file

    from mamlkit.config import load_config
    from mamlkit.runner import train_run

    tiny = [
        "task.horizon=5",
        "task.rollouts=2",
        "model.hidden=[8,8]",
        "train.meta_batch=2",
        "train.checkpoint_every=1",
        "train.tensorboard=false",
    ]
    train_run(load_config("rl_cheetah_vel_maml", [*tiny, "train.iterations=2"]), tmp_path / "a")
    train_run(load_config("rl_cheetah_vel_maml", [*tiny, "train.iterations=1"]), tmp_path / "b")
    config = load_config("rl_cheetah_vel_maml", [*tiny, "train.iterations=2"])
    train_run(config, tmp_path / "b", resume=True, progress=False, update_config=True)
    a, b = (load_file(tmp_path / run / "model.safetensors") for run in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
