"""MANO parameters from a mesh (`fit`, the inverse of `forward`): a closed-form start by per-joint Kabsch,
then a batched, jitted Levenberg–Marquardt (`solver.py`)."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation

from diffhand_jax.geometry import alignment, conventions
from diffhand_jax.geometry.mano import layer, solver
from diffhand_jax.geometry.mano.model import NUM_JOINTS, NUM_VERTICES, ManoModel

# A joint's rigid segment for the closed-form start: the vertices it moves with a skinning weight above
# this.
_SEGMENT_WEIGHT = 0.8
# mano.fit solves batches larger than this in chunks of this size.
_FIT_CHUNK = 128


@functools.partial(jax.jit, static_argnames=('num_iterations',))
def _fit_parameters(
    model: ManoModel,
    x0: jax.Array,
    targets: jax.Array,
    prior_weights: jax.Array,
    num_iterations: int,
) -> tuple[jax.Array, jax.Array]:
  """Levenberg–Marquardt over x = (pose (48,) absolute, betas (S,), trans (3,)) per sample."""
  num_betas = model.shapedirs.shape[-1]
  mean = model.hands_mean.astype(x0.dtype)

  def residual(x, target):
    pose, betas, trans = x[:48], x[48 : 48 + num_betas], x[48 + num_betas :]
    vertices, _ = layer.forward(
        model, pose[None], betas[None], flat_hand_mean=True, trans=trans[None]
    )
    return jnp.concatenate(
        [
            (vertices[0] - target).reshape(-1),
            prior_weights[0] * (pose[3:] - mean),
            prior_weights[1] * betas,
        ]
    )

  return solver.levenberg_marquardt(residual, x0, targets, num_iterations=num_iterations)


@functools.partial(jax.jit, static_argnames=('num_iterations',))
def _fit_keypoints(
    model: ManoModel,
    x0: jax.Array,
    data: dict[str, jax.Array],
    joint_regressor: jax.Array,
    weights: jax.Array,
    num_iterations: int,
) -> tuple[jax.Array, jax.Array]:
  """Levenberg–Marquardt of x = (pose, betas, trans) per sample against 2D keypoints and the mesh it
  starts from (`fit`'s second stage; the residual's terms are explained there)."""
  num_betas = model.shapedirs.shape[-1]
  mean = model.hands_mean.astype(x0.dtype)

  def root_relative(vertices):
    return vertices - conventions.regress_joints(vertices, joint_regressor)[0]

  def residual(x, problem):
    pose, betas, trans = x[:48], x[48 : 48 + num_betas], x[48 + num_betas :]
    vertices, _ = layer.forward(
        model, pose[None], betas[None], flat_hand_mean=True, trans=trans[None]
    )
    vertices = vertices[0] + problem['centre']
    joints = conventions.regress_joints(vertices, joint_regressor)
    camera = joints @ problem['K'].T
    pixels = camera[:, :2] / camera[:, 2:3]
    shape_error = root_relative(vertices) - root_relative(problem['vertices'])
    return jnp.concatenate(
        [
            weights[0]
            * ((pixels - problem['keypoints']) * problem['metres_per_pixel']).reshape(-1)
            / jnp.sqrt(pixels.shape[0]),
            weights[1] * shape_error.reshape(-1) / jnp.sqrt(vertices.shape[0]),
            weights[2] * (pose[3:] - mean),
            weights[3] * (betas - problem['betas']),
        ]
    )

  return solver.levenberg_marquardt(residual, x0, data, num_iterations=num_iterations)


def _check_keypoint_inputs(keypoints_2d, K, joint_regressor, batch: int):
  keypoints = np.asarray(keypoints_2d, np.float64).reshape(batch, -1, 2)
  K = np.broadcast_to(np.asarray(K, np.float64), (batch, 3, 3))
  regressor = np.asarray(joint_regressor, np.float64)
  if regressor.shape != (keypoints.shape[1], NUM_VERTICES):
    raise ValueError(
        f'mano.fit: joint_regressor must be ({keypoints.shape[1]}, {NUM_VERTICES}) for '
        f'{keypoints.shape[1]} keypoints, got {regressor.shape}'
    )
  if not (np.all(np.isfinite(keypoints)) and np.all(np.isfinite(K))):
    raise ValueError('mano.fit: keypoints_2d or K hold NaN or inf')
  return keypoints, K, regressor


def fit(
    model: ManoModel,
    vertices: Any,
    *,
    flat_hand_mean: bool = False,
    num_iterations: int = 10,
    pose_prior: float = 1e-3,
    shape_prior: float = 1e-4,
    keypoints_2d: Any = None,
    K: Any = None,
    joint_regressor: Any = None,
    keypoint_weight: float = 1.0,
    mesh_prior: float = 0.5,
    keypoint_shape_prior: float = 1e-2,
    keypoint_iterations: int = 15,
) -> dict[str, np.ndarray]:
  """MANO parameters that reproduce a mesh: the inverse of :func:`forward`.

  Args:
    model: the hand model whose topology the mesh has (MANO or the procedural hand, the side the
      mesh shows).
    vertices: (B, 778, 3) (or (778, 3)) metres, in any frame.
    flat_hand_mean: the convention of the returned pose, as in :func:`forward`.
    num_iterations: Levenberg–Marquardt iterations (each costs a forward pass per parameter).
    pose_prior: weight (metres per radian) of a pull of the finger pose towards the model's mean pose;
      shape_prior: of the betas towards 0 (metres per unit). Both are mild: at the defaults a
      1-radian deviation costs as much as a 0.04 mm error on every vertex.
    keypoints_2d: optional (B, J, 2) pixels (J joints in the order of `joint_regressor`'s rows, e.g. a
      detector's 21 landmarks), with K (B, 3, 3) or (3, 3) the camera the mesh's frame belongs to and
      joint_regressor (J, 778) (J = W·V). Then a second stage moves the fitted hand so that its joints
      project onto the keypoints, while keeping it near the mesh it was given: Levenberg–Marquardt
      (`keypoint_iterations`) of
        keypoint_weight² · mean_j |π(K J_j) − k_j|² · (Z/f)²      reprojection, as metres at the hand
        + mesh_prior² · mean_n |(V_n − J_0) − (V̂_n − Ĵ_0)|²      root-relative shape of the given mesh
        + the pose and shape priors above,
      Z the given mesh's wrist depth and f the focal length. The mesh prior keeps the articulation and
      orientation near the given (predicted) mesh; the translation, depth included, is free. The
      result then carries 'reprojection_error_px' (B,), the mean pixel distance of its projected joints
      to the keypoints, and 'error' is the mean vertex distance to the given mesh with both meshes'
      wrists at the origin (the translation is meant to change).

  The pose starts in closed form: each joint's global rotation by Kabsch on the vertices it moves
  most, the local rotations from those; the betas start at 0. Then a batched, jitted Levenberg–Marquardt
  (`geometry/mano/solver.py`) minimises the squared vertex distances plus the priors.

  Returns:
    dict of numpy arrays: 'pose' (B, 48) axis-angle, 'betas' (B, S), 'trans' (B, 3), 'vertices'
    (B, 778, 3) = forward(model, pose, betas, flat_hand_mean=flat_hand_mean, trans=trans)[0], and
    'error' (B,), the mean vertex distance to the input in metres. Without a batch axis in, none out.
  """
  targets = np.asarray(vertices, np.float64)
  unbatched = targets.ndim == 2
  if unbatched:
    targets = targets[None]
  if targets.ndim != 3 or targets.shape[1:] != (NUM_VERTICES, 3):
    raise ValueError(f'mano.fit: vertices must be (B, {NUM_VERTICES}, 3), got {np.shape(vertices)}')
  if not np.all(np.isfinite(targets)):
    raise ValueError('mano.fit: vertices hold NaN or inf')
  batch = len(targets)
  num_betas = model.num_betas
  mean = np.asarray(model.hands_mean, np.float64)
  _check_fit_arguments(
      num_iterations=num_iterations,
      keypoint_iterations=keypoint_iterations,
      pose_prior=pose_prior,
      shape_prior=shape_prior,
      keypoint_weight=keypoint_weight,
      mesh_prior=mesh_prior,
      keypoint_shape_prior=keypoint_shape_prior,
  )
  x0 = _closed_form_start(model, targets)
  # Fit around the mesh's centre, so that float32 keeps sub-millimetre steps far from the origin.
  centre = targets.mean(1)
  x0[:, -3:] -= centre
  centred = targets - centre[:, None]
  priors = jnp.asarray([pose_prior, shape_prior], jnp.float32)
  # Large batches go in chunks of one shape (the last one padded): bounded memory, one compilation.
  chunk = batch if batch <= _FIT_CHUNK else _FIT_CHUNK
  solved = []
  for start in range(0, batch, chunk):
    rows = np.minimum(np.arange(start, start + chunk), batch - 1)
    x, _ = _fit_parameters(
        model,
        jnp.asarray(x0[rows], jnp.float32),
        jnp.asarray(centred[rows], jnp.float32),
        priors,
        int(num_iterations),
    )
    solved.append(np.asarray(x, np.float64)[: min(chunk, batch - start)])
  x = np.concatenate(solved)
  x[:, -3:] += centre
  result = {}
  if keypoints_2d is not None:
    if K is None or joint_regressor is None:
      raise ValueError('mano.fit: keypoints_2d needs K and joint_regressor')
    keypoints, Ks, regressor = _check_keypoint_inputs(keypoints_2d, K, joint_regressor, batch)
    weights = [keypoint_weight, mesh_prior, pose_prior, keypoint_shape_prior]
    x, result['reprojection_error_px'] = _keypoint_stage(
        model, x, targets, keypoints, Ks, regressor, weights, keypoint_iterations
    )
  pose = x[:, :48].copy()
  betas = x[:, 48 : 48 + num_betas]
  trans = x[:, 48 + num_betas :]
  if not flat_hand_mean:
    pose[:, 3:] -= mean
  fitted = np.asarray(
      layer.forward(model, pose, betas, flat_hand_mean=flat_hand_mean, trans=trans)[0], np.float64
  )
  if keypoints_2d is not None:  # the translation was meant to move: compare the shapes
    wrist = lambda v: conventions.regress_joints(v, regressor)[:, :1]
    error = np.linalg.norm((fitted - wrist(fitted)) - (targets - wrist(targets)), axis=-1).mean(-1)
  else:
    error = np.linalg.norm(fitted - targets, axis=-1).mean(-1)
  _warn_far_betas(betas)
  result.update(pose=pose, betas=betas, trans=trans, vertices=fitted, error=error)
  return {k: v[0] for k, v in result.items()} if unbatched else result


# Betas are in units of the shape space's standard deviations: MANO's training scans lie within about
# ±3, and fits of noisy meshes of such hands reach about 4; beyond 5 the fit is reshaping the hand to
# absorb something else (a wrong scale, a broken mesh).
BETA_RANGE = 5.0


def _check_fit_arguments(**values: float) -> None:
  for name, value in values.items():
    if name.endswith('iterations'):
      if int(value) != value or value < 1:
        raise ValueError(f'mano.fit: {name} must be an integer >= 1, got {value}')
    elif not (np.isfinite(value) and value >= 0):
      raise ValueError(f'mano.fit: {name} must be finite and >= 0, got {value}')


def _warn_far_betas(betas: np.ndarray) -> None:
  far = np.nonzero(np.abs(betas).max(-1) > BETA_RANGE)[0]
  if len(far):
    warnings.warn(
        f'mano.fit: the betas of {len(far)} mesh(es) (index {far[:5].tolist()}'
        f'{" ..." if len(far) > 5 else ""}) reach {np.abs(betas[far]).max():.1f}, beyond the '
        f"model's range of ±{BETA_RANGE:g}: the meshes may be scaled wrongly (units?) or not hands",
        stacklevel=3,
    )


def _closed_form_start(model: ManoModel, targets: np.ndarray) -> np.ndarray:
  """`fit`'s starting x (B, 48 + S + 3) for meshes (B, 778, 3): pose, zero betas, translation."""
  batch = len(targets)
  num_betas = model.num_betas
  # Closed-form start: every joint's global rotation by Kabsch, from the vertices that follow that joint
  # most (rest template → mesh); the local rotations are then G_parent^T G_joint. Blend shapes and betas
  # are ignored here, so this is close but not exact; Levenberg–Marquardt finishes it.
  zero = np.zeros((1, 48), np.float32)
  rest_vertices, rest_joints = (
      np.asarray(a, np.float64)[0]
      for a in layer.forward(model, zero, np.zeros((1, num_betas), np.float32), flat_hand_mean=True)
  )
  weights = np.asarray(model.weights, np.float64)
  owner = weights.argmax(1)
  global_rotations = np.zeros((batch, NUM_JOINTS, 3, 3))
  translation = None
  for joint in range(NUM_JOINTS):
    chosen = (owner == joint) & (weights[:, joint] > _SEGMENT_WEIGHT)
    if chosen.sum() < 4:
      chosen = owner == joint
    rotation, shift = alignment.rigid_transform_batch(
        targets[:, chosen], np.broadcast_to(rest_vertices[chosen], (batch, int(chosen.sum()), 3))
    )
    global_rotations[:, joint] = rotation
    if joint == 0:
      translation = shift
  local = global_rotations.copy()
  for joint, parent in enumerate(model.parents):
    if parent >= 0:
      local[:, joint] = np.swapaxes(global_rotations[:, parent], 1, 2) @ global_rotations[:, joint]
  start_pose = _rotation_to_axis_angle(local).reshape(batch, 48)
  # forward rotates about the wrist J0: v -> R (v - J0) + J0 + trans.
  root = rest_joints[0]
  trans = translation - root + global_rotations[:, 0] @ root
  x0 = np.concatenate([start_pose, np.zeros((batch, num_betas)), trans], 1)
  return x0


def _keypoint_stage(
    model: ManoModel,
    x: np.ndarray,
    targets: np.ndarray,
    keypoints: np.ndarray,
    Ks: np.ndarray,
    regressor: np.ndarray,
    weights: list[float],
    num_iterations: int,
) -> tuple[np.ndarray, np.ndarray]:
  """`fit`'s second stage over the whole batch: (x (B, P) refined, reprojection error (B,) pixels)."""
  if num_iterations < 1:
    raise ValueError(f'mano.fit: keypoint_iterations must be >= 1, got {num_iterations}')
  # The vertex fit's translation is absolute here; fitting about the mesh's centre keeps float32 fine.
  centre = targets.mean(1)
  start = x.copy()
  start[:, -3:] -= centre
  wrist_depth = conventions.regress_joints(targets, regressor)[:, 0, 2]
  focal = (Ks[:, 0, 0] + Ks[:, 1, 1]) / 2.0
  as_f32 = lambda a: jnp.asarray(a, jnp.float32)
  data = {
      'keypoints': as_f32(keypoints),
      'K': as_f32(Ks),
      'vertices': as_f32(targets),
      'centre': as_f32(centre),
      'metres_per_pixel': as_f32(np.abs(wrist_depth) / focal)[:, None, None],
      'betas': as_f32(x[:, 48 : 48 + model.num_betas]),
  }
  solved, _ = _fit_keypoints(
      model, as_f32(start), data, as_f32(regressor), as_f32(weights), int(num_iterations)
  )
  solved = np.asarray(solved, np.float64)
  solved[:, -3:] += centre
  num_betas = model.num_betas
  vertices = np.asarray(
      layer.forward(
          model,
          solved[:, :48],
          solved[:, 48 : 48 + num_betas],
          flat_hand_mean=True,
          trans=solved[:, 48 + num_betas :],
      )[0],
      np.float64,
  )
  camera = conventions.regress_joints(vertices, regressor) @ np.swapaxes(Ks, 1, 2)
  pixels = camera[..., :2] / camera[..., 2:3]
  return solved, np.linalg.norm(pixels - keypoints, axis=-1).mean(-1)


def _rotation_to_axis_angle(rotation: np.ndarray) -> np.ndarray:
  """Rotation matrices (..., 3, 3) -> axis-angle (..., 3), exact also near 0 and π."""
  shape = rotation.shape[:-2]
  return Rotation.from_matrix(rotation.reshape(-1, 3, 3)).as_rotvec().reshape(*shape, 3)
