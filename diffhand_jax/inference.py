"""Shared pieces of the inference commands (predict, submission, the hypotheses benchmark).

  * `apply_overrides(config, ['model.sampling_steps=4', ...])`: command-line `--config.key=value`.
  * `Sampler`: a trained model's batched sampler: (M, H, W, 3) normalised images → K hypotheses each,
    padded to one batch shape (one compilation), with optional TTA.
  * `root_from_weak_perspective`: a ground-truth-free wrist position in the camera frame from the
    predicted weak-perspective camera and the crop's intrinsics.
  * `crop_box`: a square crop around a hand box, resized to the model's input size.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffhand_jax import hypotheses, tta
from diffhand_jax.models import diffhand

# Model fields an inference command may change: they pick the sampler, not the network.
SAMPLER_FIELDS = ('sampling_steps', 'num_hypotheses', 'eta')


# ==================================================================================================
# Config overrides from the command line
# ==================================================================================================

def _parse_value(text: str, current: Any) -> Any:
  if isinstance(current, bool):
    lowered = text.strip().lower()
    if lowered in ('true', '1', 'yes'):
      return True
    if lowered in ('false', '0', 'no'):
      return False
    raise ValueError(f'expected true/false, got {text!r}')
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text  # a bare string such as a path
  if isinstance(current, str) and not isinstance(value, str):
    value = text
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str], *,
                    allow_model_changes: bool = False) -> ml_collections.ConfigDict:
  """A copy of `config` with 'dotted.key=value' overrides applied (values parsed as Python literals).

  Unless `allow_model_changes`, only the sampler fields of `config.model` (SAMPLER_FIELDS) may change:
  the network's shape is fixed by the checkpoint.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  for item in overrides:
    key, sep, text = item.partition('=')
    key = key.strip()
    if key.startswith('--'):
      key = key[2:]
    if key.startswith('config.'):
      key = key[len('config.'):]
    if not sep or not key:
      raise ValueError(f'config override {item!r} must look like --config.some.key=value')
    parts = key.split('.')
    if parts[0] == 'model' and not allow_model_changes and parts[-1] not in SAMPLER_FIELDS:
      raise ValueError(f'--config.{key}: the network is fixed by the checkpoint; of config.model only '
                       f'{", ".join(SAMPLER_FIELDS)} can change at inference')
    node = config
    for part in parts[:-1]:
      if part not in node:
        raise ValueError(f'--config.{key}: the config has no field {part!r}')
      node = node[part]
    if parts[-1] not in node:
      raise ValueError(f'--config.{key}: the config has no field {parts[-1]!r}')
    try:
      value = _parse_value(text, node[parts[-1]])
      node[parts[-1]] = value
    except (TypeError, ValueError) as error:
      raise ValueError(f'--config.{key}={text!r}: {error}') from None
  return config


# ==================================================================================================
# Batched sampling of a trained model
# ==================================================================================================

@dataclasses.dataclass
class Sampler:
  """A trained DiffHand's sampler over arrays of any length.

  model, params, schedule: from `train.load_for_inference`. vertex_scale: metres per model unit.
  Outputs are root-relative metres in the frame the model saw (mirrored for left hands).
  """
  model: diffhand.DiffHand
  params: Any
  schedule: Any
  vertex_scale: float
  num_steps: int = 10
  num_hypotheses: int = 1
  eta: float = 0.0
  batch_size: int = 16

  def __post_init__(self):
    if self.num_hypotheses < 1 or self.num_steps < 1 or self.batch_size < 1:
      raise ValueError('inference.Sampler: num_hypotheses, num_steps and batch_size must be >= 1')
    self._fn = diffhand.make_reconstruct_fn(self.model, num_steps=int(self.num_steps),
                                            num_hypotheses=int(self.num_hypotheses), eta=float(self.eta),
                                            schedule=self.schedule)

  def settings(self) -> dict[str, Any]:
    return {'steps': int(self.num_steps), 'eta': float(self.eta),
            'hypotheses': int(self.num_hypotheses), 'diffusion': bool(self.model.diffusion)}

  def sample(self, images: np.ndarray, key: jax.Array,
             progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """images float32 (M, H, W, 3), normalised → {'vertices': (M, K, N, 3) m, 'camera': (M, 3)}.

    Batch i uses the key fold_in(key, i); the last batch is padded by repeating its last image.
    """
    images = np.asarray(images, np.float32)
    count = len(images)
    if count == 0:
      raise ValueError('inference.Sampler.sample: no images')
    vertices, cameras = [], []
    for index, start in enumerate(range(0, count, self.batch_size)):
      rows = np.minimum(np.arange(start, start + self.batch_size), count - 1)
      valid = min(self.batch_size, count - start)
      out = self._fn(self.params, jnp.asarray(images[rows]), jax.random.fold_in(key, index))
      vertices.append(np.asarray(out['vertices'], np.float64)[:valid])
      cameras.append(np.asarray(out['camera'], np.float64)[:valid, 0])
      if progress is not None:
        progress(start + valid, count)
    return {'vertices': np.concatenate(vertices) * self.vertex_scale, 'camera': np.concatenate(cameras)}

  def predict(self, images: np.ndarray, key: jax.Array, *, method: str = 'mean',
              tta_config: tta.TTAConfig | None = None,
              progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Aggregated meshes, optionally with TTA.

    Returns {'vertices': (M, N, 3) m (the `method` aggregate, TTA-averaged when tta_config),
    'hypotheses': (M, K, N, 3) m of the un-augmented pass, 'vertex_std': (M, N) m from those
    hypotheses, 'camera': (M, 3) of the un-augmented pass}.
    """
    reference = self.sample(images, key, progress)
    mesh = hypotheses.aggregate(reference['vertices'], method)
    if tta_config is not None:
      def predict_fn(batch):
        if batch is images:  # the reference pass: already computed
          return mesh
        return hypotheses.aggregate(self.sample(batch, key)['vertices'], method)
      mesh = tta.tta_predict(predict_fn, images, tta_config)
    return {'vertices': mesh, 'hypotheses': reference['vertices'],
            'vertex_std': hypotheses.per_vertex_std(reference['vertices']),
            'camera': reference['camera']}


def joints_from_vertices(vertices: np.ndarray, joint_regressor: Any) -> np.ndarray:
  """J = W·V: vertices (..., N, 3), W (21, N) → (..., 21, 3)."""
  return np.einsum('jn,...nc->...jc', np.asarray(joint_regressor, np.float64),
                   np.asarray(vertices, np.float64))


# ==================================================================================================
# Root position and crops
# ==================================================================================================

def root_from_weak_perspective(camera: np.ndarray, K: np.ndarray, image_size: Sequence[int],
                               vertex_scale: float, min_scale: float = 1e-3) -> np.ndarray:
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
  depth = vertex_scale * (fx / width + fy / height) / scale  # mean of 2 f_x vs/(sW) and 2 f_y vs/(sH)
  pixel_x = (camera[:, 1] + 1.0) * width / 2.0
  pixel_y = (camera[:, 2] + 1.0) * height / 2.0
  return np.stack([(pixel_x - cx) * depth / fx, (pixel_y - cy) * depth / fy, depth], -1)


def square_box(box: Sequence[float] | None, image_size: Sequence[int], box_scale: float) -> np.ndarray:
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


def progress_printer(label: str, stream=None) -> Callable[[int, int], None]:
  """A one-line text progress bar: `label [#####.....] done/total`."""
  stream = stream or sys.stderr

  def report(done: int, total: int) -> None:
    filled = int(30 * done / max(total, 1))
    end = '\n' if done >= total else ''
    stream.write(f'\r{label} [{"#" * filled}{"." * (30 - filled)}] {done}/{total}{end}')
    stream.flush()
  return report
