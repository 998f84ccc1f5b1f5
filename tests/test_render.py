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


def test_upscaled_intrinsics_follow_the_pixel_centre_convention():
  # Native u maps to f * (u + 0.5) - 0.5: with f = 3, the principal point 16 goes to 49, the focal 100
  # to 300, and a point projecting to (2, 12) natively projects to (7, 37).
  np.testing.assert_allclose(
      render.upscaled_intrinsics(K, 3), [[300.0, 0.0, 49.0], [0.0, 300.0, 49.0], [0.0, 0.0, 1.0]]
  )
  point = unproject([[2.0, 12.0]], 0.7)
  np.testing.assert_allclose(
      render.project(point, render.upscaled_intrinsics(K, 3)), [[7.0, 37.0]], atol=1e-9
  )
  with pytest.raises(ValueError, match='K must be'):
    render.upscaled_intrinsics(np.eye(4), 2)


def test_upscale_image_samples_pixel_centres_like_the_intrinsics():
  # One bright pixel at (row 5, col 7); x4 bilinear puts its centre at 4 * 7.5 - 0.5 = 29.5 (cols 29
  # and 30, each 0.125 native px away, weight 0.875) and 4 * 5.5 - 0.5 = 21.5 (rows 21 and 22).
  image = np.zeros((8, 10, 3), np.uint8)
  image[5, 7] = 200
  big = render.upscale_image(image, 4)
  assert big.shape == (32, 40, 3)
  brightest = np.argwhere(big[..., 0] == big[..., 0].max())
  np.testing.assert_array_equal(brightest, [[21, 29], [21, 30], [22, 29], [22, 30]])
  assert big[21, 29, 0] == pytest.approx(200 * 0.875**2, abs=1)


def test_overlay_upscaled_draws_the_mesh_where_the_native_overlay_does():
  # Natively the triangle's corners are at (2.1, 2.1), (12.1, 2.1), (2.1, 12.1). At 256 px (x8) they
  # are at 8 * (2.1 + 0.5) - 0.5 = 20.3 and 8 * 12.6 - 0.5 = 100.3, so the pixel centres inside are
  # cols >= 21, rows >= 21 and row + col <= 120.6.
  vertices = unproject([[2.1, 2.1], [12.1, 2.1], [2.1, 12.1]], 1.0)
  faces = np.array([[0, 1, 2]])
  black = np.zeros((32, 32, 3), np.uint8)
  big = render.overlay_upscaled(black, vertices, faces, K, min_size=256, alpha=1.0)
  assert big.shape == (256, 256, 3)
  rows, cols = np.mgrid[0:256, 0:256]
  expected = (cols >= 21) & (rows >= 21) & (rows + cols <= 120)
  np.testing.assert_array_equal(big.any(axis=-1), expected)
  # Box-filtered back to 32 px, it covers the native render's pixels but for a few on its edges.
  native = render.overlay(black, vertices, faces, K, alpha=1.0).any(axis=-1)
  down = render.downsample(big.any(axis=-1)[..., None].astype(float), 8)[..., 0] > 0.5
  assert np.sum(down != native) <= 4 and native.sum() > 40
  # An image already min_size px on its short side is drawn at its own size.
  assert render.overlay_upscaled(black, vertices, faces, K, min_size=32).shape == (32, 32, 3)
  with pytest.raises(ValueError, match='min_size'):
    render.overlay_upscaled(black, vertices, faces, K, min_size=0)


def test_overlay_uses_vertex_colors():
  grey = np.full((32, 32, 3), 100, np.uint8)
  vertices = unproject([[2, 2], [12, 2], [2, 12]], 1.0)
  faces = np.array([[0, 1, 2]])
  red = np.tile([1.0, 0.0, 0.0], (3, 1))
  drawn = render.overlay(grey, vertices, faces, K, alpha=1.0, vertex_colors=red)
  mask = render.rasterize(vertices, faces, K, (32, 32))['mask']
  assert mask.sum() > 40
  assert np.all(drawn[mask][:, 1:] == 0) and np.all(drawn[mask][:, 0] > 0)
  np.testing.assert_array_equal(drawn[~mask], grey[~mask])
  flat = render.overlay(grey, vertices, faces, K, alpha=1.0)  # the default blue has green in it
  assert np.all(flat[mask][:, 1] > 0)
  with pytest.raises(ValueError, match='vertex_colors'):
    render.overlay(grey, vertices, faces, K, vertex_colors=red[:2])


def _panel_fixture():
  image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  unit, faces = icosphere(1)
  prediction = unit * 0.05 + [0.02, 0.0, 1.0]
  truth = unit * 0.05 + [-0.02, 0.0, 1.0]
  k64 = render.intrinsics(400.0, (64, 64))
  return image, prediction, truth, faces, k64


def test_panel_row_puts_input_prediction_and_truth_side_by_side():
  image, prediction, truth, faces, k64 = _panel_fixture()
  row = render.panel_row(image, prediction, faces, k64, truth)
  label, gap = render.LABEL_HEIGHT, render.PANEL_GAP
  assert row.shape == (label + 256, 3 * 256 + 2 * gap, 3)  # 64 px upscaled x4 per panel
  panels = [row[label:, i * (256 + gap) : i * (256 + gap) + 256] for i in range(3)]
  np.testing.assert_array_equal(panels[0], render.upscale_image(image, 4))
  np.testing.assert_array_equal(
      panels[1],
      render.overlay_upscaled(image, prediction, faces, k64, color=render.PREDICTION_COLOR),
  )
  np.testing.assert_array_equal(
      panels[2], render.overlay_upscaled(image, truth, faces, k64, color=render.TRUTH_COLOR)
  )
  assert len(np.unique(row[:label, :256].reshape(-1, 3), axis=0)) > 1  # the label is drawn
  captioned = render.panel_row(image, prediction, faces, k64, truth, caption='PA-MPVPE 12.3 mm')
  assert captioned.shape == (2 * label + 256, 3 * 256 + 2 * gap, 3)
  np.testing.assert_array_equal(captioned[: label + 256], row)


def test_panel_row_without_truth_has_two_panels():
  image, prediction, truth, faces, k64 = _panel_fixture()
  row = render.panel_row(image, prediction, faces, k64, caption='0003')
  assert row.shape == (2 * render.LABEL_HEIGHT + 256, 2 * 256 + render.PANEL_GAP, 3)
  grey = render.panel_row(image[..., 0], prediction, faces, k64, min_size=100)
  assert grey.shape == (render.LABEL_HEIGHT + 128, 2 * 128 + render.PANEL_GAP, 3)  # x2 reaches 100
  with pytest.raises(ValueError, match='truth must be'):
    render.panel_row(image, prediction, faces, k64, truth[:10])
  with pytest.raises(ValueError, match='image must be'):
    render.panel_row(image[..., :2], prediction, faces, k64)


def test_contact_sheet_tiles_rows_in_a_grid():
  rows = [np.full((30, 50, 3), 10 * (i + 1), np.uint8) for i in range(5)]
  rows.append(np.full((40, 20, 3), 200, np.uint8))
  sheet = render.contact_sheet(rows, columns=2, gap=8)
  # 6 rows, 2 per line: 3 lines of cells 40 x 50 px, 8 px apart and from the edges.
  assert sheet.shape == (3 * 40 + 4 * 8, 2 * 50 + 3 * 8, 3)
  np.testing.assert_array_equal(sheet[8:38, 8:58], rows[0])
  np.testing.assert_array_equal(sheet[8:38, 66:116], rows[1])
  np.testing.assert_array_equal(sheet[56:86, 66:116], rows[3])
  np.testing.assert_array_equal(sheet[104:144, 66:86], rows[5])
  assert render.contact_sheet(rows[:1], columns=2, gap=0).shape == (30, 50, 3)
  assert render.contact_sheet(rows, columns=1, gap=0).shape == (6 * 40, 50, 3)
  with pytest.raises(ValueError, match='at least one'):
    render.contact_sheet([])
  with pytest.raises(ValueError, match='row 1'):
    render.contact_sheet([rows[0], rows[0][..., 0]])
