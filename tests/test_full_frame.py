"""Hands placed in a whole photo's camera (inference/full_frame.py, crops.crop_intrinsics,
crops.root_from_projection), checked on synthetic frames with a known K: a weak-perspective camera fitted
to a hand's true 2D joints in its crop, as a perfect model would predict it, must put the hand back
where it is, so that its projected joints land on the true 2D joints, right and left hands alike."""

import math

import numpy as np
import pytest
from PIL import Image

from diffhand_jax.geometry import render
from diffhand_jax.inference import crops, full_frame

SIZE = 64  # the model's input size in these checks
VERTEX_SCALE = 0.1


@pytest.fixture(scope='module')
def frame():
  from diffhand_jax.data import synthetic_frames as sf

  return sf.render_frame(
      [
          sf.FrameHand('right', (0.27, 0.42), 0.35, 'relaxed', roll_deg=20),
          sf.FrameHand('left', (0.78, 0.62), 0.3, 'random', back=True, roll_deg=-30),
          sf.FrameHand('left', (0.5, 0.3), 0.25, 'point', tilt_deg=15),
      ],
      (480, 640),
      seed=1,
  )


def _ideal_model_output(hand, crop_box, K):
  """What a perfect model outputs for this hand: root-relative vertices and joints, and the weak-
  perspective camera least-squares fitted to the true joints in the crop, all in the frame the model
  sees (mirrored for a left hand: x negated, c_x' = S - 1 - c_x, docs/design.md §2)."""
  K_crop = crops.crop_intrinsics(K, crop_box, SIZE)
  joints, vertices = hand['joints'], hand['vertices']
  if hand['side'] == 'left':
    K_crop[0, 2] = SIZE - 1 - K_crop[0, 2]
    joints, vertices = joints * [-1, 1, 1], vertices * [-1, 1, 1]
  normalised = 2.0 * render.project(joints, K_crop) / SIZE - 1.0
  model = (joints - joints[0]) / VERTEX_SCALE
  design = np.zeros((42, 3))
  design[:21, 0], design[:21, 1] = model[:, 0], 1.0
  design[21:, 0], design[21:, 2] = model[:, 1], 1.0
  camera = np.linalg.lstsq(design, normalised.T.reshape(-1), rcond=None)[0]
  return vertices - joints[0], joints - joints[0], camera


def test_projected_joints_land_on_the_true_2d_joints(frame):
  height, width = frame['image'].shape[:2]
  for hand in frame['hands']:
    crop_box = crops.square_box(hand['box'], (height, width), 1.3)
    vertices, joints, camera = _ideal_model_output(hand, crop_box, frame['K'])
    placed = full_frame.to_photo(
        vertices,
        joints,
        camera,
        is_left=hand['side'] == 'left',
        crop_box=crop_box,
        K=frame['K'],
        image_size=SIZE,
        vertex_scale=VERTEX_SCALE,
    )
    pixels = render.project(placed['joints_camera'], frame['K'])
    error = np.linalg.norm(pixels - hand['joints_2d'], axis=1)
    assert error.max() < 0.5, (hand['side'], error)  # pixels, on hands 90-170 px tall
    np.testing.assert_allclose(placed['root'], hand['joints'][0], atol=1e-3)  # metres
    np.testing.assert_allclose(placed['vertices_camera'], hand['vertices'], atol=1e-3)
    # The root-relative outputs are in the photo's orientation (un-mirrored).
    np.testing.assert_allclose(placed['joints'], hand['joints'] - hand['joints'][0], atol=1e-9)


def test_the_weak_perspective_root_alone_misses_off_centre_hands(frame):
  """Why root_from_projection: the weak-perspective shortcut misses hands far from the principal
  point by several pixels (the check above would fail with it)."""
  height, width = frame['image'].shape[:2]
  hand = frame['hands'][1]
  crop_box = crops.square_box(hand['box'], (height, width), 1.3)
  _, joints, camera = _ideal_model_output(hand, crop_box, frame['K'])
  joints_photo, camera_photo = full_frame.unmirror(joints, camera, SIZE)
  K_crop = crops.crop_intrinsics(frame['K'], crop_box, SIZE)
  root = crops.root_from_weak_perspective(camera_photo[None], K_crop[None], (SIZE, SIZE), 0.1)[0]
  error = np.linalg.norm(
      render.project(joints_photo + root, frame['K']) - hand['joints_2d'], axis=1
  )
  assert error.mean() > 2.0


def test_crop_intrinsics_describe_the_resized_crop(frame):
  """The mesh rendered with the crop's K covers the same pixels as the rendered frame, cropped."""
  from diffhand_jax.data import synthetic_scene

  kit = synthetic_scene.load_hand_kit()
  height, width = frame['image'].shape[:2]
  hand = frame['hands'][0]
  crop_box = crops.square_box(hand['box'], (height, width), 1.3) + [3.3, -2.6, 3.3, -2.6]
  full_mask = render.rasterize(hand['vertices'], kit.faces, frame['K'], (height, width))['mask']
  cropped = crops.crop_box(
      np.repeat(full_mask[..., None] * 255, 3, -1).astype(np.uint8), crop_box, 96
  )
  K_crop = crops.crop_intrinsics(frame['K'], crop_box, 96)
  crop_mask = render.rasterize(hand['vertices'], kit.faces, K_crop, (96, 96))['mask']
  resized = cropped[..., 0] > 127
  iou = (resized & crop_mask).sum() / (resized | crop_mask).sum()
  assert iou > 0.95, iou


def test_focal_length_from_the_flag_the_exif_or_the_diagonal(tmp_path):
  image = np.zeros((300, 400, 3), np.uint8)
  plain = tmp_path / 'plain.jpg'
  Image.fromarray(image).save(plain)
  assert full_frame.focal_length(str(plain), (300, 400), 1234.0) == (1234.0, 'flag')
  assert full_frame.focal_length(str(plain), (300, 400)) == (500.0, 'default')  # the diagonal

  exif = Image.Exif()
  exif.get_ifd(0x8769)[0xA405] = 26  # FocalLengthIn35mmFilm: 26 mm, a phone's main camera
  phone = tmp_path / 'phone.jpg'
  Image.fromarray(image).save(phone, exif=exif)
  focal, source = full_frame.focal_length(str(phone), (300, 400))
  assert source == 'exif' and focal == pytest.approx(26 / math.hypot(36, 24) * 500)

  exif = Image.Exif()
  exif.get_ifd(0x8769).update(
      {0x920A: 4.0, 0xA20E: 1000.0, 0xA210: 4, 0xA002: 800, 0xA003: 600}
  )  # 4 mm lens, 1000 px per mm on a sensor read out at 800 × 600, saved at 400 × 300
  camera = tmp_path / 'camera.jpg'
  Image.fromarray(image).save(camera, exif=exif)
  focal, source = full_frame.focal_length(str(camera), (300, 400))
  assert source == 'exif' and focal == pytest.approx(4.0 * 1000.0 * 400 / 800)


def test_draw_hands_scales_the_photo_and_its_camera_together(frame):
  from diffhand_jax.data import synthetic_scene

  kit = synthetic_scene.load_hand_kit()
  meshes = [(hand['vertices'], kit.faces) for hand in frame['hands']]
  drawn = full_frame.draw_hands(frame['image'], meshes, frame['K'], max_size=320)
  assert drawn.shape == (240, 320, 3)
  shrunk = Image.fromarray(frame['image']).resize((320, 240), Image.BILINEAR)
  changed = np.any(drawn != np.asarray(shrunk), -1)
  K_small = full_frame.scaled_intrinsics(frame['K'], 0.5, 0.5)
  expected = np.zeros((240, 320), bool)
  for vertices, faces in meshes:
    expected |= render.rasterize(vertices, faces, K_small, (240, 320))['mask']
  assert (changed & expected).sum() / (changed | expected).sum() > 0.9
  assert full_frame.draw_hands(frame['image'], [], frame['K']).shape == frame['image'].shape


def test_draw_hands_colours_only_the_hands_given_colours(frame):
  from diffhand_jax.data import synthetic_scene

  kit = synthetic_scene.load_hand_kit()
  meshes = [(hand['vertices'], kit.faces) for hand in frame['hands']]
  plain = full_frame.draw_hands(frame['image'], meshes, frame['K'], max_size=320)
  red = np.tile([1.0, 0.0, 0.0], (len(meshes[1][0]), 1))
  coloured = full_frame.draw_hands(
      frame['image'], meshes, frame['K'], max_size=320, colors=[None, red, None]
  )
  # The pixels where hand 1 is the nearest surface, from one z-buffer of all three hands.
  K_small = full_frame.scaled_intrinsics(frame['K'], 0.5, 0.5)
  offsets = np.cumsum([0] + [len(v) for v, _ in meshes])
  faces = np.concatenate([np.asarray(f) + offsets[i] for i, (_, f) in enumerate(meshes)])
  raster = render.rasterize(np.concatenate([v for v, _ in meshes]), faces, K_small, (240, 320))
  per_hand = len(kit.faces)
  hand_1 = (raster['face_index'] >= per_hand) & (raster['face_index'] < 2 * per_hand)
  changed = np.any(coloured != plain, -1)
  assert hand_1.sum() > 100 and not np.any(changed & ~hand_1)
  assert changed[hand_1].mean() > 0.95
  # Red over the photo: redder than the flat blue-grey there.
  assert np.all(coloured[changed][:, 0].astype(int) >= plain[changed][:, 0])
  # No colours, or None for every hand, is the flat colour.
  np.testing.assert_array_equal(
      full_frame.draw_hands(frame['image'], meshes, frame['K'], 320, colors=[None] * 3), plain
  )
  with pytest.raises(ValueError, match='2 colour arrays for 3 meshes'):
    full_frame.draw_hands(frame['image'], meshes, frame['K'], 320, colors=[None, red])
