"""Input worker processes (config.dataset.num_workers, grain's mp_prefetch): the batches are those of the
plain loop over train_batch, bit for bit, for any number of workers and whatever the workers' timing; a
worker that dies or a corrupt record stops the run with an error that names the batch, the examples
and the file, instead of hanging; and training gives the same losses with and without workers."""

import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import time

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from diffhand_jax.data import input_pipeline, splits  # noqa: E402
from diffhand_jax.data.builders.synthetic_hands import synthetic_hands_dataset_builder  # noqa: E402

# The synthetic builder's version, as its folders and messages spell it.
SYNTHETIC_VERSION = str(synthetic_hands_dataset_builder.Builder.VERSION)

AUGMENT = {'scale_range': (0.85, 1.15), 'max_rotation': 0.6, 'max_translation': 0.08}
TRAIN_OPTIONS = dict(
    batch_size=4,
    seed=5,
    vertex_scale=0.1,
    image_size=24,
    colour_strength=0.5,
    crop_margin=0.2,
    augment=AUGMENT,
)
STEPS = 7  # 6 examples, batches of 4: steps 0-6 cross three epoch boundaries


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """synthetic_hands/tiny (6 examples, PNG frames) as ArrayRecord, streamed."""
  root = tmp_path_factory.mktemp('workers')
  config = {'name': 'synthetic_hands', 'config_name': 'tiny', 'data_dir': str(root / 'tfds')}
  return splits.SplitSource(splits.get_builder(config), 'train')


@pytest.fixture(scope='module')
def expected(source):
  """The plain loop: train_batch of each step, in this process, nothing ahead."""
  return [input_pipeline.train_batch(source, step, **TRAIN_OPTIONS) for step in range(STEPS)]


def _assert_batches_equal(first, second):
  assert first.keys() == second.keys()
  for key in first:
    assert type(second[key]) is np.ndarray, key
    np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def _take(iterator, count):
  with iterator:
    return [next(iterator) for _ in range(count)]


@contextlib.contextmanager
def _deadline(seconds):
  """Fails the test instead of letting a hang hang the suite."""

  def expire(signum, frame):
    raise TimeoutError(f'no answer within {seconds} s: the pipeline hangs')

  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


class _RecordingSource(splits.SplitSource):
  """Appends the id of the process that reads to the file named by $DIFFHAND_TEST_READ_LOG."""

  def read(self, indices, features=None):
    with open(os.environ['DIFFHAND_TEST_READ_LOG'], 'a') as log:
      log.write(f'{os.getpid()}\n')
    return super().read(indices, features)


@pytest.mark.parametrize('num_workers', [0, 1, 4])
def test_batches_equal_the_plain_loop_for_any_number_of_workers(
    source, expected, num_workers, tmp_path, monkeypatch
):
  log = tmp_path / 'reads.txt'
  monkeypatch.setenv('DIFFHAND_TEST_READ_LOG', str(log))
  recording = _copy_as(_RecordingSource, source)
  got = _take(
      input_pipeline.train_batches(
          recording, start_step=0, num_workers=num_workers, prefetch=3, **TRAIN_OPTIONS
      ),
      STEPS,
  )
  for a, b in zip(expected, got):
    _assert_batches_equal(a, b)
  assert not np.array_equal(got[0]['image'], got[1]['image'])
  # The batches were read where num_workers says: in this process for 0, else in that many other
  # processes (worker w makes steps w, w + N, ..., so each of them made some of the 7).
  readers = set(log.read_text().split())
  if num_workers == 0:
    assert readers == {str(os.getpid())}
  else:
    assert str(os.getpid()) not in readers and len(readers) == num_workers, readers


def test_a_resume_with_workers_needs_only_the_step(source, expected):
  got = _take(input_pipeline.train_batches(source, start_step=4, num_workers=2, **TRAIN_OPTIONS), 3)
  for a, b in zip(expected[4:], got):
    _assert_batches_equal(a, b)


def test_eval_batches_on_workers_equal_those_of_the_main_process(source):
  options = dict(batch_size=4, vertex_scale=0.1, image_size=24, crop_margin=0.2)
  main = list(input_pipeline.eval_batches(source, prefetch=0, **options))
  with input_pipeline.eval_batches(source, num_workers=2, **options) as batches:
    workers = list(batches)
  assert [valid for _, valid in workers] == [valid for _, valid in main] == [4, 2]
  for (a, _), (b, _) in zip(main, workers):
    _assert_batches_equal(a, b)


class _SlowSource(splits.SplitSource):
  """Sleeps a random 0-80 ms before each read, from an unseeded generator of the process it runs in."""

  def read(self, indices, features=None):
    rng = getattr(self, '_delays', None)
    if rng is None or rng[0] != os.getpid():
      rng = self._delays = (os.getpid(), np.random.default_rng())
    time.sleep(rng[1].uniform(0.0, 0.08))
    return super().read(indices, features)


def _copy_as(cls, source):
  copy = cls.__new__(cls)
  copy.__setstate__(source.__getstate__())
  return copy


def test_random_worker_delays_do_not_change_the_batches(source, expected):
  slow = _copy_as(_SlowSource, source)
  got = _take(
      input_pipeline.train_batches(slow, start_step=0, num_workers=3, prefetch=6, **TRAIN_OPTIONS),
      STEPS,
  )
  for a, b in zip(expected, got):
    _assert_batches_equal(a, b)


class _DyingSource(splits.SplitSource):
  """Its worker process is killed (SIGKILL, as the out-of-memory killer does) when it reads a batch
  holding example 5; the main process reads normally."""

  def read(self, indices, features=None):
    if multiprocessing.parent_process() is not None and 5 in np.asarray(indices):
      os.kill(os.getpid(), signal.SIGKILL)
    return super().read(indices, features)


def test_a_dead_worker_stops_the_run_naming_its_batches_and_file(source, expected):
  """A worker is killed while it makes a batch that holds example 5; the batches it had ready die with
  it, so the error names those it had not delivered (its share: every 2nd step), the fatal one
  among them, and the examples and file they come from."""
  dying = _copy_as(_DyingSource, source)
  options = dict(TRAIN_OPTIONS, start_step=0, num_workers=2)
  received = []
  with _deadline(120), input_pipeline.train_batches(dying, **options) as batches:
    with pytest.raises(RuntimeError) as raised:
      for _ in range(STEPS):
        received.append(next(batches))
  message = str(raised.value)
  match = re.fullmatch(
      r'an input worker process died \(exit code -9\) while preparing the batch(?:es)? of steps? '
      rf'([0-9, ]+) \(examples \[([0-9, ]+)\] of synthetic_hands/tiny/{SYNTHETIC_VERSION}:train \(in '
      r'\S+/synthetic_hands-train.array_record-00000-of-00001\)\)\. .*memory.*num_workers.*',
      message,
  )
  assert match, message
  steps = [int(step) for step in match.group(1).split(', ')]
  assert steps == list(range(len(received), len(received) + 2 * len(steps), 2)), message
  holding_5 = [
      step
      for step in steps
      if 5 in input_pipeline.local_indices(6, options['batch_size'], options['seed'], step)
  ]
  assert holding_5 and '5' in match.group(2).split(', '), message
  for a, b in zip(expected, received):  # what arrived before is right
    _assert_batches_equal(a, b)


def _corrupt_copy(source, directory, bad_index):
  """A copy of the split's ArrayRecord data whose record ``bad_index`` is replaced by junk bytes."""
  from array_record.python import array_record_module

  version_dir = os.path.dirname(source.record_files([0])[0])
  copy_dir = os.path.join(directory, 'copy')
  shutil.copytree(version_dir, copy_dir)
  records = source._records  # the raw serialised examples, in order
  path = os.path.join(copy_dir, os.path.basename(source.record_files([0])[0]))
  writer = array_record_module.ArrayRecordWriter(path, 'group_size:1')
  for index in range(len(records)):
    writer.write(b'not a tf.train.Example' if index == bad_index else records[index])
  writer.close()
  return tfds.builder_from_directory(copy_dir), path


@pytest.mark.parametrize('num_workers', [0, 2])
def test_a_corrupt_record_stops_the_run_naming_the_example_and_its_file(
    source, tmp_path, num_workers
):
  builder, path = _corrupt_copy(source, str(tmp_path), bad_index=2)
  corrupt = splits.SplitSource(builder, 'train')
  batches = input_pipeline.train_batches(
      corrupt, start_step=0, num_workers=num_workers, **TRAIN_OPTIONS
  )
  with _deadline(120), batches:
    with pytest.raises(
        ValueError,
        match=rf'synthetic_hands/tiny/{SYNTHETIC_VERSION}:train: example 2 \(in {path}\) does not decode',
    ):
      for _ in range(STEPS):
        next(batches)


def test_colour_jitter_and_normalisation_equal_their_formulas():
  """The table lookups give what the formulas give pixel by pixel (the arithmetic written out here)."""
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (5, 17, 23, 3), dtype=np.uint8)
  images[0] = 255  # clipping at the top ...
  images[1] = 0  # ... and at the bottom
  strength = 0.9
  rngs = [np.random.default_rng([7, i]) for i in range(5)]
  draws = np.array([np.random.default_rng([7, i]).uniform(-1.0, 1.0, 5) for i in range(5)])
  x = images.astype(np.float32)
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  jittered = (
      (x - mean) * (1.0 + 0.3 * strength * draws[:, 1])[:, None, None, None]
      + mean
      + (40.0 * strength * draws[:, 0])[:, None, None, None]
  ) * (1.0 + 0.1 * strength * draws[:, 2:5])[:, None, None, :]
  expected = np.clip(jittered, 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(input_pipeline.colour_jitter(images, rngs, strength), expected)
  normalised = (images.astype(np.float32) / 255.0 - input_pipeline.IMAGENET_MEAN) / (
      input_pipeline.IMAGENET_STD
  )
  np.testing.assert_array_equal(input_pipeline.normalise_images(images), normalised)
  np.testing.assert_array_equal(input_pipeline.normalise_images(images[0]), normalised[0])


def test_default_workers_leave_a_cpu_to_training(source, monkeypatch):
  monkeypatch.setattr(input_pipeline, 'available_cpus', lambda: 16)
  assert input_pipeline.default_num_workers(source) == 8
  monkeypatch.setattr(input_pipeline, 'available_cpus', lambda: 2)
  assert input_pipeline.default_num_workers(source) == 1
  monkeypatch.setattr(input_pipeline, 'available_cpus', lambda: 1)
  assert input_pipeline.default_num_workers(source) == 0
  assert input_pipeline.default_num_workers({'image': np.zeros((3, 8, 8, 3))}) == 0  # in memory


def _freihand_config(data_dir, mano_dir):
  from diffhand_jax.runs import model_presets, run_config

  config = run_config.config_file('freihand')
  config.dataset.data_dir = str(data_dir)
  config.dataset.mano_dir = str(mano_dir)
  config.dataset.in_memory = False
  config.model = model_presets.get_model_config('tiny')
  # Smaller than the tiny preset (as tests/test_train.py's step tests): this test is about the input.
  config.model.encoder_overrides.depth = 1
  config.model.decoder = 'vanilla'
  config.model.vanilla_depth = 1
  config.model.img_size = 32
  config.model.sampling_steps = 1
  config.model.encoder_init = ''
  config.batch_size = 4
  config.num_train_steps = 3
  config.log_every_steps = 1
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 3
  config.eval.batch_size = 2
  config.eval.max_examples = 2
  config.eval.num_export = 0
  return config


def test_training_on_freihand_gives_the_same_losses_with_0_and_2_workers(tmp_path):
  """The FreiHAND fixture (JPEG frames, decoded by TensorFlow in each worker), streamed, with the
  paper config's augmentation: 3 steps of the tiny model, once in the main process, once on 2 workers.
  """
  from diffhand_jax.data import fixtures
  from diffhand_jax.data.builders.freihand import freihand_dataset_builder as freihand
  from diffhand_jax.training import train

  mano_dir = fixtures.write_mano_standins(str(tmp_path / 'mano'))
  fixtures.make_freihand(str(tmp_path / 'freihand'), mano_dir, num_train=2, num_eval=2)
  freihand.Builder(
      data_dir=str(tmp_path / 'tfds'), file_format=splits.STREAMING_FILE_FORMAT
  ).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'freihand'))
  )
  losses = {}
  for num_workers in (0, 2):
    config = _freihand_config(tmp_path / 'tfds', mano_dir)
    config.dataset.num_workers = num_workers
    workdir = tmp_path / f'run_{num_workers}'
    train.train_and_evaluate(config, str(workdir))
    records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    losses[num_workers] = {r['step']: r['loss'] for r in records if r['split'] == 'train'}
  assert sorted(losses[0]) == [1, 2, 3]
  assert losses[2] == losses[0]
