"""Plausible hand poses within the joint limits (the procedural hand's; official MANO files have none and
borrow them): random ones (`sample_random_pose`), named ones (`named_pose`), and a pose's coordinates
along the limit axes (`pose_to_angles`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax.geometry.mano import files
from diffhand_jax.geometry.mano.model import NUM_HAND_POSE, ManoModel

# Finger joints (MANO joints 1..15) grouped per finger: index, middle, little, ring, thumb.
_FINGER_JOINTS = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11), (12, 13, 14))


def _limits_of(model: ManoModel) -> tuple[np.ndarray, np.ndarray]:
  if model.pose_axes is not None and model.pose_limits is not None:
    return np.asarray(model.pose_axes, np.float64), np.asarray(model.pose_limits, np.float64)
  # Official MANO files have no limits; the procedural hand is laid out like MANO's template, so its
  # axes are a reasonable stand-in.
  procedural = files.load_procedural(model.side)
  return np.asarray(procedural.pose_axes, np.float64), np.asarray(
      procedural.pose_limits, np.float64
  )


def _angles_to_pose(axes: np.ndarray, angles: np.ndarray) -> np.ndarray:
  """(n, 15, 3) angles along each joint's (flex, abduction, twist) axes -> (n, 45) axis-angle."""
  return np.einsum('njk,jkc->njc', angles, axes).reshape(angles.shape[0], NUM_HAND_POSE)


def pose_to_angles(model: ManoModel, pose: Any) -> np.ndarray:
  """(n, 48) absolute axis-angle pose -> (n, 15, 3) coordinates along each joint's limit axes."""
  axes, _ = _limits_of(model)
  hand = np.asarray(pose, np.float64).reshape(-1, 48)[:, 3:].reshape(-1, 15, 3)
  return np.einsum('njc,jkc->njk', hand, axes)


def _as_generator(rng: Any) -> np.random.Generator:
  if isinstance(rng, np.random.Generator):
    return rng
  if isinstance(rng, (int, np.integer)):
    return np.random.default_rng(int(rng))
  key = jnp.asarray(rng)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  seed = np.asarray(key).astype(np.uint32).reshape(-1)
  return np.random.default_rng([int(s) for s in seed])


def sample_random_pose(
    rng: Any,
    model: ManoModel,
    n: int,
    *,
    flat_hand_mean: bool = True,
    random_global_orient: bool = False,
) -> np.ndarray:
  """Plausible random poses within the model's joint limits.

  Each finger gets one curl level that drives its three joints (with jitter), so fingers flex
  forward together; spread shrinks as a finger curls; the thumb opposes (palmar abduction, flexion
  across the palm and pronation, all within its limits).

  Args:
    rng: a numpy Generator, an int seed, or a JAX PRNG key.
    model: a :class:`ManoModel` (limits from the file; official MANO models borrow the procedural
      hand's limits).
    n: number of poses.
    flat_hand_mean: if True (default) the result is the absolute pose, to be used with
      ``forward(..., flat_hand_mean=True)``; if False ``hands_mean`` is subtracted so that
      ``forward(..., flat_hand_mean=False)`` gives the same hands.
    random_global_orient: draw a uniformly random global rotation instead of zero.

  Returns:
    (n, 48) float32 axis-angle poses.
  """
  generator = _as_generator(rng)
  axes, limits = _limits_of(model)
  low, high = limits[..., 0], limits[..., 1]
  angles = np.zeros((n, 15, 3))
  for finger, joints in enumerate(_FINGER_JOINTS):
    curl = generator.uniform(0.0, 1.0, size=(n, 1)) ** 0.8
    joints = np.array(joints)
    flex = low[joints, 0] + curl * (high[joints, 0] - low[joints, 0])
    flex = flex + generator.normal(0.0, 0.12, size=(n, 3)) * (high[joints, 0] - low[joints, 0])
    angles[:, joints, 0] = flex
    spread = generator.uniform(low[joints, 1], high[joints, 1], size=(n, 3))
    angles[:, joints, 1] = spread * (1.0 - 0.7 * curl) if finger < 4 else spread
    angles[:, joints, 2] = generator.uniform(low[joints, 2], high[joints, 2], size=(n, 3))
  angles = np.clip(angles, low, high)
  hand = _angles_to_pose(axes, angles)
  if not flat_hand_mean:
    hand = hand - np.asarray(model.hands_mean, np.float64)
  global_orient = np.zeros((n, 3))
  if random_global_orient:
    quats = generator.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    quats *= np.sign(quats[:, :1] + 1e-12)
    half = np.arccos(np.clip(quats[:, 0], -1.0, 1.0))
    sin_half = np.sin(half)[:, None]
    global_orient = np.where(
        sin_half > 1e-8, quats[:, 1:] / np.maximum(sin_half, 1e-8) * 2.0 * half[:, None], 0.0
    )
  return np.concatenate([global_orient, hand], axis=1).astype(np.float32)


_NAMED_POSES = ('flat', 'fist', 'point', 'relaxed')


def named_pose(model: ManoModel, name: str, *, flat_hand_mean: bool = True) -> np.ndarray:
  """A named pose (48,) within the joint limits: 'flat', 'fist', 'point' (index extended) or
  'relaxed'. Absolute pose by default (use with ``forward(..., flat_hand_mean=True)``)."""
  if name not in _NAMED_POSES:
    raise ValueError(f'unknown pose {name!r}; choose one of {_NAMED_POSES}')
  axes, limits = _limits_of(model)
  low, high = limits[..., 0], limits[..., 1]
  fraction = np.zeros(
      (15, 3)
  )  # position within [low, high] for flex; abduction/twist as fraction too
  angles = np.zeros((15, 3))
  if name == 'flat':
    angles[:] = 0.0
  else:
    curl = {'fist': (0.9, 0.85, 0.7), 'point': (0.9, 0.85, 0.7), 'relaxed': (0.2, 0.25, 0.2)}[name]
    for finger in range(4):
      for joint, amount in zip(_FINGER_JOINTS[finger], curl):
        fraction[joint, 0] = amount
    if name == 'point':
      fraction[list(_FINGER_JOINTS[0]), 0] = 0.0
    thumb = {
        'fist': ((0.75, 0.55, 0.8), (0.5, 0.5, 0.5), (0.35, 0.5, 0.5)),
        'point': ((0.75, 0.55, 0.8), (0.45, 0.5, 0.5), (0.45, 0.5, 0.5)),
        'relaxed': ((0.3, 0.3, 0.4), (0.15, 0.5, 0.5), (0.15, 0.5, 0.5)),
    }[name]
    for joint, values in zip(_FINGER_JOINTS[4], thumb):
      fraction[joint] = values
    angles = low + fraction * (high - low)
    # Abduction and twist of the four fingers stay at zero (within limits, which contain 0).
    for finger in range(4):
      angles[list(_FINGER_JOINTS[finger]), 1:] = 0.0
  hand = _angles_to_pose(axes, angles[None])[0]
  if not flat_hand_mean:
    hand = hand - np.asarray(model.hands_mean, np.float64)
  return np.concatenate([np.zeros(3), hand]).astype(np.float32)
