"""Tests for diffhand_jax.topology."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from diffhand_jax import mano
from diffhand_jax.geometry import topology


@pytest.fixture(scope='module')
def template() -> np.ndarray:
  return np.asarray(mano.load_procedural().v_template, np.float64)


def test_fps_hierarchy_sizes_nesting_and_determinism(template):
  levels = topology.fps_hierarchy(template)
  assert [level.shape for level in levels] == [(195,), (49,)]
  assert all(level.dtype == np.int32 for level in levels)
  assert levels[0][0] == 0 and levels[1][0] == 0  # both start from the seed vertex
  assert len(np.unique(levels[0])) == 195 and len(np.unique(levels[1])) == 49
  assert levels[1].max() < 195  # level 1 indexes into level 0's points
  again = topology.fps_hierarchy(template.copy())
  for a, b in zip(levels, again):
    np.testing.assert_array_equal(a, b)
  shifted = topology.fps_hierarchy(template, seed_index=5)
  assert shifted[0][0] == 5


def test_fps_points_are_well_spread(template):
  levels = topology.fps_hierarchy(template)
  level0 = template[levels[0]]
  level1 = level0[levels[1]]
  rng = np.random.default_rng(0)
  for points, size in ((level0, 195), (level1, 49)):
    fps_spacing = pdist(points).min()
    random_spacing = max(
        pdist(template[rng.choice(778, size, replace=False)]).min() for _ in range(20)
    )
    assert fps_spacing > random_spacing


def test_fps_on_a_line_is_hand_checkable():
  points = np.zeros((11, 3))
  points[:, 0] = np.arange(11)
  # From 0 the farthest is 10, then 5 (distance 5); then 2, 3, 7 and 8 all lie 2 away from {0, 5, 10}
  # and the tie goes to the lowest index, 2.
  np.testing.assert_array_equal(topology.farthest_point_sampling(points, 4, 0), [0, 10, 5, 2])


def test_face_normals_hand_worked():
  vertices = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]])
  faces = np.array([[0, 1, 2], [0, 2, 1], [0, 3, 1], [0, 0, 1]])
  normals = np.asarray(topology.face_normals(vertices, faces))
  np.testing.assert_allclose(normals[:3], [[0, 0, 1], [0, 0, -1], [0, 1, 0]], atol=1e-6)
  np.testing.assert_array_equal(normals[3], [0, 0, 0])  # degenerate face: zero, not NaN
  batched = np.asarray(topology.face_normals(np.stack([vertices, 2 * vertices]), faces[:3]))
  assert batched.shape == (2, 3, 3)
  np.testing.assert_allclose(batched[1], normals[:3], atol=1e-6)


def test_edges_of_a_tetrahedron_and_the_hand():
  tetrahedron = np.array([[0, 1, 2], [0, 3, 1], [1, 3, 2], [0, 2, 3]])
  np.testing.assert_array_equal(
      topology.edges(tetrahedron), [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
  )
  faces = np.asarray(mano.load_procedural().faces)
  hand_edges = topology.edges(faces)
  assert hand_edges.shape == (3 * len(faces) // 2, 2)  # closed surface: each edge in two faces
  assert np.all(hand_edges[:, 0] < hand_edges[:, 1])
  assert 778 - len(hand_edges) + len(faces) == 2  # Euler characteristic of a sphere


def test_upsample_neighbours_inverse_distance():
  coarse = np.array([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0], [10.0, 0, 0]])
  fine = np.array([[0.5, 0, 0], [1.0, 0, 0], [2.0, 0, 0]])
  idx, weights = topology.upsample_neighbours(coarse, fine, k=2)
  np.testing.assert_array_equal(idx, [[0, 1], [1, 0], [1, 2]])
  np.testing.assert_allclose(weights[0], [0.5, 0.5], atol=1e-6)
  np.testing.assert_allclose(weights[1], [1.0, 0.0], atol=1e-6)  # coincides with coarse point 1
  np.testing.assert_allclose(weights[2], [0.5, 0.5], atol=1e-6)  # distances 1 and 1
  idx3, weights3 = topology.upsample_neighbours(coarse, np.array([[0.25, 0, 0]]), k=3)
  inverse = 1 / np.array([0.25, 0.75, 2.75])
  np.testing.assert_allclose(weights3[0], inverse / inverse.sum(), rtol=1e-5)
  np.testing.assert_array_equal(idx3[0], [0, 1, 2])
