"""Hands that sit on the photo: placement on the detector's landmarks (crops.root_from_keypoints), the fit
of the hand model onto them (mano.fit with keypoints_2d), duplicates and sides across the detector's
views (inference/detection.py), and the core that puts them together (inference/pipeline.py)."""

import numpy as np
import pytest

from diffhand_jax import mano, metrics
from diffhand_jax.data import synthetic_frames
from diffhand_jax.geometry import hand_model, render
from diffhand_jax.inference import crops, detection, loading, pipeline, sampling


@pytest.fixture(scope='module')
def right_hand():
  model = mano.load_procedural('right')
  return model, np.asarray(hand_model.hand_topology(model).joint_regressor, np.float64)


def _regress(regressor, vertices):
  return np.einsum('jn,...nc->...jc', regressor, vertices)


def test_exact_keypoints_give_the_exact_translation():
  """Joints projected by K from a known translation come back to it (the equation, worked exactly)."""
  rng = np.random.default_rng(0)
  joints = rng.normal(0.0, 0.04, (21, 3))
  joints -= joints[0]
  K = render.intrinsics(700.0, (480, 640))
  truth = np.array([0.12, -0.05, 0.8])
  root, errors = crops.root_from_keypoints(joints, render.project(joints + truth, K), K)
  np.testing.assert_allclose(root, truth, atol=1e-6)
  assert errors.max() < 1e-4


def test_placement_on_detected_landmarks_finds_the_true_depth():
  """Rendered hands with their true articulation, placed on what the detector sees of them (not on the
  true 2D joints): the wrists land at the true depth within 5 % (median over the hands; the
  detector's landmarks on the stylised hand are a few pixels off, so single hands vary by a few %).
  """
  from diffhand_jax.benchmarks import placement

  detector = detection.MediaPipeHands()
  ratios = []
  for photo, truths in placement.synthetic_photos(8, seed=0):
    K = render.intrinsics(photo.focal, photo.image.shape[:2])
    for found in detector.detect(photo.image):
      ious = [float(detection.box_iou(found.box, truth['box'])) for truth in truths]
      joints = truths[int(np.argmax(ious))]['joints']
      root, _ = crops.root_from_keypoints(joints - joints[0], found.keypoints, K)
      ratios.append(root[2] / joints[0, 2])
  assert len(ratios) >= 10
  assert abs(np.median(ratios) - 1.0) < 0.05, ratios


def test_a_wrongly_turned_hand_keeps_its_size():
  """Joints turned upside down (180° about the optical axis) against the keypoints' hand cannot fit
  them; the pixel error alone is then least with the hand shrunk to a point far away. The depth stays
  within depth_range of the depth whose spread matches the keypoints."""
  rng = np.random.default_rng(1)
  joints = rng.normal(0.0, 0.04, (21, 3)) * np.array([1.0, 1.0, 0.2])
  joints -= joints[0]
  K = render.intrinsics(700.0, (480, 640))
  keypoints = render.project(joints + np.array([0.0, 0.0, 0.7]), K)
  turned = joints * np.array([-1.0, -1.0, 1.0])
  root, _ = crops.root_from_keypoints(turned, keypoints, K)
  unbounded, _ = crops.root_from_keypoints(turned, keypoints, K, depth_range=100.0)
  assert 0.7 / 1.6 < root[2] < 0.7 * 1.6
  assert unbounded[2] > 2 * root[2]  # what the bound prevents


def _fit_problem(right_hand, seed=0):
  model, regressor = right_hand
  rng = np.random.default_rng(seed)
  pose = mano.sample_random_pose(rng, model, 3, flat_hand_mean=False, random_global_orient=True)
  betas = np.zeros((3, model.num_betas), np.float32)
  trans = np.tile(np.array([[0.05, -0.02, 0.7]], np.float32), (3, 1))
  truth = np.asarray(mano.forward(model, pose, betas, trans=trans)[0], np.float64)
  K = render.intrinsics(800.0, (480, 640))
  keypoints = render.project(_regress(regressor, truth), K)
  # The "network's" mesh: another articulation, placed 1.5 times too far.
  noisy = pose + rng.normal(0.0, 0.15, pose.shape).astype(np.float32)
  given = np.asarray(mano.forward(model, noisy, betas, trans=trans)[0], np.float64)
  wrist = _regress(regressor, given)[:, :1]
  given = given - wrist + 1.5 * _regress(regressor, truth)[:, :1]
  return model, regressor, truth, given, keypoints, K


def test_the_fit_puts_the_joints_on_the_keypoints(right_hand):
  model, regressor, truth, given, keypoints, K = _fit_problem(right_hand)
  before = np.linalg.norm(render.project(_regress(regressor, given), K) - keypoints, axis=-1)
  out = mano.fit(model, given, keypoints_2d=keypoints, K=K, joint_regressor=regressor)
  joints = _regress(regressor, out['vertices'])
  after = np.linalg.norm(render.project(joints, K) - keypoints, axis=-1).mean(-1)
  np.testing.assert_allclose(out['reprojection_error_px'], after, rtol=1e-4)
  assert np.all(after < 0.2 * before.mean(-1)), (before.mean(-1), after)
  # The wrist moves from 1.5 times too far to within 3 cm of the truth.
  true_wrist = _regress(regressor, truth)[:, 0]
  assert np.all(np.linalg.norm(joints[:, 0] - true_wrist, axis=-1) < 0.03)


def test_the_mesh_prior_holds_the_predicted_shape(right_hand):
  """With the prior the fitted hand's root-relative shape stays nearer the given mesh than without it,
  and `error` reports that root-relative distance."""
  model, regressor, _, given, keypoints, K = _fit_problem(right_hand, seed=1)
  kwargs = dict(keypoints_2d=keypoints, K=K, joint_regressor=regressor)
  held = mano.fit(model, given, **kwargs)
  free = mano.fit(model, given, mesh_prior=1e-4, **kwargs)

  def shape_distance(vertices):
    relative = lambda v: v - _regress(regressor, v)[:, :1]
    return np.linalg.norm(relative(vertices) - relative(given), axis=-1).mean(-1)

  np.testing.assert_allclose(held['error'], shape_distance(held['vertices']), rtol=1e-6)
  assert np.all(shape_distance(held['vertices']) < shape_distance(free['vertices']))
  assert np.all(free['reprojection_error_px'] <= held['reprojection_error_px'] + 1e-3)


def test_fit_refuses_keypoints_without_their_camera(right_hand):
  model, regressor, _, given, keypoints, K = _fit_problem(right_hand)
  with pytest.raises(ValueError, match='needs K and joint_regressor'):
    mano.fit(model, given, keypoints_2d=keypoints)
  with pytest.raises(ValueError, match='joint_regressor must be'):
    mano.fit(model, given, keypoints_2d=keypoints, K=K, joint_regressor=regressor[:5])
  with pytest.raises(ValueError, match='num_iterations must be an integer >= 1'):
    mano.fit(model, given, num_iterations=0)


def _hand(box, side, score, side_score, keypoints=None):
  return detection.DetectedHand(
      box=np.asarray(box, np.float64),
      side=side,
      score=score,
      side_score=side_score,
      keypoints=keypoints,
  )


def test_duplicates_go_by_boxes_and_by_landmarks():
  points = np.random.default_rng(0).uniform(100, 200, (21, 2))
  first = _hand([90, 90, 210, 210], 'right', 0.9, 0.8, points)
  same_box = _hand([95, 92, 212, 208], 'left', 0.8, 0.6, points + 40)
  # Another palm the landmark model put on the same joints: boxes overlap little, landmarks agree.
  same_joints = _hand([60, 90, 300, 330], 'right', 0.7, 0.9, points + 3)
  other = _hand([300, 90, 420, 210], 'right', 0.6, 0.9, points + 210)
  kept = detection.suppress_duplicates([same_joints, other, same_box, first])
  assert [h.score for h in kept] == [0.9, 0.6]


def test_overlapping_hands_never_share_a_side():
  """Interlaced hands, both called right: the surer one keeps 'right', the other becomes left."""
  sure = _hand([100, 100, 220, 220], 'right', 0.9, 0.95)
  unsure = _hand([150, 120, 270, 240], 'right', 0.95, 0.6)
  apart = _hand([400, 100, 500, 200], 'right', 0.8, 0.55)
  kept = detection.resolve_sides([unsure, sure, apart])
  assert [h.side for h in kept] == ['left', 'right', 'right']
  assert kept[0].side_score == pytest.approx(0.4)


def test_two_overlapping_rendered_hands_come_out_as_two_sides():
  """A right and a left hand rendered over each other: no duplicate, and never two hands of one side
  over one region."""
  hands = [
      synthetic_frames.FrameHand('right', (0.42, 0.5), 0.5, 'flat', back=True, roll_deg=-15),
      synthetic_frames.FrameHand('left', (0.58, 0.5), 0.5, 'flat', back=True, roll_deg=15),
  ]
  frame = synthetic_frames.render_frame(hands, (480, 640), seed=5, background='gradient')
  found = detection.MediaPipeHands().detect(frame['image'])
  assert found
  for i, a in enumerate(found):
    for b in found[i + 1 :]:
      iou = float(detection.box_iou(a.box, b.box))
      assert iou <= 0.5
      assert iou <= 0.1 or a.side != b.side


def test_tiles_cover_a_large_photo_and_skip_a_small_one():
  assert detection.palm_tiles((200, 250)) == []
  tiles = detection.palm_tiles((480, 640))
  covered = np.zeros((480, 640), bool)
  for x, y, side in tiles:
    assert side == 320 and x + side <= 640 and y + side <= 480
    covered[y : y + side, x : x + side] = True
  assert covered.all()


@pytest.fixture(scope='module')
def opened():
  from _inference_workdir import tiny_workdir

  return sampling.SamplerCache(loading.load_trained(tiny_workdir()[0]))


def test_the_core_places_and_refines_detected_hands(opened):
  """On a rendered frame: the placement is 'landmarks' with its reprojection error, the refined mesh
  sits closer to the landmarks than the network's (kept beside it), and the detector's 3D landmarks
  come with their PA-MPJPE to the hand."""
  frame = synthetic_frames.example_frame()
  base = dict(num_hypotheses=2, steps=2)
  (placed,) = pipeline.reconstruct_photos(
      opened,
      [pipeline.Photo(frame['image'], focal=float(frame['K'][0, 0]))],
      pipeline.Options(**base),
  )
  (refined,) = pipeline.reconstruct_photos(
      opened,
      [pipeline.Photo(frame['image'], focal=float(frame['K'][0, 0]))],
      pipeline.Options(refine='landmarks', **base),
  )
  assert len(placed.hands) == len(refined.hands) == 3
  for hand, fitted in zip(placed.hands, refined.hands):
    assert hand.placement == 'landmarks' and hand.mesh == 'network' and hand.network is None
    pixels = render.project(hand.joints_camera, placed.K)
    error = np.linalg.norm(pixels - hand.crop.keypoints_2d, axis=-1).mean()
    assert hand.reprojection_error_px == pytest.approx(error, abs=1e-3)
    assert fitted.mesh == 'refined' and fitted.mano['hand_model']
    assert fitted.reprojection_error_px < fitted.network['reprojection_error_px']
    np.testing.assert_allclose(fitted.network['joints_camera'], hand.joints_camera, atol=1e-9)
    expected = metrics.pa_mpjpe(hand.joints[None], hand.crop.keypoints_3d[None])[0]
    assert hand.landmarks_3d_pa_mpjpe_mm == pytest.approx(expected, abs=1e-3)
  network = pipeline.reconstruct_photos(
      opened,
      [pipeline.Photo(frame['image'], focal=float(frame['K'][0, 0]))],
      pipeline.Options(placement='network', **base),
  )[0]
  assert {hand.placement for hand in network.hands} == {'network'}
  boxes = pipeline.reconstruct(
      opened, frame['image'], pipeline.Options(**base), boxes=[[60, 150, 200, 350]]
  )
  assert boxes[0].placement == 'network' and boxes[0].reprojection_error_px is None


def test_tiles_find_a_small_hand_that_the_whole_photo_misses():
  """A hand a tenth of a 1280 × 720 photo tall: the palm detector misses it on the whole photo
  letterboxed to 192 pixels, and finds it in a tile at twice the zoom."""
  hand = synthetic_frames.FrameHand('right', (0.3, 0.6), 0.1, 'flat', back=True, roll_deg=5)
  frame = synthetic_frames.render_frame(
      [hand], (720, 1280), seed=1, background='gradient', supersample=1
  )
  assert detection.MediaPipeHands(tiles=False).detect(frame['image']) == []
  (found,) = detection.MediaPipeHands().detect(frame['image'])
  assert detection.box_iou(found.box, frame['hands'][0]['box']) > 0.7
