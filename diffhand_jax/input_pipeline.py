"""Input pipeline: TFDS examples → model-ready batches, deterministic per (seed, step) and per process.

The batch for global step s is a pure function of (seed, s): an epoch's order is a permutation drawn
from (seed, epoch), and step s takes the slice [s·B, (s+1)·B) of the concatenated epochs. Resuming at
step s therefore needs nothing but s, and each JAX process takes its own contiguous part of the global
batch (process p of P gets rows [p·B/P, (p+1)·B/P)).

This module holds whole splits in host memory, which suits the synthetic dataset and small subsets.

Model-space targets (DESIGN §2): x = (V − wrist)/vertex_scale, joints likewise; 2D joints in normalised
crop coordinates u = 2x/W − 1, v = 2y/H − 1 (``losses.project_weak_perspective``'s convention).
Images are normalised with the ImageNet mean and standard deviation, as timm's DeiT weights expect.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# TFDS builders that live in this repository's datasets/ folder, by TFDS name.
BUILDER_MODULES = {
    'synthetic_hands': 'datasets.synthetic_hands.synthetic_hands_dataset_builder',
    'freihand': 'datasets.freihand.freihand_dataset_builder',
    'ho3d': 'datasets.ho3d.ho3d_dataset_builder',
    'dex_ycb': 'datasets.dex_ycb.dex_ycb_dataset_builder',
}
# Builders that can make their data without a manual download.
SELF_GENERATING = {'synthetic_hands'}

FEATURES = ('image', 'K', 'joints_3d', 'vertices_3d', 'has_3d', 'hand_side', 'bbox')


def default_data_dir(data_dir: str | None) -> str:
  """The TFDS data directory: the config's, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  if data_dir:
    return os.path.expanduser(data_dir)
  return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def get_builder(dataset_config: Mapping[str, Any], *, prepare: bool = True):
  """The TFDS builder for ``dataset_config`` (keys ``name``, ``data_dir``, optional ``config_name``).

  Builds the data first when it is missing and the dataset can make itself (the synthetic one);
  otherwise tells the user how to prepare it.
  """
  import tensorflow_datasets as tfds  # imported lazily: TensorFlow is slow to import

  name = dataset_config['name']
  if name in BUILDER_MODULES:
    importlib.import_module(BUILDER_MODULES[name])  # registers the builder with TFDS
  full_name = name
  config_name = dataset_config.get('config_name') or ''
  if config_name:
    full_name = f'{name}/{config_name}'
  data_dir = default_data_dir(dataset_config.get('data_dir'))
  builder = tfds.builder(full_name, data_dir=data_dir)
  if not builder.is_prepared():
    if not prepare:
      raise FileNotFoundError(f'dataset {full_name} is not prepared in {data_dir}')
    if name not in SELF_GENERATING:
      module = importlib.import_module(BUILDER_MODULES[name]) if name in BUILDER_MODULES else None
      instructions = getattr(module, 'MANUAL_DOWNLOAD_INSTRUCTIONS', '')
      raise FileNotFoundError(
          f'dataset {full_name} is not prepared in {data_dir}. Download it by hand and run\n'
          f'  tfds build datasets/{name} --manual_dir=<where you put the files> --data_dir={data_dir}\n'
          + instructions)
    print(f'building {full_name} into {data_dir} (first run only)', flush=True)
    builder.download_and_prepare()
  return builder


def load_split(dataset_config: Mapping[str, Any], split: str,
               max_examples: int | None = None) -> dict[str, np.ndarray]:
  """Reads a whole split into numpy arrays (N, ...), keeping the features the pipeline needs."""
  import tensorflow_datasets as tfds

  builder = get_builder(dataset_config)
  if split not in builder.info.splits:
    raise ValueError(f'dataset {builder.info.full_name} has no split {split!r}; '
                     f'it has {sorted(builder.info.splits.keys())}')
  if max_examples:
    split = f'{split}[:{int(max_examples)}]'
  dataset = builder.as_dataset(split=split, batch_size=-1)
  arrays = tfds.as_numpy(dataset)
  out = {}
  for key in FEATURES:
    if key not in arrays:
      raise KeyError(f'dataset {builder.info.full_name} lacks the feature {key!r} (DESIGN §7)')
    value = arrays[key]
    if key == 'hand_side' and value.dtype.kind in 'SO':
      value = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in value])
    out[key] = value
  return out


# --------------------------------------------------------------------------------------------------
# Per-example conventions
# --------------------------------------------------------------------------------------------------

def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
  """Pinhole projection of camera-frame points (B, P, 3) with K (B, 3, 3) → pixels (B, P, 2)."""
  homogeneous = np.einsum('bij,bpj->bpi', K, points)
  return homogeneous[..., :2] / homogeneous[..., 2:3]


def mirror_left_hands(images: np.ndarray, K: np.ndarray, joints: np.ndarray, vertices: np.ndarray,
                      is_left: np.ndarray):
  """Mirrors left hands into right hands (DESIGN §2): flip the image, negate x, and move the principal
  point so that projection commutes with the flip (c_x' = W − 1 − c_x, pixel centres at integers).

  Args: images (B, H, W, 3); K (B, 3, 3); joints (B, 21, 3); vertices (B, 778, 3); is_left bool (B,).
  Returns the four arrays with the left rows mirrored (new arrays; inputs untouched).
  """
  images, K, joints, vertices = (np.array(a, copy=True) for a in (images, K, joints, vertices))
  if not np.any(is_left):
    return images, K, joints, vertices
  width = images.shape[2]
  images[is_left] = images[is_left][:, :, ::-1]
  joints[is_left, :, 0] *= -1
  vertices[is_left, :, 0] *= -1
  K[is_left, 0, 2] = width - 1 - K[is_left, 0, 2]
  # A negated x with an unchanged f_x keeps K a proper intrinsic matrix (skew stays 0).
  return images, K, joints, vertices


def resize_frames(images: np.ndarray, K: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Resizes whole frames (B, H, W, 3) uint8 to (B, size, size, 3) and adjusts K (B, 3, 3) to match
  (pixel centres at integers: x' = (x + 0.5)·s − 0.5)."""
  height, width = images.shape[1:3]
  if (height, width) == (size, size):
    return images, K
  from PIL import Image
  resized = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                      for im in images])
  scale_x, scale_y = size / width, size / height
  K = np.array(K, copy=True)
  K[:, 0, :] *= scale_x
  K[:, 1, :] *= scale_y
  K[:, 0, 2] += 0.5 * scale_x - 0.5
  K[:, 1, 2] += 0.5 * scale_y - 0.5
  return resized, K


def normalise_images(images_uint8: np.ndarray) -> np.ndarray:
  """uint8 (B, H, W, 3) → float32, ImageNet-normalised."""
  return (images_uint8.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def crop_around_hands(images: np.ndarray, K: np.ndarray, joints: np.ndarray, vertices: np.ndarray,
                      bbox: np.ndarray, *, image_size: int, margin: float,
                      rngs: Sequence[np.random.Generator] | None = None,
                      augment: Mapping[str, Any] | None = None):
  """Crops a square box around each hand (its bbox widened by ``margin``) and resizes it to
  ``image_size``, with optional scale / rotation / shift jitter drawn from ``rngs`` (one per example).

  A rotation of the crop is a rotation of the camera about its optical axis, so the 3D targets are
  rotated with it and image, K, 2D and 3D stay consistent (``augment.crop_and_resize``).

  Args: images (B, H, W, 3) uint8; K (B, 3, 3); joints (B, 21, 3); vertices (B, N, 3); bbox (B, 4).
  Returns (images (B, S, S, 3), K, joints, vertices), new arrays.
  """
  from diffhand_jax import augment as augment_lib
  out_images, out_K, out_joints, out_vertices = [], [], [], []
  for i in range(len(images)):
    box = augment_lib.box_from_bbox(bbox[i], margin)
    params = {'scale': 1.0, 'rotation': 0.0, 'translation': (0.0, 0.0)}
    if augment is not None and rngs is not None:
      params = augment_lib.sample_params(rngs[i], **augment)
    image, new_K, _ = augment_lib.crop_and_resize(images[i], K[i], box, image_size, **params)
    out_images.append(image)
    out_K.append(new_K)
    out_joints.append(augment_lib.rotate_points(joints[i], params['rotation']))
    out_vertices.append(augment_lib.rotate_points(vertices[i], params['rotation']))
  return (np.stack(out_images), np.stack(out_K).astype(np.float32),
          np.stack(out_joints).astype(np.float32), np.stack(out_vertices).astype(np.float32))


def _mirror_boxes(bbox: np.ndarray, width: int, is_left: np.ndarray) -> np.ndarray:
  bbox = np.array(bbox, np.float32, copy=True)
  flipped = np.stack([width - 1 - bbox[:, 2], bbox[:, 1], width - 1 - bbox[:, 0], bbox[:, 3]], -1)
  bbox[is_left] = flipped[is_left]
  return bbox


def prepare_batch(raw: Mapping[str, np.ndarray], *, vertex_scale: float,
                  image_size: int | None = None, crop_margin: float | None = None,
                  rngs: Sequence[np.random.Generator] | None = None,
                  augment: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """Turns raw examples (a dict of (B, ...) arrays in the common schema) into model inputs.

  Left hands are mirrored first. Then, with ``crop_margin`` set, a square crop around each ``bbox``
  widened by that margin is resized to ``image_size``; with ``crop_margin=None`` the frame is already a
  crop (FreiHAND, synthetic) and is resized whole. ``augment`` (keys of ``augment.sample_params``) jitters
  the crop's scale, rotation and position with ``rngs`` (one generator per example).

  Returns:
    image float32 (B, H, W, 3); vertices, joints float32 (B, 778, 3), (B, 21, 3) in model space;
    joints_2d float32 (B, 21, 2) in normalised crop coordinates; has_3d float32 (B,);
    wrist float32 (B, 3) metres (camera frame, after mirroring); K float32 (B, 3, 3); is_left bool (B,).
  """
  is_left = np.asarray(raw['hand_side']) == 'left'
  images, K, joints, vertices = mirror_left_hands(
      raw['image'], raw['K'].astype(np.float32), raw['joints_3d'].astype(np.float32),
      raw['vertices_3d'].astype(np.float32), is_left)
  if crop_margin is not None or augment is not None:
    if image_size is None:
      raise ValueError('prepare_batch: cropping needs image_size')
    if crop_margin is None:  # the frame is the crop; jitter it as a whole
      height, width = images.shape[1:3]
      bbox = np.tile(np.array([[-0.5, -0.5, width - 0.5, height - 0.5]], np.float32), (len(images), 1))
      margin = 0.0
    else:
      bbox = _mirror_boxes(raw['bbox'], images.shape[2], is_left)
      margin = crop_margin
    images, K, joints, vertices = crop_around_hands(images, K, joints, vertices, bbox,
                                                    image_size=image_size, margin=margin, rngs=rngs,
                                                    augment=augment)
  elif image_size is not None:
    images, K = resize_frames(images, K, image_size)
  height, width = images.shape[1:3]
  pixels = project(joints, K)
  joints_2d = np.stack([2.0 * pixels[..., 0] / width - 1.0, 2.0 * pixels[..., 1] / height - 1.0], -1)
  wrist = joints[:, :1]
  return {
      'image': normalise_images(images),
      'vertices': ((vertices - wrist) / vertex_scale).astype(np.float32),
      'joints': ((joints - wrist) / vertex_scale).astype(np.float32),
      'joints_2d': joints_2d.astype(np.float32),
      'has_3d': np.asarray(raw['has_3d'], np.float32),
      'wrist': wrist[:, 0].astype(np.float32),
      'K': K,
      'is_left': is_left,
  }


# --------------------------------------------------------------------------------------------------
# Deterministic, resumable batching
# --------------------------------------------------------------------------------------------------

def global_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Example indices of global step ``step``: (batch_size,) int64, a pure function of its arguments."""
  if num_examples <= 0:
    raise ValueError('cannot batch an empty split')
  first = step * batch_size
  positions = np.arange(first, first + batch_size)
  epochs = positions // num_examples
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    order = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
    rows = epochs == epoch
    out[rows] = order[positions[rows] % num_examples]
  return out


def colour_jitter(images_uint8: np.ndarray, rngs: Sequence[np.random.Generator],
                  strength: float) -> np.ndarray:
  """Random brightness, contrast and per-channel gain, (B, H, W, 3) uint8 → uint8; example i draws
  from rngs[i]."""
  if strength <= 0:
    return images_uint8
  draws = np.array([rng.uniform(-1.0, 1.0, 5) for rng in rngs])  # (B, 5)
  x = images_uint8.astype(np.float32)
  brightness = (40.0 * strength * draws[:, 0])[:, None, None, None]
  contrast = (1.0 + 0.3 * strength * draws[:, 1])[:, None, None, None]
  gain = (1.0 + 0.1 * strength * draws[:, 2:5])[:, None, None, :]
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  x = ((x - mean) * contrast + mean + brightness) * gain
  return np.clip(x, 0, 255).astype(np.uint8)


def train_batches(arrays: Mapping[str, np.ndarray], *, batch_size: int, seed: int, start_step: int,
                  vertex_scale: float, image_size: int | None = None, colour_strength: float = 0.0,
                  crop_margin: float | None = None, augment: Mapping[str, Any] | None = None,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's part of the global batch for steps start_step, start_step + 1, ...

  ``batch_size`` is the global batch; it must divide evenly among processes.
  """
  if batch_size % process_count:
    raise ValueError(f'global batch_size={batch_size} does not split over {process_count} processes')
  local = batch_size // process_count
  num_examples = len(arrays['image'])
  step = start_step
  while True:
    indices = global_indices(num_examples, batch_size, seed, step)
    positions = range(process_index * local, (process_index + 1) * local)
    indices = indices[process_index * local:(process_index + 1) * local]
    raw = {key: value[indices] for key, value in arrays.items()}
    # One generator per row of the global batch: augmentation does not depend on how it is split.
    rngs = [np.random.default_rng([seed, step, 1, position]) for position in positions]
    raw['image'] = colour_jitter(raw['image'], rngs, colour_strength)
    yield prepare_batch(raw, vertex_scale=vertex_scale, image_size=image_size, crop_margin=crop_margin,
                        rngs=rngs, augment=augment)
    step += 1


def eval_batches(arrays: Mapping[str, np.ndarray], *, batch_size: int, vertex_scale: float,
                 image_size: int | None = None, crop_margin: float | None = None) -> Iterator[tuple[dict[str, np.ndarray], int]]:
  """Yields (batch, num_valid) over a whole split in order; the last batch is padded by repetition so
  every batch has the same shape (one compilation), and ``num_valid`` says how many rows are real."""
  num_examples = len(arrays['image'])
  for start in range(0, num_examples, batch_size):
    indices = np.arange(start, start + batch_size)
    valid = int(min(batch_size, num_examples - start))
    indices = np.minimum(indices, num_examples - 1)
    yield prepare_batch({k: v[indices] for k, v in arrays.items()}, vertex_scale=vertex_scale,
                        image_size=image_size, crop_margin=crop_margin), valid
