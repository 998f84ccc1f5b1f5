"""Test-time augmentation as MeshGraphormer does it: rotate and scale the input, rotate each
prediction back, Procrustes-align it to the un-augmented prediction, and average.

    mesh = tta.tta_predict(predict_fn, images, angles_deg=(-10, 0, 10), scales=(0.9, 1.0, 1.1))

`predict_fn(images (B, H, W, C)) -> vertices (B, N, 3)` is any root-relative predictor (e.g. the mean
of `diffhand.reconstruct`'s hypotheses). Every (angle, scale) pair of the two lists is one pass; the
un-augmented pass (0°, ×1) is always run, is the reference, and is part of the average.

Sign conventions (derived here, checked in tests/test_tta.py against a pinhole projection):
  * Image coordinates: u right, v down, pixel centres at integers, centre c = ((W-1)/2, (H-1)/2).
    "Rotating the image by θ" turns its content counter-clockwise *as seen on screen* by θ (PIL's
    `Image.rotate(θ)` convention) and zooms it by `scale` about the centre:
        p' = c + scale · [[cos θ, sin θ], [-sin θ, cos θ]] · (p - c)
    (a point to the right of the centre moves up, i.e. to smaller v, for θ > 0).
  * The camera frame is OpenCV's (x right, y down, z forward). With R_z(φ) = [[cos φ, -sin φ, 0],
    [sin φ, cos φ, 0], [0, 0, 1]], a pinhole projection with the principal point at c maps the rotated
    points R_z(-θ)·X onto the rotated image: an image rotation by θ is a 3D rotation by -θ about the
    camera's z axis. (In x-right/y-down axes a positive R_z turns x towards y, which is clockwise on
    screen.) Zooming the image by `scale` is the same camera seeing the same metric hand from
    1/scale of the distance: the root-relative shape does not change.
  * So a prediction made on the augmented image is rotated back with R_z(+θ).
The rotation back makes the passes comparable even without alignment (`align='none'`); with the default
`align='procrustes'` each pass is then mapped onto the reference with FreiHAND's `align_w_scale`
(rotation, scale, translation), which removes any global disagreement that remains.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import scipy.ndimage

from diffhand_jax.geometry import alignment

ALIGN_MODES = ('procrustes', 'none')


@dataclasses.dataclass(frozen=True)
class TTAConfig:
  """Which augmentations to run: every pair of `angles_deg` × `scales` (the identity is always added).

  fill: the value outside the rotated/zoomed-out image, in the units of the images given (0 for
  ImageNet-normalised images is the mean colour).
  """

  angles_deg: tuple[float, ...] = (-10.0, 0.0, 10.0)
  scales: tuple[float, ...] = (0.9, 1.0, 1.1)
  align: str = 'procrustes'
  fill: float = 0.0

  def settings(self) -> dict[str, Any]:
    """The augmentation as the commands record it."""
    return {'angles_deg': list(self.angles_deg), 'scales': list(self.scales), 'align': self.align}

  def passes(self) -> list[tuple[float, float]]:
    """(angle_deg, scale) of every pass, the identity (0, 1) first."""
    pairs = [(0.0, 1.0)]
    for angle in self.angles_deg:
      for scale in self.scales:
        pair = (float(angle), float(scale))
        if pair != (0.0, 1.0) and pair not in pairs:
          pairs.append(pair)
    return pairs


def parse_list(text: str) -> tuple[float, ...]:
  """'-10,0,10' → (-10.0, 0.0, 10.0), for command lines."""
  try:
    values = tuple(float(item) for item in text.split(',') if item.strip())
  except ValueError:
    raise ValueError(f'tta: expected a comma-separated list of numbers, got {text!r}') from None
  if not values:
    raise ValueError(f'tta: expected at least one number, got {text!r}')
  return values


def image_matrix(angle_deg: float, scale: float) -> np.ndarray:
  """The 2×2 map of pixel offsets from the centre, p' - c = A (p - c), for a screen-CCW rotation by
  `angle_deg` and a zoom by `scale`."""
  theta = np.deg2rad(angle_deg)
  cos, sin = np.cos(theta), np.sin(theta)
  return scale * np.array([[cos, sin], [-sin, cos]])


def transform_pixels(
    points: np.ndarray, angle_deg: float, scale: float, image_size: Sequence[int]
) -> np.ndarray:
  """Where pixel positions (..., 2) as (u, v) land in the augmented image of size (H, W)."""
  height, width = image_size
  centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
  points = np.asarray(points, np.float64)
  return (points - centre) @ image_matrix(angle_deg, scale).T + centre


def rotation_z(angle_rad: float) -> np.ndarray:
  """R_z(φ) (3, 3): turns x towards y by φ (clockwise on screen in OpenCV's x-right, y-down frame)."""
  cos, sin = np.cos(angle_rad), np.sin(angle_rad)
  return np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])


def rotation_for_image_angle(angle_deg: float) -> np.ndarray:
  """The 3D rotation (3, 3) of camera-frame points that an image rotation by `angle_deg` shows: R_z(-θ)."""
  return rotation_z(-np.deg2rad(angle_deg))


def augment_images(
    images: np.ndarray, angle_deg: float, scale: float, *, fill: float = 0.0
) -> np.ndarray:
  """Rotates (screen-CCW, degrees) and zooms (B, H, W, C) images about their centre, bilinear.

  The output pixel p samples the input at c + A⁻¹ (p - c); outside the input it is `fill`. The identity
  (0°, ×1) returns the images unchanged (bit for bit).
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'tta.augment_images: images must be (B, H, W, C), got {images.shape}')
  if not scale > 0:
    raise ValueError(f'tta.augment_images: scale must be > 0, got {scale}')
  if angle_deg == 0 and scale == 1:
    return images.copy()
  batch, height, width, channels = images.shape
  centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
  rows, cols = np.meshgrid(
      np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing='ij'
  )
  out_offsets = np.stack([cols - centre[0], rows - centre[1]], -1)  # (H, W, 2) as (du, dv)
  src = out_offsets @ np.linalg.inv(image_matrix(angle_deg, scale)).T + centre
  src_u = np.broadcast_to(src[None, :, :, None, 0], images.shape)
  src_v = np.broadcast_to(src[None, :, :, None, 1], images.shape)
  batch_index = np.broadcast_to(
      np.arange(batch, dtype=np.float64)[:, None, None, None], images.shape
  )
  channel_index = np.broadcast_to(np.arange(channels, dtype=np.float64), images.shape)
  coordinates = np.stack([batch_index, src_v, src_u, channel_index])
  # Batch and channel coordinates are integers, so linear interpolation never mixes images or channels.
  warped = scipy.ndimage.map_coordinates(
      images.astype(np.float64), coordinates, order=1, mode='constant', cval=float(fill)
  )
  return (
      warped.astype(images.dtype)
      if np.issubdtype(images.dtype, np.floating)
      else np.clip(np.round(warped), 0, 255).astype(images.dtype)
  )


def rotate_back(vertices: np.ndarray, angle_deg: float) -> np.ndarray:
  """Undoes the 3D effect of an image rotation on root-relative predictions (B, N, 3): applies R_z(+θ)."""
  rotation = np.linalg.inv(rotation_for_image_angle(angle_deg))
  return np.asarray(vertices, np.float64) @ rotation.T


def tta_predict(
    predict_fn: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    config: TTAConfig | None = None,
    *,
    return_passes: bool = False,
    **overrides,
):
  """The TTA prediction for a batch: (B, H, W, C) → vertices (B, N, 3) float64.

  Args:
    predict_fn: images (B, H, W, C) → root-relative vertices (B, N, 3) (numpy or JAX).
    images: the un-augmented inputs, as predict_fn takes them.
    config: a TTAConfig; keyword overrides (angles_deg=..., scales=..., align=..., fill=...) replace
      its fields.
    return_passes: also return the per-pass predictions after rotation back and alignment,
      (P, B, N, 3), and the list of (angle, scale) pairs.

  Each pass's prediction is rotated back by R_z(+θ), then (align='procrustes') aligned to the
  reference with `alignment.align_w_scale_batch`; the result is the mean over passes. With the identity
  as the only pass it equals `predict_fn(images)`.
  """
  config = dataclasses.replace(config or TTAConfig(), **overrides)
  if config.align not in ALIGN_MODES:
    raise ValueError(f'tta: align must be one of {ALIGN_MODES}, got {config.align!r}')
  passes = config.passes()
  reference = np.asarray(predict_fn(images), np.float64)
  if reference.ndim != 3 or reference.shape[0] != images.shape[0] or reference.shape[-1] != 3:
    raise ValueError(
        f'tta: predict_fn must return (B, N, 3) with B = {images.shape[0]}, '
        f'got {reference.shape}'
    )
  predictions = [reference]
  for angle, scale in passes[1:]:
    augmented = augment_images(images, angle, scale, fill=config.fill)
    prediction = rotate_back(np.asarray(predict_fn(augmented), np.float64), angle)
    if config.align == 'procrustes':
      prediction = alignment.align_w_scale_batch(reference, prediction)
    predictions.append(prediction)
  stacked = np.stack(predictions)
  mean = stacked.mean(axis=0)
  if return_passes:
    return mean, stacked, passes
  return mean
