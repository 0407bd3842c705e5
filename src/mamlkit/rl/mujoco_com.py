"""The centre of mass of a MuJoCo body's subtree and its velocity, for a batch of states at
once: what ``MjData.subtree_com`` and ``MjData.subtree_linvel`` hold after ``mj_forward``
and ``mj_subtreeVel`` for one state, computed in numpy from the model's kinematic tree
(bodies, their inertial frames and their slide and hinge joints).

rllab's half-cheetah (maml_rl's) observes the torso's subtree centre of mass and rewards
its forward velocity; ``mujoco.rollout`` returns states only, and calling MuJoCo once per
simulation and step would cost more than the physics. Checked against MuJoCo in
``tests/test_rl_cheetah.py``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SubtreeCom"]


def _quat_to_mat(quat: np.ndarray) -> np.ndarray:
    w, x, y, z = quat / np.linalg.norm(quat)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rotation(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotations by ``angle`` [B] about the unit ``axis`` [B, 3] (right-handed): [B, 3, 3]."""
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    cross = np.zeros(axis.shape + (3,))
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    cross -= cross.transpose(0, 2, 1)
    outer = axis[:, :, None] * axis[:, None, :]
    return c * np.eye(3) + s * cross + (1 - c) * outer


class SubtreeCom:
    """Centre of mass of ``body``'s subtree (and its linear velocity) in world coordinates
    for states ``qpos`` [B, nq], ``qvel`` [B, nv] of ``model`` (a ``mujoco.MjModel`` whose
    joints are slides and hinges)."""

    def __init__(self, model, body: int):
        self.model = model
        slide, hinge = 2, 3  # mujoco.mjtJoint.mjJNT_SLIDE, mjJNT_HINGE
        types = set(int(t) for t in model.jnt_type)
        if not types <= {slide, hinge}:
            raise ValueError("SubtreeCom handles slide and hinge joints only")
        parent = [int(p) for p in model.body_parentid]

        def in_subtree(b: int, root: int) -> bool:
            while b not in (root, 0):
                b = parent[b]
            return b == root

        self.parent = parent
        self.rot = [_quat_to_mat(q) for q in model.body_quat]
        # the bodies whose centres of mass count, and the mass of each joint's share of them
        self.members = [b for b in range(1, model.nbody) if in_subtree(b, body)]
        self.mass = np.array([model.body_mass[b] for b in range(model.nbody)], dtype=float)
        self.total = float(sum(self.mass[b] for b in self.members))
        self.joints = []  # (body, kind, qpos address, dof address, local axis, local anchor)
        self.moved = {}  # joint -> the member bodies it moves
        for j in range(model.njnt):
            b = int(model.jnt_bodyid[j])
            kind = "slide" if int(model.jnt_type[j]) == slide else "hinge"
            self.joints.append(
                (b, kind, int(model.jnt_qposadr[j]), int(model.jnt_dofadr[j]),
                 np.array(model.jnt_axis[j], dtype=float), np.array(model.jnt_pos[j], dtype=float))
            )  # fmt: skip
            self.moved[j] = [m for m in self.members if in_subtree(m, b)]
        self.qpos0 = np.array(model.qpos0, dtype=float)

    def __call__(self, qpos: np.ndarray, qvel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(centre of mass [B, 3], its velocity [B, 3])."""
        model, batch = self.model, qpos.shape[0]
        q = qpos - self.qpos0
        pos = {0: np.zeros((batch, 3))}
        rot = {0: np.broadcast_to(np.eye(3), (batch, 3, 3))}
        xipos = {}
        frames = {}  # joint -> (world axis, world anchor) as MuJoCo's xaxis, xanchor
        by_body: dict[int, list[int]] = {}
        for j, (b, *_rest) in enumerate(self.joints):
            by_body.setdefault(b, []).append(j)
        for b in range(1, model.nbody):
            up = self.parent[b]
            p = pos[up] + rot[up] @ model.body_pos[b]
            r = rot[up] @ self.rot[b]
            for j in by_body.get(b, []):
                _, kind, qa, _, axis, anchor = self.joints[j]
                world_axis = r @ axis
                world_anchor = p + r @ anchor
                frames[j] = (world_axis, world_anchor)
                if kind == "slide":
                    p = p + world_axis * q[:, qa, None]
                else:
                    turn = _rotation(world_axis, q[:, qa])
                    r = turn @ r
                    p = world_anchor + np.einsum("bij,bj->bi", turn, p - world_anchor)
            pos[b], rot[b] = p, r
            xipos[b] = p + np.einsum("bij,j->bi", r, model.body_ipos[b])
        com = sum(self.mass[b] * xipos[b] for b in self.members) / self.total
        momentum = np.zeros((batch, 3))
        for j, (_, kind, _, dof, _, _) in enumerate(self.joints):
            moved = self.moved[j]
            if not moved:
                continue
            axis, anchor = frames[j]
            mass = sum(self.mass[m] for m in moved)
            if kind == "slide":
                share = mass * axis
            else:
                weighted = sum(self.mass[m] * xipos[m] for m in moved)
                share = np.cross(axis, weighted - mass * anchor)
            momentum += share * qvel[:, dof, None]
        return com, momentum / self.total
