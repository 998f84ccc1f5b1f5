"""Tests of the numpy rasteriser against hand-worked geometry."""

import numpy as np
import pytest

from diffhand_jax.geometry import render

FOCAL, CX, CY = 100.0, 16.0, 16.0
K = np.array([[FOCAL, 0.0, CX], [0.0, FOCAL, CY], [0.0, 0.0, 1.0]])


def unproject(uv, z):
  """Camera-frame points (N, 3) that project to pixel coordinates uv (N, 2) at depths z (N,)."""
  uv, z = np.asarray(uv, float), np.broadcast_to(np.asarray(z, float), (len(uv),))
  return np.stack([(uv[:, 0] - CX) / FOCAL * z, (uv[:, 1] - CY) / FOCAL * z, z], axis=-1)


def icosphere(subdivisions):
  golden = (1 + 5**0.5) / 2
  vertices = [
      [-1, golden, 0],
      [1, golden, 0],
      [-1, -golden, 0],
      [1, -golden, 0],
      [0, -1, golden],
      [0, 1, golden],
      [0, -1, -golden],
      [0, 1, -golden],
      [golden, 0, -1],
      [golden, 0, 1],
      [-golden, 0, -1],
      [-golden, 0, 1],
  ]
  faces = [
      [0, 11, 5],
      [0, 5, 1],
      [0, 1, 7],
      [0, 7, 10],
      [0, 10, 11],
      [1, 5, 9],
      [5, 11, 4],
      [11, 10, 2],
      [10, 7, 6],
      [7, 1, 8],
      [3, 9, 4],
      [3, 4, 2],
      [3, 2, 6],
      [3, 6, 8],
      [3, 8, 9],
      [4, 9, 5],
      [2, 4, 11],
      [6, 2, 10],
      [8, 6, 7],
      [9, 8, 1],
  ]
  vertices = [np.array(v, float) / np.linalg.norm(v) for v in vertices]
  for _ in range(subdivisions):
    midpoints, refined = {}, []

    def midpoint(i, j):
      key = (min(i, j), max(i, j))
      if key not in midpoints:
        m = vertices[i] + vertices[j]
        vertices.append(m / np.linalg.norm(m))
        midpoints[key] = len(vertices) - 1
      return midpoints[key]

    for a, b, c in faces:
      ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
      refined += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
    faces = refined
  return np.array(vertices), np.array(faces, np.int32)


def test_project_matches_pinhole_formula():
  points = np.array([[0.1, -0.2, 2.0], [0.0, 0.0, 1.0]])
  expected = np.array([[CX + FOCAL * 0.05, CY - FOCAL * 0.1], [CX, CY]])
  np.testing.assert_allclose(render.project(points, K), expected, atol=1e-12)


def test_fronto_parallel_triangle_coverage_and_depth_are_exact():
  # Screen-space right triangle (1.5, 1.5), (12.7, 1.5), (1.5, 12.7): no pixel centre lies on an edge, and
  # a centre (u, v) is inside iff u >= 2, v >= 2 and u + v <= 14.
  depth_m = 2.0
  vertices = unproject([[1.5, 1.5], [12.7, 1.5], [1.5, 12.7]], depth_m)
  out = render.render(vertices, np.array([[0, 1, 2]]), K, (32, 32))
  rows, cols = np.mgrid[0:32, 0:32]
  expected = (cols >= 2) & (rows >= 2) & (cols + rows <= 14)
  assert expected.sum() == 66
  np.testing.assert_array_equal(out['mask'], expected)
  np.testing.assert_array_equal(out['face_index'], np.where(expected, 0, -1))
  np.testing.assert_allclose(out['depth'][expected], depth_m, rtol=1e-6)
  assert np.all(out['depth'][~expected] == 0)
  assert out['rgb'].dtype == np.uint8 and out['depth'].dtype == np.float32


def test_winding_does_not_change_coverage():
  vertices = unproject([[2, 2], [12, 2], [2, 12]], 1.0)
  front = render.render(vertices, np.array([[0, 1, 2]]), K, (32, 32))
  back = render.render(vertices, np.array([[0, 2, 1]]), K, (32, 32))
  np.testing.assert_array_equal(front['mask'], back['mask'])
  np.testing.assert_array_equal(front['rgb'], back['rgb'])


def test_depth_is_perspective_correct_on_a_slanted_plane():
  # Plane z = z0 + slope * x. Along the ray through pixel u, x = z (u - cx) / f, so
  # z(u) = z0 / (1 - slope (u - cx) / f): not affine in u, so plain screen-space lerp of z would fail.
  z0, slope = 1.0, 2.0
  corners_uv = np.array([[-1.0, -1.0], [33.0, -1.0], [33.0, 33.0], [-1.0, 33.0]])
  z_corners = z0 / (1 - slope * (corners_uv[:, 0] - CX) / FOCAL)
  vertices = unproject(corners_uv, z_corners)
  out = render.render(vertices, np.array([[0, 1, 2], [0, 2, 3]]), K, (32, 32))
  assert out['mask'].all()
  cols = np.arange(32)[None, :].repeat(32, axis=0)
  expected = z0 / (1 - slope * (cols - CX) / FOCAL)
  np.testing.assert_allclose(out['depth'], expected, rtol=1e-5)
  # And the plain affine interpolation is measurably different, so the check above has teeth.
  assert np.abs(np.interp(cols, corners_uv[:2, 0], z_corners[:2]) - expected).max() > 1e-2


def test_nearest_surface_wins_regardless_of_face_order():
  near_tri = unproject([[0, 0], [20, 0], [0, 20]], 1.0)
  far_tri = unproject([[4, 4], [30, 4], [4, 30]], 2.0)
  vertices = np.concatenate([near_tri, far_tri])
  for faces in (np.array([[0, 1, 2], [3, 4, 5]]), np.array([[3, 4, 5], [0, 1, 2]])):
    out = render.render(vertices, faces, K, (32, 32))
    near_id = int(np.where(faces[:, 0] == 0)[0][0])
    assert out['face_index'][5, 5] == near_id and out['depth'][5, 5] == pytest.approx(1.0)
    assert out['face_index'][14, 14] == 1 - near_id and out['depth'][14, 14] == pytest.approx(2.0)


def test_lambert_plus_ambient_shading():
  vertices = unproject([[0, 0], [40, 0], [0, 40]], 1.0)
  faces = np.array([[0, 1, 2]])
  base, ambient = (0.8, 0.4, 0.2), 0.3
  # Light from the camera: n . l = 1, so the colour is the albedo.
  head_on = render.render(
      vertices, faces, K, (32, 32), base_color=base, ambient=ambient, light_dir=(0, 0, -1)
  )
  np.testing.assert_array_equal(head_on['rgb'][3, 3], np.round(np.array(base) * 255))
  # Grazing light (perpendicular to the normal): only the ambient term remains.
  grazing = render.render(
      vertices, faces, K, (32, 32), base_color=base, ambient=ambient, light_dir=(1, 0, 0)
  )
  np.testing.assert_array_equal(grazing['rgb'][3, 3], np.round(np.array(base) * ambient * 255))
  # 60 degrees off the normal: cos = 0.5.
  tilted = render.render(
      vertices,
      faces,
      K,
      (32, 32),
      base_color=base,
      ambient=ambient,
      light_dir=(np.sin(np.pi / 3), 0, -np.cos(np.pi / 3)),
  )
  np.testing.assert_array_equal(
      tilted['rgb'][3, 3], np.round(np.array(base) * (ambient + (1 - ambient) * 0.5) * 255)
  )


def test_sphere_silhouette_and_front_depth():
  radius, distance = 0.1, 1.0
  unit, faces = icosphere(3)
  out = render.render(unit * radius + [0, 0, distance], faces, K, (32, 32))
  # A sphere's perspective silhouette is a disc of radius f r / sqrt(d^2 - r^2) about the principal point.
  disc_radius = FOCAL * radius / np.sqrt(distance**2 - radius**2)
  rows, cols = np.mgrid[0:32, 0:32]
  disc = np.hypot(cols - CX, rows - CY)
  assert np.all(out['mask'][disc < disc_radius - 0.6])
  assert not np.any(out['mask'][disc > disc_radius + 0.6])
  assert out['depth'][int(CY), int(CX)] == pytest.approx(distance - radius, abs=2e-3)
  # Each visible pixel lies on the sphere (up to faceting): |depth ray point - centre| ~ r.
  ys, xs = np.nonzero(out['mask'])
  points = unproject(np.stack([xs, ys], -1), out['depth'][ys, xs])
  np.testing.assert_allclose(np.linalg.norm(points - [0, 0, distance], axis=-1), radius, atol=2e-3)
  # The lit side faces the light: upper-left lit, lower-right dark.
  lit = render.render(
      unit * radius + [0, 0, distance], faces, K, (32, 32), light_dir=(-1, -1, -0.3)
  )
  brightness = lit['rgb'].astype(float).sum(-1)
  assert brightness[11, 11] > brightness[21, 21] + 50


def test_faces_behind_camera_and_off_screen_are_dropped():
  behind = np.array([[0.0, 0.0, -1.0], [0.1, 0.0, -1.0], [0.0, 0.1, -1.0]])
  off_screen = unproject([[100, 100], [120, 100], [100, 120]], 1.0)
  vertices = np.concatenate([behind, off_screen])
  out = render.render(vertices, np.array([[0, 1, 2], [3, 4, 5]]), K, (32, 32))
  assert not out['mask'].any() and np.all(out['depth'] == 0)


def test_background_and_overlay():
  background = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
  vertices = unproject([[2, 2], [12, 2], [2, 12]], 1.0)
  faces = np.array([[0, 1, 2]])
  out = render.render(vertices, faces, K, (32, 32), background=background)
  np.testing.assert_array_equal(out['rgb'][~out['mask']], background[~out['mask']])
  blended = render.overlay(background, vertices, faces, K, alpha=0.5)
  np.testing.assert_array_equal(blended[~out['mask']], background[~out['mask']])
  drawn = render.render(vertices, faces, K, (32, 32), base_color=(0.35, 0.6, 1.0), ambient=0.3)
  expected = np.round(0.5 * background[out['mask']].astype(float) + 0.5 * drawn['rgb'][out['mask']])
  np.testing.assert_allclose(blended[out['mask']], expected, atol=1)


def test_bad_input_gives_clear_errors():
  vertices = unproject([[2, 2], [12, 2], [2, 12]], 1.0)
  with pytest.raises(ValueError, match='faces'):
    render.render(vertices, np.array([[0, 1, 3]]), K, (32, 32))
  with pytest.raises(ValueError, match='K must be'):
    render.render(vertices, np.array([[0, 1, 2]]), np.eye(4), (32, 32))
  with pytest.raises(ValueError, match='background'):
    render.render(vertices, np.array([[0, 1, 2]]), K, (32, 32), background=np.zeros((8, 8, 3)))


def test_coverage_mask_is_the_conservative_footprint():
  # Triangle (1.7, 1.7), (12.6, 1.7), (1.7, 12.6). The square of pixel (row i, col j) is
  # [j - .5, j + .5] x [i - .5, i + .5]; it touches the triangle iff it meets its bounding box
  # (2 <= i, j <= 13) and its corner nearest the hypotenuse has u + v <= 14.3, i.e. i + j <= 15.
  vertices = unproject([[1.7, 1.7], [12.6, 1.7], [1.7, 12.6]], 1.0)
  faces = np.array([[0, 1, 2]])
  covered = render.coverage_mask(vertices, faces, K, (32, 32))
  rows, cols = np.mgrid[0:32, 0:32]
  expected = (cols >= 2) & (rows >= 2) & (cols <= 13) & (rows <= 13) & (rows + cols <= 15)
  np.testing.assert_array_equal(covered, expected)
  # It contains the pixel-centre mask.
  assert np.all(covered[render.rasterize(vertices, faces, K, (32, 32))['mask']])


def test_coverage_mask_contains_every_projected_vertex_and_dense_samples():
  unit, faces = icosphere(2)
  vertices = unit * [0.12, 0.05, 0.04] + [0.01, -0.02, 1.0]  # an ellipsoid with a jagged silhouette
  covered = render.coverage_mask(vertices, faces, K, (32, 32))
  uv = render.project(vertices, K)
  assert np.all(covered[np.round(uv[:, 1]).astype(int), np.round(uv[:, 0]).astype(int)])
  # Dense sampling (8 x 8 samples per pixel) never finds the mesh in a pixel the mask leaves out.
  factor = 8
  dense_K = K.copy()
  dense_K[:2, :2] *= factor
  dense_K[:2, 2] = factor * (K[:2, 2] + 0.5) - 0.5
  dense = render.rasterize(vertices, faces, dense_K, (32 * factor, 32 * factor))['mask']
  touched = dense.reshape(32, factor, 32, factor).any(axis=(1, 3))
  assert np.all(covered[touched])
  # And it is only a thin rim larger than that.
  assert covered.sum() <= touched.sum() + 2 * np.sqrt(touched.sum()) * 4
