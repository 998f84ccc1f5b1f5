"""Training losses of DiffHand (paper Eqs. 9-13, docs/design.md §5), pure JAX: differentiable and jit-safe.

L = L_vertex + λ_joint · L_joint + λ_smooth · L_smooth, with λ_joint = 1 and λ_smooth = 0.05 by default.

Reduction convention, the same for every term (docs/design.md §5: means rather than sums, so that λ keeps its
meaning when the number of vertices, joints or faces changes):

* a point term is the **squared Euclidean distance** of each point (summed over its xyz or xy
  coordinates), then **averaged over points** (vertices / joints) and over the batch. With
  `distance='euclidean'` it is the distance itself, not squared (an option, not the paper's: the
  squared error lets a few grossly wrong hands dominate the gradient; docs/design.md §11);
* L_smooth sums |e · n^GT| over the 3 edges of a face, then averages over faces and over the batch.

So `vertex_loss` is the paper's Eq. 10 divided by N, `joint_loss` is Eq. 11 divided by M (its 3D and 2D
parts returned separately; L_joint = loss_3d + loss_2d), and `smooth_loss` is Eq. 12 divided by F.

Per-sample weights (`has_3d`, `has_2d`, or `mask`; bool or float, shape (B,)) give a weighted mean over
the batch: sum(w · l) / sum(w), and 0 when every weight is 0 (a batch with no labels of that kind).

Units: the losses take whatever space they are given; the training step passes model space (root-relative
metres / `vertex_scale`, docs/design.md §2), with predictions and targets in the same space.

2D joints live in **normalised crop coordinates**: u = 2 · x_pixel / crop_width − 1 and
v = 2 · y_pixel / crop_height − 1, so the crop spans [−1, 1] with (−1, −1) its top-left corner (x right,
y down, as the OpenCV camera frame). The weak-perspective camera (s, tx, ty) maps 3D joints there by
u = s · X + tx, v = s · Y + ty (`project_weak_perspective`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from diffhand_jax.geometry import conventions

LAMBDA_JOINT = 1.0
LAMBDA_SMOOTH = 0.05
# Guards the normal of a zero-area ground-truth face, and the distance's gradient at 0.
_TINY = 1e-12
POINT_DISTANCES = ('squared', 'euclidean')


# ---------------------------------------------------------------------------------------------------
# Shape checks (static shapes, so they also run under jit)
# ---------------------------------------------------------------------------------------------------


def _check_shape(func: str, name: str, array, expected: tuple) -> None:
  """Raises ValueError unless `array.shape` matches `expected` (None matches any size)."""
  shape = tuple(getattr(array, 'shape', ()))
  if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
    sizes = ['*' if e is None else str(e) for e in expected]
    shown = '(' + ', '.join(sizes) + (',)' if len(sizes) == 1 else ')')
    raise ValueError(f'losses.{func}: {name} must have shape {shown}, got {shape}')


def _check_weights(func: str, name: str, weights, batch: int) -> None:
  if weights is not None:
    _check_shape(func, name, weights, (batch,))


def _weighted_batch_mean(per_sample: jax.Array, weights) -> jax.Array:
  """Mean of (B,) values, weighted by (B,) `weights` (None: plain mean); 0 when all weights are 0."""
  if weights is None:
    return jnp.mean(per_sample)
  weights = jnp.asarray(weights, per_sample.dtype)
  total = jnp.sum(weights)
  has_any = total > 0
  return jnp.where(has_any, jnp.sum(weights * per_sample) / jnp.where(has_any, total, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------


def regress_joints(verts: jax.Array, joint_regressor: jax.Array) -> jax.Array:
  """J = W · V: verts (B, N, 3), joint_regressor W (J, N) -> joints (B, J, 3)."""
  _check_shape('regress_joints', 'verts', verts, (None, None, 3))
  _check_shape('regress_joints', 'joint_regressor', joint_regressor, (None, verts.shape[1]))
  return conventions.regress_joints(verts, joint_regressor)


def project_weak_perspective(joints: jax.Array, camera: jax.Array) -> jax.Array:
  """Weak-perspective projection: joints (B, J, 3), camera (B, 3) = (s, tx, ty) -> (B, J, 2).

  u = s · X + tx, v = s · Y + ty, in normalised crop coordinates ([-1, 1] over the crop).
  """
  _check_shape('project_weak_perspective', 'joints', joints, (None, None, 3))
  _check_shape('project_weak_perspective', 'camera', camera, (joints.shape[0], 3))
  scale = camera[:, None, 0:1]  # (B, 1, 1)
  translation = camera[:, None, 1:3]  # (B, 1, 2)
  return scale * joints[..., :2] + translation


def face_normals(verts: jax.Array, faces: jax.Array) -> jax.Array:
  """Unit normals (B, F, 3) of the faces (F, 3) of verts (B, N, 3); zero for zero-area faces.

  The normal follows the right-hand rule over (v0, v1, v2).
  """
  corner0, corner1, corner2 = (verts[:, faces[:, k]] for k in range(3))
  normals = jnp.cross(corner1 - corner0, corner2 - corner0)
  squared_norm = jnp.sum(jnp.square(normals), -1, keepdims=True)
  return normals * jax.lax.rsqrt(jnp.maximum(squared_norm, _TINY))


# ---------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------


def point_distance(pred: jax.Array, target: jax.Array, distance: str = 'squared') -> jax.Array:
  """Per-point error over the last axis, (..., C) → (...): |p − q|² ('squared', the paper's) or
  |p − q| ('euclidean', with a gradient that stays finite at 0)."""
  if distance not in POINT_DISTANCES:
    raise ValueError(f'losses: distance must be one of {POINT_DISTANCES}, got {distance!r}')
  squared = jnp.sum(jnp.square(pred - target), -1)
  return squared if distance == 'squared' else jnp.sqrt(squared + _TINY)


def vertex_loss(
    pred_verts: jax.Array, gt_verts: jax.Array, mask=None, *, distance: str = 'squared'
) -> jax.Array:
  """L_vertex: the vertex error (`point_distance`: squared by default), averaged over vertices and
  batch. Scalar.

  pred_verts, gt_verts: (B, N, 3). mask: None, per-sample weights (B,) (e.g. has_3d), or per-vertex
  weights (B, N) (weighted mean over all weighted vertices of the batch). distance: `point_distance`.
  """
  func = 'vertex_loss'
  _check_shape(func, 'pred_verts', pred_verts, (None, None, 3))
  _check_shape(func, 'gt_verts', gt_verts, pred_verts.shape)
  error = point_distance(pred_verts, gt_verts, distance)  # (B, N)
  if mask is not None and getattr(mask, 'ndim', None) == 2:
    _check_shape(func, 'mask', mask, error.shape)
    weights = jnp.asarray(mask, error.dtype)
    total = jnp.sum(weights)
    has_any = total > 0
    return jnp.where(has_any, jnp.sum(weights * error) / jnp.where(has_any, total, 1.0), 0.0)
  _check_weights(func, 'mask', mask, pred_verts.shape[0])
  return _weighted_batch_mean(jnp.mean(error, -1), mask)


def joint_loss(
    pred_verts: jax.Array,
    gt_joints_3d: jax.Array,
    joint_regressor: jax.Array,
    camera: jax.Array,
    gt_joints_2d: jax.Array,
    has_2d=None,
    *,
    has_3d=None,
    distance: str = 'squared',
) -> tuple[jax.Array, jax.Array]:
  """L_joint parts: (loss_3d, loss_2d), each a scalar; L_joint = loss_3d + loss_2d.

  pred_verts (B, N, 3); gt_joints_3d (B, J, 3) in the same space as pred_verts; joint_regressor W (J, N)
  (MANO's J_regressor plus the tip vertices, in 21-order); camera (B, 3) = (s, tx, ty); gt_joints_2d
  (B, J, 2) in normalised crop coordinates. has_2d / has_3d: optional per-sample weights (B,).
  The predicted joints are J = W · V̂; the 2D joints are J projected by `project_weak_perspective`.
  distance: `point_distance`, for both parts.
  """
  func = 'joint_loss'
  _check_shape(func, 'pred_verts', pred_verts, (None, None, 3))
  batch, num_verts, _ = pred_verts.shape
  _check_shape(func, 'joint_regressor', joint_regressor, (None, num_verts))
  num_joints = joint_regressor.shape[0]
  _check_shape(func, 'gt_joints_3d', gt_joints_3d, (batch, num_joints, 3))
  _check_shape(func, 'camera', camera, (batch, 3))
  _check_shape(func, 'gt_joints_2d', gt_joints_2d, (batch, num_joints, 2))
  _check_weights(func, 'has_2d', has_2d, batch)
  _check_weights(func, 'has_3d', has_3d, batch)
  pred_joints = regress_joints(pred_verts, joint_regressor)
  error_3d = jnp.mean(point_distance(pred_joints, gt_joints_3d, distance), -1)  # (B,)
  pred_joints_2d = project_weak_perspective(pred_joints, camera)
  error_2d = jnp.mean(point_distance(pred_joints_2d, gt_joints_2d, distance), -1)  # (B,)
  return _weighted_batch_mean(error_3d, has_3d), _weighted_batch_mean(error_2d, has_2d)


def smooth_loss(
    pred_verts: jax.Array, gt_verts: jax.Array, faces: jax.Array, mask=None
) -> jax.Array:
  """L_smooth: Σ_j |e_{f,j} · n_f^GT| averaged over faces and batch. Scalar.

  e_{f,j} are the three edges of face f on the predicted mesh, n_f^GT the unit normal of that face on the
  ground-truth mesh (no gradient flows into it). Zero when the prediction equals the ground truth or
  differs from it by a translation; positive when a face tilts out of its GT plane.
  pred_verts, gt_verts: (B, N, 3); faces: int (F, 3); mask: optional per-sample weights (B,).
  """
  func = 'smooth_loss'
  _check_shape(func, 'pred_verts', pred_verts, (None, None, 3))
  _check_shape(func, 'gt_verts', gt_verts, pred_verts.shape)
  _check_shape(func, 'faces', faces, (None, 3))
  _check_weights(func, 'mask', mask, pred_verts.shape[0])
  faces = jnp.asarray(faces, jnp.int32)
  gt_normals = jax.lax.stop_gradient(face_normals(gt_verts, faces))  # (B, F, 3)
  corners = [pred_verts[:, faces[:, k]] for k in range(3)]  # 3 x (B, F, 3)
  edges = jnp.stack([corners[1] - corners[0], corners[2] - corners[1], corners[0] - corners[2]], 2)
  per_face = jnp.sum(jnp.abs(jnp.einsum('bfjc,bfc->bfj', edges, gt_normals)), -1)  # (B, F)
  return _weighted_batch_mean(jnp.mean(per_face, -1), mask)


def orientation_loss(
    pred_orientation: jax.Array, gt_joints_3d: jax.Array, has_3d=None
) -> jax.Array:
  """L_orientation: squared error of a predicted global orientation (B, 6) against the truth's finger
  axis and palm normal (`conventions.orientation_frame` of gt_joints_3d (B, 21, 3)), summed over the six
  numbers, averaged over the batch. Scalar. An auxiliary term of this project, not the paper's."""
  _check_shape('orientation_loss', 'pred_orientation', pred_orientation, (None, 6))
  target = conventions.orientation_frame(gt_joints_3d.astype(jnp.float32))
  per_sample = jnp.sum(jnp.square(pred_orientation - target), -1)
  return _weighted_batch_mean(per_sample, has_3d)


def total_loss(
    pred_verts: jax.Array,
    gt_verts: jax.Array,
    gt_joints_3d: jax.Array,
    gt_joints_2d: jax.Array,
    camera: jax.Array,
    joint_regressor: jax.Array,
    faces: jax.Array,
    *,
    has_3d=None,
    has_2d=None,
    lambda_joint: float = LAMBDA_JOINT,
    lambda_smooth: float = LAMBDA_SMOOTH,
    orientation: jax.Array | None = None,
    lambda_orientation: float = 0.0,
    distance: str = 'squared',
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L = L_vertex + λ_joint · (L_joint3d + L_joint2d) + λ_smooth · L_smooth (paper Eq. 13), plus
  λ_orientation · L_orientation when an `orientation` (B, 6) prediction is given (`orientation_loss`).

  Shapes as in `vertex_loss`, `joint_loss` and `smooth_loss`. has_3d (B,) weights every term that needs
  3D ground truth (vertices, 3D joints, smoothness); has_2d (B,) weights the 2D joint term. distance:
  `point_distance` of the vertex and joint terms ('squared' is Eq. 13's).
  Returns (loss, parts) with parts = {'vertex', 'joint_3d', 'joint_2d', 'joint', 'smooth', 'total'}.
  """
  _check_shape('total_loss', 'pred_verts', pred_verts, (None, None, 3))
  _check_weights('total_loss', 'has_3d', has_3d, pred_verts.shape[0])
  _check_weights('total_loss', 'has_2d', has_2d, pred_verts.shape[0])
  loss_vertex = vertex_loss(pred_verts, gt_verts, has_3d, distance=distance)
  loss_3d, loss_2d = joint_loss(
      pred_verts,
      gt_joints_3d,
      joint_regressor,
      camera,
      gt_joints_2d,
      has_2d,
      has_3d=has_3d,
      distance=distance,
  )
  parts = {
      'vertex': loss_vertex,
      'joint_3d': loss_3d,
      'joint_2d': loss_2d,
      'smooth': smooth_loss(pred_verts, gt_verts, faces, has_3d),
  }
  if orientation is not None:
    parts['orientation'] = orientation_loss(orientation, gt_joints_3d, has_3d)
  parts = combine_parts(
      parts,
      lambda_joint=lambda_joint,
      lambda_smooth=lambda_smooth,
      lambda_orientation=lambda_orientation,
  )
  return parts['total'], parts


# The per-sample weights each term of `total_loss` is a weighted mean over. Gradient accumulation
# weights each micro-batch's terms by its share of these (training/step.py).
PART_WEIGHTS = {
    'vertex': 'has_3d',
    'joint_3d': 'has_3d',
    'joint_2d': 'has_2d',
    'smooth': 'has_3d',
    'orientation': 'has_3d',
}


def combine_parts(
    parts: dict[str, jax.Array],
    *,
    lambda_joint: float = LAMBDA_JOINT,
    lambda_smooth: float = LAMBDA_SMOOTH,
    lambda_orientation: float = 0.0,
) -> dict[str, jax.Array]:
  """`parts` (the terms of `PART_WEIGHTS`; 'orientation' optional) with 'joint' = joint_3d + joint_2d
  and 'total' = L_vertex + λ_joint · L_joint + λ_smooth · L_smooth (Eq. 13) [+ λ_orientation ·
  L_orientation] added: the one place the terms are combined."""
  parts = dict(parts)
  parts['joint'] = parts['joint_3d'] + parts['joint_2d']
  total = parts['vertex'] + lambda_joint * parts['joint'] + lambda_smooth * parts['smooth']
  if 'orientation' in parts:
    total = total + lambda_orientation * parts['orientation']
  parts['total'] = total
  return parts


# ---------------------------------------------------------------------------------------------------
# Which timesteps the diffusion objective is averaged over
# ---------------------------------------------------------------------------------------------------

TIMESTEP_SAMPLINGS = ('uniform', 'power')


def sample_timesteps(
    key: jax.Array,
    batch_size: int,
    num_timesteps: int,
    method: str = 'uniform',
    power: float = 1.0,
    top_fraction: float = 0.0,
) -> jax.Array:
  """Training timesteps t (batch_size,) int32 in [0, T). The loss is an expectation over t, so this
  distribution is how the objective weights the noise levels.

  * 'uniform' (the paper's, docs/design.md §3): t ~ U{0, …, T−1}, exactly `jax.random.randint(key, (B,), 0, T)`.
  * 'power': t = T − 1 − ⌊T · u^power⌋ with u ~ U[0, 1): power = 1 is uniform in distribution, power > 1
    puts more weight on high t, P(t ≥ T − 1 − j) = ((j + 1)/T)^(1/power). With x̂_0 prediction and a
    few DDIM steps that start at t = T − 1, the high-t predictions (where x_t carries little signal and the
    image decides the mesh) set the result; power = 2 trains about 3× more often on the top 10 % of t.

  ``top_fraction`` = q > 0 then moves each example, with probability q, to t = T − 1, the step where
  sampling starts from pure noise. Why: with the cosine schedule ᾱ_t is still 2·10⁻⁴ at t = 990, and
  summed over 778 vertices that much signal tells a matched filter which way x_0 faces. So below the
  last few steps the decoder can read the hand's global orientation off x_t, and only ~1% of uniform
  draws teach the image to decide it; at sampling time the first step has no x_0 in it, and the noise
  picks the orientation (docs/experiments.md, "Learning which side faces the camera").
  """
  if method not in TIMESTEP_SAMPLINGS:
    raise ValueError(
        f'losses.sample_timesteps: method must be one of {TIMESTEP_SAMPLINGS} '
        f'(config.loss.timestep_sampling), got {method!r}'
    )
  if not 0.0 <= top_fraction <= 1.0:
    raise ValueError(
        'losses.sample_timesteps: top_fraction must be in [0, 1] (config.loss.timestep_top_fraction), '
        f'got {top_fraction!r}'
    )
  if method == 'uniform':
    t = jax.random.randint(key, (batch_size,), 0, num_timesteps)
  else:
    if not power > 0:
      raise ValueError(
          f'losses.sample_timesteps: power must be > 0 (config.loss.timestep_power), got {power!r}'
      )
    u = jax.random.uniform(key, (batch_size,), jnp.float32)
    steps_from_top = jnp.floor(num_timesteps * u**power).astype(jnp.int32)
    t = num_timesteps - 1 - jnp.clip(steps_from_top, 0, num_timesteps - 1)
  if top_fraction > 0:
    # A key of its own, so that q = 0 keeps the draws above exactly (and resumes bit-identical).
    top = jax.random.uniform(jax.random.fold_in(key, 1), (batch_size,)) < top_fraction
    t = jnp.where(top, num_timesteps - 1, t)
  return t
