"""Crops around a hand and the wrist's position in the camera frame, for images without ground truth.

* `square_box`: the square crop around a hand box;
* `crop_box`: that crop, resized to the model's input size;
* `root_from_weak_perspective`: the wrist in the camera frame from the predicted weak-perspective
  camera and the crop's intrinsics.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


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
  from PIL import Image

  x0, y0, x1, y1 = (int(round(v)) for v in box)
  if x1 <= x0 or y1 <= y0:
    raise ValueError(f'empty crop box {tuple(box)}')
  cropped = Image.fromarray(np.asarray(image, np.uint8)).crop((x0, y0, x1, y1))
  return np.asarray(cropped.resize((size, size), Image.BILINEAR), np.uint8)
