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

For people to look at, `overlay_upscaled` draws a mesh over an image enlarged by an integer factor,
`panel_row` puts input | prediction | ground truth side by side with labels, and `contact_sheet` stacks
such rows into one picture (evaluation's export writes both).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    'intrinsics',
    'default_focal',
    'project',
    'vertex_normals',
    'rasterize',
    'coverage_mask',
    'render',
    'overlay',
    'overlay_flat',
    'uncertainty_colors',
    'upscaled_intrinsics',
    'upscale_image',
    'overlay_upscaled',
    'panel_row',
    'contact_sheet',
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
    vertex_colors: np.ndarray | None = None,
) -> np.ndarray:
  """Blends a shaded mesh over an image, e.g. a predicted hand over its input crop.

  Args:
    image: uint8 (H, W, 3) (or (H, W), which is turned grey-to-RGB).
    vertices: (V, 3) metres in the image's camera frame; faces (F, 3); K (3, 3) for this image.
    alpha: opacity of the mesh.
    color: albedo of the mesh in [0, 1].
    vertex_colors: optional (V, 3) per-vertex albedo in [0, 1], used instead of `color`.

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
  drawn = render(
      vertices,
      faces,
      K,
      image.shape[:2],
      vertex_colors=vertex_colors,
      base_color=color,
      ambient=0.3,
  )
  blended = image.astype(np.float64)
  mask = drawn['mask']
  blended[mask] = (1.0 - alpha) * blended[mask] + alpha * drawn['rgb'][mask]
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def overlay_flat(
    image: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    K: np.ndarray,
    alpha: float = 0.6,
    color: Sequence[float] = (0.35, 0.6, 1.0),
    ambient: float = 0.3,
) -> np.ndarray:
  """`overlay` made cheap for live video: each face filled flat (Lambert shading of its normal, lit from
  the camera, two-sided) by PIL, far faces first (the painter's algorithm, no z-buffer), only over the
  box the mesh covers. A few milliseconds for a hand where `overlay` takes tens; faces that cross
  each other in depth may show the wrong one at their crossing, which a hand's surface rarely has.

  image uint8 (H, W, 3); vertices (V, 3) metres in its camera frame (in front of it); faces (F, 3);
  K (3, 3). Returns uint8 (H, W, 3), a new array.
  """
  image = np.array(image, np.uint8)
  vertices = np.asarray(vertices, np.float64)
  faces = np.asarray(faces, np.int64)
  height, width = image.shape[:2]
  if not np.all(np.isfinite(vertices)) or vertices[:, 2].min() <= 1e-6:
    return image  # behind the camera, or broken: nothing to draw
  uv = project(vertices, K)
  x0, y0 = (max(0, int(np.floor(v))) for v in uv.min(0))
  x1, y1 = min(width, int(np.ceil(uv[:, 0].max())) + 1), min(
      height, int(np.ceil(uv[:, 1].max())) + 1
  )
  if x1 <= x0 or y1 <= y0:
    return image
  corners = vertices[faces]
  normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
  centres = corners.mean(1)
  lengths = np.linalg.norm(normals, axis=1) * np.linalg.norm(centres, axis=1)
  lambert = np.abs(np.einsum('fc,fc->f', normals, centres)) / np.where(lengths > 0, lengths, 1.0)
  shade = ambient + (1.0 - ambient) * lambert
  fills = np.clip(np.round(np.asarray(color)[None] * shade[:, None] * 255.0), 0, 255).astype(int)
  layer = Image.new('RGBA', (x1 - x0, y1 - y0), (0, 0, 0, 0))
  draw = ImageDraw.Draw(layer)
  opacity = int(round(255 * float(alpha)))
  points = (uv[faces] - np.array([x0, y0])).tolist()
  for f in np.argsort(-centres[:, 2]):  # far first
    r, g, b = fills[f]
    draw.polygon([tuple(p) for p in points[f]], fill=(int(r), int(g), int(b), opacity))
  region = Image.fromarray(image[y0:y1, x0:x1]).convert('RGBA')
  region.alpha_composite(layer)
  image[y0:y1, x0:x1] = np.asarray(region.convert('RGB'))
  return image


def uncertainty_colors(std: np.ndarray, scale: float | None = None) -> np.ndarray:
  """(N, 4) uint8 RGBA: a per-vertex uncertainty (N,) in metres through matplotlib's 'inferno' map,
  0 → dark, `scale` (default: the largest value, at least 1 mm) → bright.

  The one colour map for uncertainty: the web app's 3D viewer and `predict --color_by_uncertainty`.
  """
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top - heavy: matplotlib

  std = np.asarray(std, np.float64)
  # The 1 mm floor keeps a near-certain hand dark instead of stretching noise over the whole map.
  top = scale if scale else max(float(std.max(initial=0.0)), 1e-3)
  return (colormaps['inferno'](np.clip(std / top, 0.0, 1.0)) * 255).round().astype(np.uint8)


PREDICTION_COLOR = (0.35, 0.6, 1.0)  # blue: `overlay`'s default
TRUTH_COLOR = (0.35, 0.9, 0.35)  # green
LABEL_HEIGHT = 20  # px: the strip above each panel that names it, and the caption strip below a row
PANEL_GAP = 4  # px between the panels of a row
_FONT_SIZE = 13
_ROW_BACKGROUND = (40, 40, 40)
_SHEET_BACKGROUND = (16, 16, 16)


def upscaled_intrinsics(K: np.ndarray, factor: float) -> np.ndarray:
  """K (3, 3) of the same camera sampling an image `factor` times larger per axis.

  Pixel centres are at integers, so native pixel coordinate u maps to factor * (u + 0.5) - 0.5 (pixel j's
  square [j - 0.5, j + 0.5] becomes the factor pixels [factor * j, factor * (j + 1) - 1]): the focal
  lengths scale by `factor` and the principal point as a pixel coordinate. Used to render at a multiple
  of the size and box-filter back down (`downsample`), and to draw over an upscaled image.
  """
  K = np.asarray(K, dtype=np.float64)
  if K.shape != (3, 3):
    raise ValueError(f'upscaled_intrinsics: K must be (3, 3), got {K.shape}')
  if not factor > 0:
    raise ValueError(f'upscaled_intrinsics: factor must be positive, got {factor}')
  scaled = K.copy()
  scaled[:2, :2] *= factor
  scaled[:2, 2] = factor * (K[:2, 2] + 0.5) - 0.5
  return scaled


def _as_rgb(image: np.ndarray, caller: str) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) <= 0:
    raise ValueError(f'{caller}: image must be (H, W, 3) or (H, W), got {image.shape}')
  return image.astype(np.uint8)


def _upscale_factor(image_size: Sequence[int], min_size: int) -> int:
  """The smallest integer factor >= 1 that makes the short side of an (H, W) image >= min_size."""
  if int(min_size) != min_size or min_size <= 0:
    raise ValueError(f'min_size must be a positive integer, got {min_size}')
  return max(1, -(-int(min_size) // int(min(image_size))))


def upscale_image(image: np.ndarray, factor: int) -> np.ndarray:
  """Enlarges uint8 (H, W, 3) (or (H, W), made RGB) to (H * factor, W * factor, 3) by bilinear
  interpolation. PIL samples pixel centres at integers, the convention `upscaled_intrinsics` scales K by,
  so a mesh drawn with the upscaled K lands on the same image content as at the native size."""
  image = _as_rgb(image, 'upscale_image')
  if int(factor) != factor or factor < 1:
    raise ValueError(f'upscale_image: factor must be an integer >= 1, got {factor}')
  if factor == 1:
    return image
  height, width = image.shape[:2]
  big = Image.fromarray(image).resize((width * int(factor), height * int(factor)), Image.BILINEAR)
  return np.asarray(big)


def overlay_upscaled(
    image: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    K: np.ndarray,
    *,
    min_size: int = 256,
    alpha: float = 0.5,
    color: Sequence[float] = PREDICTION_COLOR,
    vertex_colors: np.ndarray | None = None,
) -> np.ndarray:
  """`overlay` at a size a person can see: the image is enlarged by f, the smallest integer with
  min(H, W) * f >= min_size (1 if it already is), and the mesh is rasterised at that size with K scaled
  by `upscaled_intrinsics`, so its edges are sharp rather than the input's pixels.

  Args:
    image: uint8 (H, W, 3) or (H, W).
    vertices: (V, 3) metres in the image's camera frame; faces (F, 3); K (3, 3) for the native image.
    min_size: the smallest short side of the result, pixels.
    alpha, color, vertex_colors: as in `overlay`.

  Returns:
    uint8 (H * f, W * f, 3).
  """
  image = _as_rgb(image, 'overlay_upscaled')
  factor = _upscale_factor(image.shape[:2], min_size)
  return overlay(
      upscale_image(image, factor),
      vertices,
      faces,
      upscaled_intrinsics(K, factor),
      alpha=alpha,
      color=color,
      vertex_colors=vertex_colors,
  )


def _font():
  try:
    return ImageFont.load_default(size=_FONT_SIZE)
  except TypeError:  # Pillow < 10.1 has only the small bitmap font
    return ImageFont.load_default()


def _text_strip(width: int, text: str, color: Sequence[int]) -> np.ndarray:
  """uint8 (LABEL_HEIGHT, width, 3): `text` in PIL's default font on the row background."""
  strip = Image.new('RGB', (width, LABEL_HEIGHT), _ROW_BACKGROUND)
  ImageDraw.Draw(strip).text((4, 2), text, fill=tuple(int(c) for c in color), font=_font())
  return np.asarray(strip)


def _to_rgb255(color: Sequence[float]) -> tuple[int, ...]:
  return tuple(int(round(255 * min(max(c, 0.0), 1.0))) for c in color)


def panel_row(
    image: np.ndarray,
    prediction: np.ndarray,
    faces: np.ndarray,
    K: np.ndarray,
    truth: np.ndarray | None = None,
    *,
    caption: str | None = None,
    min_size: int = 256,
    alpha: float = 0.5,
    prediction_color: Sequence[float] = PREDICTION_COLOR,
    truth_color: Sequence[float] = TRUTH_COLOR,
) -> np.ndarray:
  """Input | prediction over the input | ground truth over the input, side by side, labelled.

  Every panel is the image enlarged as in `overlay_upscaled` to (H * f, W * f), under a LABEL_HEIGHT px
  strip naming it ('input', 'prediction', 'ground truth', the labels in the meshes' colours); panels are
  PANEL_GAP px apart. With `caption` (e.g. the image's errors), a LABEL_HEIGHT px strip under the row
  holds it.

  Args:
    image: uint8 (H, W, 3) or (H, W).
    prediction: (V, 3) metres, the image's camera frame (OpenCV).
    faces: (F, 3) integer, the topology of both meshes.
    K: (3, 3) intrinsics of the native image.
    truth: optional (V, 3) metres, same frame and topology; without it the row has two panels.
    caption: optional text under the row.
    min_size: the smallest short side of a panel, pixels.
    alpha: opacity of the meshes.
    prediction_color, truth_color: albedos in [0, 1].

  Returns:
    uint8 (LABEL_HEIGHT + H * f [+ LABEL_HEIGHT with a caption], n * W * f + (n - 1) * PANEL_GAP, 3)
    with n = 3 panels given `truth`, else 2.
  """
  image = _as_rgb(image, 'panel_row')
  prediction = _as_points(prediction, 'prediction')
  if prediction.ndim != 2:
    raise ValueError(f'panel_row: prediction must be (V, 3), got {prediction.shape}')
  if truth is not None:
    truth = _as_points(truth, 'truth')
    if truth.shape != prediction.shape:
      raise ValueError(
          f'panel_row: truth must be (V, 3) like the prediction {prediction.shape}, got {truth.shape}'
      )
  factor = _upscale_factor(image.shape[:2], min_size)
  big = upscale_image(image, factor)
  big_K = upscaled_intrinsics(K, factor)
  panels = [('input', (220, 220, 220), big)]
  for label, vertices, color in (
      ('prediction', prediction, prediction_color),
      ('ground truth', truth, truth_color),
  ):
    if vertices is not None:
      drawn = overlay(big, vertices, faces, big_K, alpha=alpha, color=color)
      panels.append((label, _to_rgb255(color), drawn))
  height, width = big.shape[:2]
  row_width = len(panels) * width + (len(panels) - 1) * PANEL_GAP
  row = np.empty((LABEL_HEIGHT + height, row_width, 3), np.uint8)
  row[:] = _ROW_BACKGROUND
  for index, (label, label_color, picture) in enumerate(panels):
    left = index * (width + PANEL_GAP)
    row[:LABEL_HEIGHT, left : left + width] = _text_strip(width, label, label_color)
    row[LABEL_HEIGHT:, left : left + width] = picture
  if caption is not None:
    row = np.concatenate([row, _text_strip(row_width, caption, (235, 235, 235))], axis=0)
  return row


def contact_sheet(rows: Sequence[np.ndarray], *, columns: int = 2, gap: int = 8) -> np.ndarray:
  """Tiles rows (uint8 (h_i, w_i, 3), e.g. from `panel_row`) into one picture, in reading order.

  Each row sits at the top left of a cell of the largest row's size (h, w); cells are `gap` px apart and
  from the edge. With N rows, c = min(columns, N) per line and L = ceil(N / c) lines.

  Returns:
    uint8 (L * h + (L + 1) * gap, c * w + (c + 1) * gap, 3).
  """
  if len(rows) == 0:
    raise ValueError('contact_sheet: needs at least one row')
  if int(columns) != columns or columns < 1:
    raise ValueError(f'contact_sheet: columns must be an integer >= 1, got {columns}')
  if int(gap) != gap or gap < 0:
    raise ValueError(f'contact_sheet: gap must be an integer >= 0, got {gap}')
  rows = [np.asarray(row) for row in rows]
  for index, row in enumerate(rows):
    if row.ndim != 3 or row.shape[-1] != 3:
      raise ValueError(f'contact_sheet: row {index} must be (h, w, 3), got {row.shape}')
  columns, gap = min(int(columns), len(rows)), int(gap)
  lines = -(-len(rows) // columns)
  cell_height = max(row.shape[0] for row in rows)
  cell_width = max(row.shape[1] for row in rows)
  sheet = np.empty(
      (lines * cell_height + (lines + 1) * gap, columns * cell_width + (columns + 1) * gap, 3),
      np.uint8,
  )
  sheet[:] = _SHEET_BACKGROUND
  for index, row in enumerate(rows):
    top = gap + (index // columns) * (cell_height + gap)
    left = gap + (index % columns) * (cell_width + gap)
    sheet[top : top + row.shape[0], left : left + row.shape[1]] = row.astype(np.uint8)
  return sheet


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
  """Box-filter downsampling of (H*factor, W*factor, C) to (H, W, C) (float in, float out)."""
  if factor == 1:
    return image
  height, width = image.shape[0] // factor, image.shape[1] // factor
  blocks = image.reshape(height, factor, width, factor, *image.shape[2:])
  return blocks.mean(axis=(1, 3))
