"""What a MANO model is: the `ManoModel` pytree, its sizes, the keys a model file holds, and the error
a bad file raises."""

from __future__ import annotations

import jax
from flax import struct

NUM_VERTICES = 778
NUM_JOINTS = 16
NUM_HAND_POSE = 45  # 15 finger joints x 3

# MANO's kinematic tree: parent of each of the 16 joints (root = -1).
MANO_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)

# The arrays every MANO file holds: the official pickles' keys (docs/design.md §7). `model_from_arrays`
# requires them; `tip_ids`, `pose_axes` and `pose_limits` are optional extras.
FILE_KEYS = (
    'v_template',
    'shapedirs',
    'posedirs',
    'J_regressor',
    'weights',
    'kintree_table',
    'f',
    'hands_components',
    'hands_mean',
)


class ManoFileError(ValueError):
  """A MANO model file is missing, unreadable, unsafe or has the wrong content."""


@struct.dataclass
class ManoModel:
  """MANO model arrays (a JAX pytree; ``parents``, ``side`` and ``tip_ids`` are static).

  Attributes:
    v_template: (778, 3) rest-pose template vertices, metres.
    shapedirs: (778, 3, S) shape blend shapes (S = 10 for MANO).
    posedirs: (778, 3, 135) pose-corrective blend shapes.
    J_regressor: (16, 778) dense joint regressor.
    weights: (778, 16) skinning weights.
    faces: (F, 3) int32 triangles (1538 for MANO, 1552 for the closed procedural hand).
    hands_components: (45, 45) PCA basis of the finger pose, one component per row.
    hands_mean: (45,) mean finger pose (added when ``flat_hand_mean=False``).
    parents: static tuple of 16 parent indices (root -1).
    side: static 'right' or 'left'.
    tip_ids: static (thumb, index, middle, ring, little) tip vertex ids, or None when the file has
      none (the official MANO files; use :data:`TIP_IDS` then).
    pose_axes: optional (15, 3, 3) per finger joint the (flex, abduction, twist) unit axes in the
      rest frame (procedural hand only).
    pose_limits: optional (15, 3, 2) per finger joint and axis [min, max] angle, radians.
  """

  v_template: jax.Array
  shapedirs: jax.Array
  posedirs: jax.Array
  J_regressor: jax.Array
  weights: jax.Array
  faces: jax.Array
  hands_components: jax.Array
  hands_mean: jax.Array
  parents: tuple[int, ...] = struct.field(pytree_node=False, default=MANO_PARENTS)
  side: str = struct.field(pytree_node=False, default='right')
  tip_ids: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
  pose_axes: jax.Array | None = None
  pose_limits: jax.Array | None = None

  @property
  def num_betas(self) -> int:
    return int(self.shapedirs.shape[-1])

  @property
  def num_faces(self) -> int:
    return int(self.faces.shape[0])
