"""MANO parameters from a mesh (`fit`, the inverse of `forward`): a closed-form start by per-joint Kabsch,
then a batched, jitted Levenberg–Marquardt (`solver.py`)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation

from diffhand_jax.geometry import alignment
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


def fit(
    model: ManoModel,
    vertices: Any,
    *,
    flat_hand_mean: bool = False,
    num_iterations: int = 10,
    pose_prior: float = 1e-3,
    shape_prior: float = 1e-4,
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
  pose = x[:, :48].copy()
  betas = x[:, 48 : 48 + num_betas]
  trans = x[:, 48 + num_betas :] + centre
  if not flat_hand_mean:
    pose[:, 3:] -= mean
  fitted = np.asarray(
      layer.forward(model, pose, betas, flat_hand_mean=flat_hand_mean, trans=trans)[0], np.float64
  )
  error = np.linalg.norm(fitted - targets, axis=-1).mean(-1)
  result = {'pose': pose, 'betas': betas, 'trans': trans, 'vertices': fitted, 'error': error}
  return {k: v[0] for k, v in result.items()} if unbatched else result


def _rotation_to_axis_angle(rotation: np.ndarray) -> np.ndarray:
  """Rotation matrices (..., 3, 3) -> axis-angle (..., 3), exact also near 0 and π."""
  shape = rotation.shape[:-2]
  return Rotation.from_matrix(rotation.reshape(-1, 3, 3)).as_rotvec().reshape(*shape, 3)
