"""The streaming input pipeline: a SplitSource over ArrayRecord files gives exactly the batches of the
in-memory path (tf.data, today's reader) for the same data, in a fixed order whatever the threads do,
resumable at any step and split over processes like one process's batch."""

import os
import shutil
import threading
import time

import ml_collections
import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from diffhand_jax.data import input_pipeline, splits  # noqa: E402
from diffhand_jax.data.builders.synthetic_hands import synthetic_hands_dataset_builder  # noqa: E402

# The synthetic builder's version, as its folders and messages spell it.
SYNTHETIC_VERSION = str(synthetic_hands_dataset_builder.Builder.VERSION)

AUGMENT = {'scale_range': (0.85, 1.15), 'max_rotation': 0.6, 'max_translation': 0.08}
TRAIN_OPTIONS = dict(
    seed=5, vertex_scale=0.1, image_size=24, colour_strength=0.5, crop_margin=0.2, augment=AUGMENT
)


def _config(data_dir, **extra):
  return {'name': 'synthetic_hands', 'config_name': 'tiny', 'data_dir': str(data_dir), **extra}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  """synthetic_hands/tiny three ways: prepared by get_builder (ArrayRecord), by TFDS's default
  (tfrecord, read with tf.data as before), and that tfrecord copy converted in place to hold both.
  """
  from tensorflow_datasets.scripts.cli import convert_format_utils

  root = tmp_path_factory.mktemp('streaming')
  streamed = splits.get_builder(_config(root / 'array_record'))
  tfds.builder('synthetic_hands/tiny', data_dir=str(root / 'tfrecord')).download_and_prepare()
  shutil.copytree(root / 'tfrecord', root / 'both')
  convert_format_utils.convert_dataset(
      out_dir=None,
      out_file_format='array_record',
      num_workers=1,
      dataset_version_dir=[
          os.path.join(root, 'both', 'synthetic_hands', 'tiny', SYNTHETIC_VERSION)
      ],
  )
  return {
      'root': root,
      'builder': streamed,
      'source': splits.SplitSource(streamed, 'train'),
      'memory': splits.load_split(_config(root / 'tfrecord'), 'train'),  # tf.data
  }


def _assert_batches_equal(first, second):
  assert first.keys() == second.keys()
  for key in first:
    np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def test_get_builder_prepares_array_record_only(data):
  assert splits.stored_file_formats(data['builder']) == {'array_record'}
  assert splits.stored_file_formats(splits.get_builder(_config(data['root'] / 'tfrecord'))) == {
      'tfrecord'
  }


def test_source_rows_equal_the_tf_data_rows(data):
  source, memory = data['source'], data['memory']
  assert source.num_examples == len(memory['image']) == 6
  indices = np.array([4, 0, 4, 5, 1, 2, 3, 0])  # any order, repeats
  rows = source.read(indices)
  assert set(rows) == set(splits.FEATURES)
  for key in splits.FEATURES:
    assert rows[key].dtype == memory[key].dtype, key
    np.testing.assert_array_equal(rows[key], memory[key][indices], err_msg=key)


def test_columns_index_like_arrays_and_refuse_whole_split_decoding(data):
  source, memory = data['source'], data['memory']
  assert len(source['image']) == 6 and set(source) == set(splits.FEATURES)
  np.testing.assert_array_equal(source['K'][2], memory['K'][2])
  np.testing.assert_array_equal(source['K'][-1], memory['K'][-1])
  np.testing.assert_array_equal(source['image'][1:5:2], memory['image'][1:5:2])
  mask = np.array([True, False, False, True, False, True])
  np.testing.assert_array_equal(source['joints_3d'][mask], memory['joints_3d'][mask])
  assert source['hand_side'][0] == memory['hand_side'][0] == 'right'
  with pytest.raises(TypeError, match='whole split'):
    np.asarray(source['image'])
  with pytest.raises(IndexError, match=r'synthetic_hands/tiny.*train.*row 6'):
    source.read([0, 6])
  with pytest.raises(KeyError, match='mask'):
    source.read([0], ('mask',))


def test_load_split_reads_array_record_data_as_tf_data_reads_tfrecords(data):
  streamed = splits.load_split(_config(data['root'] / 'array_record'), 'train', max_examples=4)
  for key in splits.FEATURES:
    np.testing.assert_array_equal(streamed[key], data['memory'][key][:4], err_msg=key)


def test_train_batches_from_the_source_equal_the_in_memory_batches(data):
  # 6 examples, batch 4: steps 0-3 cross epoch boundaries; prefetch on one side only.
  streamed = input_pipeline.train_batches(
      data['source'],
      batch_size=4,
      start_step=0,
      prefetch=3,
      num_threads=2,
      num_workers=0,
      **TRAIN_OPTIONS,
  )
  in_memory = input_pipeline.train_batches(
      data['memory'], batch_size=4, start_step=0, prefetch=0, **TRAIN_OPTIONS
  )
  for a, b in zip(_take(streamed, 4), _take(in_memory, 4)):
    _assert_batches_equal(a, b)
    assert a['image'].shape == (4, 24, 24, 3)


# What _dataset_config() holds, as train_batches' keywords (the rotation in radians).
CONFIG_OPTIONS = dict(
    seed=5,
    vertex_scale=0.1,
    image_size=24,
    colour_strength=0.5,
    crop_margin=0.2,
    augment={
        'scale_range': (0.85, 1.15),
        'max_rotation': float(np.deg2rad(30.0)),
        'max_translation': 0.08,
    },
)


def _dataset_config():
  """A run's config.dataset with the input settings of CONFIG_OPTIONS."""
  return ml_collections.ConfigDict(
      {
          'colour_jitter': 0.5,
          'crop_margin': 0.2,
          'scale_range': (0.85, 1.15),
          'max_rotation_deg': 30.0,
          'max_translation': 0.08,
          'prefetch_batches': 3,
          'num_threads': 2,
          'num_workers': 0,
      }
  )


def test_train_batches_from_config_pass_the_dataset_slice_to_the_keyword_form(data, monkeypatch):
  calls = []
  monkeypatch.setattr(input_pipeline, 'train_batches', lambda *a, **kw: calls.append((a, kw)))
  input_pipeline.train_batches_from_config(
      data['source'],
      _dataset_config(),
      batch_size=6,
      seed=5,
      start_step=2,
      vertex_scale=0.1,
      image_size=24,
      process_index=1,
      process_count=3,
      depth_source='dataset',
  )
  ((args, kwargs),) = calls
  assert args == (data['source'],)
  assert kwargs == {
      'batch_size': 6,
      'seed': 5,
      'start_step': 2,
      'vertex_scale': 0.1,
      'image_size': 24,
      'colour_strength': 0.5,
      'crop_margin': 0.2,
      'augment': {
          'scale_range': (0.85, 1.15),
          'max_rotation': float(np.deg2rad(30.0)),
          'max_translation': 0.08,
      },
      'process_index': 1,
      'process_count': 3,
      'prefetch': 3,
      'num_threads': 2,
      'num_workers': 0,
      'depth_source': 'dataset',
  }


def test_train_batches_from_config_equal_the_keyword_batches(data):
  from_config = input_pipeline.train_batches_from_config(
      data['source'],
      _dataset_config(),
      batch_size=4,
      seed=5,
      start_step=1,
      vertex_scale=0.1,
      image_size=24,
  )
  keywords = input_pipeline.train_batches(
      data['source'], batch_size=4, start_step=1, prefetch=0, num_workers=0, **CONFIG_OPTIONS
  )
  for a, b in zip(_take(from_config, 3), _take(keywords, 3)):
    _assert_batches_equal(a, b)
  # Unset fields take the keyword form's defaults: no colour jitter, crop or crop jitter.
  plain = input_pipeline.train_batches_from_config(
      data['source'],
      ml_collections.ConfigDict({'num_workers': 0}),
      batch_size=4,
      seed=5,
      start_step=1,
      vertex_scale=0.1,
      image_size=24,
  )
  _assert_batches_equal(
      next(plain),
      next(
          input_pipeline.train_batches(
              data['source'],
              batch_size=4,
              seed=5,
              start_step=1,
              vertex_scale=0.1,
              image_size=24,
              num_workers=0,
          )
      ),
  )


def test_eval_batches_from_the_source_equal_the_in_memory_batches(data):
  streamed = list(
      input_pipeline.eval_batches(
          data['source'], batch_size=4, vertex_scale=0.1, image_size=24, crop_margin=0.2, prefetch=2
      )
  )
  in_memory = list(
      input_pipeline.eval_batches(
          data['memory'], batch_size=4, vertex_scale=0.1, image_size=24, crop_margin=0.2, prefetch=0
      )
  )
  assert [valid for _, valid in streamed] == [valid for _, valid in in_memory] == [4, 2]
  for (a, _), (b, _) in zip(streamed, in_memory):
    _assert_batches_equal(a, b)


def test_resuming_at_a_step_gives_the_uninterrupted_batches(data):
  options = dict(batch_size=4, prefetch=3, num_threads=2, num_workers=0, **TRAIN_OPTIONS)
  uninterrupted = _take(input_pipeline.train_batches(data['source'], start_step=0, **options), 7)
  resumed = _take(input_pipeline.train_batches(data['source'], start_step=4, **options), 3)
  for a, b in zip(uninterrupted[4:], resumed):
    _assert_batches_equal(a, b)
  assert not np.array_equal(uninterrupted[4]['image'], uninterrupted[5]['image'])


@pytest.mark.parametrize('process_count', [2, 3])
def test_process_shards_make_up_the_single_process_batch(data, process_count):
  options = dict(batch_size=6, start_step=2, prefetch=2, num_workers=0, **TRAIN_OPTIONS)
  whole = next(input_pipeline.train_batches(data['source'], **options))
  shards = [
      next(
          input_pipeline.train_batches(
              data['source'], process_index=p, process_count=process_count, **options
          )
      )
      for p in range(process_count)
  ]
  for key in whole:
    np.testing.assert_array_equal(np.concatenate([s[key] for s in shards]), whole[key], err_msg=key)


def test_process_shards_of_an_epoch_are_disjoint_and_cover_it(data):
  # Without jitter the wrist is the example's own (camera-frame, metres): it names the example.
  options = dict(batch_size=6, seed=1, vertex_scale=0.1, prefetch=0, num_workers=0, process_count=2)
  epoch = [
      next(input_pipeline.train_batches(data['source'], start_step=0, process_index=p, **options))
      for p in range(2)
  ]
  seen = np.concatenate([shard['wrist'] for shard in epoch])
  truth = data['memory']['joints_3d'][:, 0]
  matches = np.all(
      np.isclose(seen[:, None], truth[None], atol=1e-7), axis=-1
  )  # (6 seen, 6 examples)
  np.testing.assert_array_equal(matches.sum(axis=1), 1)  # each row is one example ...
  np.testing.assert_array_equal(matches.sum(axis=0), 1)  # ... and each example appears once


def test_order_does_not_depend_on_thread_timing(data, monkeypatch):
  source = data['source']
  expected = _take(
      input_pipeline.train_batches(
          source, batch_size=4, start_step=0, prefetch=0, num_workers=0, **TRAIN_OPTIONS
      ),
      6,
  )
  real_read = source.read
  rng = np.random.default_rng()  # unseeded on purpose: the timing must not matter
  lock = threading.Lock()

  def slow_read(indices, features=None):
    with lock:
      delay = rng.uniform(0.0, 0.05)
    time.sleep(delay)
    return real_read(indices, features)

  monkeypatch.setattr(source, 'read', slow_read)
  got = _take(
      input_pipeline.train_batches(
          source,
          batch_size=4,
          start_step=0,
          prefetch=5,
          num_threads=4,
          num_workers=0,
          **TRAIN_OPTIONS,
      ),
      6,
  )
  for a, b in zip(expected, got):
    _assert_batches_equal(a, b)


def test_prefetch_is_bounded_and_errors_surface_at_their_item():
  started = []

  def work(item):
    started.append(item)
    if item == 9:
      raise RuntimeError('item 9 is bad')
    return item * item

  results = input_pipeline.map_in_order(work, range(100), prefetch=3, num_threads=2)
  assert [next(results) for _ in range(4)] == [0, 1, 4, 9]
  time.sleep(0.2)  # let the threads run ahead as far as they may
  assert len(started) <= 4 + 3
  assert [next(results) for _ in range(5)] == [16, 25, 36, 49, 64]
  with pytest.raises(RuntimeError, match='item 9'):
    next(results)
  results.close()


def _fake_split(count, seed=0):
  rng = np.random.default_rng(seed)
  joints = rng.normal(0, 0.03, (count, 21, 3)) + np.array([0, 0, 0.5])
  return {
      'image': rng.integers(0, 255, (count, 8, 8, 3), dtype=np.uint8),
      'K': np.tile(np.array([[20.0, 0, 3.5], [0, 20.0, 3.5], [0, 0, 1]]), (count, 1, 1)).astype(
          np.float32
      ),
      'joints_3d': joints.astype(np.float32),
      'vertices_3d': (rng.normal(0, 0.03, (count, 778, 3)) + joints[:, :1]).astype(np.float32),
      'has_3d': np.ones(count, bool),
      'hand_side': np.array(['right', 'left', 'left'] * (count // 3)),
  }


def test_mean_mesh_example_is_the_mean_of_the_prepared_meshes():
  arrays = _fake_split(9)
  prepared = input_pipeline.prepare_batch(arrays, vertex_scale=0.1)  # mirrors the left hands itself
  summary = input_pipeline.prepare_batch(splits.mean_mesh_example(arrays), vertex_scale=0.1)
  assert summary['vertices'].shape == (1, 778, 3)
  np.testing.assert_allclose(summary['vertices'][0], prepared['vertices'].mean(axis=0), atol=1e-5)


def test_source_mean_mesh_streams_no_images(data, monkeypatch):
  expected = splits.mean_mesh_example(data['memory'])

  def no_images(*args, **kwargs):
    raise AssertionError('an image was decoded')

  monkeypatch.setattr(tfds.features.Image, 'decode_example', no_images)
  monkeypatch.setattr(tfds.features.Image, 'decode_example_np', no_images)
  source = splits.SplitSource(data['builder'], 'train')
  got = splits.mean_mesh_example(source)
  np.testing.assert_allclose(got['vertices_3d'], expected['vertices_3d'], atol=1e-6)
  np.testing.assert_array_equal(got['joints_3d'], expected['joints_3d'])


def test_open_split_picks_memory_or_streaming(data):
  root = data['root']
  assert isinstance(splits.open_split(_config(root / 'array_record'), 'train'), dict)  # synthetic
  source = splits.open_split(
      _config(root / 'array_record', in_memory=False, prefetch_batches=7, num_threads=3),
      'train',
      max_examples=5,
  )
  assert isinstance(source, splits.SplitSource)
  assert (source.num_examples, source.prefetch, source.num_threads) == (5, 7, 3)


def test_converted_tfrecord_data_is_streamed_and_still_read_by_tf_data(data):
  config = _config(data['root'] / 'both', in_memory=False)
  source = splits.open_split(config, 'train')
  assert isinstance(source, splits.SplitSource)
  rows = source.read(np.arange(6))
  in_memory = splits.load_split(config, 'train')  # tf.data on the tfrecord files
  for key in splits.FEATURES:
    np.testing.assert_array_equal(rows[key], data['memory'][key], err_msg=key)
    np.testing.assert_array_equal(in_memory[key], data['memory'][key], err_msg=key)


def test_tfrecord_only_data_falls_back_to_memory_or_says_how_to_convert(data, monkeypatch, capsys):
  config = _config(data['root'] / 'tfrecord', in_memory=False)
  arrays = splits.open_split(config, 'train')
  assert isinstance(arrays, dict)
  np.testing.assert_array_equal(arrays['vertices_3d'], data['memory']['vertices_3d'])
  assert 'tfds convert_format' in capsys.readouterr().out
  monkeypatch.setattr(splits, 'IN_MEMORY_FALLBACK_MAX_EXAMPLES', 5)
  with pytest.raises(
      ValueError,
      match=r'(?s)tfrecord only.*tfds convert_format --dataset_version_dir=\S*'
      rf'tfrecord/synthetic_hands/tiny/{SYNTHETIC_VERSION} --out_file_format=array_record',
  ):
    splits.open_split(config, 'train')


def test_jpeg_frames_decode_as_tf_data_decodes_them(tmp_path):
  """FreiHAND's JPEG frames: TensorFlow's decoder, not PIL's (which differs by a few grey levels)."""
  from diffhand_jax.data import fixtures
  from diffhand_jax.data.builders.freihand import freihand_dataset_builder as freihand

  mano_dir = fixtures.write_mano_standins(str(tmp_path / 'mano'))
  fixtures.make_freihand(str(tmp_path / 'freihand'), mano_dir, num_train=2, num_eval=1)
  download = tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'freihand'))
  old = freihand.Builder(data_dir=str(tmp_path / 'tfrecord'))
  old.download_and_prepare(download_config=download)
  new = freihand.Builder(data_dir=str(tmp_path / 'array_record'), file_format='array_record')
  new.download_and_prepare(download_config=download)
  memory = splits.load_split({'name': 'freihand', 'data_dir': str(tmp_path / 'tfrecord')}, 'train')
  rows = splits.SplitSource(new, 'train').read(np.arange(8))
  for key in splits.FEATURES:
    np.testing.assert_array_equal(rows[key], memory[key], err_msg=key)


@pytest.mark.slow
def test_training_on_the_streamed_split_matches_training_in_memory(tmp_path):
  """The same 4 training steps and evaluation, once from the in-memory split and once streamed."""
  import json
  from diffhand_jax.training import train
  from _inference_workdir import tiny_config, tiny_workdir

  reference_workdir, data_dir = tiny_workdir()  # trained from the in-memory split
  config = tiny_config(data_dir)
  config.dataset.in_memory = False
  config.eval.num_export = 1  # exports index single rows of the streamed split
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  with open(os.path.join(reference_workdir, 'results.json')) as f:
    reference = json.load(f)
  for key in ('pa_mpvpe', 'mpvpe', 'pa_mpjpe', 'mpjpe', 'baseline_pa_mpvpe', 'baseline_mpvpe'):
    np.testing.assert_allclose(results[key], reference[key], rtol=1e-5, err_msg=key)
  assert os.path.exists(tmp_path / 'run' / 'export' / 'step_4' / '0000.png')
