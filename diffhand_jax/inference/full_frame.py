"""Hands in the whole photo's camera: the focal length, each hand's place in the camera frame, and the
overlay of every hand on the original photo.

* `focal_length`: --focal, else the photo's EXIF, else `render.default_focal` (the image diagonal);
* `exif_focal`: the focal length in pixels from a photo's EXIF, when it records one;
* `to_photo`: a hand the model saw (mirrored when it is a left hand, docs/design.md §2) back into the
  photo: mesh and weak-perspective camera un-mirrored, then placed in the photo's camera frame on the
  detector's landmarks (`crops.root_from_keypoints`), or where its weak-perspective camera draws it
  (`crops.root_from_projection` with the crop's intrinsics, `crops.crop_intrinsics`);
* `draw_hands`: every hand's camera-frame mesh rendered over the photo (optionally scaled down, and
  optionally coloured per vertex, e.g. by its uncertainty);
* `orthographic_setup`: a mesh and pinhole K that draw a hand by its weak-perspective camera (the
  video overlay's placement).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from PIL import Image

from diffhand_jax.geometry import render
from diffhand_jax.inference import crops

# EXIF tags (the Exif sub-IFD holds them).
_EXIF_IFD = 0x8769
_FOCAL_LENGTH = 0x920A  # millimetres
_FOCAL_35MM = 0xA405  # 35 mm-equivalent focal length, millimetres
_FOCAL_PLANE_X_RESOLUTION = 0xA20E  # pixels per unit on the sensor
_FOCAL_PLANE_UNIT = 0xA210  # 2 inch, 3 cm, 4 mm, 5 µm
_PIXEL_DIMENSIONS = (0xA002, 0xA003)  # the width and height the sensor resolution refers to
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
_FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)
# The model's weak-perspective camera is orthographic; rendering it through render.py's pinhole with
# the mesh this far away (in model units, hand ~ ±2) keeps the perspective error below 1e-3 pixel-fractions.
_ORTHO_DISTANCE = 1.0e4
# The overlay's flat mesh colour (albedo in [0, 1]; render.overlay's default).
MESH_COLOR = (0.35, 0.6, 1.0)


def _positive(value: Any) -> float | None:
  try:
    number = float(value)
  except (TypeError, ValueError, ZeroDivisionError):
    return None
  return number if math.isfinite(number) and number > 0 else None


def exif_focal(path: str, image_size: Sequence[int]) -> float | None:
  """The focal length in pixels of the photo at `path` (H, W as read, EXIF rotation applied), or None.

  From the 35 mm-equivalent focal length when recorded (f_px = f_35 / 43.27 mm × the image diagonal in
  pixels: the equivalence is defined on the diagonal), else from the focal length in mm and the
  sensor's pixels per mm (FocalPlaneXResolution, scaled to the image's width when the photo was
  resized). Both are unchanged by rotating the photo.
  """
  height, width = image_size
  try:
    with Image.open(path) as image:
      exif = image.getexif()
      tags = dict(exif.get_ifd(_EXIF_IFD))
      tags.update({k: v for k, v in exif.items() if k not in tags})
  except Exception:  # no EXIF, or an unreadable one: the caller falls back
    return None
  focal_35 = _positive(tags.get(_FOCAL_35MM))
  if focal_35 is not None:
    return focal_35 / _FULL_FRAME_DIAGONAL_MM * math.hypot(height, width)
  focal_mm = _positive(tags.get(_FOCAL_LENGTH))
  resolution = _positive(tags.get(_FOCAL_PLANE_X_RESOLUTION))
  unit = _UNIT_MM.get(int(tags.get(_FOCAL_PLANE_UNIT, 2) or 2))
  if focal_mm is None or resolution is None or unit is None:
    return None
  focal = focal_mm * resolution / unit
  recorded = [_positive(tags.get(tag)) for tag in _PIXEL_DIMENSIONS]
  if all(side is not None for side in recorded):  # the resolution refers to the recorded size
    focal *= max(height, width) / max(recorded)
  return focal


def focal_length(
    path: str, image_size: Sequence[int], override: float | None = None
) -> tuple[float, str]:
  """(focal length in pixels, where it came from: 'flag', 'exif' or 'default')."""
  if override is not None:
    return float(override), 'flag'
  from_exif = exif_focal(path, image_size)
  if from_exif is not None:
    return from_exif, 'exif'
  return render.default_focal(image_size), 'default'


def unmirror(
    vertices: np.ndarray, camera: np.ndarray, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
  """A left hand as the model saw it (mirrored: x negated, crop flipped) → as it is in the photo.

  vertices (..., N, 3) get x negated; the camera (s, tx, ty) of the flipped crop becomes that of the
  crop itself: the pixel flip x' = S − 1 − x turns u = 2x/S − 1 into −u − 2/S.
  """
  camera = np.asarray(camera, np.float64)
  return (
      np.asarray(vertices, np.float64) * np.array([-1.0, 1.0, 1.0]),
      np.array([camera[0], -camera[1] - 2.0 / image_size, camera[2]]),
  )


def to_photo(
    vertices: np.ndarray,
    joints: np.ndarray,
    camera: np.ndarray,
    *,
    is_left: bool,
    crop_box: Sequence[float],
    K: np.ndarray,
    image_size: int,
    vertex_scale: float,
    keypoints_2d: np.ndarray | None = None,
    use_keypoints: bool = True,
) -> dict[str, Any]:
  """One hand from the model's output into the photo's camera frame.

  vertices (N, 3) and joints (21, 3): root-relative metres as the model gave them (mirrored for a left
  hand); camera (3,): its weak-perspective camera; crop_box: the photo's square crop (x0, y0, x1, y1)
  the model saw, resized to image_size; K (3, 3): the photo's intrinsics.

  keypoints_2d: optional (21, 2) the detector's landmarks, photo pixels. With them (and use_keypoints)
  the root is the translation that puts the joints on them (`crops.root_from_keypoints`); otherwise,
  or when that has no solution, the one that puts them where the model's camera draws them
  (`crops.root_from_projection`).

  Returns {'vertices', 'joints': root-relative metres in the photo's orientation, 'camera': (3,) the
  camera of the un-mirrored crop, 'root': (3,) the wrist in the photo's camera frame, metres,
  'vertices_camera', 'joints_camera': + root, 'placement': 'landmarks' or 'network',
  'reprojection_error_px': the projected joints' mean distance to the keypoints (None without them)}.
  """
  vertices = np.asarray(vertices, np.float64)
  joints = np.asarray(joints, np.float64)
  camera = np.asarray(camera, np.float64)
  if is_left:
    vertices, camera_unmirrored = unmirror(vertices, camera, image_size)
    joints, _ = unmirror(joints, camera, image_size)
    camera = camera_unmirrored
  solved = None
  if keypoints_2d is not None and use_keypoints:
    solved = crops.root_from_keypoints(joints, keypoints_2d, K)
  if solved is not None:
    root, placement = solved[0], 'landmarks'
  else:
    K_crop = crops.crop_intrinsics(K, crop_box, image_size)
    root = crops.root_from_projection(joints, camera, K_crop, image_size, vertex_scale)
    placement = 'network'
  error = None
  if keypoints_2d is not None:
    pixels = render.project(joints + root, K)
    error = round(float(np.linalg.norm(pixels - keypoints_2d, axis=-1).mean()), 3)
  return {
      'placement': placement,
      'reprojection_error_px': error,
      'vertices': vertices,
      'joints': joints,
      'camera': camera,
      'root': root,
      'vertices_camera': vertices + root,
      'joints_camera': joints + root,
  }


def orthographic_setup(
    vertices_model: np.ndarray, camera: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
  """Vertices and a pinhole K that `render.py` draws as the weak-perspective projection
  u = s·X + tx, v = s·Y + ty (normalised; pixel = (u + 1)·size/2) of model-space vertices (N, 3)."""
  scale, tx, ty = (float(c) for c in camera)
  if scale <= 0:
    scale = 1e-3  # a degenerate camera: draw a dot rather than fail
  distance = _ORTHO_DISTANCE
  focal = scale * size / 2.0 * distance
  K = np.array(
      [
          [focal, 0.0, (tx + 1.0) * size / 2.0],
          [0.0, focal, (ty + 1.0) * size / 2.0],
          [0.0, 0.0, 1.0],
      ]
  )
  placed = np.asarray(vertices_model, np.float64) + np.array([0.0, 0.0, distance])
  return placed, K


def scaled_intrinsics(K: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
  """K of the photo resized by (scale_x, scale_y) (pixel centres at integers: x → (x + 0.5)·scale − 0.5)."""
  K = np.asarray(K, np.float64)
  scaled = K.copy()
  scaled[0, :] *= scale_x
  scaled[1, :] *= scale_y
  scaled[0, 2] = (K[0, 2] + 0.5) * scale_x - 0.5
  scaled[1, 2] = (K[1, 2] + 0.5) * scale_y - 0.5
  return scaled


def draw_hands(
    image: np.ndarray,
    meshes: Sequence[tuple[np.ndarray, np.ndarray]],
    K: np.ndarray,
    max_size: int = 0,
    alpha: float = 0.6,
    colors: Sequence[np.ndarray | None] | None = None,
    flat: bool = False,
) -> np.ndarray:
  """Every hand's shaded mesh over the photo (H, W, 3) uint8, z-buffered together.

  meshes: [(vertices (N, 3) in the photo's camera frame, faces (F, 3))]; K: the photo's intrinsics.
  max_size > 0 scales the photo down (never up) so that its longer side is at most max_size pixels.
  colors: optional, one per mesh: (N, 3) per-vertex albedo in [0, 1] (e.g. `render.uncertainty_colors`),
  or None for the flat mesh colour. flat: the live camera's cheap drawing instead
  (`render.overlay_flat`: faces filled flat by the painter's algorithm, a few ms a hand where the
  z-buffer takes tens on a CPU), the farthest hand first; no colors.
  """
  image = np.asarray(image, np.uint8)
  height, width = image.shape[:2]
  scale_x = scale_y = 1.0
  if max_size and max(height, width) > max_size:
    scale = max_size / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    scale_x, scale_y = size[0] / width, size[1] / height
  if not meshes:
    return image.copy()
  if flat:
    if colors is not None:
      raise ValueError('draw_hands: flat drawing has no per-vertex colours')
    K = scaled_intrinsics(K, scale_x, scale_y)
    for vertices, faces in sorted(meshes, key=lambda mesh: -float(np.mean(mesh[0][:, 2]))):
      image = render.overlay_flat(image, vertices, faces, K, alpha=alpha, color=MESH_COLOR)
    return image
  if colors is not None and len(colors) != len(meshes):
    raise ValueError(f'draw_hands: {len(colors)} colour arrays for {len(meshes)} meshes')
  vertices, faces, albedo, offset = [], [], [], 0
  for number, (mesh_vertices, mesh_faces) in enumerate(meshes):
    vertices.append(np.asarray(mesh_vertices, np.float64))
    faces.append(np.asarray(mesh_faces, np.int64) + offset)
    offset += len(mesh_vertices)
    color = None if colors is None else colors[number]
    # Hands without colours keep the flat colour, so the meshes can still be drawn in one z-buffer.
    albedo.append(
        np.broadcast_to(MESH_COLOR, (len(mesh_vertices), 3))
        if color is None
        else np.asarray(color, np.float64)
    )
  coloured = colors is not None and any(color is not None for color in colors)
  return render.overlay(
      image,
      np.concatenate(vertices),
      np.concatenate(faces),
      scaled_intrinsics(K, scale_x, scale_y),
      alpha=alpha,
      color=MESH_COLOR,
      vertex_colors=np.concatenate(albedo) if coloured else None,
  )
