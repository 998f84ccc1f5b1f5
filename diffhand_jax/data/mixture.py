"""Weighted mixtures of datasets: which source and which row each example of a training batch comes
from, and the batch made from them (docs/design.md §7, "Mixtures").

  sources = open_sources(config.dataset)                  # config.dataset.mixture, or the one dataset
  batches = train_batches_from_config(sources, config.dataset, batch_size=..., seed=..., ...)

A mixture is a list of (dataset, split, weight) entries (``config.dataset.mixture``); an empty list is
the one-entry mixture of ``config.dataset.name`` and its ``train_split``. Position p of the endless
training stream (step s, row r of the global batch: p = s·B + r) goes to source k and to that source's
j-th draw by Grain's weighted interleaving (``grain.MapDataset.mix``: a fixed pattern in which every
window holds the sources in proportion to their weights). The j-th draw of a source of n rows is row
``permutation(seed, epoch)[j mod n]``, epoch = j // n, as `input_pipeline.global_indices` draws a single
split; source 0 keeps exactly that stream, so a one-entry mixture gives exactly today's batches, and
source k > 0 draws from its own generator (seed, epoch, k).

Everything is therefore a pure function of (seed, step): batches do not depend on the input workers,
a resume at step s continues every source where it stopped, and JAX process p of P takes its rows
[p·B/P, (p+1)·B/P) of the global batch, its own share of every source's draws.

Each source keeps its own decoding (its builder's) and its own crop (``crop_margin``: a box around the
hand for full frames, the frame itself for datasets of crops) and is resized to the model's one input
size, and then every example is in the conventions of docs/design.md §2 (right hands, metres, the
21-order, root-relative). A source that lacks a 3D field (no ``vertices_3d`` or no ``joints_3d``) gives
rows with has_3d false, which masks their loss terms (training/losses.py), instead of failing.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from diffhand_jax.data import depth as depth_lib, input_pipeline, splits

# Each dataset's crop when it is a source of a mixture: a square box around `bbox` widened by this
# margin per side (full frames), or None where the frame already is a crop (configs/*.py set the same).
DEFAULT_CROP_MARGIN: dict[str, float | None] = {
    'freihand': None,
    'synthetic_hands': None,
    'ho3d': 0.25,
    'dex_ycb': 0.25,
}
# Features a source must have: without them there is no input image.
REQUIRED_FEATURES = ('image', 'K')
_ENDLESS = 2**62  # the length of a source's draw sequence (grain datasets have one)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One entry of a mixture: ``dataset`` ('name' or 'name/config'), its ``split``, its ``weight``
  and its crop (``crop_margin``, None = the frame is the crop)."""

  dataset: str
  split: str
  weight: float
  crop_margin: float | None

  @property
  def label(self) -> str:
    """'dataset:split', the source's name in messages, logs and results.json."""
    return f'{self.dataset}:{self.split}'


@dataclasses.dataclass(frozen=True)
class Source:
  """An opened entry: ``arrays`` is the in-memory dict or the streaming `splits.SplitSource`;
  ``features``: the common-schema features it has (the others are filled in, see ``complete_rows``).
  """

  entry: Entry
  arrays: Any
  features: tuple[str, ...]

  @property
  def label(self) -> str:
    return self.entry.label


def _dataset_name(dataset_config: Mapping[str, Any]) -> str:
  config_name = dataset_config.get('config_name') or ''
  name = dataset_config['name']
  return f'{name}/{config_name}' if config_name and config_name != 'default' else name


def parse_entries(value: Any, where: str = 'config.dataset.mixture') -> list[Entry]:
  """The entries of a mixture given as (dataset, split, weight[, crop_margin]) tuples; a ValueError
  naming ``where`` and the bad entry otherwise. The crop defaults to the dataset's
  (`DEFAULT_CROP_MARGIN`)."""
  entries = []
  for item in value or ():
    if isinstance(item, str) or not 3 <= len(item) <= 4:
      raise ValueError(
          f'{where}: entry {item!r} must be (dataset, split, weight) or (dataset, split, weight, '
          'crop_margin)'
      )
    dataset, split, weight = item[0], item[1], item[2]
    name = str(dataset).split('/')[0]
    if not isinstance(dataset, str) or name not in splits.BUILDER_MODULES:
      raise ValueError(
          f'{where}: entry {item!r} names the dataset {dataset!r}; known: '
          f'{sorted(splits.BUILDER_MODULES)} (optionally "name/config")'
      )
    if not isinstance(split, str) or not split:
      raise ValueError(f'{where}: entry {item!r} needs a split name such as "train"')
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
      raise ValueError(f'{where}: entry {item!r} needs a weight > 0')
    if not np.isfinite(weight):
      raise ValueError(f'{where}: entry {item!r} needs a finite weight')
    margin = item[3] if len(item) == 4 else DEFAULT_CROP_MARGIN.get(name)
    if margin is not None and (isinstance(margin, bool) or not margin >= 0):
      raise ValueError(f'{where}: entry {item!r} needs a crop margin >= 0, or None')
    entries.append(Entry(dataset, split, float(weight), None if margin is None else float(margin)))
  return entries


def mixture_entries(dataset_config: Mapping[str, Any]) -> list[Entry]:
  """``dataset_config.mixture``'s entries, or when it is empty the one-entry mixture of the run's
  dataset: (name[/config_name], train_split, 1, crop_margin), exactly what a run read before mixtures.
  """
  entries = parse_entries(dataset_config.get('mixture'))
  if entries:
    return entries
  return [
      Entry(
          _dataset_name(dataset_config),
          dataset_config['train_split'],
          1.0,
          dataset_config.get('crop_margin'),
      )
  ]


def eval_entries(dataset_config: Mapping[str, Any], eval_config: Mapping[str, Any]) -> list[Entry]:
  """The evaluation sets of a run: ``eval_config.datasets``' (dataset, split[, crop_margin]) entries,
  or when it is empty the run's own dataset and ``eval_split`` with its crop_margin (weights are 1).
  """
  given = eval_config.get('datasets') or ()
  for item in given:
    if isinstance(item, str) or not 2 <= len(item) <= 3:
      raise ValueError(
          f'config.eval.datasets: entry {item!r} must be (dataset, split) or (dataset, split, '
          'crop_margin)'
      )
  entries = parse_entries(
      [(item[0], item[1], 1.0) + tuple(item[2:]) for item in given], 'config.eval.datasets'
  )
  labels = [entry.label for entry in entries]
  repeated = sorted({label for label in labels if labels.count(label) > 1})
  if repeated:
    raise ValueError(f'config.eval.datasets lists {repeated} more than once')
  if entries:
    return entries
  return [
      Entry(
          _dataset_name(dataset_config),
          dataset_config['eval_split'],
          1.0,
          dataset_config.get('crop_margin'),
      )
  ]


def source_config(dataset_config: Mapping[str, Any], dataset: str):
  """A copy of ``dataset_config`` (a ConfigDict or dict) that names ``dataset`` ('name' or
  'name/config'): its data_dir, in_memory, prefetch and threads stay the run's."""
  name, _, config_name = dataset.partition('/')
  out = copy.deepcopy(dataset_config)
  if dataset == _dataset_name(dataset_config):
    return out  # the run's own dataset, as configured
  out['name'] = name
  out['config_name'] = config_name or 'default'
  return out


def available_features(dataset_config: Mapping[str, Any], label: str) -> tuple[str, ...]:
  """The common-schema features (`splits.FEATURES`) that the dataset of ``dataset_config`` has; a
  ValueError naming ``label`` when it lacks a required one."""
  builder = splits.get_builder(dataset_config)
  features = tuple(key for key in splits.FEATURES if key in builder.info.features)
  missing = [key for key in REQUIRED_FEATURES if key not in features]
  if missing:
    raise ValueError(
        f'{label}: dataset {builder.info.full_name} lacks the feature(s) {missing}, which every '
        'source of a mixture needs (docs/design.md §7)'
    )
  return features


def open_entry(
    dataset_config: Mapping[str, Any],
    entry: Entry,
    max_examples: int | None = None,
    *,
    depth_source: str | None = None,
    estimator: str | None = None,
) -> Source:
  """``entry``'s split, in memory or streamed as ``dataset_config`` says (`splits.open_split`); for a
  depth run (``depth_source`` = config.depth.source) with its depth maps (`depth.open_split`)."""
  config = source_config(dataset_config, entry.dataset)
  if depth_source is None:
    features = available_features(config, entry.label)
    arrays = splits.open_split(config, entry.split, max_examples, features=features)
  else:
    features = tuple(splits.FEATURES) + ('depth',)
    arrays = depth_lib.open_split(config, entry.split, max_examples, depth_source, estimator)
  if splits.num_rows(arrays) == 0:
    raise ValueError(f'{entry.label}: the split is empty')
  return Source(entry, arrays, features)


def open_sources(
    dataset_config: Mapping[str, Any],
    max_examples: int | None = None,
    *,
    depth_source: str | None = None,
    estimator: str | None = None,
) -> list[Source]:
  """The training sources of a run's ``config.dataset`` (`mixture_entries`), each at most
  ``max_examples`` rows. A depth run (``depth_source``) trains on one dataset: a mixture of several
  with depth is refused."""
  entries = mixture_entries(dataset_config)
  if depth_source is not None and len(entries) > 1:
    raise ValueError(DEPTH_MIXTURE_PROBLEM)
  return [
      open_entry(
          dataset_config, entry, max_examples, depth_source=depth_source, estimator=estimator
      )
      for entry in entries
  ]


# The two-stage depth schedule (paper Table 6) fine-tunes on one dataset; the mixture's batch
# (`train_batch`) carries no depth maps.
DEPTH_MIXTURE_PROBLEM = (
    'config.dataset.mixture has several sources and config.model.use_depth is on: a depth run '
    'trains on one dataset (set config.dataset.mixture=() or turn depth off)'
)


# --------------------------------------------------------------------------------------------------
# Which source and row each position draws
# --------------------------------------------------------------------------------------------------


def _tag(source: int, draw: int) -> tuple[int, int]:
  return source, draw


@functools.lru_cache(maxsize=16)
def _selection(weights: tuple[float, ...]) -> grain.MapDataset:
  """position → (source, its draw number), Grain's weighted interleaving of endless sources."""
  streams = [
      grain.MapDataset.range(_ENDLESS).map(functools.partial(_tag, k)) for k in range(len(weights))
  ]
  return grain.MapDataset.mix(streams, list(weights))


def source_draws(weights: Sequence[float], positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(source (B,), draw number within that source (B,)) of stream ``positions`` (B,), int64."""
  selection = _selection(tuple(float(w) for w in weights))
  pairs = [selection[int(p)] for p in np.asarray(positions).reshape(-1)]
  which = np.array([k for k, _ in pairs], np.int64)
  draws = np.array([j for _, j in pairs], np.int64)
  return which, draws


def draw_rows(num_rows: int, seed: int, source: int, draws: np.ndarray) -> np.ndarray:
  """Rows (B,) of a source's draws (B,): epoch e = draw // num_rows is a permutation drawn from
  (seed, e) for source 0, as `input_pipeline.global_indices`, and from (seed, e, source) for the others.
  """
  if num_rows <= 0:
    raise ValueError('cannot draw from an empty split')
  draws = np.asarray(draws, np.int64)
  epochs = draws // num_rows
  out = np.empty(draws.shape, np.int64)
  for epoch in np.unique(epochs):
    key = [seed, int(epoch)] + ([source] if source else [])
    order = np.random.default_rng(key).permutation(num_rows)
    rows = epochs == epoch
    out[rows] = order[draws[rows] % num_rows]
  return out


def local_positions(
    batch_size: int, step: int, process_index: int = 0, process_count: int = 1
) -> np.ndarray:
  """Stream positions (B / P,) of this process's rows of global step ``step``: [p·B/P, (p+1)·B/P)."""
  if batch_size % process_count:
    raise ValueError(
        f'global batch_size={batch_size} does not split over {process_count} processes'
    )
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, {process_count})')
  local = batch_size // process_count
  return step * batch_size + process_index * local + np.arange(local)


def local_draws(
    sources: Sequence[Source],
    batch_size: int,
    seed: int,
    step: int,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
  """(source (B/P,), row in that source (B/P,)) of this process's rows of global step ``step``."""
  positions = local_positions(batch_size, step, process_index, process_count)
  which, draws = source_draws([s.entry.weight for s in sources], positions)
  rows = np.empty_like(draws)
  for k in np.unique(which):
    chosen = which == k
    rows[chosen] = draw_rows(splits.num_rows(sources[k].arrays), seed, int(k), draws[chosen])
  return which, rows


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------


def complete_rows(raw: dict[str, np.ndarray], features: Sequence[str]) -> dict[str, np.ndarray]:
  """``raw`` rows (B, ...) with the common-schema features their source lacks filled in: no 3D
  field gives zeros with has_3d false (their loss terms masked), no hand_side 'right', no bbox the
  whole frame, no has_3d true where both 3D fields are there."""
  count = len(raw['image'])
  out = dict(raw)
  has_3d = 'joints_3d' in features and 'vertices_3d' in features
  if 'joints_3d' not in features:
    out['joints_3d'] = np.zeros((count, 21, 3), np.float32)
  if 'vertices_3d' not in features:
    out['vertices_3d'] = np.zeros((count, 778, 3), np.float32)
  if not has_3d:
    out['has_3d'] = np.zeros(count, bool)
    # Placed 1 m in front of the camera so that projecting the (masked) joints stays finite.
    out['joints_3d'] = out['joints_3d'] + np.float32([0.0, 0.0, 1.0])
    out['vertices_3d'] = out['vertices_3d'] + np.float32([0.0, 0.0, 1.0])
  elif 'has_3d' not in features:
    out['has_3d'] = np.ones(count, bool)
  if 'hand_side' not in features:
    out['hand_side'] = np.array(['right'] * count)
  if 'bbox' not in features:
    height, width = np.shape(raw['image'])[1:3]
    out['bbox'] = np.tile(np.float32([[-0.5, -0.5, width - 0.5, height - 0.5]]), (count, 1))
  return out


def train_batch(
    sources: Sequence[Source],
    step: int,
    *,
    batch_size: int,
    seed: int,
    vertex_scale: float,
    image_size: int | None = None,
    colour_strength: float = 0.0,
    augment: Mapping[str, Any] | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> dict[str, np.ndarray]:
  """This process's part of the global batch of step ``step`` of a mixture: a pure function of its
  arguments. Each source's rows are decoded, colour-jittered, cropped (its own crop_margin) and
  resized to ``image_size`` as `input_pipeline.train_batch` does one split; the rows keep their
  places in the batch. Returns `input_pipeline.prepare_batch`'s dict with batch_size / process_count
  rows; with one source, exactly `input_pipeline.train_batch`'s."""
  which, rows = local_draws(sources, batch_size, seed, step, process_index, process_count)
  local = len(rows)
  positions = np.arange(process_index * local, (process_index + 1) * local)
  # One generator per row of the global batch: augmentation does not depend on how it is split.
  rngs = [np.random.default_rng([seed, step, 1, int(position)]) for position in positions]
  parts = {}
  for k in np.unique(which):
    chosen = np.flatnonzero(which == k)
    source = sources[k]
    raw = complete_rows(splits.gather_rows(source.arrays, rows[chosen]), source.features)
    part_rngs = [rngs[i] for i in chosen]
    raw['image'] = input_pipeline.colour_jitter(raw['image'], part_rngs, colour_strength)
    parts[int(k)] = input_pipeline.prepare_batch(
        raw,
        vertex_scale=vertex_scale,
        image_size=image_size,
        crop_margin=source.entry.crop_margin,
        rngs=part_rngs,
        augment=augment,
    )
  if len(parts) == 1:
    return next(iter(parts.values()))
  return _interleave(parts, which)


def _interleave(parts: Mapping[int, dict[str, np.ndarray]], which: np.ndarray) -> dict[str, Any]:
  """One batch from each source's prepared rows, every row back at its place (``which`` (B,))."""
  first = next(iter(parts.values()))
  out = {}
  for key, value in first.items():
    shapes = {part[key].shape[1:] for part in parts.values()}
    if len(shapes) > 1:
      raise ValueError(
          f"the mixture's sources give {key!r} of different shapes {sorted(shapes)}: set one "
          'config.model.img_size for all (the sources are resized to it)'
      )
    array = input_pipeline.new_array((len(which),) + value.shape[1:], value.dtype)
    for k, part in parts.items():
      array[which == k] = part[key]
    out[key] = array
  return out


def default_num_workers(sources: Sequence[Source]) -> int:
  """`input_pipeline.default_num_workers` of the streamed source when there is one (0 when every
  source is in memory)."""
  streamed = [s.arrays for s in sources if isinstance(s.arrays, splits.SplitSource)]
  return input_pipeline.default_num_workers(streamed[0] if streamed else sources[0].arrays)


def _describe_steps(sources, batch_size, seed, process_index, process_count, steps) -> str:
  """'the batch(es) of step(s) s, ... (examples [...] of NAME (in FILE); ...)', for a dead worker."""
  steps = list(steps)
  text = f'the batch{"es" if len(steps) > 1 else ""} of step{"s" if len(steps) > 1 else ""} '
  text += ', '.join(str(step) for step in steps)
  if not steps:
    return text
  drawn = [
      local_draws(sources, batch_size, seed, step, process_index, process_count) for step in steps
  ]
  which = np.concatenate([w for w, _ in drawn])
  rows = np.concatenate([r for _, r in drawn])
  described = []
  for k in np.unique(which):
    arrays = sources[k].arrays
    if isinstance(arrays, splits.SplitSource):
      described.append(arrays.describe_rows(rows[which == k]))
  return text + (f' ({"; ".join(described)})' if described else '')


def train_batches(
    sources: Sequence[Source],
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    vertex_scale: float,
    image_size: int | None = None,
    colour_strength: float = 0.0,
    augment: Mapping[str, Any] | None = None,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int | None = None,
    num_threads: int | None = None,
    num_workers: int | None = None,
    depth_source: str | None = None,
) -> input_pipeline.BatchIterator:
  """:func:`train_batch` of steps start_step, start_step + 1, ... endlessly, prepared ahead on
  ``num_workers`` worker processes or this process's threads (`input_pipeline.map_in_order`; None:
  :func:`default_num_workers`; prefetch and threads as `input_pipeline.train_batches`). The batches
  are the same, bit for bit, for any number of workers or threads, and from any start step. One
  source with every feature goes through `input_pipeline.train_batches` itself, with its depth maps
  for a depth run (``depth_source``, config.depth.source), which trains on one source."""
  if not sources:
    raise ValueError('a mixture needs at least one source')
  if depth_source is not None and len(sources) > 1:
    raise ValueError(DEPTH_MIXTURE_PROBLEM)
  local_positions(batch_size, start_step, process_index, process_count)  # refuses a bad split now
  if len(sources) == 1 and set(splits.FEATURES) <= set(sources[0].features):
    # One complete source: the single-split pipeline itself, whose batches train_batch equals
    # (tests/test_mixture.py), with its worker and prefetch defaults.
    return input_pipeline.train_batches(
        sources[0].arrays,
        batch_size=batch_size,
        seed=seed,
        start_step=start_step,
        vertex_scale=vertex_scale,
        image_size=image_size,
        colour_strength=colour_strength,
        crop_margin=sources[0].entry.crop_margin,
        augment=augment,
        process_index=process_index,
        process_count=process_count,
        prefetch=prefetch,
        num_threads=num_threads,
        num_workers=num_workers,
        depth_source=depth_source,
    )
  if depth_source is not None:
    raise ValueError(f'{sources[0].label}: a depth run needs a source with every feature')
  make = functools.partial(
      train_batch,
      tuple(sources),
      batch_size=batch_size,
      seed=seed,
      vertex_scale=vertex_scale,
      image_size=image_size,
      colour_strength=colour_strength,
      augment=augment,
      process_index=process_index,
      process_count=process_count,
  )
  streamed = [s.arrays for s in sources if isinstance(s.arrays, splits.SplitSource)]
  prefetch, num_threads = input_pipeline.prefetch_settings(
      streamed[0] if streamed else sources[0].arrays, prefetch, num_threads
  )
  return input_pipeline.map_in_order(
      make,
      range(start_step, start_step + input_pipeline.ENDLESS_STEPS),
      num_workers=default_num_workers(sources) if num_workers is None else int(num_workers),
      prefetch=prefetch,
      num_threads=num_threads,
      describe=functools.partial(
          _describe_steps, tuple(sources), batch_size, seed, process_index, process_count
      ),
  )


def train_batches_from_config(
    sources: Sequence[Source],
    dataset_config,
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    vertex_scale: float,
    image_size: int | None,
    process_index: int = 0,
    process_count: int = 1,
    depth_source: str | None = None,
) -> input_pipeline.BatchIterator:
  """:func:`train_batches` of a run: the input settings of its ``config.dataset`` (colour_jitter,
  the crop jitter of `input_pipeline.augment_options`, num_workers, prefetch_batches, num_threads;
  each source's crop is its entry's), the rest as `input_pipeline.train_batches_from_config`."""
  return train_batches(
      sources,
      batch_size=batch_size,
      seed=seed,
      start_step=start_step,
      vertex_scale=vertex_scale,
      image_size=image_size,
      colour_strength=dataset_config.get('colour_jitter', 0.0),
      augment=input_pipeline.augment_options(dataset_config),
      process_index=process_index,
      process_count=process_count,
      prefetch=dataset_config.get('prefetch_batches'),
      num_threads=dataset_config.get('num_threads'),
      num_workers=dataset_config.get('num_workers'),
      depth_source=depth_source,
  )


def mean_mesh_example(sources: Sequence[Source]) -> dict[str, np.ndarray]:
  """`splits.mean_mesh_example` of the mixture: the sources' mean root-relative meshes averaged by
  their weights (the mean hand of the training stream); with one source, exactly that source's."""
  labelled = [s for s in sources if {'joints_3d', 'vertices_3d'} <= set(s.features)]
  sources = labelled or sources  # a source without 3D labels has no mesh to average
  examples = [splits.mean_mesh_example(s.arrays) for s in sources]
  if len(examples) == 1:
    return examples[0]
  weights = np.array([s.entry.weight for s in sources], np.float64)
  meshes = np.stack(
      [np.float64(e['vertices_3d'][0]) - np.float64(e['joints_3d'][0, :1]) for e in examples]
  )
  mean = np.tensordot(weights / weights.sum(), meshes, axes=1)
  out = dict(examples[0])
  out['vertices_3d'] = (mean + np.float64(examples[0]['joints_3d'][0, :1]))[None].astype(np.float32)
  return out


def num_rows(source: Source) -> int:
  """The rows of a source's split."""
  return splits.num_rows(source.arrays)


def describe(sources: Sequence[Source]) -> str:
  """'freihand:train 130240 (0.4), ...' for the run's first lines."""
  return ', '.join(f'{s.label} {splits.num_rows(s.arrays)} ({s.entry.weight:g})' for s in sources)
