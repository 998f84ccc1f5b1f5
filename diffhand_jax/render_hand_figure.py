"""Renders the procedural hand (flat, fist, pointing) from two viewpoints into docs/procedural_hand.png,
or (--examples) synthetic-hands training examples into docs/synthetic_examples.png.

    python -m diffhand_jax.render_hand_figure [--out=docs/procedural_hand.png]
    python -m diffhand_jax.render_hand_figure --examples --out=docs/synthetic_examples.png

A small orthographic painter's-algorithm renderer on matplotlib (Agg): back faces are culled, the rest
drawn far to near with Lambert shading.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

import matplotlib

matplotlib.use('Agg')
from absl import flags  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from PIL import Image  # noqa: E402

from diffhand_jax import command_line  # noqa: E402
from diffhand_jax.data import synthetic_scene  # noqa: E402
from diffhand_jax.geometry import mano, procedural_hand  # noqa: E402

FLAGS = flags.FlagValues()
flags.DEFINE_string('out', 'docs/procedural_hand.png', 'the PNG to write', flag_values=FLAGS)
flags.DEFINE_bool(
    'examples',
    False,
    'draw 24 synthetic-hands training renders (64 px, shown at 2x) with the first 8 masks and depths',
    flag_values=FLAGS,
)


def _view_rotation(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
  """Rows: screen right, screen up, towards the viewer, for a camera orbiting the origin."""
  az, el = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
  towards_viewer = np.array([np.cos(el) * np.cos(az), np.sin(el), np.cos(el) * np.sin(az)])
  up_hint = np.array([0.0, 1.0, 0.0]) if abs(np.sin(el)) < 0.99 else np.array([1.0, 0.0, 0.0])
  right = np.cross(up_hint, towards_viewer)
  right /= np.linalg.norm(right)
  up = np.cross(towards_viewer, right)
  return np.stack([right, up, towards_viewer])


def draw_mesh(
    ax,
    vertices: np.ndarray,
    faces: np.ndarray,
    rotation: np.ndarray,
    colour=(0.93, 0.74, 0.62),
    vertex_colours: np.ndarray | None = None,
    highlight: np.ndarray | None = None,
) -> None:
  """Draws a closed mesh (V, 3) with faces (F, 3) on a 2-D axis, orthographic, shaded; in one colour, or
  with per-vertex albedo (V, 3) averaged over each face."""
  camera = (vertices - vertices.mean(axis=0)) @ rotation.T
  triangles = camera[faces]
  normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
  normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
  visible = normals[:, 2] > 0
  order = np.argsort(triangles[:, :, 2].mean(axis=1))
  order = order[visible[order]]
  light = np.array([0.35, 0.55, 0.76])
  light /= np.linalg.norm(light)
  shade = 0.35 + 0.65 * np.clip(normals[order] @ light, 0.0, 1.0)
  albedo = (
      np.broadcast_to(np.array(colour), (len(faces), 3))
      if vertex_colours is None
      else np.asarray(vertex_colours)[faces].mean(axis=1)
  )
  colours = np.clip(albedo[order] * shade[:, None], 0, 1)
  collection = PolyCollection(
      triangles[order][:, :, :2], facecolors=colours, edgecolors=colours * 0.85, linewidths=0.15
  )
  ax.add_collection(collection)
  if highlight is not None:
    points = camera[highlight]
    front = points[:, 2] > -1  # always show
    ax.scatter(points[front, 0], points[front, 1], s=6, c='tab:blue', zorder=3)
  ax.set_aspect('equal')
  ax.set_xlim(-0.12, 0.12)
  ax.set_ylim(-0.12, 0.12)
  ax.axis('off')


def render(out_path: str) -> None:
  model = mano.load_procedural('right')
  faces = np.asarray(model.faces)
  # The synthetic renders' skin: a lighter palm, nails, knuckles and creases (procedural_hand.skin_albedo).
  albedo = procedural_hand.skin_albedo(np.array([0.78, 0.56, 0.42]), procedural_hand.skin_regions())
  poses = [
      ('flat', mano.named_pose(model, 'flat')),
      ('fist', mano.named_pose(model, 'fist')),
      ('pointing', mano.named_pose(model, 'point')),
  ]
  views = [
      ('palm side', _view_rotation(-70.0, -65.0)),
      ('back, from the thumb side', _view_rotation(60.0, 35.0)),
  ]
  figure, axes = plt.subplots(len(views), len(poses), figsize=(3.2 * len(poses), 3.2 * len(views)))
  for column, (name, pose) in enumerate(poses):
    vertices, _ = mano.forward(model, pose[None], flat_hand_mean=True)
    vertices = np.asarray(vertices[0], np.float64)
    for row, (view_name, rotation) in enumerate(views):
      ax = axes[row, column]
      draw_mesh(ax, vertices, faces, rotation, vertex_colours=albedo)
      if row == 0:
        ax.set_title(name, fontsize=11)
      if column == 0:
        ax.text(-0.12, 0.11, view_name, fontsize=8, va='top')
  figure.suptitle(
      'diffhand-jax procedural hand (licence-free, MANO topology: 778 vertices, 16 joints)',
      fontsize=9,
  )
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  figure.savefig(out_path, dpi=110)
  plt.close(figure)


def render_examples(out_path: str, count: int = 24, columns: int = 8) -> None:
  """Train examples 0..count-1 of synthetic_hands/default at 2x (nearest), then the first row's masks
  (green over a darkened image) and depths (near orange to far blue)."""
  kit = synthetic_scene.load_hand_kit()
  config = synthetic_scene.SceneConfig()
  examples = [synthetic_scene.generate_example(config, 'train', i, kit=kit) for i in range(count)]
  tiles = [e['image'] for e in examples]
  for e in examples[:columns]:
    mask = e['mask'][..., 0] > 0
    tile = (0.4 * e['image']).astype(np.uint8)
    tile[mask] = (80, 220, 80)
    tiles.append(tile)
  for e in examples[:columns]:
    depth = e['depth']
    on = depth > 0
    tile = np.zeros(depth.shape + (3,), np.uint8)
    if on.any():
      near = (depth[on].max() - depth[on]) / max(np.ptp(depth[on]), 1e-9)
      tile[on] = np.stack([255 * near, 120 + 0 * near, 255 * (1 - near)], -1).astype(np.uint8)
    tiles.append(tile)
  rows = [np.concatenate(tiles[r : r + columns], axis=1) for r in range(0, len(tiles), columns)]
  sheet = np.concatenate(rows, axis=0).repeat(2, axis=0).repeat(2, axis=1)
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  Image.fromarray(sheet).save(out_path)


def main(argv: Sequence[str] | None = None) -> int:
  try:
    command_line.parse(FLAGS, argv, prog='python -m diffhand_jax.render_hand_figure', doc=__doc__)
  except command_line.Exit as done:
    return done.code
  (render_examples if FLAGS.examples else render)(FLAGS.out)
  print(f'wrote {FLAGS.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
