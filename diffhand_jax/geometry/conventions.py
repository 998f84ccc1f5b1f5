"""The hand conventions, in one place (docs/design.md §2).

* the 21-joint order (FreiHAND/OpenPose): wrist, then thumb, index, middle, ring and little, each
  from base to tip;
* `TIP_IDS`: each dataset's fingertip vertices (thumb, index, middle, ring, little) on MANO's mesh;
* `MANO16_TO_21`: MANO's 16 joints followed by the 5 tips → the 21-order. HO-3D lists its 21 joints
  in exactly that concatenated order, so the same index maps HO-3D's order to ours;
* `OPENGL_FLIP`: OpenGL (x right, y up, z backward) ↔ OpenCV (x right, y down, z forward) is
  diag(1, -1, -1), its own inverse;
* `regress_joints`: J = W·V, the 21 joints regressed from a mesh (the paper's Eq. 9).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NUM_JOINTS = 21
JOINT_NAMES = (
    'wrist',
    'thumb_1',
    'thumb_2',
    'thumb_3',
    'thumb_tip',
    'index_1',
    'index_2',
    'index_3',
    'index_tip',
    'middle_1',
    'middle_2',
    'middle_3',
    'middle_tip',
    'ring_1',
    'ring_2',
    'ring_3',
    'ring_tip',
    'little_1',
    'little_2',
    'little_3',
    'little_tip',
)
ROOT_JOINT = 0  # the wrist
# The palm plane (wrist, index MCP, little MCP) and the finger axis (wrist to middle MCP): the hand's
# global orientation as `metrics.palm_normal` and `orientation_frame` read it.
PALM_PLANE_JOINTS = tuple(JOINT_NAMES.index(name) for name in ('wrist', 'index_1', 'little_1'))
FINGER_AXIS_JOINTS = tuple(JOINT_NAMES.index(name) for name in ('wrist', 'middle_1'))

# Fingertip vertex ids (thumb, index, middle, ring, little) per dataset.
TIP_IDS: dict[str, tuple[int, int, int, int, int]] = {
    'freihand': (744, 320, 443, 555, 672),
    'dexycb': (745, 317, 444, 556, 673),
    'ho3d': (728, 353, 442, 576, 694),
}

# Index into concat(MANO16 joints, 5 tips (thumb, index, middle, ring, little)) giving the 21-order.
MANO16_TO_21: tuple[int, ...] = (
    0,
    13,
    14,
    15,
    16,
    1,
    2,
    3,
    17,
    4,
    5,
    6,
    18,
    10,
    11,
    12,
    19,
    7,
    8,
    9,
    20,
)
# HO-3D's joint order is that concatenation: joints_21 = joints_ho3d[HO3D_TO_21], and back with TO_HO3D.
HO3D_TO_21 = np.asarray(MANO16_TO_21)
TO_HO3D = np.argsort(HO3D_TO_21)

# Multiply points (..., 3) by this to go from OpenGL's camera frame to OpenCV's, or back.
OPENGL_FLIP = np.array([1.0, -1.0, -1.0])


def regress_joints(vertices: Any, joint_regressor: Any) -> Any:
  """J = W·V: vertices (..., N, 3), W (21, N) → joints (..., 21, 3).

  JAX arrays (and tracers, so under jit) stay in JAX and in their dtype; anything else is computed in
  numpy float64, as the metrics are.
  """
  if isinstance(vertices, jax.Array):
    return jnp.einsum('jn,...nc->...jc', joint_regressor, vertices)
  return np.einsum(
      'jn,...nc->...jc', np.asarray(joint_regressor, np.float64), np.asarray(vertices, np.float64)
  )


def orientation_frame(joints):
  """The hand's global orientation as two unit vectors, (..., 21, 3) → (..., 6): the finger axis (wrist
  to middle MCP) and the palm normal n = (index MCP − wrist) × (little MCP − wrist), which points out of
  the palm of a right hand (and of a left hand mirrored into one). jax or numpy arrays."""
  xp = jnp if isinstance(joints, jax.Array) else np
  wrist, index, little = (joints[..., j, :] for j in PALM_PLANE_JOINTS)
  axis = joints[..., FINGER_AXIS_JOINTS[1], :] - joints[..., FINGER_AXIS_JOINTS[0], :]
  normal = xp.cross(index - wrist, little - wrist)
  unit = lambda v: v / xp.maximum(xp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  return xp.concatenate([unit(axis), unit(normal)], axis=-1)
