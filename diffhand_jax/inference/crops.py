"""Crops around a hand and the wrist's position in the camera frame, for images without ground truth.

* `square_box`: the square crop around a hand box;
* `crop_box`: that crop, resized to the model's input size;
* `crop_intrinsics`: the pinhole K of that resized crop, from the photo's K;
* `root_from_weak_perspective`: the wrist in the camera frame from the predicted weak-perspective
  camera and the crop's intrinsics;
* `root_from_projection`: the same, solved under the full perspective projection (exact where the
  weak-perspective camera fits the hand's 2D points; `predict` on whole photos uses it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image


def root_from_weak_perspective(
    camera: np.ndarray,
    K: np.ndarray,
    image_size: Sequence[int],
    vertex_scale: float,
    min_scale: float = 1e-3,
) -> np.ndarray:
  """The wrist in the camera frame (B, 3) metres, from the weak-perspective camera of the model.

  camera (B, 3) = (s, tx, ty) maps root-relative model-space X to normalised crop coordinates
  u = s·X + tx, with u = 2x/W - 1 for the pixel x (losses.project_weak_perspective). A pinhole camera K
  (B, 3, 3) for that crop sees a metric offset dX at depth Z move by f_x·dX/Z pixels; matching the two
  gives Z = 2 f_x · vertex_scale / (s W) (averaged with the y-axis equivalent), and the wrist (model
  space 0) projects to pixel ((tx + 1) W/2, (ty + 1) H/2), which K back-projects at depth Z.
  s is clamped to >= `min_scale` so an untrained camera never divides by zero.
  """
  camera = np.asarray(camera, np.float64)
  K = np.asarray(K, np.float64)
  height, width = image_size
  scale = np.maximum(camera[:, 0], min_scale)
  fx, fy, cx, cy = K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]
  depth = (
      vertex_scale * (fx / width + fy / height) / scale
  )  # mean of 2 f_x vs/(sW) and 2 f_y vs/(sH)
  pixel_x = (camera[:, 1] + 1.0) * width / 2.0
  pixel_y = (camera[:, 2] + 1.0) * height / 2.0
  return np.stack([(pixel_x - cx) * depth / fx, (pixel_y - cy) * depth / fy, depth], -1)


def root_from_projection(
    points: np.ndarray,
    camera: np.ndarray,
    K: np.ndarray,
    image_size: int,
    vertex_scale: float,
) -> np.ndarray:
  """The translation T (3,) metres that puts root-relative points (P, 3) (metres, e.g. the joints) where
  the weak-perspective camera (s, tx, ty) draws them, under the pinhole K (3, 3) of the square crop
  (image_size pixels).

  The camera draws point X (model space: metres / vertex_scale) at the crop pixel ((s·X + tx) + 1)·S/2
  (likewise y). Requiring the perspective projection of X + T to land there gives two equations per
  point that are linear in T, f_x (X_x + T_x) − d_x (X_z + T_z) = 0 with d_x the pixel's offset from the
  principal point, solved in the least-squares sense (as SPIN's estimate_translation). A weak-
  perspective camera cannot express the perspective of a crop far from the principal point;
  `root_from_weak_perspective` then misses the wrist by a few per cent of the hand's size, this does
  not. Falls back to `root_from_weak_perspective` when the solution is not in front of the camera.
  """
  points = np.asarray(points, np.float64)
  camera = np.asarray(camera, np.float64)
  K = np.asarray(K, np.float64)
  model = points / vertex_scale
  pixels = (camera[0] * model[:, :2] + camera[1:] + 1.0) * image_size / 2.0
  offset = pixels - K[:2, 2]
  count = len(points)
  A = np.zeros((2 * count, 3))
  b = np.zeros(2 * count)
  for axis in range(2):
    rows = slice(axis * count, (axis + 1) * count)
    A[rows, axis] = K[axis, axis]
    A[rows, 2] = -offset[:, axis]
    b[rows] = offset[:, axis] * points[:, 2] - K[axis, axis] * points[:, axis]
  translation = np.linalg.lstsq(A, b, rcond=None)[0]
  if not (np.all(np.isfinite(translation)) and translation[2] + points[:, 2].min() > 0):
    return root_from_weak_perspective(
        camera[None], K[None], (image_size, image_size), vertex_scale
    )[0]
  return translation


def square_box(
    box: Sequence[float] | None, image_size: Sequence[int], box_scale: float
) -> np.ndarray:
  """The square crop (x0, y0, x1, y1) around a hand box: centred on it, side = longer side × box_scale.

  None gives the largest centred square of the image (box_scale is then not applied).
  """
  height, width = image_size
  if box is None:
    side = float(min(height, width))
    cx, cy = width / 2.0, height / 2.0
  else:
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * box_scale
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
  return np.array([cx - side / 2.0, cy - side / 2.0, cx + side / 2.0, cy + side / 2.0])


def crop_box(image: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
  """uint8 (H, W, 3) → the square `box` (x0, y0, x1, y1; may leave the image, padded black) resized to
  (size, size, 3) with PIL's antialiased bilinear filter."""
  x0, y0, x1, y1 = (int(round(v)) for v in box)
  if x1 <= x0 or y1 <= y0:
    raise ValueError(f'empty crop box {tuple(box)}')
  cropped = Image.fromarray(np.asarray(image, np.uint8)).crop((x0, y0, x1, y1))
  return np.asarray(cropped.resize((size, size), Image.BILINEAR), np.uint8)


def crop_intrinsics(K: np.ndarray, box: Sequence[float], size: int) -> np.ndarray:
  """The intrinsics (3, 3) of `crop_box(image, box, size)` for an image with intrinsics K (3, 3).

  crop_box cuts the box rounded to whole pixels and resizes it to size × size; with pixel centres at
  integers, the image pixel x lands at (x − x0 + 0.5)·size/(x1 − x0) − 0.5 in the crop (likewise y).
  """
  x0, y0, x1, y1 = (int(round(v)) for v in box)
  scale_x, scale_y = size / (x1 - x0), size / (y1 - y0)
  K = np.asarray(K, np.float64)
  crop = K.copy()
  crop[0, :] = K[0, :] * scale_x
  crop[1, :] = K[1, :] * scale_y
  crop[0, 2] = (K[0, 2] - x0 + 0.5) * scale_x - 0.5
  crop[1, 2] = (K[1, 2] - y0 + 0.5) * scale_y - 0.5
  return crop
