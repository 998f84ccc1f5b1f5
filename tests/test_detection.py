"""The hand detector (inference/detection.py): MediaPipe's decoding steps against hand-worked cases, and
the whole detector on whole frames the project renders (data/synthetic_frames.py), with a mirrored copy
for the sides.

What the detector makes of the procedural hand: it finds it (palm and back views, several poses, skin
tones), its boxes overlap the projected mesh's boxes (IoU ≈ 0.8 on average), and mirroring a frame swaps
the sides it reports. Its sides are right for the back of the hand. For the palm side of these renders,
MediaPipe's landmark model reports the other hand, with high confidence; its own 3D world landmarks
agree with that answer (they are the mirror image of the true hand), so the model takes the render's
palm for a back: the stylised procedural hand (no creases, tube fingers) is not a real palm to it. The
side test therefore uses back views, and the mirrored-copy test checks palm views for consistency only.
"""

import math
import sys

import numpy as np
import pytest

from diffhand_jax.inference import detection

# ------------------------------------------------------------------------------------------------
# Decoding, worked by hand from MediaPipe's graph options (palm_detection_cpu.pbtxt)
# ------------------------------------------------------------------------------------------------


def test_ssd_anchors_follow_the_palm_models_layout():
  anchors = detection.ssd_anchors()
  # Stride 8 on 192 px: 24 × 24 cells, 2 anchors each; strides 16, 16, 16 share one 12 × 12 map with
  # 2 anchors per layer, 6 per cell.
  assert anchors.shape == (24 * 24 * 2 + 12 * 12 * 6, 2) == (2016, 2)
  np.testing.assert_allclose(anchors[0], [0.5 / 24, 0.5 / 24])
  np.testing.assert_allclose(anchors[1], [0.5 / 24, 0.5 / 24])
  np.testing.assert_allclose(anchors[2], [1.5 / 24, 0.5 / 24])  # row by row: x moves first
  np.testing.assert_allclose(anchors[2 * 24], [0.5 / 24, 1.5 / 24])
  np.testing.assert_allclose(anchors[1151], [23.5 / 24, 23.5 / 24])
  np.testing.assert_allclose(anchors[1152 : 1152 + 6], [[0.5 / 12, 0.5 / 12]] * 6)
  np.testing.assert_allclose(anchors[1152 + 6], [1.5 / 12, 0.5 / 12])
  np.testing.assert_allclose(anchors[-1], [11.5 / 12, 11.5 / 12])


def test_decode_palms_reads_offsets_in_input_pixels_around_the_anchor():
  anchors = detection.ssd_anchors()
  raw = np.zeros((2016, 18))
  scores = np.full((2016, 1), -5.0)
  # Anchor 1152 sits at (1/24, 1/24). Offsets (19.2, -9.6) px = (0.1, -0.05); size 48 × 96 px = 0.25 × 0.5.
  raw[1152, :4] = [19.2, -9.6, 48.0, 96.0]
  raw[1152, 4:6] = [0.0, 38.4]  # keypoint 0: (1/24, 1/24 + 0.2)
  raw[1152, 16:18] = [-19.2, 0.0]  # keypoint 6: (1/24 - 0.1, 1/24)
  scores[1152] = 0.0
  scores[0] = 1000.0  # clipped to 100 before the sigmoid
  boxes, keypoints, probabilities = detection.decode_palms(raw, scores, anchors)
  centre = 1 / 24
  np.testing.assert_allclose(
      boxes[1152],
      [centre + 0.1 - 0.125, centre - 0.05 - 0.25, centre + 0.1 + 0.125, centre - 0.05 + 0.25],
  )
  np.testing.assert_allclose(keypoints[1152, 0], [centre, centre + 0.2])
  np.testing.assert_allclose(keypoints[1152, 6], [centre - 0.1, centre])
  assert probabilities[1152] == pytest.approx(0.5)
  assert probabilities[0] == pytest.approx(1 / (1 + math.exp(-100)))
  assert probabilities[5] == pytest.approx(1 / (1 + math.exp(5)))


def test_weighted_nms_merges_overlaps_into_their_score_weighted_mean():
  boxes = np.array(
      [[0.0, 0.0, 1.0, 1.0], [0.2, 0.0, 1.2, 1.0], [3.0, 3.0, 4.0, 4.0], [0.0, 0.0, 1.0, 1.0]]
  )
  keypoints = np.array([[[0.0, 0.0]], [[1.5, 3.0]], [[7.0, 7.0]], [[9.0, 9.0]]])
  scores = np.array([0.9, 0.6, 0.8, 0.4])  # the last is below min_score
  kept = detection.weighted_nms(boxes, keypoints, scores, iou_threshold=0.3, min_score=0.5)
  assert len(kept) == 2
  box, points, score = kept[0]
  # IoU of the first two = 0.8 / 1.2 > 0.3: weights 0.9 and 0.6.
  np.testing.assert_allclose(box, [0.6 * 0.2 / 1.5, 0.0, (0.9 + 0.6 * 1.2) / 1.5, 1.0])
  np.testing.assert_allclose(points, [[0.6 * 1.5 / 1.5, 0.6 * 3.0 / 1.5]])
  assert score == 0.9
  np.testing.assert_allclose(kept[1][0], boxes[2])
  assert kept[1][2] == 0.8


def test_palm_roi_turns_wrist_to_middle_finger_upright_and_shifts_towards_the_fingers():
  keypoints = np.zeros((7, 2))
  keypoints[0], keypoints[2] = (150, 160), (150, 100)  # wrist below the middle finger: upright
  centre, side, angle = detection.palm_roi(np.array([100, 100, 200, 160]), keypoints)
  assert angle == pytest.approx(0.0)
  np.testing.assert_allclose(centre, [150, 130 - 0.5 * 60])
  assert side == pytest.approx(100 * 2.6)
  # Fingers pointing to the image's right: a quarter turn, and the shift goes right.
  keypoints[0], keypoints[2] = (100, 130), (200, 130)
  centre, side, angle = detection.palm_roi(np.array([100, 100, 200, 160]), keypoints)
  assert angle == pytest.approx(math.pi / 2)
  np.testing.assert_allclose(centre, [150 + 30, 130], atol=1e-9)


def test_rotated_crop_and_roi_to_image_agree():
  """A bright dot lands in the crop where roi_to_image says that crop point lies in the image."""
  for side, angle in ((80.0, 0.7), (900.0, -2.0)):  # the second shrinks the region first
    image = np.zeros((1000, 1200, 3), np.uint8)
    dot = np.array([610.0, 455.0])
    image[448:463, 603:618] = 255
    centre = np.array([600.0, 470.0])
    crop = detection.rotated_crop(image, centre, side, angle, 224)
    weights = crop[..., 0]
    rows, cols = np.nonzero(weights > 0.5 * weights.max())
    found = np.array([cols.mean(), rows.mean()])
    back = detection.roi_to_image((found + 0.5) / 224, centre, side, angle)
    assert np.linalg.norm(back - dot) < max(1.5, 2 * side / 224), (side, back, dot)


def test_unavailable_detector_says_what_to_install(tmp_path, monkeypatch):
  with pytest.raises(detection.DetectorUnavailable, match='palm_detection_full.tflite'):
    detection.MediaPipeHands(model_dir=str(tmp_path))
  monkeypatch.setitem(sys.modules, 'ai_edge_litert', None)
  monkeypatch.setitem(sys.modules, 'ai_edge_litert.interpreter', None)
  monkeypatch.setitem(sys.modules, 'tensorflow', None)
  with pytest.raises(detection.DetectorUnavailable, match='pip install ai-edge-litert'):
    detection.MediaPipeHands()


# ------------------------------------------------------------------------------------------------
# The whole detector on rendered frames
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def detector():
  return detection.MediaPipeHands()


@pytest.fixture(scope='module')
def kit():
  from diffhand_jax.data import synthetic_scene

  return synthetic_scene.load_hand_kit()


def _mirror_box(box, width):
  return np.array([width - 1 - box[2], box[1], width - 1 - box[0], box[3]])


def _match(found, truths):
  """Each true hand's best-overlapping detection: [(truth, hand, IoU)]."""
  pairs = []
  for truth in truths:
    ious = [detection.box_iou(hand.box, truth['box']) for hand in found]
    best = int(np.argmax(ious))
    pairs.append((truth, found[best], float(ious[best])))
  return pairs


def test_detector_finds_both_hands_with_boxes_keypoints_and_sides(detector, kit):
  from diffhand_jax.data import synthetic_frames as sf

  frame = sf.render_frame(
      [
          sf.FrameHand('right', (0.28, 0.5), 0.5, 'flat', back=True, roll_deg=-15, skin=0.8),
          sf.FrameHand('left', (0.72, 0.48), 0.45, 'relaxed', back=True, roll_deg=10, skin=3.0),
      ],
      (480, 640),
      seed=3,
      kit=kit,
  )
  found = detector.detect(frame['image'])
  assert len(found) == 2
  for truth, hand, iou in _match(found, frame['hands']):
    assert iou > 0.6, (truth['box'], hand.box)
    assert hand.side == truth['side'] and hand.side_score > 0.8
    assert 0.5 < hand.score <= 1.0
    size = np.max(truth['box'][2:] - truth['box'][:2])
    error = np.linalg.norm(hand.keypoints - truth['joints_2d'], axis=1)
    assert error.mean() < 0.1 * size, error  # the 21 landmarks near the rig's joints

  # The mirrored frame: the boxes mirror and every side swaps.
  width = frame['image'].shape[1]
  mirrored = [
      dict(
          truth,
          box=_mirror_box(truth['box'], width),
          side=('left', 'right')[truth['side'] == 'left'],
      )
      for truth in frame['hands']
  ]
  flipped = detector.detect(np.ascontiguousarray(frame['image'][:, ::-1]))
  assert len(flipped) == 2
  for truth, hand, iou in _match(flipped, mirrored):
    assert iou > 0.6 and hand.side == truth['side']
  # Told that the frame is a mirrored (selfie) view, the detector reports the mirrored sides.
  detector.mirrored = True
  try:
    selfie = detector.detect(frame['image'])
  finally:
    detector.mirrored = False
  for truth, hand, _ in _match(selfie, frame['hands']):
    assert hand.side != truth['side']


def test_mirroring_a_palm_view_swaps_the_reported_side(detector, kit):
  """Palm views: the model's sides are wrong for the procedural hand (module docstring), but they must
  still swap with the mirror image, or the crop and landmark geometry would be mirrored somewhere.
  """
  from diffhand_jax.data import synthetic_frames as sf

  frame = sf.render_frame(
      [
          sf.FrameHand('right', (0.3, 0.5), 0.5, 'flat', skin=1.0),
          sf.FrameHand('right', (0.72, 0.5), 0.45, 'relaxed', roll_deg=25, skin=2.0),
      ],
      (480, 640),
      seed=4,
      kit=kit,
  )
  found = detector.detect(frame['image'])
  flipped = detector.detect(np.ascontiguousarray(frame['image'][:, ::-1]))
  assert len(found) == len(flipped) == 2
  width = frame['image'].shape[1]
  for hand in found:
    ((_, twin, iou),) = _match(flipped, [dict(box=_mirror_box(hand.box, width))])
    assert iou > 0.8 and twin.side != hand.side


def test_no_hand_no_detection(detector):
  rng = np.random.default_rng(0)
  image = np.clip(rng.normal(120, 20, (240, 320, 3)), 0, 255).astype(np.uint8)
  assert detector.detect(image) == []


def test_track_finds_a_moving_hand_again_from_its_last_landmarks_and_loses_a_gone_one(
    detector, kit
):
  """MediaPipe's tracking step: the landmark model alone, in the ROI of the last landmarks, follows
  the rendered right hand of `render_clip` (it moves a few pixels a frame) with boxes on the truth's,
  and answers None once the hand has left."""
  from diffhand_jax.data import synthetic_frames as sf

  clip = sf.render_clip(4, (240, 320), two_hands=False, kit=kit)
  (first,) = detector.detect(clip['frames'][0])
  keypoints = first.keypoints
  for frame, truths in zip(clip['frames'][1:], clip['hands'][1:]):
    hand = detector.track(frame, keypoints)
    assert hand is not None and hand.side == 'right' and hand.palm_box is None
    assert detection.box_iou(hand.box, truths[0]['box']) > 0.6, (hand.box, truths[0]['box'])
    size = np.max(truths[0]['box'][2:] - truths[0]['box'][:2])
    error = np.linalg.norm(hand.keypoints - truths[0]['joints_2d'], axis=1)
    assert error.mean() < 0.1 * size, error
    keypoints = hand.keypoints
  empty = sf.render_frame([], (240, 320), seed=0, kit=kit)['image']
  assert detector.track(empty, keypoints) is None
