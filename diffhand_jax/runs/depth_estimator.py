"""The depth estimator a depth-conditioned run names (config.depth, docs/design.md §4, §7, §8): loaded once
on the host, applied to model inputs (`estimate`, traceable: inference runs it inside the sampler's
compiled call, `inference/depth.py`), and over a whole prepared dataset once (`estimate_split`, behind
`python -m diffhand_jax.estimate_depth`).

  estimator = load_estimator(config.depth)       # Estimator
  depth = estimate(estimator, images)            # (B, H, W) in [0, 1]

`images` are the model's inputs: float32 (B, H, W, 3) normalised with the ImageNet mean and std
(`input_pipeline.normalise_images`). The estimator sees them back in [0, 255], resized to its input side
(config.depth.estimator_size), normalised its own way; its relative inverse depth is resized back to the
input's size and normalised per image (`data.depth.normalise_inverse`), as the stored maps are.

config.depth.estimator_init names the estimator: a Hub id (default 'Intel/dpt-large'), a local
directory or weights file (`midas.load`), or 'random:<seed>' for a small DPT with random weights (a
plumbing check, never a model to report).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax.data import depth as depth_lib, input_pipeline, splits
from diffhand_jax.models import midas

RANDOM_PREFIX = 'random:'
# The DPT of 'random:<seed>': Intel/dpt-large's layout shrunk (readout 'project', factors 4, 2, 1, 1/2).
RANDOM_DPT = {
    'hidden_size': 32,
    'num_hidden_layers': 4,
    'num_attention_heads': 2,
    'intermediate_size': 64,
    'patch_size': 16,
    'backbone_out_indices': [0, 1, 2, 3],
    'neck_hidden_sizes': [8, 16, 32, 32],
    'fusion_hidden_size': 16,
}


@dataclasses.dataclass(frozen=True)
class Estimator:
  """A loaded depth estimator: the DPT module, its params, its input side and the name it was loaded by
  (config.depth.estimator_init)."""

  module: Any
  params: Any
  size: int
  name: str


def estimator_problem(depth_config: Mapping[str, Any]) -> str | None:
  """Why config.depth.estimator_init cannot be read here (offline and not cached, a missing file),
  or None; reads nothing large."""
  init = depth_config.get('estimator_init')
  if init and str(init).startswith(RANDOM_PREFIX):
    return None if str(init)[len(RANDOM_PREFIX) :].isdigit() else f"{init!r}: use 'random:<seed>'"
  return midas.source_problem(init)


def load_estimator(depth_config: Mapping[str, Any]) -> Estimator:
  """The estimator config.depth names, read on the host once (see the module docstring)."""
  init = str(depth_config.get('estimator_init') or midas.DEFAULT_HUB_ID)
  size = int(depth_config.get('estimator_size') or 384)
  if init.startswith(RANDOM_PREFIX):
    problem = estimator_problem(depth_config)
    if problem:
      raise ValueError(f'config.depth.estimator_init = {problem}')
    config = dict(RANDOM_DPT, image_size=size)
    module, params = midas.init_random(config, jax.random.key(int(init[len(RANDOM_PREFIX) :])))
  else:
    module, params = midas.load(init)
  return Estimator(module=module, params=params, size=size, name=init)


def estimate(estimator: Estimator, images: jax.Array, params: Any = None) -> jax.Array:
  """Normalised depth (B, H, W) float32 in [0, 1] of ImageNet-normalised images (B, H, W, 3): the
  estimator run at its input side, its output resized back bilinearly and normalised per image.
  ``params``: the estimator's params (default ``estimator.params``; pass them as an argument of a
  jitted function so they are not baked into it as constants)."""
  params = estimator.params if params is None else params
  batch, height, width = images.shape[:3]
  pixels = midas.renormalize(images, input_pipeline.IMAGENET_MEAN, input_pipeline.IMAGENET_STD)
  size = estimator.size
  pixels = jax.image.resize(pixels, (batch, size, size, 3), 'bilinear', antialias=False)
  inverse = estimator.module.apply({'params': params}, pixels)
  inverse = jax.image.resize(inverse, (batch, height, width), 'bilinear', antialias=True)
  return depth_lib.normalise_inverse(inverse, jnp)


# --------------------------------------------------------------------------------------------------
# A whole prepared dataset, once (python -m diffhand_jax.estimate_depth)
# --------------------------------------------------------------------------------------------------


def _data_parallel(estimator: Estimator):
  """``fn(params, images) -> depth`` jitted with the batch split over this process's devices (each
  host estimates its own shards: no cross-host traffic)."""
  devices = np.array(jax.local_devices())
  mesh = jax.sharding.Mesh(devices, ('data',))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  fn = jax.jit(
      lambda params, images: estimate(estimator, images, params),
      in_shardings=(replicated, batch),
      out_shardings=batch,
  )
  return fn, len(devices)


def estimate_split(
    estimator: Estimator,
    dataset_config: Mapping[str, Any],
    split: str,
    *,
    batch_size: int,
    shard_size: int,
    process_index: int = 0,
    process_count: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
  """Estimates the depth of every frame of ``split`` and stores it where the input pipeline finds it
  (`data.depth.stored_directory`): shards of ``shard_size`` examples, each written whole (so a killed
  run resumes at the first missing shard), this process taking every process_count-th shard, its
  batches of ``batch_size`` per device split over its devices. Each frame is estimated whole, at the
  estimator's input side, and its map stored at the frame's size.

  Returns {'directory', 'num_examples', 'estimated' (examples estimated now), 'seconds'}."""
  arrays = splits.open_split(dataset_config, split, features=('image',))
  count = splits.num_rows(arrays)
  directory = depth_lib.stored_directory(dataset_config, split)
  meta = {'num_examples': count, 'shard_size': int(shard_size), 'estimator': estimator.name}
  meta['estimator_size'] = estimator.size
  saved = depth_lib.read_meta(directory)
  if saved is not None and {k: saved.get(k) for k in meta} != meta:
    raise ValueError(
        f'{directory} holds maps of other settings ({ {k: saved.get(k) for k in meta} }, now '
        f'{meta}); move it aside to estimate again'
    )
  if process_index == 0 and saved is None:
    depth_lib.write_meta(directory, meta)
  missing = depth_lib.missing_shards(directory, count, shard_size)
  mine = [shard for shard in missing if (shard[0] // shard_size) % process_count == process_index]
  fn, num_devices = _data_parallel(estimator)
  step = int(batch_size) * num_devices
  total, done, start_time = sum(stop - start for start, stop in mine), 0, time.time()
  for start, stop in mine:
    maps = []
    for first in range(start, stop, step):
      rows = np.minimum(np.arange(first, first + step), stop - 1)  # the last batch padded
      images = splits.gather_rows(arrays, rows)['image']
      out = fn(estimator.params, input_pipeline.normalise_images(images))
      maps.append(np.asarray(out)[: min(step, stop - first)])
      done += min(step, stop - first)
      if progress is not None:
        progress(done, total)
    depth_lib.write_shard(directory, start, stop, np.concatenate(maps))
  return {
      'directory': directory,
      'num_examples': count,
      'estimated': total,
      'seconds': time.time() - start_time,
  }
