"""The MANO layer: linear blend skinning with shape and pose blend shapes (`forward`, the smplx MANO
layer), and the joints: MANO's 16, the 21 with the fingertips (`joints21`), and the matrix W that
regresses them from a mesh (`joint_regressor21`).

Conventions (docs/design.md §2): metres; MANO's 16 joints in MANO order (0 wrist; 1-3 index; 4-6
middle; 7-9 little; 10-12 ring; 13-15 thumb); the 21-joint order is FreiHAND/OpenPose (wrist, thumb,
index, middle, ring, little, each base -> tip); pose vectors are axis-angle, 48 = 3 global + 15 x 3
finger values, relative to the parent joint, as in MANO / smplx / manopth.
"""

from __future__ import annotations

from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax.geometry import conventions
from diffhand_jax.geometry.mano.model import NUM_HAND_POSE, NUM_JOINTS, NUM_VERTICES, ManoModel

# The conventions mano re-exports (public names since the first release).
TIP_IDS = conventions.TIP_IDS
MANO16_TO_21 = conventions.MANO16_TO_21


def rodrigues(rotvec: jax.Array) -> jax.Array:
  """Axis-angle (..., 3) -> rotation matrices (..., 3, 3); exact, with finite gradients at 0."""
  theta2 = jnp.sum(rotvec * rotvec, axis=-1)[..., None, None]
  small = theta2 < 1e-12
  theta2_safe = jnp.where(small, 1.0, theta2)
  theta = jnp.sqrt(theta2_safe)
  sin_over = jnp.where(small, 1.0 - theta2 / 6.0, jnp.sin(theta) / theta)
  # (1 - cos t) / t^2 written as 2 sin^2(t/2) / t^2 to avoid cancellation in float32.
  cos_term = jnp.where(small, 0.5 - theta2 / 24.0, 2.0 * jnp.sin(theta / 2.0) ** 2 / theta2_safe)
  x, y, z = rotvec[..., 0], rotvec[..., 1], rotvec[..., 2]
  zero = jnp.zeros_like(x)
  skew = jnp.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(
      rotvec.shape[:-1] + (3, 3)
  )
  eye = jnp.eye(3, dtype=rotvec.dtype)
  return eye + sin_over * skew + cos_term * (skew @ skew)


def _joint_levels(parents: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
  """Groups joints (except the root) by depth so each level is one batched matmul."""
  depth = [0] * len(parents)
  for joint in range(1, len(parents)):
    depth[joint] = depth[parents[joint]] + 1
  levels = []
  for level in range(1, max(depth) + 1):
    joints = np.array([j for j in range(len(parents)) if depth[j] == level])
    levels.append((joints, np.array([parents[j] for j in joints])))
  return levels


def full_pose(
    model: ManoModel,
    pose: jax.Array,
    *,
    flat_hand_mean: bool = False,
    use_pca: bool = False,
    num_pca_comps: int | None = None,
) -> jax.Array:
  """(B, 48) axis-angle pose with the PCA expansion and the hand mean applied (as smplx / manopth)."""
  global_orient, hand = pose[:, :3], pose[:, 3:]
  if use_pca:
    ncomps = hand.shape[-1] if num_pca_comps is None else num_pca_comps
    if hand.shape[-1] != ncomps or not 1 <= ncomps <= model.hands_components.shape[0]:
      raise ValueError(
          f'with use_pca the pose must be (B, 3 + num_pca_comps) with num_pca_comps <= '
          f'{model.hands_components.shape[0]}; got pose {pose.shape} and '
          f'num_pca_comps={num_pca_comps}'
      )
    hand = hand @ model.hands_components[:ncomps].astype(hand.dtype)
  elif hand.shape[-1] != NUM_HAND_POSE:
    raise ValueError(f'pose must be (B, 48) axis-angle (or set use_pca=True); got {pose.shape}')
  if not flat_hand_mean:
    hand = hand + model.hands_mean.astype(hand.dtype)
  return jnp.concatenate([global_orient, hand], axis=-1)


def forward(
    model: ManoModel,
    pose: jax.Array,
    betas: jax.Array | None = None,
    *,
    flat_hand_mean: bool = False,
    use_pca: bool = False,
    num_pca_comps: int | None = None,
    trans: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """MANO linear blend skinning with shape and pose blend shapes (the smplx MANO layer).

  Args:
    model: a :class:`ManoModel`.
    pose: (B, 48) axis-angle (3 global + 45 finger values), or (B, 3 + ncomps) with ``use_pca``.
      A single unbatched (48,) pose is accepted too (then the outputs have no batch axis).
    betas: (B, S') or (S',) shape coefficients, S' <= model's S (missing ones are zero); or None.
    flat_hand_mean: if False (MANO's default), ``hands_mean`` is added to the finger pose.
    use_pca: the finger pose holds PCA coefficients on ``hands_components`` (manopth semantics: also
      with 45 components).
    num_pca_comps: number of PCA coefficients; defaults to ``pose.shape[-1] - 3``.
    trans: optional (B, 3) translation added to vertices and joints.

  Returns:
    vertices (B, 778, 3) and joints (B, 16, 3) in metres, MANO joint order. jit- and vmap-safe.
  """
  pose = jnp.asarray(pose)
  unbatched = pose.ndim == 1
  if unbatched:
    pose = pose[None]
  chex.assert_rank(pose, 2)
  dtype = jnp.result_type(pose.dtype, jnp.float32)
  pose = pose.astype(dtype)
  batch = pose.shape[0]
  num_betas_model = model.shapedirs.shape[-1]
  if betas is None:
    betas = jnp.zeros((batch, num_betas_model), dtype)
  betas = jnp.asarray(betas, dtype)
  if betas.ndim == 1:
    betas = betas[None]
  chex.assert_rank(betas, 2)
  if betas.shape[-1] > num_betas_model:
    raise ValueError(
        f'betas has {betas.shape[-1]} coefficients but the model has {num_betas_model}'
    )
  betas = jnp.broadcast_to(betas, (batch, betas.shape[-1]))

  pose48 = full_pose(
      model, pose, flat_hand_mean=flat_hand_mean, use_pca=use_pca, num_pca_comps=num_pca_comps
  )
  num_joints = len(model.parents)
  shapedirs = model.shapedirs[..., : betas.shape[-1]].astype(dtype)
  v_shaped = model.v_template.astype(dtype) + jnp.einsum('bs,vcs->bvc', betas, shapedirs)
  joints_rest = jnp.einsum('jv,bvc->bjc', model.J_regressor.astype(dtype), v_shaped)

  rotations = rodrigues(pose48.reshape(batch, num_joints, 3))
  pose_feature = (rotations[:, 1:] - jnp.eye(3, dtype=dtype)).reshape(batch, -1)
  v_posed = v_shaped + jnp.einsum('bk,vck->bvc', pose_feature, model.posedirs.astype(dtype))

  # Kinematic chain: global rotation G_j = G_parent R_j, global joint t_j = G_parent (J_j - J_p) + t_p.
  parents = np.array(model.parents)
  rel_joints = joints_rest.at[:, 1:].add(-joints_rest[:, parents[1:]])
  global_rot = rotations
  global_trans = rel_joints
  for joints, joint_parents in _joint_levels(model.parents):
    parent_rot = global_rot[:, joint_parents]
    global_trans = global_trans.at[:, joints].set(
        jnp.einsum('bjik,bjk->bji', parent_rot, rel_joints[:, joints])
        + global_trans[:, joint_parents]
    )
    global_rot = global_rot.at[:, joints].set(parent_rot @ rotations[:, joints])
  posed_joints = global_trans
  # Skinning transforms map rest-pose points: x -> G_j (x - J_j) + t_j.
  skin_trans = global_trans - jnp.einsum('bjik,bjk->bji', global_rot, joints_rest)
  weights = model.weights.astype(dtype)
  vert_rot = jnp.einsum('vj,bjik->bvik', weights, global_rot)
  vert_trans = jnp.einsum('vj,bji->bvi', weights, skin_trans)
  vertices = jnp.einsum('bvik,bvk->bvi', vert_rot, v_posed) + vert_trans

  if trans is not None:
    trans = jnp.asarray(trans, dtype).reshape(-1, 1, 3)
    vertices = vertices + trans
    posed_joints = posed_joints + trans
  if unbatched:
    return vertices[0], posed_joints[0]
  return vertices, posed_joints


def _resolve_tips(tip_ids: Any) -> tuple[int, ...]:
  if isinstance(tip_ids, str):
    if tip_ids not in TIP_IDS:
      raise ValueError(f'unknown tip id set {tip_ids!r}; known: {sorted(TIP_IDS)}')
    return TIP_IDS[tip_ids]
  tips = tuple(int(t) for t in np.asarray(tip_ids).reshape(-1))
  if len(tips) != 5:
    raise ValueError(
        f'tip_ids must be 5 vertex ids (thumb, index, middle, ring, little), got {tips}'
    )
  return tips


def joints21(vertices: jax.Array, joints16: jax.Array, tip_ids: Any) -> jax.Array:
  """MANO joints plus fingertip vertices in the 21-order (wrist, thumb, index, middle, ring, little).

  Args:
    vertices: (..., 778, 3).
    joints16: (..., 16, 3) in MANO order.
    tip_ids: 5 vertex ids (thumb, index, middle, ring, little), or a key of :data:`TIP_IDS`.

  Returns:
    (..., 21, 3).
  """
  tips = _resolve_tips(tip_ids)
  chex.assert_equal(vertices.shape[-2:], (NUM_VERTICES, 3))
  chex.assert_equal(joints16.shape[-2:], (NUM_JOINTS, 3))
  tip_points = jnp.take(vertices, jnp.asarray(tips), axis=-2)
  stacked = jnp.concatenate([joints16, tip_points.astype(joints16.dtype)], axis=-2)
  return jnp.take(stacked, jnp.asarray(MANO16_TO_21), axis=-2)


def joint_regressor21(model: ManoModel, tip_ids: Any = None) -> np.ndarray:
  """The (21, 778) matrix W of the paper's Eq. 9: MANO's J_regressor rows plus one-hot tip rows, in
  the 21-order, so that ``W @ V`` = ``joints21(V, J_regressor @ V, tip_ids)`` for any mesh V.

  ``tip_ids`` defaults to the model's own (procedural hand) or FreiHAND's.
  """
  if tip_ids is None:
    tip_ids = model.tip_ids if model.tip_ids is not None else TIP_IDS['freihand']
  tips = _resolve_tips(tip_ids)
  tip_rows = np.zeros((5, NUM_VERTICES), np.float32)
  tip_rows[np.arange(5), np.array(tips)] = 1.0
  stacked = np.concatenate([np.asarray(model.J_regressor, np.float32), tip_rows], axis=0)
  return stacked[np.array(MANO16_TO_21)]


def regress_joints16(model: ManoModel, vertices: jax.Array) -> jax.Array:
  """MANO's J_regressor applied to (posed) vertices: (..., 778, 3) -> (..., 16, 3)."""
  return jnp.einsum('jv,...vc->...jc', model.J_regressor.astype(vertices.dtype), vertices)
