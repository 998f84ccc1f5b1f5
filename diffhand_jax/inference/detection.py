"""Finding the hands in a whole photo: a small detector interface and MediaPipe's hand models.

* `HandDetector`: anything with `detect(image) -> list[DetectedHand]`. `predict` takes one, so another
  detector (YOLO weights a user brings, say) plugs in by wrapping its output in `DetectedHand`s.
* `DetectedHand`: a box (x0, y0, x1, y1) in full-image pixels, the side ('right' / 'left' as the hand is
  in an ordinary, non-mirrored photo), a score, and optionally 21 keypoints.
* `MediaPipeHands`: MediaPipe's palm detector and hand-landmark model (Apache-2.0 `.tflite` files shipped in
  `diffhand_jax/assets/detector/`, see PROVENANCE.md there), run with TensorFlow's `tf.lite.Interpreter`
  (or LiteRT's when `ai-edge-litert` is installed), and this module's own pre- and post-processing,
  which follows MediaPipe's graphs (palm_detection_cpu, palm_detection_detection_to_roi,
  hand_landmark_cpu):

  1. the photo, letterboxed into a 192×192 square (values in [0, 1]), goes through the palm detector:
     2016 SSD anchors (`ssd_anchors`) × (box, 7 palm keypoints) and a score each; a photo larger than
     1.5 × that input also goes through in overlapping tiles at twice the zoom (`palm_tiles`: small
     hands), and the palms of all views are merged (`merge_palms`);
  2. `decode_palms` turns those into boxes and keypoints; `weighted_nms` merges overlapping ones
     (IoU > 0.3) into their score-weighted mean, keeping palms with score ≥ 0.5;
  3. `palm_roi`: each palm gives a rotated square around the whole hand: turned so that wrist → middle
     finger points up, shifted half a palm towards the fingers, 2.6 × the palm's longer side;
  4. that square, resampled to 224×224, goes through the landmark model: 21 landmarks (the FreiHAND /
     OpenPose order of docs/design.md §2), a hand-presence score and a handedness score;
  5. the hand's box is the landmarks' bounding box grown by `box_margin` of its longer side on each
     side (the hand's skin reaches past its joints); its 3D landmarks ("world landmarks", metres) are
     turned into the image's axes (`world_to_image_axes`);
  6. duplicates go (`suppress_duplicates`: landmark boxes or palm boxes overlapping by IoU > 0.5, or
     landmarks on the same joints), and two overlapping hands never share a side (`resolve_sides`: the
     landmark model's surer side score decides).

Handedness. MediaPipe's landmark model was trained on mirrored (selfie) images: its handedness output is
the probability of the label "Left" under that assumption, which in an ordinary photo is a right hand.
`MediaPipeHands(mirrored=False)` (the default) reports sides for ordinary photos; pass mirrored=True for
images that are themselves mirrored. On the project's renders of the procedural hand the sides come out
right for the back of the hand and wrong for the palm (the model's own 3D landmarks then are the mirror
image of the hand too: it takes the stylised palm for a back); tests/test_detection.py has the details.

Pixel convention (as geometry/render.py): pixel (row i, column j) has its centre at (x, y) = (j, i).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any, Protocol, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

ASSET_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets', 'detector'
)
PALM_MODEL = 'palm_detection_full.tflite'
LANDMARK_MODEL = 'hand_landmark_full.tflite'

PALM_INPUT_SIZE = 192
LANDMARK_INPUT_SIZE = 224
NUM_PALM_KEYPOINTS = 7
SIDES = ('right', 'left')


class DetectorUnavailable(RuntimeError):
  """The detector cannot run here (no TFLite interpreter, or a missing model file)."""


@dataclasses.dataclass(frozen=True)
class DetectedHand:
  """One hand found in a photo.

  box: (4,) x0, y0, x1, y1 in full-image pixels. side: 'right' or 'left', as the hand is in the photo
  (not mirrored). score: the detector's confidence in [0, 1]. side_score: its confidence in `side`.
  keypoints: optional (21, 2) pixels in the 21-joint order of docs/design.md §2. keypoints_3d: optional
  (21, 3) metres, the landmark model's own 3D hand ("world landmarks": origin near the hand's centre,
  axes the image's x right, y down, z away from the camera), in the same order. palm_box: optional (4,)
  the palm detector's box the hand was found from, pixels.
  """

  box: np.ndarray
  side: str
  score: float
  side_score: float = 1.0
  keypoints: np.ndarray | None = None
  keypoints_3d: np.ndarray | None = None
  palm_box: np.ndarray | None = None

  def __post_init__(self):
    if self.side not in SIDES:
      raise ValueError(f'DetectedHand: side must be one of {SIDES}, got {self.side!r}')


class HandDetector(Protocol):
  """What `predict` needs of a detector."""

  name: str

  def detect(self, image: np.ndarray) -> list[DetectedHand]:
    """image uint8 (H, W, 3) RGB → every hand found, most confident first."""
    ...


# ==================================================================================================
# Boxes
# ==================================================================================================


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Intersection over union of boxes a (..., 4) and b (..., 4), (x0, y0, x1, y1); 0 for empty ones."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
  height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
  inter = width * height
  area = lambda box: np.clip(box[..., 2] - box[..., 0], 0, None) * np.clip(
      box[..., 3] - box[..., 1], 0, None
  )
  union = area(a) + area(b) - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


# ==================================================================================================
# Palm detection: anchors, decoding, weighted non-maximum suppression
# ==================================================================================================


def ssd_anchors(
    input_size: int = PALM_INPUT_SIZE,
    strides: Sequence[int] = (8, 16, 16, 16),
    anchors_per_layer: int = 2,
    offset: float = 0.5,
) -> np.ndarray:
  """Anchor centres (A, 2) as normalised (x, y) in [0, 1], in the order the palm model emits them.

  MediaPipe's SsdAnchorsCalculator with fixed_anchor_size (every anchor is 1 × 1, so only centres
  matter): consecutive layers with the same stride share one feature map, and each of its cells holds
  `anchors_per_layer` anchors per layer (aspect ratio 1 and the interpolated scale), row by row. For the
  192×192 palm model that is 24×24 cells × 2 + 12×12 cells × 6 = 2016 anchors.
  """
  centres = []
  layer = 0
  while layer < len(strides):
    stride = strides[layer]
    same = 0
    while layer + same < len(strides) and strides[layer + same] == stride:
      same += 1
    cells = int(math.ceil(input_size / stride))
    ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing='ij')
    grid = np.stack([(xs + offset) / cells, (ys + offset) / cells], -1).reshape(-1, 1, 2)
    centres.append(np.repeat(grid, anchors_per_layer * same, axis=1).reshape(-1, 2))
    layer += same
  return np.concatenate(centres).astype(np.float64)


def decode_palms(
    raw_boxes: np.ndarray,
    raw_scores: np.ndarray,
    anchors: np.ndarray,
    input_size: int = PALM_INPUT_SIZE,
    score_clip: float = 100.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The palm model's raw outputs → (boxes (A, 4) normalised x0, y0, x1, y1; keypoints (A, 7, 2)
  normalised x, y; scores (A,) in [0, 1]).

  Each row of raw_boxes (A, 18) holds x, y, w, h of the box and then x, y of 7 keypoints, all in input
  pixels relative to the anchor centre (MediaPipe's reverse_output_order, with x/y/w/h scales equal to
  the input size and 1 × 1 anchors). Scores are the sigmoid of the logits clipped to ±score_clip.
  """
  raw_boxes = np.asarray(raw_boxes, np.float64).reshape(len(anchors), -1)
  values = raw_boxes / float(input_size)
  centre = values[:, 0:2] + anchors
  half = values[:, 2:4] / 2.0
  boxes = np.concatenate([centre - half, centre + half], axis=1)
  keypoints = values[:, 4 : 4 + 2 * NUM_PALM_KEYPOINTS].reshape(-1, NUM_PALM_KEYPOINTS, 2)
  keypoints = keypoints + anchors[:, None, :]
  logits = np.clip(np.asarray(raw_scores, np.float64).reshape(-1), -score_clip, score_clip)
  return boxes, keypoints, 1.0 / (1.0 + np.exp(-logits))


def weighted_nms(
    boxes: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray,
    *,
    iou_threshold: float = 0.3,
    min_score: float = 0.5,
) -> list[tuple[np.ndarray, np.ndarray, float]]:
  """MediaPipe's weighted non-maximum suppression.

  Detections with score ≥ min_score are visited by decreasing score. The best one left, together with
  every remaining one whose IoU with it exceeds `iou_threshold` (itself included), becomes one
  detection: the score-weighted mean of their box corners and keypoints, with the best one's score.
  Returns [(box (4,), keypoints (K, 2), score)], most confident first.
  """
  boxes, keypoints, scores = (np.asarray(a, np.float64) for a in (boxes, keypoints, scores))
  order = [int(i) for i in np.argsort(-scores, kind='stable') if scores[i] >= min_score]
  kept = []
  while order:
    best = order[0]
    overlap = box_iou(boxes[best][None], boxes[order])
    group = [i for i, o in zip(order, overlap) if o > iou_threshold or i == best]
    order = [i for i in order if i not in set(group)]
    weights = scores[group][:, None]
    box = (boxes[group] * weights).sum(0) / weights.sum()
    points = (keypoints[group] * weights[:, :, None]).sum(0) / weights.sum()
    kept.append((box, points, float(scores[best])))
  return kept


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, float, np.ndarray]:
  """The image, centred in a black square and resized to (size, size, 3) float32 in [0, 1].

  Returns (tensor, side, offset): the square's side in image pixels and the image's top-left corner
  in it, so that a normalised point p of the tensor is the image pixel p · side - offset - 0.5.
  """
  height, width = image.shape[:2]
  side = max(height, width)
  offset = np.array([(side - width) // 2, (side - height) // 2], np.float64)
  canvas = np.zeros((side, side, 3), np.uint8)
  canvas[int(offset[1]) : int(offset[1]) + height, int(offset[0]) : int(offset[0]) + width] = image
  resized = Image.fromarray(canvas).resize((size, size), Image.BILINEAR)
  return np.asarray(resized, np.float32) / 255.0, float(side), offset


# ==================================================================================================
# The hand's region of interest, and the rotated crop the landmark model sees
# ==================================================================================================


def _rotation(angle: float) -> np.ndarray:
  cos, sin = math.cos(angle), math.sin(angle)
  return np.array([[cos, -sin], [sin, cos]])


def palm_roi(
    box: np.ndarray,
    keypoints: np.ndarray,
    *,
    scale: float = 2.6,
    shift_y: float = -0.5,
) -> tuple[np.ndarray, float, float]:
  """A palm (box (4,) and keypoints (7, 2), pixels) → the hand's square ROI: (centre (2,), side,
  rotation), pixels and radians.

  As MediaPipe's PalmDetectionDetectionToRoi: the rotation turns the wrist (keypoint 0) → middle-finger
  base (keypoint 2) direction to point up, rotation = π/2 − atan2(−dy, dx), wrapped to [−π, π); the
  centre moves by shift_y × the box height along the rotated up axis (negative: towards the fingers);
  the side is the box's longer side × scale. The ROI's own axes are x' = R (1, 0), y' = R (0, 1) with
  R the rotation matrix (image y points down).
  """
  box = np.asarray(box, np.float64)
  keypoints = np.asarray(keypoints, np.float64)
  delta = keypoints[2] - keypoints[0]
  angle = math.pi / 2 - math.atan2(-delta[1], delta[0])
  angle = angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))
  width, height = box[2] - box[0], box[3] - box[1]
  centre = (box[:2] + box[2:]) / 2.0 + _rotation(angle) @ np.array([0.0, shift_y * height])
  return centre, float(max(width, height) * scale), float(angle)


def rotated_crop(
    image: np.ndarray, centre: np.ndarray, side: float, angle: float, size: int
) -> np.ndarray:
  """The rotated square ROI (centre (2,) pixels, side pixels, angle radians) of an image (H, W, 3)
  uint8, resampled to (size, size, 3) float32 in [0, 1] (zero outside the image).

  Output pixel (i, j) shows the image point centre + R(angle) · (((j + 0.5)/size − 0.5) · side,
  ((i + 0.5)/size − 0.5) · side). Large ROIs are first shrunk with PIL's antialiased resize, so a hand
  that fills a 12-megapixel photo is not sampled with gaps.
  """
  image = np.asarray(image)
  centre = np.asarray(centre, np.float64)
  rotation = _rotation(angle)
  factor = 1.0
  if side > 1.5 * size:  # shrink the region around the ROI first (anti-aliasing)
    reach = side * (abs(math.cos(angle)) + abs(math.sin(angle))) / 2.0 + 2.0
    x0, y0 = (int(math.floor(v - reach)) for v in centre)
    x1, y1 = (int(math.ceil(v + reach)) + 1 for v in centre)
    factor = size / side
    region = Image.fromarray(np.asarray(image, np.uint8)).crop((x0, y0, x1, y1))
    out_w, out_h = max(1, round((x1 - x0) * factor)), max(1, round((y1 - y0) * factor))
    image = np.asarray(region.resize((out_w, out_h), Image.BILINEAR))
    factor_x, factor_y = out_w / (x1 - x0), out_h / (y1 - y0)
    # Pixel centres: x in the region maps to (x - x0 + 0.5) · factor - 0.5 after the resize.
    centre = np.array(
        [(centre[0] - x0 + 0.5) * factor_x - 0.5, (centre[1] - y0 + 0.5) * factor_y - 0.5]
    )
    factor = (factor_x + factor_y) / 2.0
  steps = ((np.arange(size) + 0.5) / size - 0.5) * side * factor
  grid_x, grid_y = np.meshgrid(steps, steps)
  offsets = np.stack([grid_x, grid_y], -1) @ rotation.T
  points = centre + offsets  # (size, size, 2) as (x, y)
  coords = [points[..., 1], points[..., 0]]
  channels = [
      ndimage.map_coordinates(
          image[..., c].astype(np.float32), coords, order=1, mode='constant', cval=0.0
      )
      for c in range(3)
  ]
  return np.stack(channels, -1).astype(np.float32) / 255.0


def landmarks_roi(
    keypoints: np.ndarray, *, scale: float = 2.0, shift_y: float = -0.1
) -> tuple[np.ndarray, float, float]:
  """A hand's 21 landmarks (21, 2) pixels, in the order of docs/design.md §2 → the square ROI
  (centre (2,), side, rotation) pixels and radians in which to look for it in the next frame.

  As MediaPipe's HandLandmarkLandmarksToRoi (tracking without the palm detector): the rotation turns
  the wrist (0) → the middle of the index, middle and ring knuckles ((5 + 13)/2 averaged with 9) to
  point up, as `palm_roi`; the wrist, the knuckles and the joints above them (0, 1, 2, 3, 5, 6, 9, 10,
  13, 14, 17, 18) are bounded in the ROI's own axes; that box moves by shift_y × its height along the
  rotated up axis and becomes a square of scale × its longer side.
  """
  points = np.asarray(keypoints, np.float64)
  knuckles = ((points[5] + points[13]) / 2.0 + points[9]) / 2.0
  delta = knuckles - points[0]
  angle = math.pi / 2 - math.atan2(-delta[1], delta[0])
  angle = angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))
  rotation = _rotation(angle)
  palm = points[[0, 1, 2, 3, 5, 6, 9, 10, 13, 14, 17, 18]]
  local = palm @ rotation  # each row R^T p: the ROI's own axes
  low, high = local.min(0), local.max(0)
  width, height = high - low
  centre = rotation @ ((low + high) / 2.0 + np.array([0.0, shift_y * height]))
  return centre, float(max(width, height) * scale), float(angle)


def roi_to_image(points: np.ndarray, centre: np.ndarray, side: float, angle: float) -> np.ndarray:
  """Points (..., 2) normalised to the ROI crop ([0, 1], (0, 0) its top-left corner) → image pixels."""
  points = np.asarray(points, np.float64)
  return np.asarray(centre, np.float64) + ((points - 0.5) * side) @ _rotation(angle).T


def world_to_image_axes(world: np.ndarray, angle: float) -> np.ndarray:
  """The landmark model's world landmarks (63,) → (21, 3) metres in the image's axes.

  The model gives them in the axes of its rotated ROI; as MediaPipe's WorldLandmarkProjection, x and y
  are turned by the ROI's rotation (z, towards the scene, is unchanged)."""
  points = np.asarray(world, np.float64).reshape(21, 3).copy()
  points[:, :2] = points[:, :2] @ _rotation(angle).T
  return points


def landmark_box(keypoints: np.ndarray, margin: float) -> np.ndarray:
  """The bounding box (4,) of keypoints (K, 2), grown by margin × its longer side on every side."""
  keypoints = np.asarray(keypoints, np.float64)
  low, high = keypoints.min(0), keypoints.max(0)
  grow = margin * float(np.max(high - low))
  return np.concatenate([low - grow, high + grow])


# ==================================================================================================
# Running TFLite models
# ==================================================================================================


def _interpreter_class():
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top  # optional

    return Interpreter
  except ImportError:
    pass
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  # heavy, and only without LiteRT
  except ImportError:
    raise DetectorUnavailable(
        'the hand detector runs TFLite models and needs a TFLite interpreter: '
        'pip install ai-edge-litert (or tensorflow-cpu)'
    ) from None
  return tf.lite.Interpreter


class _TFLiteModel:
  """One .tflite model with a single float32 input; __call__(input (1, H, W, 3)) → its outputs."""

  def __init__(self, path: str, num_threads: int | None):
    if not os.path.isfile(path):
      raise DetectorUnavailable(f'hand detector model file {path} is missing')
    interpreter_class = _interpreter_class()
    with warnings.catch_warnings():  # tf.lite.Interpreter warns that it is deprecated for LiteRT
      warnings.simplefilter('ignore')
      self._interpreter = interpreter_class(model_path=path, num_threads=num_threads)
    self._interpreter.allocate_tensors()
    (self._input,) = self._interpreter.get_input_details()
    self._outputs = self._interpreter.get_output_details()
    self.input_shape = tuple(int(s) for s in self._input['shape'])

  def __call__(self, tensor: np.ndarray) -> list[np.ndarray]:
    self._interpreter.set_tensor(self._input['index'], np.asarray(tensor, np.float32))
    self._interpreter.invoke()
    return [np.array(self._interpreter.get_tensor(o['index'])) for o in self._outputs]


# ==================================================================================================
# MediaPipe's two-stage hand detector
# ==================================================================================================


@dataclasses.dataclass
class MediaPipeHands:
  """MediaPipe's palm detector + hand-landmark model as a `HandDetector` (see the module docstring).

  A hand's score is the geometric mean of its palm score and the landmark model's presence score.
  min_palm_score: palm detections below it are dropped (MediaPipe: 0.5). min_presence: hands whose
  landmark model's presence score is below it are dropped (MediaPipe: 0.5). box_margin: the box is the
  landmarks' bounding box grown by this fraction of its longer side on each side (0.07 overlaps the
  procedural hand's mesh box best on renders: mean IoU 0.817 over 29 views; 0.06 and 0.08 gave 0.816
  and 0.814). mirrored: the images are mirrored (selfie) views; then MediaPipe's own handedness labels
  are the sides. tiles: also look for palms in overlapping tiles of photos larger than 1.5 × the
  palm detector's input (`palm_tiles`: small hands). side_overlap: hands whose boxes overlap by more
  than this IoU cannot share a side (`resolve_sides`). max_hands: keep at most this many (None: all).
  """

  min_palm_score: float = 0.5
  min_presence: float = 0.5
  nms_iou: float = 0.3
  merge_iou: float = 0.5
  box_margin: float = 0.07
  mirrored: bool = False
  tiles: bool = True
  side_overlap: float = 0.1
  max_hands: int | None = None
  num_threads: int | None = None
  model_dir: str = ASSET_DIR
  name: str = 'mediapipe'

  def __post_init__(self):
    self._palm = _TFLiteModel(os.path.join(self.model_dir, PALM_MODEL), self.num_threads)
    self._landmark = _TFLiteModel(os.path.join(self.model_dir, LANDMARK_MODEL), self.num_threads)
    self._anchors = ssd_anchors(PALM_INPUT_SIZE)

  def palms(self, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The palm detector's palms: [(box (4,) pixels, keypoints (7, 2) pixels, score)], from the whole
    photo and, when `tiles` and the photo is larger than 1.5 × the detector's input, from overlapping
    square tiles at twice the whole photo's zoom (`palm_tiles`), merged (`merge_palms`)."""
    image = np.asarray(image, np.uint8)
    views = [(0, 0, image)]
    if self.tiles:
      views += [(x, y, image[y : y + t, x : x + t]) for x, y, t in palm_tiles(image.shape[:2])]
    found = []
    for number, (x0, y0, view) in enumerate(views):
      shift = np.array([x0, y0], np.float64)
      for box, points, score in self._palms_of(view):
        if number and _touches_cut_edge(box, x0, y0, view.shape[:2], image.shape[:2]):
          continue  # a palm cut by the tile's border: the whole photo or a neighbour sees it whole
        found.append((box + np.tile(shift, 2), points + shift, score))
    return merge_palms(found, self.nms_iou)

  def _palms_of(self, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    tensor, side, offset = letterbox(image, PALM_INPUT_SIZE)
    outputs = self._palm(tensor[None])
    raw_boxes = next(o for o in outputs if o.shape[-1] == 4 + 2 * NUM_PALM_KEYPOINTS)
    raw_scores = next(o for o in outputs if o.shape[-1] == 1)
    boxes, keypoints, scores = decode_palms(raw_boxes, raw_scores, self._anchors)
    found = weighted_nms(
        boxes, keypoints, scores, iou_threshold=self.nms_iou, min_score=self.min_palm_score
    )
    to_pixels = lambda p: p * side - offset - 0.5
    return [
        (np.concatenate([to_pixels(box[:2]), to_pixels(box[2:])]), to_pixels(points), score)
        for box, points, score in found
    ]

  def landmarks(
      self, image: np.ndarray, centre: np.ndarray, side: float, angle: float
  ) -> tuple[np.ndarray, float, float, np.ndarray]:
    """The landmark model on one ROI: (keypoints (21, 2) pixels, presence score, P(right hand),
    world landmarks (21, 3) metres in the image's axes)."""
    crop = rotated_crop(image, centre, side, angle, LANDMARK_INPUT_SIZE)
    landmarks, presence, handedness, world = self._landmark(crop[None])
    points = np.asarray(landmarks, np.float64).reshape(21, 3)[:, :2] / LANDMARK_INPUT_SIZE
    # MediaPipe's score is P("Left") for a mirrored view, i.e. P(right hand) in an ordinary photo.
    left_in_mirror = float(np.asarray(handedness).reshape(-1)[0])
    p_right = 1.0 - left_in_mirror if self.mirrored else left_in_mirror
    return (
        roi_to_image(points, centre, side, angle),
        float(np.asarray(presence).reshape(-1)[0]),
        p_right,
        world_to_image_axes(world, angle),
    )

  def track(self, image: np.ndarray, keypoints: np.ndarray) -> DetectedHand | None:
    """The hand whose landmarks (21, 2) pixels were `keypoints` in the frame before, found again by
    the landmark model alone in the ROI they give (`landmarks_roi`), as MediaPipe tracks a hand from
    frame to frame; None when it is gone (presence below min_presence). Its score is the presence
    score (no palm detector ran); palm_box is None."""
    image = np.asarray(image, np.uint8)
    centre, side, angle = landmarks_roi(keypoints)
    points, presence, p_right, world = self.landmarks(image, centre, side, angle)
    if presence < self.min_presence:
      return None
    is_right = p_right >= 0.5
    return DetectedHand(
        box=landmark_box(points, self.box_margin),
        side='right' if is_right else 'left',
        score=float(presence),
        side_score=p_right if is_right else 1.0 - p_right,
        keypoints=points,
        keypoints_3d=world,
    )

  def detect(self, image: np.ndarray) -> list[DetectedHand]:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f'MediaPipeHands.detect: image must be (H, W, 3), got {image.shape}')
    image = image.astype(np.uint8)
    hands = []
    for box, keypoints, palm_score in self.palms(image):
      centre, side, angle = palm_roi(box, keypoints)
      points, presence, p_right, world = self.landmarks(image, centre, side, angle)
      if presence < self.min_presence:
        continue
      is_right = p_right >= 0.5
      hands.append(
          DetectedHand(
              box=landmark_box(points, self.box_margin),
              side='right' if is_right else 'left',
              score=float(presence * palm_score) ** 0.5,
              side_score=p_right if is_right else 1.0 - p_right,
              keypoints=points,
              keypoints_3d=world,
              palm_box=box,
          )
      )
    kept = resolve_sides(suppress_duplicates(hands, self.merge_iou), self.side_overlap)
    return kept[: self.max_hands] if self.max_hands else kept


# ==================================================================================================
# Several views of a large photo, duplicates and sides
# ==================================================================================================


def palm_tiles(
    image_size: Sequence[int], input_size: int = PALM_INPUT_SIZE, overlap: float = 0.25
) -> list[tuple[int, int, int]]:
  """Square tiles (x0, y0, side) pixels covering an image (H, W) whose longer side exceeds 1.5 ×
  input_size: side is half the longer side (at least input_size, at most the shorter side), and
  neighbours overlap by `overlap` of it. The palm detector sees each at about twice the whole photo's
  zoom, so it finds hands half as large. [] for smaller images."""
  height, width = (int(v) for v in image_size)
  longer = max(height, width)
  if longer <= 1.5 * input_size:
    return []
  side = min(max(input_size, math.ceil(longer / 2)), height, width)
  step = max(1, int(side * (1.0 - overlap)))

  def starts(length: int) -> list[int]:
    return sorted({*range(0, max(length - side, 0) + 1, step), max(length - side, 0)})

  return [(x, y, side) for y in starts(height) for x in starts(width)]


def _touches_cut_edge(
    box: np.ndarray, x0: int, y0: int, tile_size: Sequence[int], image_size: Sequence[int]
) -> bool:
  """Whether a box (tile pixels) reaches a border of the tile that is not the image's border."""
  (tile_h, tile_w), (height, width) = tile_size, image_size
  margin = 0.02 * max(tile_h, tile_w)
  return bool(
      (box[0] < margin and x0 > 0)
      or (box[1] < margin and y0 > 0)
      or (box[2] > tile_w - 1 - margin and x0 + tile_w < width)
      or (box[3] > tile_h - 1 - margin and y0 + tile_h < height)
  )


def merge_palms(
    palms: Sequence[tuple[np.ndarray, np.ndarray, float]], iou_threshold: float
) -> list[tuple[np.ndarray, np.ndarray, float]]:
  """Palms of several views, most confident first, without those overlapping a more confident one by
  IoU > iou_threshold."""
  kept: list[tuple[np.ndarray, np.ndarray, float]] = []
  for palm in sorted(palms, key=lambda p: -p[2]):
    if all(box_iou(palm[0], other[0]) <= iou_threshold for other in kept):
      kept.append(palm)
  return kept


def same_hand(
    a: DetectedHand, b: DetectedHand, merge_iou: float = 0.5, keypoint_fraction: float = 0.15
) -> bool:
  """Whether two detections are one hand: their landmark boxes or their palm boxes overlap by IoU >
  merge_iou, or their 21 landmarks lie a mean of under keypoint_fraction × the smaller box's longer
  side apart (two palms of one hand that the landmark model put on the same joints)."""
  if box_iou(a.box, b.box) > merge_iou:
    return True
  palms = (a.palm_box, b.palm_box)
  if all(p is not None for p in palms) and box_iou(*palms) > merge_iou:
    return True
  if a.keypoints is None or b.keypoints is None:
    return False
  size = min(float(np.max(np.asarray(h.box[2:]) - h.box[:2])) for h in (a, b))
  distance = float(np.linalg.norm(a.keypoints - b.keypoints, axis=-1).mean())
  return distance < keypoint_fraction * size


def suppress_duplicates(
    hands: Sequence[DetectedHand], merge_iou: float = 0.5, keypoint_fraction: float = 0.15
) -> list[DetectedHand]:
  """The hands, most confident first, each kept only if it is not `same_hand` as a more confident one."""
  kept: list[DetectedHand] = []
  for hand in sorted(hands, key=lambda h: -h.score):
    if not any(same_hand(hand, other, merge_iou, keypoint_fraction) for other in kept):
      kept.append(hand)
  return kept


def resolve_sides(hands: Sequence[DetectedHand], overlap_iou: float = 0.1) -> list[DetectedHand]:
  """Two overlapping hands (box IoU > overlap_iou) of one side are one person's interlaced hands, or
  two people's: the hand whose side the landmark model is surer of keeps it; the other takes the
  opposite side, with side_score 1 − its score (the model's probability of that side). Order kept.
  """
  hands = list(hands)
  for i in sorted(range(len(hands)), key=lambda k: -hands[k].side_score):
    for j, other in enumerate(hands):
      if j == i or other.side != hands[i].side or other.side_score > hands[i].side_score:
        continue
      if box_iou(hands[i].box, other.box) > overlap_iou:
        flipped = 'left' if other.side == 'right' else 'right'
        hands[j] = dataclasses.replace(other, side=flipped, side_score=1.0 - other.side_score)
  return hands


def make_detector(name: str, **options: Any) -> HandDetector:
  """A detector by name: 'mediapipe' (the default). Raises DetectorUnavailable with what to install."""
  if name == 'mediapipe':
    return MediaPipeHands(**options)
  raise ValueError(f"unknown hand detector {name!r}; choose 'mediapipe'")
