"""A small vectorised numpy z-buffer rasteriser for triangle meshes.

Used to render the synthetic-hands dataset and to draw prediction overlays.
Conventions (docs/design.md §2): vertices in metres in the OpenCV camera frame (x right, y down, z forward),
pinhole intrinsics K, and pixel centres at integer coordinates (pixel (row i, col j) is sampled at
u = j, v = i), so a point projecting to (u, v) lands in pixel (round(v), round(u)).

The rasteriser enumerates, for every face, the pixel centres inside its screen bounding box, keeps those
inside the triangle (edge functions), and resolves visibility with one lexicographic sort on
(pixel, depth). Depth and attributes are interpolated perspective-correctly (barycentrics weighted by
1/z). It is pure numpy: no GL context, no compiled extension, deterministic.

Limits: faces with a vertex at z <= `near` are dropped, not clipped; there is no anti-aliasing (render at
a multiple of the size and downsample, as the synthetic-hands builder does, if you want it).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    'intrinsics',
    'default_focal',
    'project',
    'vertex_normals',
    'rasterize',
    'coverage_mask',
    'render',
    'overlay',
    'downsample',
]

DEFAULT_SKIN = (0.85, 0.65, 0.55)
_EDGE_EPS = 1e-7  # in barycentric units, i.e. ~1e-7 of a triangle's size


def _as_points(points: np.ndarray, name: str) -> np.ndarray:
  points = np.asarray(points, dtype=np.float64)
  if points.ndim < 1 or points.shape[-1] != 3:
    raise ValueError(f'render: {name} must have shape (..., 3), got {points.shape}')
  return points


def _check_mesh(vertices, faces, K, image_size):
  vertices = _as_points(vertices, 'vertices')
  if vertices.ndim != 2:
    raise ValueError(f'render: vertices must have shape (V, 3), got {vertices.shape}')
  faces = np.asarray(faces)
  if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
    raise ValueError(f'render: faces must be integer (F, 3), got {faces.dtype} {faces.shape}')
  if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
    raise ValueError(f'render: faces index vertices outside [0, {len(vertices)})')
  K = np.asarray(K, dtype=np.float64)
  if K.shape != (3, 3):
    raise ValueError(f'render: K must be (3, 3), got {K.shape}')
  if len(image_size) != 2 or min(image_size) <= 0:
    raise ValueError(f'render: image_size must be (H, W) with positive entries, got {image_size}')
  return vertices, faces.astype(np.int64), K, (int(image_size[0]), int(image_size[1]))


def intrinsics(focal: float, image_size: Sequence[int]) -> np.ndarray:
  """A pinhole K (3, 3) with square pixels of focal length `focal` (pixels) and the principal point at
  the centre of an (H, W) image: ((W - 1)/2, (H - 1)/2) with pixel centres at integers."""
  height, width = image_size
  return np.array(
      [[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]]
  )


def default_focal(image_size: Sequence[int]) -> float:
  """The focal length (pixels) assumed for a photo whose camera is unknown: the image diagonal, a 53°
  diagonal field of view (a 43 mm lens on a 35 mm camera; CLIFF's choice). `predict` uses it when
  neither --focal nor the photo's EXIF gives one."""
  height, width = image_size
  return float(np.hypot(height, width))


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
  """Pinhole projection. points (..., 3) camera frame, K (3, 3) -> pixel coordinates (..., 2) as (u, v)."""
  points = _as_points(points, 'points')
  K = np.asarray(K, dtype=np.float64)
  if K.shape != (3, 3):
    raise ValueError(f'project: K must be (3, 3), got {K.shape}')
  homogeneous = points @ K.T
  return homogeneous[..., :2] / homogeneous[..., 2:3]


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """Smooth per-vertex unit normals, (V, 3): the area-weighted sum of the adjacent face normals."""
  vertices = np.asarray(vertices, dtype=np.float64)
  faces = np.asarray(faces, dtype=np.int64)
  corners = vertices[faces]  # (F, 3, 3)
  # The cross product's length is twice the face area: summing unnormalised normals weights by area.
  face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
  normals = np.zeros_like(vertices)
  for corner in range(3):
    np.add.at(normals, faces[:, corner], face_normals)
  length = np.linalg.norm(normals, axis=-1, keepdims=True)
  return normals / np.maximum(length, 1e-12)


def _screen_triangles(vertices, faces, K, near, cull_back_faces=False):
  """Projected faces (F, 3, 2), which faces to draw (F,), and their normalised edge functions (F, 9).

  Row f of the edge functions holds (a_0..a_2, b_0..b_2, c_0..c_2) with l_k(u, v) = a_k u + b_k v + c_k the
  screen-space barycentric weight of corner k (the edge opposite corner k, divided by the signed area).
  """
  z = vertices[:, 2]
  uv = project(
      np.where(z[:, None] > near, vertices, 1.0), K
  )  # guard the division; such faces drop below
  corners = vertices[faces]  # (F, 3, 3)
  keep = np.all(corners[..., 2] > near, axis=1)
  if cull_back_faces:
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    keep &= np.einsum('fc,fc->f', normals, corners[:, 0]) < 0
  tri_uv = uv[faces]  # (F, 3, 2)
  # Edge function of the edge opposite corner k (from corner i = k+1 to j = k+2), as A u + B v + C.
  u_i, v_i = tri_uv[:, [1, 2, 0], 0], tri_uv[:, [1, 2, 0], 1]
  u_j, v_j = tri_uv[:, [2, 0, 1], 0], tri_uv[:, [2, 0, 1], 1]
  edge_a, edge_b, edge_c = v_i - v_j, u_j - u_i, u_i * v_j - v_i * u_j  # (F, 3) each
  doubled_area = edge_c.sum(axis=1)  # signed, twice the screen area
  keep &= np.abs(doubled_area) > 1e-12
  safe_area = np.where(keep, doubled_area, 1.0)[:, None]
  # Normalised by the signed area, the edge functions are the barycentrics whatever the winding.
  edge_coef = np.concatenate([edge_a / safe_area, edge_b / safe_area, edge_c / safe_area], axis=1)
  return tri_uv, keep, edge_coef


def _candidates(tri_uv, keep, height, width, margin):
  """(face, px, py) for every pixel centre within `margin` px of each kept face's bounding box."""
  lo = np.maximum(np.ceil(tri_uv.min(axis=1) - margin), 0)
  hi = np.minimum(np.floor(tri_uv.max(axis=1) + margin), [width - 1, height - 1])
  box = (
      np.where(keep[:, None], hi - lo + 1, 0).clip(0, None).astype(np.int64)
  )  # (F, 2) width, height
  counts = box[:, 0] * box[:, 1]
  total = int(counts.sum())
  cand_face = np.repeat(np.arange(len(tri_uv)), counts)
  offset = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
  cand_w = box[cand_face, 0]
  lo = lo.astype(np.int64)
  px = lo[cand_face, 0] + offset % cand_w
  py = lo[cand_face, 1] + offset // cand_w
  return cand_face, px, py


def coverage_mask(
    vertices: np.ndarray,
    faces: np.ndarray,
    K: np.ndarray,
    image_size: Sequence[int],
    *,
    near: float = 1e-3,
) -> np.ndarray:
  """Conservative coverage, bool (H, W): pixels whose square [u-0.5, u+0.5] x [v-0.5, v+0.5] touches the
  projection of any face.

  Unlike `rasterize(...)['mask']` (pixel centres), every projected vertex lands inside this mask: a polygon
  mesh's silhouette runs through its contour vertices, and about half of them fall in pixels whose centre
  the mesh misses. The test is exact (separating axes): the pixel square meets the face's bounding box and
  lies on the inner side of each edge line, widened by the square's half-extent along the edge normal.
  """
  vertices, faces, K, (height, width) = _check_mesh(vertices, faces, K, image_size)
  mask = np.zeros(height * width, bool)
  tri_uv, keep, edge_coef = _screen_triangles(vertices, faces, K, near)
  cand_face, px, py = _candidates(tri_uv, keep, height, width, margin=0.5)
  if len(cand_face):
    coef = edge_coef[cand_face]
    bary = coef[:, 0:3] * px[:, None] + coef[:, 3:6] * py[:, None] + coef[:, 6:9]
    slack = 0.5 * (np.abs(coef[:, 0:3]) + np.abs(coef[:, 3:6]))
    touches = np.all(bary + slack >= -_EDGE_EPS, axis=1)
    mask[(py * width + px)[touches]] = True
  return mask.reshape(height, width)


def rasterize(
    vertices: np.ndarray,
    faces: np.ndarray,
    K: np.ndarray,
    image_size: Sequence[int],
    *,
    near: float = 1e-3,
    cull_back_faces: bool = False,
) -> dict:
  """Z-buffered visibility of a mesh.

  Args:
    vertices: (V, 3) metres, OpenCV camera frame.
    faces: (F, 3) integer vertex indices.
    K: (3, 3) intrinsics.
    image_size: (H, W).
    near: faces with any vertex at z <= near are dropped.
    cull_back_faces: drop faces whose normal (v1 - v0) x (v2 - v0) points away from the camera. Only for
      closed meshes whose faces wind that way outwards (the procedural hand); it halves the work and
      changes nothing visible for them.

  Returns:
    dict with `face_index` int32 (H, W) (-1 where empty), `depth` float32 (H, W) metres (0 where empty),
    `mask` bool (H, W), and `barycentric` float64 (H, W, 3), the perspective-correct barycentric weights of
    the visible face at each pixel (0 where empty).
  """
  vertices, faces, K, (height, width) = _check_mesh(vertices, faces, K, image_size)
  face_index = np.full(height * width, -1, np.int32)
  depth = np.zeros(height * width, np.float32)
  barycentric = np.zeros((height * width, 3), np.float64)
  z = vertices[:, 2]
  tri_uv, keep, edge_coef = _screen_triangles(vertices, faces, K, near, cull_back_faces)
  cand_face, px, py = _candidates(tri_uv, keep, height, width, margin=0.0)
  if len(cand_face) == 0:
    return dict(
        face_index=face_index.reshape(height, width),
        depth=depth.reshape(height, width),
        mask=np.zeros((height, width), bool),
        barycentric=barycentric.reshape(height, width, 3),
    )

  coef = edge_coef[cand_face]  # (N, 9)
  screen_bary = coef[:, 0:3] * px[:, None] + coef[:, 3:6] * py[:, None] + coef[:, 6:9]  # (N, 3)
  # A tiny tolerance keeps shared edges watertight when a pixel centre lies exactly on one.
  inside = np.all(screen_bary >= -_EDGE_EPS, axis=1)
  cand_face, px, py, screen_bary = cand_face[inside], px[inside], py[inside], screen_bary[inside]
  if len(cand_face) == 0:
    return dict(
        face_index=face_index.reshape(height, width),
        depth=depth.reshape(height, width),
        mask=np.zeros((height, width), bool),
        barycentric=barycentric.reshape(height, width, 3),
    )

  # Perspective correction: 1/z is affine in screen space.
  inv_z = 1.0 / z[faces[cand_face]]  # (N, 3)
  weighted = screen_bary * inv_z
  cand_depth = 1.0 / weighted.sum(axis=1)

  # Z-buffer: one sort on (pixel, depth) packed in a float64 key (depth scaled into [0, 0.5)); the first
  # entry of each pixel is then its nearest surface.
  pixel = py * width + px
  key = pixel + cand_depth * (0.5 / (cand_depth.max() * (1 + 1e-9)))
  order = np.argsort(key)
  sorted_pixel = pixel[order]
  first = np.ones(len(order), bool)
  first[1:] = sorted_pixel[1:] != sorted_pixel[:-1]
  winner = order[first]
  face_index[pixel[winner]] = cand_face[winner]
  depth[pixel[winner]] = cand_depth[winner]
  barycentric[pixel[winner]] = weighted[winner] * cand_depth[winner, None]
  face_index = face_index.reshape(height, width)
  return dict(
      face_index=face_index,
      depth=depth.reshape(height, width),
      mask=face_index >= 0,
      barycentric=barycentric.reshape(height, width, 3),
  )


def render(
    vertices: np.ndarray,
    faces: np.ndarray,
    K: np.ndarray,
    image_size: Sequence[int],
    *,
    vertex_colors: np.ndarray | None = None,
    base_color: Sequence[float] = DEFAULT_SKIN,
    light_dir: Sequence[float] = (0.0, 0.0, -1.0),
    ambient: float = 0.35,
    background: np.ndarray | None = None,
    near: float = 1e-3,
    cull_back_faces: bool = False,
) -> dict:
  """Renders a shaded mesh.

  Shading is Lambert plus ambient with smooth (interpolated) vertex normals, two-sided: normals are turned to
  face the camera, so the face winding does not matter.

  Args:
    vertices: (V, 3) metres, OpenCV camera frame.
    faces: (F, 3) integer.
    K: (3, 3) intrinsics.
    image_size: (H, W).
    vertex_colors: optional (V, 3) albedo in [0, 1]; else `base_color` everywhere.
    base_color: (3,) albedo in [0, 1].
    light_dir: (3,) direction *towards* the light, camera frame; the default lights from the camera.
    ambient: shade = ambient + (1 - ambient) * max(0, n . l).
    background: optional uint8 (H, W, 3) image behind the mesh; black if None.
    near, cull_back_faces: see `rasterize`.

  Returns:
    dict with `rgb` uint8 (H, W, 3), `mask` bool (H, W), `depth` float32 (H, W) metres (0 where empty),
    `face_index` int32 (H, W) (-1 where empty).
  """
  vertices, faces, K, (height, width) = _check_mesh(vertices, faces, K, image_size)
  if vertex_colors is None:
    albedo = np.broadcast_to(np.asarray(base_color, np.float64), vertices.shape)
  else:
    albedo = np.asarray(vertex_colors, np.float64)
    if albedo.shape != vertices.shape:
      raise ValueError(f'render: vertex_colors must be {vertices.shape}, got {albedo.shape}')
  light = np.asarray(light_dir, np.float64)
  if light.shape != (3,) or not np.linalg.norm(light) > 0:
    raise ValueError(f'render: light_dir must be a non-zero (3,) vector, got {light_dir}')
  light = light / np.linalg.norm(light)
  if background is None:
    rgb = np.zeros((height, width, 3), np.uint8)
  else:
    rgb = np.asarray(background)
    if rgb.shape != (height, width, 3):
      raise ValueError(f'render: background must be ({height}, {width}, 3), got {rgb.shape}')
    rgb = rgb.astype(np.uint8, copy=True)

  raster = rasterize(
      vertices, faces, K, (height, width), near=near, cull_back_faces=cull_back_faces
  )
  mask = raster['mask']
  if mask.any():
    face_ids = raster['face_index'][mask]
    weights = raster['barycentric'][mask]  # (N, 3)
    corner_ids = faces[face_ids]  # (N, 3)
    normals = vertex_normals(vertices, faces)
    normal = np.einsum('nk,nkc->nc', weights, normals[corner_ids])
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
    surface = np.einsum('nk,nkc->nc', weights, vertices[corner_ids])
    # Two-sided: a normal pointing away from the camera (same direction as the viewing ray) is flipped.
    facing_away = np.sum(normal * surface, axis=-1) > 0
    normal[facing_away] *= -1
    lambert = np.clip(normal @ light, 0.0, None)
    shade = ambient + (1.0 - ambient) * lambert
    color = np.einsum('nk,nkc->nc', weights, albedo[corner_ids]) * shade[:, None]
    rgb[mask] = np.clip(np.round(color * 255.0), 0, 255).astype(np.uint8)
  return dict(rgb=rgb, mask=mask, depth=raster['depth'], face_index=raster['face_index'])


def overlay(
    image: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    K: np.ndarray,
    alpha: float = 0.5,
    color: Sequence[float] = (0.35, 0.6, 1.0),
) -> np.ndarray:
  """Blends a shaded mesh over an image, e.g. a predicted hand over its input crop.

  Args:
    image: uint8 (H, W, 3) (or (H, W), which is turned grey-to-RGB).
    vertices: (V, 3) metres in the image's camera frame; faces (F, 3); K (3, 3) for this image.
    alpha: opacity of the mesh.
    color: albedo of the mesh in [0, 1].

  Returns:
    uint8 (H, W, 3).
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'overlay: image must be (H, W, 3), got {image.shape}')
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'overlay: alpha must be in [0, 1], got {alpha}')
  image = image.astype(np.uint8)
  drawn = render(vertices, faces, K, image.shape[:2], base_color=color, ambient=0.3)
  blended = image.astype(np.float64)
  mask = drawn['mask']
  blended[mask] = (1.0 - alpha) * blended[mask] + alpha * drawn['rgb'][mask]
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
  """Box-filter downsampling of (H*factor, W*factor, C) to (H, W, C) (float in, float out)."""
  if factor == 1:
    return image
  height, width = image.shape[0] // factor, image.shape[1] // factor
  blocks = image.reshape(height, factor, width, factor, *image.shape[2:])
  return blocks.mean(axis=(1, 3))
