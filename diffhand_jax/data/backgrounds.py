"""Random backgrounds for the synthetic-hands dataset: smooth noise, gradients and random shapes.

Pure numpy + PIL; each function draws everything from the `rng` it is given, so a background depends only on
that generator's state.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def _random_color(rng: np.random.Generator) -> np.ndarray:
  return rng.uniform(0.0, 1.0, size=3)


def smooth_noise(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """Low-frequency colour noise: a coarse random grid upsampled bilinearly, float (H, W, 3) in [0, 1]."""
  cells = int(rng.integers(2, 9))
  grid = rng.uniform(0.0, 1.0, size=(cells, cells, 3)).astype(np.float32)
  image = Image.fromarray(np.round(grid * 255).astype(np.uint8)).resize(
      (width, height), Image.BILINEAR
  )
  return np.asarray(image, np.float64) / 255.0


def gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A linear gradient between two random colours at a random angle, float (H, W, 3)."""
  angle = rng.uniform(0.0, 2.0 * np.pi)
  rows, cols = np.mgrid[0:height, 0:width]
  coordinate = np.cos(angle) * cols / max(width - 1, 1) + np.sin(angle) * rows / max(height - 1, 1)
  coordinate = (coordinate - coordinate.min()) / max(np.ptp(coordinate), 1e-9)
  start, end = _random_color(rng), _random_color(rng)
  return start + coordinate[..., None] * (end - start)


def draw_shapes(rng: np.random.Generator, image: np.ndarray, max_shapes: int = 8) -> np.ndarray:
  """Draws random rectangles, ellipses, polygons and thick lines over a float (H, W, 3) image."""
  height, width = image.shape[:2]
  canvas = Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))
  draw = ImageDraw.Draw(canvas)
  for _ in range(int(rng.integers(1, max_shapes + 1))):
    color = tuple(int(c) for c in rng.integers(0, 256, size=3))
    kind = rng.integers(0, 4)
    x = np.sort(rng.uniform(-0.2, 1.2, size=2) * width)
    y = np.sort(rng.uniform(-0.2, 1.2, size=2) * height)
    if kind == 0:
      draw.rectangle([x[0], y[0], x[1], y[1]], fill=color)
    elif kind == 1:
      draw.ellipse([x[0], y[0], x[1], y[1]], fill=color)
    elif kind == 2:
      corners = rng.uniform(-0.1, 1.1, size=(int(rng.integers(3, 6)), 2)) * (width, height)
      draw.polygon([tuple(p) for p in corners], fill=color)
    else:
      line_width = max(1, int(rng.uniform(0.02, 0.12) * width))
      draw.line([x[0], y[0], x[1], y[1]], fill=color, width=line_width)
  return np.asarray(canvas, np.float64) / 255.0


def sample_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A random background, uint8 (H, W, 3): noise, gradient or shapes, mixed, plus fine grain."""
  style = rng.integers(0, 4)
  if style == 0:
    image = smooth_noise(rng, height, width)
  elif style == 1:
    image = gradient(rng, height, width)
  elif style == 2:
    image = draw_shapes(rng, gradient(rng, height, width))
  else:
    image = draw_shapes(rng, smooth_noise(rng, height, width))
  grain = rng.uniform(0.0, 0.08)
  image = image + rng.normal(0.0, grain, size=image.shape)
  return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def studio_backdrop(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A photo-studio backdrop, uint8 (H, W, 3): one muted colour, a little darker towards the bottom,
  with fine grain (the synthetic hands' 'studio' look; nothing of `sample_background`'s clutter)."""
  colour = rng.uniform(0.15, 0.6) * (1.0 + rng.uniform(-0.15, 0.15, size=3))
  rows = np.linspace(0.0, 1.0, height)[:, None, None]
  image = colour * (1.0 - rng.uniform(0.1, 0.3) * rows) * np.ones((height, width, 3))
  image = image + rng.normal(0.0, 0.01, size=image.shape)
  return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
