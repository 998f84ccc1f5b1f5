"""Crops around a hand and the wrist's position in the camera frame, for images without ground truth.

* `square_box`: the square crop around a hand box;
* `crop_box`: that crop, resized to the model's input size;
* `crop_intrinsics`: the pinhole K of that resized crop, from the photo's K;
* `root_from_weak_perspective`: the wrist in the camera frame from the predicted weak-perspective
  camera and the crop's intrinsics;
* `root_from_projection`: the same, solved under the full perspective projection (exact where the
  weak-perspective camera fits the hand's 2D points; the fallback placement on whole photos);
* `root_from_keypoints`: the translation that puts the hand's joints on 2D keypoints (the detector's
  landmarks), robust to a few wrong ones (the default placement on whole photos).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image
from scipy import optimize

from diffhand_jax.geometry import render


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
  translation = _translation_to_pixels(points, pixels, K, np.ones(len(points)))
  if not (np.all(np.isfinite(translation)) and translation[2] + points[:, 2].min() > 0):
    return root_from_weak_perspective(
        camera[None], K[None], (image_size, image_size), vertex_scale
    )[0]
  return translation


def _translation_to_pixels(
    points: np.ndarray, pixels: np.ndarray, K: np.ndarray, weights: np.ndarray
) -> np.ndarray:
  """The T (3,) minimising Σ w_i |f (X_i + T)_xy − d_i (X_i + T)_z|² for points X (P, 3), target pixels
  (P, 2), K (3, 3): the projection equations multiplied through by the depth, so linear in T (SPIN's
  estimate_translation, weighted)."""
  offset = pixels - K[:2, 2]
  count = len(points)
  A = np.zeros((2 * count, 3))
  b = np.zeros(2 * count)
  for axis in range(2):
    rows = slice(axis * count, (axis + 1) * count)
    A[rows, axis] = K[axis, axis]
    A[rows, 2] = -offset[:, axis]
    b[rows] = offset[:, axis] * points[:, 2] - K[axis, axis] * points[:, axis]
  root_weights = np.sqrt(np.concatenate([weights, weights]))
  return np.linalg.lstsq(A * root_weights[:, None], b * root_weights, rcond=None)[0]


def root_from_keypoints(
    points: np.ndarray,
    keypoints: np.ndarray,
    K: np.ndarray,
    *,
    huber_px: float | None = None,
    depth_range: float = 1.25,
) -> tuple[np.ndarray, np.ndarray] | None:
  """The translation T (3,) metres that puts root-relative points (P, 3) (the joints) on 2D keypoints
  (P, 2) (pixels) under the pinhole K (3, 3), and each point's reprojection error (P,) pixels.

  Rotation and articulation are the points' own: only the translation, depth included, is solved, by
  least squares of the pixel errors with Huber's loss (scipy's least_squares; huber_px defaults to 5 %
  of the keypoints' extent), so that a few landmarks far off, a finger the detector misread, pull with
  a bounded force. It starts at the depth Z₀ where the points' projected spread equals the keypoints'
  spread (on the linear system of `root_from_projection`, weighted by 1/Z₀²), and the depth is held
  within [Z₀ / depth_range, Z₀ · depth_range]: when the points' orientation is wrong, the pixel error
  alone is least with the hand shrunk to a point far away or swollen near the camera, and the spread
  keeps its size. Returns None when the keypoints have no extent or hold NaN.
  """
  points = np.asarray(points, np.float64)
  keypoints = np.asarray(keypoints, np.float64)
  K = np.asarray(K, np.float64)
  if points.shape != (len(keypoints), 3) or keypoints.shape[-1] != 2:
    raise ValueError(
        f'root_from_keypoints: points (P, 3) and keypoints (P, 2), got {points.shape} and '
        f'{keypoints.shape}'
    )
  if not np.all(np.isfinite(keypoints)) or _spread(keypoints) == 0 or _spread(points[:, :2]) == 0:
    return None
  depth = _matching_depth(points, keypoints, K)
  start = _translation_to_pixels(points, keypoints, K, np.full(len(points), 1.0 / depth**2))
  low, high = depth / depth_range, depth * depth_range
  start[2] = np.clip(start[2], low, high) if np.isfinite(start[2]) else depth
  start = np.where(np.isfinite(start), start, 0.0)
  residual = lambda t: (render.project(points + t, K) - keypoints).reshape(-1)
  fitted = optimize.least_squares(
      residual,
      start,
      loss='huber',
      f_scale=0.05 * float(np.max(np.ptp(keypoints, 0))) if huber_px is None else float(huber_px),
      bounds=([-np.inf, -np.inf, low], [np.inf, np.inf, high]),
  )
  errors = np.linalg.norm(residual(fitted.x).reshape(-1, 2), axis=-1)
  return fitted.x, errors


def _spread(points: np.ndarray) -> float:
  """The RMS distance of points (P, D) from their centroid."""
  return float(np.sqrt(((points - points.mean(0)) ** 2).sum(-1).mean()))


def _matching_depth(points: np.ndarray, keypoints: np.ndarray, K: np.ndarray) -> float:
  """The wrist depth at which root-relative points (P, 3), centred on the optical axis, project with
  the keypoints' (P, 2) spread (a few fixed-point steps: the spread is about ∝ 1/depth)."""
  focal = (K[0, 0] + K[1, 1]) / 2.0
  target = _spread(keypoints)
  depth = focal * _spread(points[:, :2]) / target
  nearest = 1e-3 - points[:, 2].min()
  for _ in range(5):
    depth = max(depth, nearest + 1e-3)
    camera = points + np.array([0.0, 0.0, depth])
    depth *= _spread(focal * camera[:, :2] / camera[:, 2:3]) / target
  return max(depth, nearest + 1e-3)


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
