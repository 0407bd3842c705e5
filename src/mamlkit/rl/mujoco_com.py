"""The centre of mass of a planar MuJoCo body's subtree and its velocity, for a batch of
states at once: what ``MjData.subtree_com`` and ``MjData.subtree_linvel`` hold after
``mj_forward`` and ``mj_subtreeVel`` for one state, computed in numpy from the model's
kinematic tree (bodies, their inertial frames and their slide and hinge joints).

rllab's half-cheetah (maml_rl's) observes the torso's subtree centre of mass and rewards
its forward velocity; ``mujoco.rollout`` returns states only, and calling MuJoCo once per
simulation and step would cost more than the physics. The model must move in the x–z plane
(bodies turned and hinges turning about y, slides along x and z, everything at y = 0), as
the cheetah does: then each body's frame is an angle and two coordinates, a few vector
operations per body. Checked against MuJoCo in ``tests/test_rl_cheetah.py``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SubtreeCom"]

_SLIDE, _HINGE = 2, 3  # mujoco.mjtJoint.mjJNT_SLIDE, mjJNT_HINGE


def _y_angle(quat: np.ndarray) -> float | None:
    """The angle of a rotation about y given as a unit quaternion, None if it is not one."""
    w, x, y, z = quat / np.linalg.norm(quat)
    return None if abs(x) > 1e-12 or abs(z) > 1e-12 else 2 * float(np.arctan2(y, w))


class SubtreeCom:
    """Centre of mass of ``body``'s subtree (and its linear velocity) in world coordinates
    for states ``qpos`` [B, nq], ``qvel`` [B, nv] of ``model``, a ``mujoco.MjModel`` that
    moves in the x–z plane (``ValueError`` otherwise)."""

    def __init__(self, model, body: int):
        parent = [int(p) for p in model.body_parentid]

        def in_subtree(b: int, root: int) -> bool:
            while b not in (root, 0):
                b = parent[b]
            return b == root

        def planar(vector, what: str) -> tuple[float, float]:
            if abs(float(vector[1])) > 1e-12:
                raise ValueError(f"SubtreeCom: {what} leaves the x-z plane")
            return float(vector[0]), float(vector[2])

        self.parent = parent
        self.nbody = model.nbody
        self.turn = []  # each body's fixed angle about y in its parent's frame
        for b in range(model.nbody):
            angle = _y_angle(np.asarray(model.body_quat[b], dtype=float))
            if angle is None:
                raise ValueError(f"SubtreeCom: body {b} is turned out of the x-z plane")
            self.turn.append(angle)
        self.offset = [planar(model.body_pos[b], f"body {b}") for b in range(model.nbody)]
        self.inertial = [planar(model.body_ipos[b], f"body {b}") for b in range(model.nbody)]
        self.joints: dict[int, list[tuple]] = {}  # body -> its joints, in MuJoCo's order
        members = [b for b in range(1, model.nbody) if in_subtree(b, body)]
        self.members = members
        self.mass = [float(m) for m in model.body_mass]
        self.total = sum(self.mass[b] for b in members)
        self.shares = []  # per joint: (its index, the member bodies it moves, their mass)
        for j in range(model.njnt):
            b, kind = int(model.jnt_bodyid[j]), int(model.jnt_type[j])
            axis = np.asarray(model.jnt_axis[j], dtype=float)
            if kind == _HINGE:
                if abs(axis[0]) > 1e-12 or abs(axis[2]) > 1e-12:
                    raise ValueError(f"SubtreeCom: joint {j} turns out of the x-z plane")
                direction = (float(np.sign(axis[1])), 0.0)
            elif kind == _SLIDE:
                direction = planar(axis, f"joint {j}'s axis")
            else:
                raise ValueError("SubtreeCom handles slide and hinge joints only")
            anchor = planar(model.jnt_pos[j], f"joint {j}")
            record = (j, kind, int(model.jnt_qposadr[j]), int(model.jnt_dofadr[j]), direction,
                      anchor)  # fmt: skip
            self.joints.setdefault(b, []).append(record)
            moved = [m for m in members if in_subtree(m, b)]
            self.shares.append((record, moved, sum(self.mass[m] for m in moved)))
        self.qpos0 = np.array(model.qpos0, dtype=float)

    def __call__(self, qpos: np.ndarray, qvel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(centre of mass [B, 3], its velocity [B, 3])."""
        q = qpos - self.qpos0
        zero = np.zeros(q.shape[0])
        # each body's frame: angle about y (a rotation by a maps (x, z) to
        # (x cos a + z sin a, -x sin a + z cos a)) and origin (x, z)
        angle, x, z = {0: zero}, {0: zero}, {0: zero}
        cos_sin = {0: (zero + 1, zero)}
        xi, xz = {}, {}  # the bodies' centres of mass
        frames = {}  # joint -> (world direction, world anchor), MuJoCo's xaxis and xanchor

        def rotate(c, s, u, w):
            return c * u + s * w, c * w - s * u

        for b in range(1, self.nbody):
            up = self.parent[b]
            c, s = cos_sin[up]
            dx, dz = rotate(c, s, *self.offset[b])
            bx, bz = x[up] + dx, z[up] + dz
            a = angle[up] + self.turn[b] if self.turn[b] else angle[up]
            cs = (np.cos(a), np.sin(a)) if self.turn[b] else (c, s)
            for j, kind, qa, _dof, direction, anchor in self.joints.get(b, []):
                c, s = cs
                ax, az = rotate(c, s, *direction) if kind == _SLIDE else direction
                hx, hz = rotate(c, s, *anchor)
                hx, hz = bx + hx, bz + hz
                frames[j] = (ax, az, hx, hz)
                if kind == _SLIDE:
                    bx, bz = bx + ax * q[:, qa], bz + az * q[:, qa]
                else:  # about +y or -y through the anchor
                    turn = direction[0] * q[:, qa]
                    a = a + turn
                    tc, ts = np.cos(turn), np.sin(turn)
                    bx, bz = rotate(tc, ts, bx - hx, bz - hz)
                    bx, bz = bx + hx, bz + hz
                    cs = (np.cos(a), np.sin(a))
            angle[b], x[b], z[b], cos_sin[b] = a, bx, bz, cs
            ix, iz = rotate(*cs, *self.inertial[b])
            xi[b], xz[b] = bx + ix, bz + iz
        com = np.zeros((q.shape[0], 3))
        com[:, 0] = sum(self.mass[b] * xi[b] for b in self.members) / self.total
        com[:, 2] = sum(self.mass[b] * xz[b] for b in self.members) / self.total
        momentum = np.zeros((q.shape[0], 3))
        for (j, kind, _qa, dof, direction, _anchor), moved, mass in self.shares:
            if not moved:
                continue
            ax, az, hx, hz = frames[j]
            if kind == _SLIDE:
                px, pz = mass * ax, mass * az
            else:  # (0, ±1, 0) × (Σ m p − M anchor)
                dx = sum(self.mass[m] * xi[m] for m in moved) - mass * hx
                dz = sum(self.mass[m] * xz[m] for m in moved) - mass * hz
                px, pz = direction[0] * dz, -direction[0] * dx
            momentum[:, 0] += px * qvel[:, dof]
            momentum[:, 2] += pz * qvel[:, dof]
        return com, momentum / self.total
