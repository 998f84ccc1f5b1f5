"""Depth maps, the model's optional extra condition (docs/design.md §4, §7): one normalisation for a
dataset's own depth and for an estimator's, and the estimator's maps stored beside the TFDS data.

  normalise_metric(depth)       (B, H, W) metric depth (any unit, 0 = no reading) → (B, H, W) in [0, 1]
  normalise_inverse(inverse)    (B, H, W) relative inverse depth (MiDaS's output) → (B, H, W) in [0, 1]
  StoredDepth(directory)        the estimator's maps of one split, read by example index
  attach(arrays, ...)           a split (in-memory dict or `splits.SplitSource`) with a 'depth' column

Both normalisations give the same thing for the same scene: inverse depth (1 / z), scaled per image to
[0, 1] over the pixels that have a reading (nearest 1, farthest 0), 0 where there is none. MiDaS predicts
inverse depth up to an unknown scale and shift; the per-image min-max removes both, and removes the
unit of a metric map as well, so neither the source nor the dataset's unit matters downstream.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Mapping, Sequence

import numpy as np

from diffhand_jax.data import splits

# Normalised maps are stored as uint16: value / STORED_LEVELS (a step of 1.5e-5, far below what a
# 16x16 patch conv resolves).
STORED_LEVELS = 65535
DEPTH_SOURCES = ('dataset', 'estimator')
META_FILE = 'meta.json'


def _min_max(values, valid, xp):
  """(B, H, W) values scaled per image to [0, 1] over ``valid`` pixels; 0 elsewhere and on images
  whose valid values are all equal (nothing to tell). float32, the same arithmetic for numpy and jnp.
  """
  values = values.astype(xp.float32)
  low = xp.min(xp.where(valid, values, xp.inf), axis=(-2, -1), keepdims=True)
  high = xp.max(xp.where(valid, values, -xp.inf), axis=(-2, -1), keepdims=True)
  span = high - low
  spread = valid & (span > 0)
  scaled = (values - xp.where(spread, low, 0.0)) / xp.where(spread, span, 1.0)
  return xp.where(spread, scaled, 0.0).astype(xp.float32)


def normalise_metric(depth, xp=np):
  """Metric depth (B, H, W) (metres, millimetres or a dataset's raw units: only ratios matter; 0 or
  less = no reading) → float32 (B, H, W): inverse depth min-max scaled per image, 0 = no reading."""
  depth = xp.asarray(depth).astype(xp.float32)
  valid = depth > 0
  inverse = xp.where(valid, 1.0 / xp.where(valid, depth, 1.0), 0.0)
  return _min_max(inverse, valid, xp)


def normalise_inverse(inverse, xp=np):
  """Relative inverse depth (B, H, W) (an estimator's: larger is nearer) → float32 (B, H, W), min-max
  scaled per image over every pixel. Use ``xp=jax.numpy`` inside a compiled function."""
  inverse = xp.asarray(inverse)
  return _min_max(inverse, xp.ones(inverse.shape, bool), xp)


def normalise(depth, source: str, xp=np):
  """The normalised map of a raw map from ``source`` ('dataset': metric; 'estimator': already
  normalised when stored, see `StoredDepth`)."""
  if source == 'dataset':
    return normalise_metric(depth, xp)
  if source == 'estimator':
    return xp.asarray(depth).astype(xp.float32)
  raise ValueError(f'config.depth.source must be one of {DEPTH_SOURCES}, got {source!r}')


# --------------------------------------------------------------------------------------------------
# Stored estimator maps
# --------------------------------------------------------------------------------------------------


def depth_directory(data_dir: str, split: str) -> str:
  """Where the estimator's maps of ``split`` live: beside the prepared TFDS data of the dataset
  version (``builder.data_dir``), in depth/<split>/."""
  return os.path.join(data_dir, 'depth', split)


def shard_name(start: int, stop: int) -> str:
  return f'rows_{start:08d}_{stop:08d}.npy'


def shard_ranges(num_examples: int, shard_size: int) -> list[tuple[int, int]]:
  """The [start, stop) example ranges of the shards of a split of ``num_examples``."""
  return [(s, min(s + shard_size, num_examples)) for s in range(0, num_examples, shard_size)]


def to_stored(normalised: np.ndarray) -> np.ndarray:
  """Normalised maps in [0, 1] → uint16 levels (what a shard holds)."""
  return np.rint(np.clip(normalised, 0.0, 1.0) * STORED_LEVELS).astype(np.uint16)


def from_stored(levels: np.ndarray) -> np.ndarray:
  return (np.asarray(levels, np.float32) / np.float32(STORED_LEVELS)).astype(np.float32)


def read_meta(directory: str) -> dict[str, Any] | None:
  path = os.path.join(directory, META_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as handle:
    try:
      return json.load(handle)
    except json.JSONDecodeError as error:
      raise ValueError(f'{path}: not valid JSON ({error}); delete it and rerun estimate_depth')


def write_meta(directory: str, meta: Mapping[str, Any]) -> None:
  os.makedirs(directory, exist_ok=True)
  temporary = os.path.join(directory, META_FILE + '.tmp')
  with open(temporary, 'w') as handle:
    json.dump(dict(meta), handle, indent=1, sort_keys=True)
  os.replace(temporary, os.path.join(directory, META_FILE))


def missing_shards(directory: str, num_examples: int, shard_size: int) -> list[tuple[int, int]]:
  """The shard ranges not yet written in ``directory`` (a shard is written whole, then renamed)."""
  return [
      (start, stop)
      for start, stop in shard_ranges(num_examples, shard_size)
      if not os.path.isfile(os.path.join(directory, shard_name(start, stop)))
  ]


def write_shard(directory: str, start: int, stop: int, normalised: np.ndarray) -> str:
  """Writes rows [start, stop) (normalised maps (stop − start, H, W)) atomically; returns the path."""
  if normalised.shape[0] != stop - start:
    raise ValueError(f'shard [{start}, {stop}) got {normalised.shape[0]} maps')
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, shard_name(start, stop))
  temporary = path + '.tmp.npy'
  np.save(temporary, to_stored(normalised))
  os.replace(temporary, path)
  return path


class StoredDepth:
  """The estimator's normalised maps of one split, stored by `estimate_depth` in ``directory``:
  meta.json (estimator, num_examples, shard_size, height, width) and uint16 shards
  rows_<start>_<stop>.npy of (stop − start, H, W), example i in shard i // shard_size.

  ``read(indices)`` gives float32 (B, H, W) in [0, 1]. Shards are memory-mapped on first use; a pickled
  copy (an input worker's) maps them again."""

  def __init__(self, directory: str, num_examples: int | None = None):
    meta = read_meta(directory)
    command = 'python -m diffhand_jax.estimate_depth --config=<the run config>'
    if meta is None:
      raise FileNotFoundError(
          f'{directory}: no estimated depth here (no {META_FILE}); run `{command}` first, or set '
          "config.depth.source='dataset' for a dataset that ships depth"
      )
    self.directory = directory
    self.meta = meta
    self.num_examples = int(meta['num_examples'])
    self.shard_size = int(meta['shard_size'])
    if num_examples is not None and num_examples > self.num_examples:
      raise ValueError(
          f'{directory}: holds depth for {self.num_examples} examples, the split has {num_examples}'
      )
    missing = missing_shards(directory, self.num_examples, self.shard_size)
    if missing:
      start, stop = missing[0]
      raise FileNotFoundError(
          f'{os.path.join(directory, shard_name(start, stop))}: missing ({len(missing)} of '
          f'{len(shard_ranges(self.num_examples, self.shard_size))} shards not written: estimation '
          f'was interrupted); rerun `{command}` to finish it'
      )
    self._maps: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def __getstate__(self) -> dict[str, Any]:
    state = self.__dict__.copy()
    state['_maps'] = {}
    del state['_lock']
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _shard(self, number: int) -> np.ndarray:
    with self._lock:
      if number not in self._maps:
        start = number * self.shard_size
        stop = min(start + self.shard_size, self.num_examples)
        path = os.path.join(self.directory, shard_name(start, stop))
        try:
          self._maps[number] = np.load(path, mmap_mode='r')
        except (OSError, ValueError) as error:
          raise ValueError(f'{path}: unreadable ({error}); delete it and rerun estimate_depth')
      return self._maps[number]

  def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Maps of examples ``indices`` (B,): float32 (B, H, W) in [0, 1]."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    outside = indices[(indices < 0) | (indices >= self.num_examples)]
    if outside.size:
      raise IndexError(f'{self.directory}: example {int(outside[0])} has no depth map')
    rows = [self._shard(int(i) // self.shard_size)[int(i) % self.shard_size] for i in indices]
    return from_stored(np.stack(rows))


def attach(arrays, maps: StoredDepth):
  """``arrays`` (an in-memory dict or a `splits.SplitSource`) with a 'depth' column read from
  ``maps``: the dict gains the whole column, the source reads the rows a batch needs."""
  if isinstance(arrays, dict):
    count = len(arrays['image'])
    return {**arrays, 'depth': maps.read(np.arange(count))}
  return arrays.with_column('depth', maps)


def stored_directory(dataset_config: Mapping[str, Any], split: str, *, prepare: bool = True) -> str:
  """`depth_directory` of ``split`` of the prepared dataset of ``dataset_config`` (``prepare``: as
  `splits.get_builder`'s)."""
  return depth_directory(splits.get_builder(dataset_config, prepare=prepare).data_dir, split)


def open_split(
    dataset_config: Mapping[str, Any],
    split: str,
    max_examples: int | None = None,
    source: str | None = None,
    estimator: str | None = None,
):
  """`splits.open_split` with a 'depth' column for a depth run (``source`` = config.depth.source):
  'dataset' keeps the dataset's own 'depth' feature, 'estimator' attaches the stored maps
  (`StoredDepth`), which must have been estimated by ``estimator`` (config.depth.estimator_init) when
  given; None opens the split as an RGB run does."""
  if source is None:
    return splits.open_split(dataset_config, split, max_examples)
  if source == 'dataset':
    builder = splits.get_builder(dataset_config)
    if 'depth' not in builder.info.features:
      raise ValueError(
          f"dataset {builder.info.full_name} ships no 'depth' feature; prepare its 'rgbd' config "
          "(HO-3D, DexYCB), or set config.depth.source='estimator' and run "
          'python -m diffhand_jax.estimate_depth'
      )
    return splits.open_split(
        dataset_config, split, max_examples, features=splits.FEATURES + ('depth',)
    )
  if source != 'estimator':
    raise ValueError(f'config.depth.source must be one of {DEPTH_SOURCES}, got {source!r}')
  arrays = splits.open_split(dataset_config, split, max_examples)
  maps = StoredDepth(stored_directory(dataset_config, split), splits.num_rows(arrays))
  if estimator is not None and maps.meta.get('estimator') != estimator:
    raise ValueError(
        f"{maps.directory}: its maps are {maps.meta.get('estimator')!r}'s, the run names "
        f'config.depth.estimator_init = {estimator!r} (the one inference will run): estimate again '
        'with it (move the folder aside first)'
    )
  return attach(arrays, maps)
