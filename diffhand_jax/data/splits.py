"""Where a split's examples come from: TFDS builders, and a split opened in memory or for random access.

  * `get_builder` / `preparation_problem`: the TFDS builder of ``config.dataset`` (this repository's
    builders by name, `BUILDER_MODULES`), prepared on first use where it can make its own data;
  * `load_split`: a small split read into memory, a dict feature → (N, ...) array (`FEATURES`);
  * `SplitSource`: random access to a split stored as ArrayRecord, reading and decoding only the rows
    asked for (FreiHAND has 130K images);
  * `open_split` picks one of the two from ``config.dataset.in_memory``; `num_rows` and `gather_rows`
    read either alike, and `mean_mesh_example` is the mean-mesh baseline's example.

Turning the rows into model-ready batches, and feeding them to training and evaluation, is
`input_pipeline.py`'s.
"""

from __future__ import annotations

import copy
import importlib
import io
import os
import threading
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds  # imports TensorFlow itself only when it needs it
from tensorflow_datasets.core import decode, file_adapters

# TFDS builders that live in this repository's datasets/ folder, by TFDS name.
BUILDER_MODULES = {
    'synthetic_hands': 'diffhand_jax.data.builders.synthetic_hands.synthetic_hands_dataset_builder',
    'freihand': 'diffhand_jax.data.builders.freihand.freihand_dataset_builder',
    'ho3d': 'diffhand_jax.data.builders.ho3d.ho3d_dataset_builder',
    'dex_ycb': 'diffhand_jax.data.builders.dex_ycb.dex_ycb_dataset_builder',
}
# Builders that can make their data without a manual download.
SELF_GENERATING = {'synthetic_hands'}

FEATURES = ('image', 'K', 'joints_3d', 'vertices_3d', 'has_3d', 'hand_side', 'bbox')

# New data is prepared in the ArrayRecord format, the one TFDS reads by random access (SplitSource).
STREAMING_FILE_FORMAT = 'array_record'
# When streaming is asked for but the data is stored as tfrecord only, splits up to this many examples
# are read into memory instead (an evaluation split); larger ones fail with how to convert them.
IN_MEMORY_FALLBACK_MAX_EXAMPLES = 20_000


def default_data_dir(data_dir: str | None) -> str:
  """The TFDS data directory: the config's, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  if data_dir:
    return os.path.expanduser(data_dir)
  return os.environ.get('TFDS_DATA_DIR', os.path.expanduser('~/tensorflow_datasets'))


def _full_name(dataset_config: Mapping[str, Any]) -> str:
  config_name = dataset_config.get('config_name') or ''
  return f"{dataset_config['name']}/{config_name}" if config_name else dataset_config['name']


def _unprepared_message(dataset_config: Mapping[str, Any], data_dir: str) -> str:
  """How to prepare a manual-download dataset: the exact `tfds build` command and where to download."""
  name = dataset_config['name']
  config_name = dataset_config.get('config_name') or ''
  module = importlib.import_module(BUILDER_MODULES[name]) if name in BUILDER_MODULES else None
  instructions = getattr(module, 'MANUAL_DOWNLOAD_INSTRUCTIONS', '')
  config_flag = f' --config={config_name}' if config_name else ''
  return (
      f'dataset {_full_name(dataset_config)} is not prepared in {data_dir}. Download it by hand and run\n'
      f'  tfds build datasets/{name}{config_flag} --manual_dir=<where you put the files> '
      f'--data_dir={data_dir} --file_format={STREAMING_FILE_FORMAT}\n' + instructions
  )


def _builder(dataset_config: Mapping[str, Any], **kwargs):
  name = dataset_config['name']
  if name in BUILDER_MODULES:
    importlib.import_module(BUILDER_MODULES[name])  # registers the builder with TFDS
  data_dir = default_data_dir(dataset_config.get('data_dir'))
  return tfds.builder(_full_name(dataset_config), data_dir=data_dir, **kwargs)


def preparation_problem(dataset_config: Mapping[str, Any]) -> str | None:
  """Why the dataset cannot be read yet (not prepared, with the command that prepares it; an unknown
  config), or None. A dataset that makes itself (synthetic) is never a problem: it builds on first use.
  """
  if dataset_config['name'] in SELF_GENERATING:
    return None
  try:
    builder = _builder(dataset_config)
  except Exception as error:  # pylint: disable=broad-except - TFDS: unknown config, unreadable info
    return f'dataset {_full_name(dataset_config)}: {str(error).splitlines()[0]}'
  if builder.is_prepared():
    return None
  return _unprepared_message(dataset_config, default_data_dir(dataset_config.get('data_dir')))


def get_builder(dataset_config: Mapping[str, Any], *, prepare: bool = True):
  """The TFDS builder for ``dataset_config`` (keys ``name``, ``data_dir``, optional ``config_name``).

  Builds the data first when it is missing and the dataset can make itself (the synthetic one), in the
  ArrayRecord format so that it can be streamed; otherwise tells the user how to prepare it. Data
  already prepared is used in whatever format it has (see :func:`open_split` for tfrecord-only data).
  """
  full_name = _full_name(dataset_config)
  data_dir = default_data_dir(dataset_config.get('data_dir'))
  # Without file_format first: a builder asked for ArrayRecord refuses data prepared as tfrecord.
  builder = _builder(dataset_config)
  if not builder.is_prepared():
    if not prepare:
      raise FileNotFoundError(f'dataset {full_name} is not prepared in {data_dir}')
    if dataset_config['name'] not in SELF_GENERATING:
      raise FileNotFoundError(_unprepared_message(dataset_config, data_dir))
    print(f'building {full_name} into {data_dir} (first run only)', flush=True)
    builder = _builder(dataset_config, file_format=STREAMING_FILE_FORMAT)
    builder.download_and_prepare()
  return builder


def stored_file_formats(builder) -> set[str]:
  """The file formats ``builder``'s prepared data is stored in, e.g. {'tfrecord', 'array_record'}."""
  # From dataset_info.json itself: TFDS 4.9 leaves `info.alternative_file_formats` empty when it reads
  # a dataset that `tfds convert_format` gave a second format.
  proto = builder.info.as_proto
  formats = {str(proto.file_format)} | {str(f) for f in proto.alternative_file_formats}
  formats |= {f.value for f in builder.info.available_file_formats()}
  return {f for f in formats if f}


def has_random_access(builder) -> bool:
  """Whether ``builder``'s prepared data includes the ArrayRecord files that :class:`SplitSource` reads."""
  return STREAMING_FILE_FORMAT in stored_file_formats(builder)


def _split_spec(builder, split: str, max_examples: int | None) -> str:
  if split not in builder.info.splits:
    raise ValueError(
        f'dataset {builder.info.full_name} has no split {split!r}; '
        f'it has {sorted(builder.info.splits.keys())}'
    )
  return f'{split}[:{int(max_examples)}]' if max_examples else split


def _decode_text(values: Sequence[Any]) -> np.ndarray:
  return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])


def load_split(
    dataset_config: Mapping[str, Any],
    split: str,
    max_examples: int | None = None,
    features: Sequence[str] = FEATURES,
) -> dict[str, np.ndarray]:
  """Reads a whole split into numpy arrays (N, ...), keeping ``features`` (default: those the pipeline
  needs; images not among them are not decoded).

  Data stored as tfrecord is read with tf.data, as before; ArrayRecord-only data through
  :class:`SplitSource` (the same decoders, so the same arrays). 'hand_side' comes back as str.
  """
  builder = get_builder(dataset_config)
  spec = _split_spec(builder, split, max_examples)
  missing = [key for key in features if key not in builder.info.features]
  if missing:
    raise KeyError(
        f'dataset {builder.info.full_name} lacks the feature(s) {missing} (docs/design.md §7)'
    )
  if builder.info.file_format != file_adapters.FileFormat.TFRECORD and has_random_access(builder):
    source = SplitSource(builder, split, max_examples=max_examples, features=features)
    if source.num_examples == 0:
      raise ValueError(f'{source.name} is empty')
    return source.read(np.arange(source.num_examples))
  decoders = {
      key: tfds.decode.SkipDecoding()
      for key in builder.info.features.keys()
      if key not in features and isinstance(builder.info.features[key], tfds.features.Image)
  }
  dataset = builder.as_dataset(split=spec, batch_size=-1, decoders=decoders or None)
  arrays = tfds.as_numpy(dataset)
  out = {}
  for key in features:
    value = arrays[key]
    if isinstance(builder.info.features[key], tfds.features.Text) and value.dtype.kind in 'SO':
      value = _decode_text(value)
    out[key] = value
  return out


def wants_in_memory(dataset_config: Mapping[str, Any]) -> bool:
  """``dataset_config.in_memory`` when set; else True for the self-generating (small, synthetic) data
  and False for the real datasets."""
  in_memory = dataset_config.get('in_memory')
  if in_memory is None:
    return dataset_config['name'] in SELF_GENERATING
  return bool(in_memory)


def open_split(
    dataset_config: Mapping[str, Any],
    split: str,
    max_examples: int | None = None,
    features: Sequence[str] = FEATURES,
):
  """A split for `input_pipeline.train_batches` / `eval_batches`: the in-memory dict of
  :func:`load_split` when :func:`wants_in_memory`, else a streaming :class:`SplitSource`.

  Data prepared as tfrecord only cannot be streamed: a split of at most
  ``IN_MEMORY_FALLBACK_MAX_EXAMPLES`` examples is then read into memory (with a note), a larger one
  raises a ValueError that says how to convert the data in place. ``dataset_config.prefetch_batches``
  and ``dataset_config.num_threads``, when set, become the source's prefetch defaults. ``features``:
  those to read (default: the pipeline's, `FEATURES`; a depth run adds 'depth').
  """
  if wants_in_memory(dataset_config):
    return load_split(dataset_config, split, max_examples, features)
  builder = get_builder(dataset_config)
  spec = _split_spec(builder, split, max_examples)
  if has_random_access(builder):
    return SplitSource(
        builder,
        split,
        max_examples=max_examples,
        features=features,
        prefetch=dataset_config.get('prefetch_batches'),
        num_threads=dataset_config.get('num_threads'),
    )
  count = int(builder.info.splits[spec].num_examples)
  convert = (
      f'  tfds convert_format --dataset_version_dir={builder.data_dir} '
      f'--out_file_format={STREAMING_FILE_FORMAT}'
  )
  if count <= IN_MEMORY_FALLBACK_MAX_EXAMPLES:
    print(
        f'note: {builder.info.full_name} is stored as tfrecord only, so its {count}-example split '
        f'{spec!r} is read into memory instead of streamed. To stream it, convert the data in place:\n'
        f'{convert}',
        flush=True,
    )
    return load_split(dataset_config, split, max_examples, features)
  raise ValueError(
      f'dataset {builder.info.full_name} in {builder.data_dir} is stored as tfrecord only, and its '
      f'{count}-example split {spec!r} is too large to read into memory. Streaming needs the '
      f'{STREAMING_FILE_FORMAT} format; convert the prepared data in place (no download needed):\n'
      f'{convert}\n'
      f'(or rebuild it with `tfds build ... --file_format={STREAMING_FILE_FORMAT}`, or set '
      f'config.dataset.in_memory=True if it fits in memory)'
  )


class SplitSource(Mapping[str, '_Column']):
  """Random access to one split of a prepared TFDS dataset stored as ArrayRecord.

  Only the rows asked for are read and decoded (``read``), so a split of any size costs no memory up
  front; several threads may read at once, and a pickled copy reads in another process (the input
  workers of `input_pipeline.train_batches`). JPEG images are decoded with the same TensorFlow decoder
  as ``as_dataset`` (PIL's JPEG decoder differs by a few grey levels), PNG images by PIL (lossless: the
  same pixels, and no TensorFlow in a worker that reads PNG only), so a row equals the row that
  :func:`load_split` returns for the same data.

  As a read-only mapping feature → column it also stands in for the in-memory dict where code indexes
  a few rows (``source['K'][i]``, ``source['image'][i:i + 1]``, ``len(source['image'])``); a column
  refuses to become one whole array (that would decode the whole split).

  Attributes:
    name: ``dataset/config:split[:max_examples]``, for messages.
    num_examples: rows in the split.
    prefetch, num_threads: the batch iterators' defaults for this source (None: module defaults).
  """

  def __init__(
      self,
      builder,
      split: str,
      *,
      max_examples: int | None = None,
      features: Sequence[str] = FEATURES,
      prefetch: int | None = None,
      num_threads: int | None = None,
  ):
    spec = _split_spec(builder, split, max_examples)
    self.name = f'{builder.info.full_name}:{spec}'
    if not has_random_access(builder):
      raise ValueError(
          f'{self.name}: the data in {builder.data_dir} is stored as '
          f'{sorted(stored_file_formats(builder))} only; random access needs '
          f'{STREAMING_FILE_FORMAT} (see open_split)'
      )
    self._features = builder.info.features
    missing = [key for key in features if key not in self._features]
    if missing:
      raise KeyError(
          f'dataset {builder.info.full_name} lacks the feature(s) {missing} (docs/design.md §7)'
      )
    self._feature_names = tuple(features)
    # as_data_source reads the format from builder.info: point it at the ArrayRecord files for the
    # call, then put back what the builder had (its as_dataset keeps reading tfrecord files).
    info = builder.info
    previous = info.file_format
    info.set_file_format(STREAMING_FILE_FORMAT, override=True, override_if_initialized=True)
    try:
      self._records = builder.as_data_source(
          spec, deserialize_method=decode.DeserializeMethod.RAW_BYTES
      )
    finally:
      if previous is not None:
        info.set_file_format(previous, override=True, override_if_initialized=True)
    self.num_examples = len(self._records)
    self.prefetch = prefetch
    self.num_threads = num_threads
    self._mean_mesh = None
    self._mean_mesh_lock = threading.Lock()
    self._columns: dict[str, Any] = {}  # name → reader of rows stored elsewhere (`with_column`)

  # Pickling: input worker processes (input_pipeline.train_batches' num_workers) get a copy of the
  # source, which opens the ArrayRecord files again on first read (ArrayRecordDataSource pickles
  # without its readers).
  def __getstate__(self) -> dict[str, Any]:
    state = self.__dict__.copy()
    del state['_mean_mesh_lock']
    return state

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)
    self._mean_mesh_lock = threading.Lock()

  def with_column(self, name: str, reader: Any) -> SplitSource:
    """A copy of this source with one more column, ``name``, whose rows come from ``reader.read(indices)``
    ((B, ...) arrays; it must pickle, for input workers): data stored beside the TFDS files, such as
    the estimated depth maps of `depth.StoredDepth`."""
    out = copy.copy(self)
    out._columns = {**self._columns, name: reader}
    out._feature_names = tuple(k for k in self._feature_names if k != name) + (name,)
    return out

  def record_files(self, indices: Sequence[int] | np.ndarray) -> list[str]:
    """The ArrayRecord files that hold rows ``indices``, for messages (empty if it cannot tell)."""
    try:  # array_record's data source maps a row to its file; private API, so only for messages
      source = self._records.data_source
      names = set()
      for index in np.asarray(indices, np.int64).reshape(-1):
        reader, _ = source._reader_idx_and_position(int(index))  # pylint: disable=protected-access
        names.add(str(source._read_instructions[reader].filename))  # pylint: disable=protected-access
      return sorted(names)
    except Exception:  # pylint: disable=broad-except - another array_record version: no file names
      return []

  def describe_rows(self, indices: Sequence[int] | np.ndarray) -> str:
    """'examples [i, j, ...] of NAME (in FILE, ...)', for messages."""
    indices = np.unique(np.asarray(indices, np.int64).reshape(-1))
    shown = ', '.join(str(int(i)) for i in indices[:8]) + (', ...' if indices.size > 8 else '')
    files = self.record_files(indices)
    where = f' (in {", ".join(files)})' if files else ''
    return f'example{"s" if indices.size > 1 else ""} [{shown}] of {self.name}{where}'

  # Mapping interface: feature → column.
  def __getitem__(self, key: str) -> _Column:
    if key not in self._feature_names:
      raise KeyError(f'{self.name}: no feature {key!r}; it has {list(self._feature_names)}')
    return _Column(self, key)

  def __iter__(self) -> Iterator[str]:
    return iter(self._feature_names)

  def __len__(self) -> int:
    """The number of features (as for the dict); the number of rows is ``num_examples``."""
    return len(self._feature_names)

  def __repr__(self) -> str:
    return f'SplitSource({self.name}, {self.num_examples} examples)'

  def _decoders(self, wanted: Sequence[str]) -> dict[str, Any]:
    # Skip what is not wanted; images are kept as bytes here and decoded in _decode.
    return {
        key: tfds.decode.SkipDecoding()
        for key in self._features.keys()
        if key not in wanted or isinstance(self._features[key], tfds.features.Image)
    }

  def _decode(self, key: str, value: Any) -> Any:
    feature = self._features[key]
    if isinstance(feature, tfds.features.Image):
      image = _decode_png_as_tensorflow_does(value, feature.shape, feature.np_dtype)
      if image is not None:
        return image
      import tensorflow as tf  # pylint: disable=g-import-not-at-top  # heavy; non-PNG images only

      return feature.decode_example(tf.constant(value)).numpy()
    if isinstance(feature, tfds.features.Text):
      return value.decode() if isinstance(value, bytes) else str(value)
    return np.asarray(value)

  def read(
      self, indices: Sequence[int] | np.ndarray, features: Sequence[str] | None = None
  ) -> dict[str, np.ndarray]:
    """Rows ``indices`` (B,) as a dict of (B, ...) arrays (``features``, default all of the source's).

    Each distinct row is read and decoded once, however often it repeats; 'hand_side' comes back as
    str. Raises IndexError for a row outside [0, num_examples) and ValueError naming the row when a
    record does not decode.
    """
    features = self._feature_names if features is None else tuple(features)
    unknown = [key for key in features if key not in self._feature_names]
    if unknown:
      raise KeyError(f'{self.name}: no feature(s) {unknown}; it has {list(self._feature_names)}')
    indices = np.asarray(indices, np.int64).reshape(-1)
    if indices.size == 0:
      raise ValueError(f'{self.name}: read needs at least one row')
    outside = indices[(indices < 0) | (indices >= self.num_examples)]
    if outside.size:
      raise IndexError(f'{self.name}: row {int(outside[0])} is outside [0, {self.num_examples})')
    unique, inverse = np.unique(indices, return_inverse=True)
    external = {key: self._columns[key] for key in features if key in self._columns}
    features = tuple(key for key in features if key not in external)
    try:
      records = self._records.__getitems__([int(i) for i in unique])
    except Exception as error:  # a damaged file: say which rows and files
      raise ValueError(
          f'reading {self.describe_rows(unique)} failed: {type(error).__name__}: {error}'
      ) from error
    decoders = self._decoders(features)
    columns: dict[str, list[Any]] = {key: [] for key in features}
    for index, record in zip(unique, records):
      try:
        example = self._features.deserialize_example_np(record, decoders=decoders)
        for key in features:
          columns[key].append(self._decode(key, example[key]))
      except Exception as error:  # a corrupt record: say which, and where it is stored
        files = self.record_files([index])
        where = f' (in {files[0]})' if files else ''
        raise ValueError(
            f'{self.name}: example {int(index)}{where} does not decode: '
            f'{type(error).__name__}: {error}'
        ) from error
    out = {}
    for key, values in columns.items():
      if key == 'hand_side' or isinstance(values[0], str):
        stacked = np.array(values)
      else:
        shapes = {np.shape(v) for v in values}
        if len(shapes) > 1:
          raise ValueError(
              f'{self.name}: feature {key!r} has different shapes {sorted(shapes)} in rows '
              f'{unique.tolist()}; a batch needs one shape (crop first)'
          )
        stacked = np.stack(values)
      out[key] = stacked[inverse]
    for key, reader in external.items():
      out[key] = np.asarray(reader.read(unique))[inverse]
    return out

  def mean_root_relative_mesh(self, chunk_size: int = 1024) -> np.ndarray:
    """(778, 3) float64: the mean over the split of vertices_3d − joints_3d[wrist], left hands mirrored.

    Streams only the vertex, joint and side features (no image is decoded); computed once per source.
    """
    with self._mean_mesh_lock:
      if self._mean_mesh is None:
        total, count = None, 0
        for start in range(0, self.num_examples, chunk_size):
          rows = self.read(
              np.arange(start, min(start + chunk_size, self.num_examples)),
              ('vertices_3d', 'joints_3d', 'hand_side'),
          )
          part = _root_relative_right(rows).sum(axis=0)
          total = part if total is None else total + part
          count += len(rows['hand_side'])
        self._mean_mesh = total / count
      return self._mean_mesh


_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# PIL modes that hold exactly what TensorFlow's decoder returns for uint8 images of that many channels.
_PIL_MODES = {1: 'L', 3: 'RGB', 4: 'RGBA'}


def _decode_png_as_tensorflow_does(value: Any, shape, dtype) -> np.ndarray | None:
  """A uint8 PNG that stores exactly the feature's channels, decoded by PIL: the same pixels as
  TensorFlow's decoder (PNG is lossless), without TensorFlow, which input worker processes then need
  not import. None for anything else (JPEG, another bit depth or channel count), which TensorFlow
  decodes as tf.data does."""
  if not isinstance(value, bytes) or not value.startswith(_PNG_SIGNATURE):
    return None
  if np.dtype(dtype) != np.uint8 or shape[-1] not in _PIL_MODES:
    return None
  with Image.open(io.BytesIO(value)) as image:
    if image.mode != _PIL_MODES[shape[-1]]:
      return None
    array = np.asarray(image)
  array = array.reshape(*array.shape[:2], shape[-1])
  if any(want is not None and want != got for want, got in zip(shape, array.shape)):
    return None  # TensorFlow's decoder reports the shape mismatch
  return array


class _Column:
  """One feature of a :class:`SplitSource`, indexable like a numpy array's first axis."""

  def __init__(self, source: SplitSource, key: str):
    self._source = source
    self._key = key

  def __len__(self) -> int:
    return self._source.num_examples

  def __getitem__(self, index) -> Any:
    if isinstance(index, (int, np.integer)):
      row = int(index) + (self._source.num_examples if index < 0 else 0)
      return self._source.read([row], (self._key,))[self._key][0]
    if isinstance(index, slice):
      return self._source.read(np.arange(self._source.num_examples)[index], (self._key,))[self._key]
    index = np.asarray(index)
    if index.dtype == bool:
      index = np.flatnonzero(index)
    return self._source.read(index, (self._key,))[self._key]

  def __array__(self, *args, **kwargs):
    raise TypeError(
        f'{self._source.name}: the streamed column {self._key!r} does not turn into one '
        f'array (that decodes the whole split); index rows, or use SplitSource.read'
    )


def _root_relative_right(rows: Mapping[str, np.ndarray]) -> np.ndarray:
  """vertices_3d − wrist (B, N, 3) float64, with x negated for left hands (the mirroring of docs/design.md §2)."""
  relative = (
      np.asarray(rows['vertices_3d'], np.float64) - np.asarray(rows['joints_3d'], np.float64)[:, :1]
  )
  is_left = np.asarray(rows['hand_side']) == 'left'
  relative[is_left, :, 0] *= -1
  return relative


def mean_mesh_example(arrays) -> dict[str, np.ndarray]:
  """The split's mean root-relative mesh (left hands mirrored) as a one-example split: a dict of (1, ...)
  arrays in the common schema whose prepared ``vertices`` (`input_pipeline.prepare_batch`) are that
  mean, for code that averages a split's prepared meshes (``evaluation.mean_mesh_baseline``) without
  preparing, or for a :class:`SplitSource` decoding, every image.

  The placeholder wrist sits 1 m in front of the camera (projection needs z > 0), like real data.
  """
  if isinstance(arrays, SplitSource):
    mean = arrays.mean_root_relative_mesh()
  else:
    mean = _root_relative_right(arrays).mean(axis=0)
  wrist = np.array([0.0, 0.0, 1.0])
  return {
      'image': np.zeros((1, 1, 1, 3), np.uint8),
      'K': np.eye(3, dtype=np.float32)[None],
      'joints_3d': np.tile(wrist, (1, 21, 1)).astype(np.float32),
      'vertices_3d': (mean + wrist)[None].astype(np.float32),
      'has_3d': np.ones(1, bool),
      'hand_side': np.array(['right']),
      'bbox': np.array([[-0.5, -0.5, 0.5, 0.5]], np.float32),
  }


def num_rows(arrays) -> int:
  """The number of examples of an in-memory dict or a :class:`SplitSource`."""
  if isinstance(arrays, SplitSource):
    return arrays.num_examples
  return len(arrays['image'])


def gather_rows(arrays, indices: np.ndarray) -> dict[str, np.ndarray]:
  """Rows ``indices`` (B,) of an in-memory dict or a :class:`SplitSource`, as (B, ...) arrays."""
  if isinstance(arrays, SplitSource):
    return arrays.read(indices)
  return {key: value[indices] for key, value in arrays.items()}
