"""Writing meshes and images: the one OBJ writer (and its reader), the one glTF (GLB) writer and the one
image writer of the project."""

from __future__ import annotations

import numpy as np
from PIL import Image


def write_obj(path: str, vertices: np.ndarray, faces: np.ndarray) -> None:
  """A Wavefront OBJ of vertices (N, 3) and triangles faces (F, 3) (0-based; OBJ counts from 1)."""
  lines = [f'v {x:.6f} {y:.6f} {z:.6f}' for x, y, z in np.asarray(vertices)]
  lines += [f'f {a + 1} {b + 1} {c + 1}' for a, b, c in np.asarray(faces)]
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def read_obj(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Vertices (N, 3) float64 and triangles (F, 3) int (0-based) of an OBJ as `write_obj` writes it (the
  first index of each `f` entry; texture and normal indices after a slash are ignored)."""
  vertices, faces = [], []
  with open(path) as f:
    for line in f:
      parts = line.split()
      if not parts:
        continue
      if parts[0] == 'v':
        vertices.append([float(x) for x in parts[1:4]])
      elif parts[0] == 'f':
        faces.append([int(x.split('/')[0]) - 1 for x in parts[1:4]])
  return np.asarray(vertices, np.float64).reshape(-1, 3), np.asarray(faces, np.int64).reshape(-1, 3)


def write_glb(
    path: str, vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray | None = None
) -> None:
  """A binary glTF (.glb) of one mesh, through trimesh (the app extra: pip install -e ".[app]").

  The vertex order is kept as given (no merging or reordering: vertex i of the file is vertices[i]),
  so per-vertex data of the 778-vertex hand lines up with the file. colours: optional (N, 3) or (N, 4)
  uint8 vertex colours (glTF's COLOR_0).
  """
  try:
    import trimesh  # pylint: disable=g-import-not-at-top - optional extra (trimesh)
  except ImportError:
    raise ImportError(
        'writing GLB meshes needs trimesh: pip install -e ".[app]" (or pip install trimesh)'
    ) from None
  vertices = np.asarray(vertices, np.float64)
  mesh = trimesh.Trimesh(
      vertices=vertices,
      faces=np.asarray(faces, np.int64),
      vertex_colors=None if colours is None else np.asarray(colours, np.uint8),
      process=False,
      validate=False,
  )
  payload = mesh.export(file_type='glb')
  with open(path, 'wb') as f:
    f.write(payload)


def write_image(path: str, image: np.ndarray, image_format: str | None = None) -> None:
  """An (H, W, 3) or (H, W) uint8 image, in the format its extension names (.png, .jpg, ...), or
  `image_format` ('PNG', 'JPEG', ...) when given (e.g. for a temporary file name)."""
  Image.fromarray(np.asarray(image, np.uint8)).save(path, format=image_format)
