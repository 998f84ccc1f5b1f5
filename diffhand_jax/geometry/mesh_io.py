"""Writing meshes and images: the one OBJ writer and the one image writer of the project."""

from __future__ import annotations

import numpy as np


def write_obj(path: str, vertices: np.ndarray, faces: np.ndarray) -> None:
  """A Wavefront OBJ of vertices (N, 3) and triangles faces (F, 3) (0-based; OBJ counts from 1)."""
  lines = [f'v {x:.6f} {y:.6f} {z:.6f}' for x, y, z in np.asarray(vertices)]
  lines += [f'f {a + 1} {b + 1} {c + 1}' for a, b, c in np.asarray(faces)]
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def write_image(path: str, image: np.ndarray) -> None:
  """An (H, W, 3) or (H, W) uint8 image, in the format its extension names (.png, .jpg, ...)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  Image.fromarray(np.asarray(image, np.uint8)).save(path)
