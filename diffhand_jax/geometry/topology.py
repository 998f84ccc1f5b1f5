"""Mesh topology utilities: farthest-point-sampling hierarchies, face normals, edges, upsampling.

Index arrays are computed once on the template mesh with numpy (deterministic); ``face_normals`` is a
JAX function usable inside jit for losses.
"""

from __future__ import annotations

from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np


def farthest_point_sampling(
    points: np.ndarray, num_samples: int, seed_index: int = 0
) -> np.ndarray:
  """Greedy farthest-point sampling.

  Args:
    points: (N, 3).
    num_samples: K <= N.
    seed_index: the first point picked.

  Returns:
    (K,) int32 indices into ``points``; the first is ``seed_index``. Ties go to the lowest index,
    so the result is deterministic.
  """
  points = np.asarray(points, np.float64)
  if points.ndim != 2 or points.shape[1] != 3:
    raise ValueError(f'points must be (N, 3), got {points.shape}')
  count = points.shape[0]
  if not 1 <= num_samples <= count:
    raise ValueError(f'cannot sample {num_samples} of {count} points')
  if not 0 <= seed_index < count:
    raise ValueError(f'seed_index {seed_index} out of range for {count} points')
  chosen = np.empty(num_samples, np.int64)
  chosen[0] = seed_index
  nearest = np.sum((points - points[seed_index]) ** 2, axis=1)
  for k in range(1, num_samples):
    chosen[k] = int(np.argmax(nearest))
    nearest = np.minimum(nearest, np.sum((points - points[chosen[k]]) ** 2, axis=1))
  return chosen.astype(np.int32)


def fps_hierarchy(
    vertices, sizes: Sequence[int] = (195, 49), seed_index: int = 0
) -> tuple[np.ndarray, ...]:
  """Nested farthest-point-sampling levels (778 -> 195 -> 49 by default).

  Level 0 indexes into ``vertices``; level k (k >= 1) indexes into the points of level k - 1, i.e.
  the level-k points are ``vertices[idx0][idx1]...[idxk]``. Every level starts from the seed: level 0
  from ``seed_index``, deeper levels from their first point (which is the seed vertex again).

  Args:
    vertices: (N, 3) template vertices (numpy or JAX).
    sizes: decreasing level sizes.
    seed_index: the vertex every level starts from.

  Returns:
    a tuple of int32 arrays with shapes (sizes[0],), (sizes[1],), ...
  """
  points = np.asarray(vertices, np.float64)
  levels = []
  previous = len(points)
  for size in sizes:
    if size > previous:
      raise ValueError(
          f'fps_hierarchy sizes must decrease, got {tuple(sizes)} for {len(vertices)} points'
      )
    start = seed_index if not levels else 0
    index = farthest_point_sampling(points, int(size), start)
    levels.append(index)
    points = points[index]
    previous = size
  return tuple(levels)


def face_normals(vertices: jax.Array, faces) -> jax.Array:
  """Unit normals (right-hand rule on the face's vertex order).

  Args:
    vertices: (..., V, 3).
    faces: (F, 3) int.

  Returns:
    (..., F, 3); a degenerate face gets a zero vector instead of NaN.
  """
  vertices = jnp.asarray(vertices)
  chex.assert_axis_dimension(vertices, -1, 3)
  faces = jnp.asarray(faces)
  v0 = jnp.take(vertices, faces[:, 0], axis=-2)
  v1 = jnp.take(vertices, faces[:, 1], axis=-2)
  v2 = jnp.take(vertices, faces[:, 2], axis=-2)
  normal = jnp.cross(v1 - v0, v2 - v0)
  norm2 = jnp.sum(normal * normal, axis=-1, keepdims=True)
  safe = jnp.where(norm2 > 0, norm2, 1.0)
  return jnp.where(norm2 > 0, normal * jax.lax.rsqrt(safe), 0.0)


def edges(faces) -> np.ndarray:
  """Unique undirected edges of a triangle mesh: (E, 2) int32, each row (i, j) with i < j, sorted."""
  faces = np.asarray(faces, np.int64)
  if faces.ndim != 2 or faces.shape[1] != 3:
    raise ValueError(f'faces must be (F, 3), got {faces.shape}')
  pairs = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
  pairs = np.sort(pairs, axis=1)
  return np.unique(pairs, axis=0).astype(np.int32)


def upsample_neighbours(coarse_points, fine_points, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
  """For each fine point, its k nearest coarse points and inverse-distance weights.

  Args:
    coarse_points: (Nc, 3).
    fine_points: (Nf, 3).
    k: neighbours per fine point (<= Nc).

  Returns:
    idx (Nf, k) int32 into ``coarse_points`` (nearest first) and weights (Nf, k) float32 summing to 1,
    proportional to 1 / distance (a fine point that coincides with a coarse one takes it alone).
    Interpolation: ``fine_feature = sum_j weights[:, j, None] * coarse_feature[idx[:, j]]``.
  """
  coarse = np.asarray(coarse_points, np.float64)
  fine = np.asarray(fine_points, np.float64)
  if not 1 <= k <= len(coarse):
    raise ValueError(f'k must be in [1, {len(coarse)}], got {k}')
  distance = np.linalg.norm(fine[:, None, :] - coarse[None, :, :], axis=-1)
  idx = np.argsort(distance, axis=1, kind='stable')[:, :k]
  near = np.take_along_axis(distance, idx, axis=1)
  exact = near[:, :1] < 1e-12
  inverse = 1.0 / np.maximum(near, 1e-12)
  weights = np.where(exact, (np.arange(k)[None, :] == 0).astype(np.float64), inverse)
  weights = weights / weights.sum(axis=1, keepdims=True)
  return idx.astype(np.int32), weights.astype(np.float32)
