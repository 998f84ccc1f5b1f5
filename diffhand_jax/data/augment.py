"""Crop, resize and augment one example so that image, K, 2D joints and 3D targets stay consistent.

Pure numpy (+ PIL for the warp), one example at a time, deterministic given the parameters (draw them with
:func:`sample_params` from a seeded ``np.random.Generator``).

Pixel convention: OpenCV's, the centre of pixel (i, j) is at x = j, y = i, and K projects to it. A box
(x0, y0, x1, y1) is in the same coordinates; its edges map onto the outer edges of the output pixels, so the
box [-0.5, -0.5, W - 0.5, H - 0.5] with ``out_size=(H, W)`` is the identity.

In-plane rotation: rotating the crop by theta about its centre is realised as rotating the camera about its
optical axis. The 3D targets become ``R_z(theta) @ X`` (:func:`rotation_z`, :func:`rotate_points`), the image
is warped with the affine map ``A`` returned by :func:`crop_and_resize`, and the new intrinsics are
``K' = A K R_z(theta)^T``. Then ``project(R_z X, K') == A (project(X, K))`` exactly, for any K. The pixel
warp's linear part is ``s · F R2(theta) F^-1`` with ``F = diag(fx, fy)``, which keeps K' free of skew (with
fx = fy it is a plain rotation by theta: x right, y down, so clockwise on screen for theta > 0).
"""

from __future__ import annotations

from typing import Sequence

import chex
import numpy as np
from PIL import Image


def crop_box_from_points(
    points_2d: np.ndarray, margin: float = 0.25, *, min_size: float = 1.0
) -> np.ndarray:
  """A square box around 2D points, centred on their bounding box.

  Args:
    points_2d: (N, 2) pixels.
    margin: extra space on every side, as a fraction of the larger side of the points' bounding box: the
      box side is max(w, h) · (1 + 2 · margin). HandOccNet's expansion factor 1.5 is margin 0.25.
    min_size: smallest box side in pixels (a single point still gets a box).

  Returns:
    (4,) float64 x0, y0, x1, y1.
  """
  points_2d = np.asarray(points_2d, np.float64)
  chex.assert_rank(points_2d, 2)
  chex.assert_axis_dimension(points_2d, 1, 2)
  if points_2d.shape[0] == 0 or not np.all(np.isfinite(points_2d)):
    raise ValueError(f'crop_box_from_points needs finite points, got shape {points_2d.shape}')
  if margin < 0:
    raise ValueError(f'margin must be >= 0, got {margin}')
  low, high = points_2d.min(0), points_2d.max(0)
  centre = (low + high) / 2.0
  side = max(float(np.max(high - low)) * (1.0 + 2.0 * margin), float(min_size))
  return np.concatenate([centre - side / 2.0, centre + side / 2.0])


def box_from_bbox(bbox: np.ndarray, margin: float = 0.25, *, min_size: float = 1.0) -> np.ndarray:
  """The square crop box of :func:`crop_box_from_points` for an (x0, y0, x1, y1) bounding box."""
  bbox = np.asarray(bbox, np.float64).reshape(4)
  return crop_box_from_points(bbox.reshape(2, 2), margin, min_size=min_size)


def rotation_z(theta: float) -> np.ndarray:
  """(3, 3) rotation about the camera's optical axis (z) by ``theta`` radians."""
  c, s = np.cos(theta), np.sin(theta)
  return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotate_points(points: np.ndarray, theta: float) -> np.ndarray:
  """(..., 3) camera-frame points as seen by the camera rotated by ``theta`` about its axis: R_z(theta) X."""
  points = np.asarray(points)
  return (points.astype(np.float64) @ rotation_z(theta).T).astype(
      points.dtype if points.dtype.kind == 'f' else np.float64
  )


def transform_points(points_2d: np.ndarray, affine: np.ndarray) -> np.ndarray:
  """(..., 2) pixels mapped by a (2, 3) affine."""
  points_2d = np.asarray(points_2d, np.float64)
  affine = np.asarray(affine, np.float64)
  return points_2d @ affine[:, :2].T + affine[:, 2]


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
  """(N, 3) camera-frame points -> (N, 2) pixels."""
  uvw = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
  return uvw[..., :2] / uvw[..., 2:3]


def _out_hw(out_size: int | Sequence[int]) -> tuple[int, int]:
  if np.isscalar(out_size):
    return int(out_size), int(out_size)
  height, width = (int(v) for v in out_size)
  return height, width


def crop_affine(
    K: np.ndarray,
    box: np.ndarray,
    out_size: int | Sequence[int],
    rotation: float = 0.0,
    scale: float = 1.0,
    translation: Sequence[float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray]:
  """The (2, 3) source→output pixel map of :func:`crop_and_resize` and the new (3, 3) K'. See there."""
  K = np.asarray(K, np.float64)
  chex.assert_shape(K, (3, 3))
  box = np.asarray(box, np.float64).reshape(4)
  out_h, out_w = _out_hw(out_size)
  box_w, box_h = box[2] - box[0], box[3] - box[1]
  if not (box_w > 0 and box_h > 0 and scale > 0):
    raise ValueError(
        f'crop box must have positive size and scale > 0; got box {box.tolist()}, scale {scale}'
    )
  translation = np.asarray(translation, np.float64).reshape(2)
  centre = (box[:2] + box[2:]) / 2.0 + translation * np.array([box_w, box_h])
  focal = np.array([K[0, 0], K[1, 1]])
  rot2 = rotation_z(rotation)[:2, :2]
  linear = rot2 * focal[:, None] / focal[None, :]  # F R2 F^-1 (= R2 when fx = fy)
  resize = np.diag([out_w / box_w, out_h / box_h]) * scale
  linear = resize @ linear
  offset = np.array([(out_w - 1) / 2.0, (out_h - 1) / 2.0]) - linear @ centre
  affine = np.concatenate([linear, offset[:, None]], axis=1)
  affine3 = np.vstack([affine, [0.0, 0.0, 1.0]])
  new_K = affine3 @ K @ rotation_z(rotation).T
  new_K[2] = (0.0, 0.0, 1.0)  # exact zeros instead of rounding noise
  for row, col in ((0, 1), (1, 0)):  # zero in exact arithmetic (see the module docstring)
    if abs(new_K[row, col]) < 1e-9 * abs(new_K[row, row]):
      new_K[row, col] = 0.0
  return affine, new_K


def warp_affine(image: np.ndarray, affine: np.ndarray, out_size: int | Sequence[int]) -> np.ndarray:
  """Bilinear warp of an (H, W) or (H, W, C) image by the (2, 3) source→output map; outside is 0.

  uint8 RGB / grey images go through PIL's AFFINE transform; other dtypes are warped per channel as float32
  and cast back.
  """
  image = np.asarray(image)
  out_h, out_w = _out_hw(out_size)
  affine3 = np.vstack([np.asarray(affine, np.float64), [0.0, 0.0, 1.0]])
  inverse = np.linalg.inv(affine3)[:2]
  # PIL samples output pixel (x, y) at its centre (x + 0.5, y + 0.5) and reads input pixel centres at
  # (i + 0.5): shift in and out of our integer-centred convention.
  offset = inverse[:, 2] + inverse[:, :2] @ np.array([-0.5, -0.5]) + 0.5
  coeffs = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
  size = (out_w, out_h)
  if image.dtype == np.uint8 and (
      image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))
  ):
    squeeze = image.ndim == 3 and image.shape[2] == 1
    source = Image.fromarray(image[..., 0] if squeeze else image)
    warped = np.asarray(
        source.transform(
            size, Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR, fillcolor=0
        )
    )
    return warped[..., None] if squeeze else warped
  channels = image[..., None] if image.ndim == 2 else image
  planes = []
  for c in range(channels.shape[2]):
    plane = Image.fromarray(np.ascontiguousarray(channels[..., c], np.float32), mode='F')
    planes.append(
        np.asarray(
            plane.transform(
                size,
                Image.Transform.AFFINE,
                coeffs,
                resample=Image.Resampling.BILINEAR,
                fillcolor=0.0,
            )
        )
    )
  warped = np.stack(planes, axis=-1)
  if image.dtype.kind in 'iu':
    info = np.iinfo(image.dtype)
    warped = np.clip(np.rint(warped), info.min, info.max)
  warped = warped.astype(image.dtype)
  return warped[..., 0] if image.ndim == 2 else warped


def crop_and_resize(
    image: np.ndarray,
    K: np.ndarray,
    box: np.ndarray,
    out_size: int | Sequence[int],
    rotation: float = 0.0,
    scale: float = 1.0,
    translation: Sequence[float] = (0.0, 0.0),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Crops ``box`` out of ``image``, resizes it to ``out_size`` and applies scale / rotation / shift jitter,
  all as one affine warp.

  Args:
    image: (H, W, C) or (H, W) image (uint8 RGB, a mask, or a float depth map).
    K: (3, 3) intrinsics of ``image``.
    box: (4,) x0, y0, x1, y1 crop box in pixels (see the module docstring's convention).
    out_size: output side, or (height, width).
    rotation: in-plane rotation in radians about the (shifted) box centre, realised as a camera rotation
      about the optical axis: rotate the 3D targets with :func:`rotate_points` (R_z(rotation)).
    scale: zoom; > 1 magnifies (the box shrinks by 1/scale about its centre).
    translation: shift of the box centre, as fractions of the box width and height.

  Returns:
    (warped image (out_h, out_w, ...) of the input dtype, K' (3, 3) float64, affine (2, 3) float64 mapping
    source pixels to output pixels). For any camera-frame point X:
    ``project(rotate_points(X, rotation), K') == transform_points(project(X, K), affine)``.
  """
  affine, new_K = crop_affine(K, box, out_size, rotation, scale, translation)
  return warp_affine(image, affine, out_size), new_K, affine


def sample_params(
    rng: np.random.Generator,
    *,
    scale_range: tuple[float, float] = (0.9, 1.1),
    max_rotation: float = np.pi / 6,
    max_translation: float = 0.05,
) -> dict[str, float | np.ndarray]:
  """Random (scale, rotation, translation) for :func:`crop_and_resize`, uniform in the given ranges."""
  scale = float(np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))))
  rotation = float(rng.uniform(-max_rotation, max_rotation))
  translation = rng.uniform(-max_translation, max_translation, size=2)
  return {'scale': scale, 'rotation': rotation, 'translation': translation}
