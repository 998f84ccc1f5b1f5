"""Test-time augmentation: the image-rotation ↔ 3D-rotation sign, the warp, and the fusion."""

import numpy as np
import pytest
from PIL import Image

from diffhand_jax import metrics
from diffhand_jax.inference import tta

SIZE = 64


def _pinhole(points, focal, size):
  """A pinhole camera whose principal point is the image centre (pixel centres at integers)."""
  centre = (size - 1) / 2.0
  return np.stack(
      [focal * points[:, 0] / points[:, 2] + centre, focal * points[:, 1] / points[:, 2] + centre],
      -1,
  )


@pytest.mark.parametrize('angle, scale', [(30.0, 1.0), (-75.0, 1.0), (20.0, 0.8), (0.0, 1.25)])
def test_image_rotation_is_camera_z_rotation_by_minus_theta(angle, scale):
  rng = np.random.default_rng(0)
  points = rng.normal(0, 0.05, (30, 3)) + np.array([0.02, -0.01, 0.6])
  focal = 70.0
  pixels = _pinhole(points, focal, SIZE)
  on_augmented_image = tta.transform_pixels(pixels, angle, scale, (SIZE, SIZE))
  # The 3D rotation by -θ about the optical axis, written out: R_z(-θ) = [[c, s, 0], [-s, c, 0], [0, 0, 1]].
  c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
  rotated = points @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]).T
  # A zoom by `scale` is the same camera with a `scale` times longer focal length.
  np.testing.assert_allclose(_pinhole(rotated, focal * scale, SIZE), on_augmented_image, atol=1e-9)
  np.testing.assert_allclose(
      tta.rotation_for_image_angle(angle), np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]), atol=1e-12
  )
  if angle:  # and the other sign does not match
    wrong = points @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T
    assert np.abs(_pinhole(wrong, focal * scale, SIZE) - on_augmented_image).max() > 0.5


def test_positive_angle_turns_content_counter_clockwise_like_pil():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
  ours = tta.augment_images(image[None].astype(np.float32), 25.0, 1.0)[0]
  reference = np.asarray(Image.fromarray(image).rotate(25.0, resample=Image.BILINEAR), np.float32)
  inner = slice(12, SIZE - 12)  # away from the corners that each fills differently
  difference = np.abs(ours[inner, inner] - reference[inner, inner])
  assert np.median(difference) < 2.0  # PIL's bilinear differs by rounding only
  mirrored = np.asarray(Image.fromarray(image).rotate(-25.0, resample=Image.BILINEAR), np.float32)
  assert np.median(np.abs(ours[inner, inner] - mirrored[inner, inner])) > 20.0


def _dot_image(centre_uv, size=SIZE, sigma=1.5):
  rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
  blob = np.exp(-((cols - centre_uv[0]) ** 2 + (rows - centre_uv[1]) ** 2) / (2 * sigma**2))
  return np.repeat(blob[..., None], 3, -1).astype(np.float32)


def _dot_position(image):
  weights = image[..., 0].astype(np.float64)
  weights = np.where(weights > 0.2 * weights.max(), weights, 0.0)
  rows, cols = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
  return np.array([(weights * cols).sum(), (weights * rows).sum()]) / weights.sum()


def test_warp_moves_a_dot_where_transform_pixels_says():
  start = np.array([45.0, 20.0])
  warped = tta.augment_images(_dot_image(start)[None], 35.0, 0.85)[0]
  expected = tta.transform_pixels(start, 35.0, 0.85, (SIZE, SIZE))
  np.testing.assert_allclose(_dot_position(warped), expected, atol=0.25)


def test_identity_augmentation_is_exact():
  rng = np.random.default_rng(2)
  images = rng.normal(size=(2, 8, 10, 3)).astype(np.float32)
  np.testing.assert_array_equal(tta.augment_images(images, 0.0, 1.0), images)


def _oracle(gt_vertices, radius=20.0, scale_shape=1.0, shift=0.0):
  """A predict_fn that reads the input's rotation from a marker dot (placed `radius` px right of the
  centre in the un-augmented image), and returns the ground truth as the camera would see it after
  that image rotation: R_z(-θ) GT, written out independently of the module."""
  centre = (SIZE - 1) / 2.0

  def predict_fn(images):
    out = []
    for b, image in enumerate(images):
      du, dv = _dot_position(image) - centre
      angle = np.round(np.rad2deg(np.arctan2(-dv, du)))  # screen-CCW angle, nearest degree
      c, s = np.cos(np.deg2rad(angle)), np.sin(np.deg2rad(angle))
      seen = gt_vertices[b] @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]).T
      if angle != 0:  # an un-aligned pass may also differ by scale and position
        seen = seen * scale_shape + shift
      out.append(seen)
    return np.stack(out)

  return predict_fn, _dot_image((centre + radius, centre))


@pytest.mark.parametrize('align', ['none', 'procrustes'])
def test_tta_with_a_rotation_consistent_oracle_returns_the_ground_truth(align):
  rng = np.random.default_rng(3)
  gt = rng.normal(0, 0.04, (2, 50, 3))
  predict_fn, image = _oracle(gt)
  images = np.stack([image, image])
  result, passes, pairs = tta.tta_predict(
      predict_fn,
      images,
      angles_deg=(-30.0, 0.0, 15.0),
      scales=(0.9, 1.0),
      align=align,
      return_passes=True,
  )
  assert len(pairs) == 6 and pairs[0] == (0.0, 1.0)
  np.testing.assert_allclose(passes, np.broadcast_to(gt, passes.shape), atol=1e-9)
  np.testing.assert_allclose(result, gt, atol=1e-9)


def test_procrustes_fusion_removes_scale_and_offset_of_augmented_passes():
  rng = np.random.default_rng(4)
  gt = rng.normal(0, 0.04, (1, 50, 3))
  predict_fn, image = _oracle(gt, scale_shape=1.2, shift=0.01)
  config = tta.TTAConfig(angles_deg=(-20.0, 20.0), scales=(1.0,))
  aligned = tta.tta_predict(predict_fn, image[None], config)
  np.testing.assert_allclose(aligned, gt, atol=1e-7)
  unaligned = tta.tta_predict(predict_fn, image[None], config, align='none')
  assert np.abs(unaligned - gt).max() > 1e-3


def test_identity_tta_equals_the_plain_prediction():
  rng = np.random.default_rng(5)
  images = rng.normal(size=(3, 16, 16, 3)).astype(np.float32)
  weights = rng.normal(size=(16 * 16 * 3, 20 * 3))

  def predict_fn(batch):
    return (batch.reshape(len(batch), -1) @ weights).reshape(len(batch), 20, 3)

  for align in tta.ALIGN_MODES:
    fused = tta.tta_predict(predict_fn, images, angles_deg=(0.0, 0.0), scales=(1.0,), align=align)
    np.testing.assert_array_equal(fused, predict_fn(images))


def test_passes_always_start_with_the_reference():
  config = tta.TTAConfig(angles_deg=(10.0, -10.0), scales=(1.1,))
  assert config.passes() == [(0.0, 1.0), (10.0, 1.1), (-10.0, 1.1)]
  assert tta.parse_list('-10, 0,10') == (-10.0, 0.0, 10.0)
  with pytest.raises(ValueError, match='comma-separated'):
    tta.parse_list('ten')
  with pytest.raises(ValueError, match='align'):
    tta.tta_predict(lambda x: np.zeros((1, 3, 3)), np.zeros((1, 4, 4, 3)), align='icp')


def test_rotate_back_inverts_the_image_rotation():
  rng = np.random.default_rng(6)
  points = rng.normal(size=(2, 10, 3))
  seen = points @ tta.rotation_for_image_angle(40.0).T
  np.testing.assert_allclose(tta.rotate_back(seen, 40.0), points, atol=1e-12)
  # align_w_scale of a rotated copy recovers it (the reason Procrustes fusion tolerates any rotation).
  np.testing.assert_allclose(metrics.align_w_scale_batch(points, seen), points, atol=1e-9)


def test_the_commands_tta_flags_default_to_the_config_and_parse_back():
  from absl import flags

  from diffhand_jax import command_line

  values = flags.FlagValues()
  command_line.define_tta_flags(values)
  values(['prog'])
  assert command_line.tta_config(values) is None  # --tta is off
  values(['prog', '--tta'])
  assert command_line.tta_config(values) == tta.TTAConfig()
  values(['prog', '--tta', '--tta_angles=-5,5', '--tta_scales=1'])
  assert command_line.tta_config(values) == tta.TTAConfig(angles_deg=(-5.0, 5.0), scales=(1.0,))
  values(['prog', '--tta', '--tta_angles=left'])
  with pytest.raises(ValueError, match='comma-separated list of numbers'):
    command_line.tta_config(values)
  without_switch = flags.FlagValues()  # the hypotheses benchmark has --no_tta instead
  command_line.define_tta_flags(without_switch, switch=False)
  without_switch(['prog'])
  assert 'tta' not in without_switch
  assert command_line.tta_config(without_switch) == tta.TTAConfig()
