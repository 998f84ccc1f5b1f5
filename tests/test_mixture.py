"""Weighted mixtures of training sources (data/mixture.py, issue #35): the one-entry mixture is today's
pipeline, mixed batches are a pure function of the step (any workers, any resume point, any process
split), a missing field masks its rows, and a run on the fixtures of all four datasets trains, resumes
bit-identically after a crash and evaluates on each."""

import hashlib
import json

import numpy as np
import pytest

from diffhand_jax.data import input_pipeline, mixture, splits

AUGMENT = {'scale_range': (0.9, 1.1), 'max_rotation': 0.5, 'max_translation': 0.05}


def _split(count, size, seed, crop):
  """A fake split in the common schema: ``size`` px frames; ``crop``: a hand box inside them."""
  rng = np.random.default_rng(seed)
  joints = rng.normal(0, 0.03, (count, 21, 3)) + np.array([0, 0, 0.5])
  focal = 2.0 * size
  centre = (size - 1) / 2
  out = {
      'image': rng.integers(0, 255, (count, size, size, 3), dtype=np.uint8),
      'K': np.tile(np.array([[focal, 0, centre], [0, focal, centre], [0, 0, 1]]), (count, 1, 1)),
      'joints_3d': joints.astype(np.float32),
      'vertices_3d': (rng.normal(0, 0.03, (count, 778, 3)) + joints[:, :1]).astype(np.float32),
      'has_3d': np.ones(count, bool),
      'hand_side': np.array(['right', 'left'] * (count // 2) + ['right'] * (count % 2)),
      'bbox': np.tile(np.float32([[0, 0, size - 1, size - 1]]), (count, 1)),
  }
  if crop:
    out['bbox'] = np.tile(np.float32([[size / 4, size / 4, size / 2, size / 2]]), (count, 1))
  return out


def _sources():
  """Three in-memory sources of different sizes, frames and crops, weighted 0.5 / 0.3 / 0.2."""
  return [
      mixture.Source(mixture.Entry('freihand', 'train', 0.5, None), _split(5, 16, 0, False), ()),
      mixture.Source(mixture.Entry('ho3d', 'train', 0.3, 0.25), _split(7, 40, 1, True), ()),
      mixture.Source(
          mixture.Entry('synthetic_hands', 'train', 0.2, None), _split(3, 12, 2, False), ()
      ),
  ]


def _with_features(sources):
  return [mixture.Source(s.entry, s.arrays, splits.FEATURES) for s in sources]


def _batches(sources, start, count, **kwargs):
  with mixture.train_batches(
      sources,
      batch_size=6,
      seed=4,
      start_step=start,
      vertex_scale=0.1,
      image_size=16,
      colour_strength=0.3,
      augment=AUGMENT,
      **kwargs,
  ) as batches:
    return [next(batches) for _ in range(count)]


def _assert_same(a, b):
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_mixed_batches_are_the_same_for_any_workers_start_step_and_process_split():
  sources = _with_features(_sources())
  plain = _batches(sources, 0, 5, num_workers=0, prefetch=0)
  workers = _batches(sources, 0, 5, num_workers=2, prefetch=2)
  resumed = _batches(sources, 3, 2, num_workers=0, prefetch=2)
  for a, b in zip(plain, workers):
    _assert_same(a, b)
  for a, b in zip(plain[3:], resumed):
    _assert_same(a, b)
  halves = [
      _batches(sources, 2, 1, num_workers=0, process_index=p, process_count=2)[0] for p in range(2)
  ]
  _assert_same(plain[2], {k: np.concatenate([h[k] for h in halves]) for k in plain[2]})
  assert plain[0]['image'].shape == (6, 16, 16, 3)  # every source resized to the one input size

  # 30 positions hold the sources in proportion 5 : 3 : 2 (Grain's interleaving), and each source's
  # first n draws are one epoch: a permutation of its rows.
  which, rows = zip(*(mixture.local_draws(sources, 6, 4, step) for step in range(5)), strict=True)
  which, rows = np.concatenate(which), np.concatenate(rows)
  assert np.bincount(which).tolist() == [15, 9, 6]
  for k, source in enumerate(sources):
    n = splits.num_rows(source.arrays)
    assert sorted(rows[which == k][:n].tolist()) == list(range(n))


def test_one_entry_mixture_is_the_single_split_pipeline():
  # Independent path: input_pipeline.train_batch, the single-split code every run used before.
  arrays = _split(5, 40, 3, True)
  source = mixture.Source(mixture.Entry('ho3d', 'train', 1.0, 0.25), arrays, splits.FEATURES)
  for step in (0, 1, 7):
    kwargs = dict(
        batch_size=4, seed=2, vertex_scale=0.1, image_size=16, colour_strength=0.3, augment=AUGMENT
    )
    _assert_same(
        mixture.train_batch([source], step, **kwargs),
        input_pipeline.train_batch(arrays, step, crop_margin=0.25, **kwargs),
    )


def test_a_source_without_vertices_trains_with_its_3d_terms_masked():
  sources = _with_features(_sources())
  arrays = {k: v for k, v in sources[1].arrays.items() if k not in ('vertices_3d', 'has_3d')}
  features = tuple(k for k in splits.FEATURES if k in arrays)
  sources[1] = mixture.Source(sources[1].entry, arrays, features)
  batch = mixture.train_batch(sources, 0, batch_size=10, seed=0, vertex_scale=0.1, image_size=16)
  which, _ = mixture.local_draws(sources, 10, 0, 0)
  np.testing.assert_array_equal(batch['has_3d'], (which != 1).astype(np.float32))
  assert np.isfinite(batch['joints_2d']).all() and np.isfinite(batch['vertices']).all()


def test_mixture_entries_are_checked_and_default_to_the_run_dataset():
  config = {
      'name': 'freihand',
      'config_name': 'default',
      'train_split': 'train',
      'crop_margin': None,
  }
  assert mixture.mixture_entries({**config, 'mixture': ()}) == [
      mixture.Entry('freihand', 'train', 1.0, None)
  ]
  entries = mixture.parse_entries(
      (('ho3d', 'train', 2), ('synthetic_hands/tiny', 'test', 0.5, 0.1))
  )
  assert entries == [
      mixture.Entry('ho3d', 'train', 2.0, mixture.DEFAULT_CROP_MARGIN['ho3d']),
      mixture.Entry('synthetic_hands/tiny', 'test', 0.5, 0.1),
  ]
  for bad, words in (
      ((('imagenet', 'train', 1.0),), 'known'),
      ((('ho3d', 'train', 0.0),), 'weight > 0'),
      ((('ho3d', 'train'),), 'must be'),
  ):
    with pytest.raises(ValueError, match=words):
      mixture.parse_entries(bad)
  # A run is refused before compute, naming the field (runs/checks.py).
  from diffhand_jax.runs import checks, run_config

  run = run_config.config_file('freihand')
  run.dataset.mixture = (('freihand', 'train', 0.5), ('ho3d', 'train', -1.0))
  run.eval.datasets = (('dex_ycb',),)
  problems = checks.validate_config(run, mode='evaluate')
  assert any(p.startswith('config.dataset.mixture = ') and 'weight > 0' in p for p in problems)
  assert any(p.startswith('config.eval.datasets = ') and 'must be' in p for p in problems)


def test_the_mixture_config_needs_no_data_in_memory_mode_and_every_dataset_to_train(tmp_path):
  from diffhand_jax.runs import checks, run_config

  config = run_config.config_file('mixture')
  config.dataset.data_dir = str(tmp_path)  # nothing is prepared there
  checks.check_run(
      config, None, mode='memory', device_count=1
  )  # --config.mode=memory reads no data
  config.dataset.hand_model = 'procedural'
  config.model.encoder_init = ''
  with pytest.raises(checks.RunCheckError) as refused:
    checks.check_run(config, str(tmp_path / 'run'), mode='train', device_count=1)
  # One problem per real dataset, each with its `tfds build` command; the synthetic hands build
  # themselves.
  assert len(refused.value.problems) == 3
  for name in ('freihand', 'dex_ycb', 'ho3d'):
    assert any(f'tfds build datasets/{name} ' in p for p in refused.value.problems), name


# ----- one-dataset runs: the batches recorded before mixtures ---------------------------------------

# sha256 of the batches of steps 1-3 (every key, sorted, dtype, shape and bytes) that configs/freihand.py
# (img_size 48, batch 6, seed 3) gave on the FreiHAND fixture below, computed by the code of main at
# 37b6266, before mixtures existed, on the development machine's packages (Pillow's JPEG encoder and
# TensorFlow's decoder make the fixture's pixels). After the change the same digest must come out.
FREIHAND_BATCHES_BEFORE_MIXTURES = (
    'd4120c83ca447c7b53ee50bb439253ad95cb15f98c87fe5e57302ebc9e91c117'
)


@pytest.mark.slow
def test_today_s_freihand_config_gives_the_batches_recorded_before_mixtures(tmp_path):
  import tensorflow_datasets as tfds

  from diffhand_jax.data import fixtures
  from diffhand_jax.data.builders.freihand import freihand_dataset_builder as freihand
  from diffhand_jax.runs import run_config
  from diffhand_jax.training import train

  mano_dir = fixtures.write_mano_standins(str(tmp_path / 'mano'))
  fixtures.make_freihand(str(tmp_path / 'freihand'), mano_dir, num_train=2, num_eval=1)
  freihand.Builder(
      data_dir=str(tmp_path / 'tfds'), file_format=splits.STREAMING_FILE_FORMAT
  ).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'freihand'))
  )
  config = run_config.config_file('freihand')
  config.dataset.data_dir = str(tmp_path / 'tfds')
  config.dataset.mano_dir = mano_dir
  config.model.img_size = 48
  config.batch_size = 6
  config.seed = 3
  config.dataset.num_workers = 0
  sources = train.open_train_split(config)
  assert [s.label for s in sources] == ['freihand:train']
  digest = hashlib.sha256()
  with train.train_batches(config, sources, 1) as batches:
    for _ in range(3):
      batch = next(batches)
      for key in sorted(batch):
        value = np.ascontiguousarray(batch[key])
        digest.update(f'{key}{value.dtype}{value.shape}'.encode())
        digest.update(value.tobytes())
  assert digest.hexdigest() == FREIHAND_BATCHES_BEFORE_MIXTURES


# ----- four datasets: train, kill -9, resume, evaluate on each ---------------------------------------


def _prepare_real_fixtures(root, monkeypatch):
  """The FreiHAND, HO-3D and DexYCB fixtures (diffhand_jax/data/fixtures.py) built as ArrayRecord into
  root/tfds, their hand files the procedural hand's (MANO's format)."""
  import tensorflow_datasets as tfds

  from diffhand_jax.data import fixtures
  from diffhand_jax.data.builders.dex_ycb import dex_ycb_dataset_builder as dex_ycb
  from diffhand_jax.data.builders.freihand import freihand_dataset_builder as freihand
  from diffhand_jax.data.builders.ho3d import ho3d_dataset_builder as ho3d

  mano_dir = fixtures.write_mano_standins(str(root / 'mano'))
  monkeypatch.setenv('DIFFHAND_MANO_DIR', mano_dir)
  fixtures.make_freihand(str(root / 'freihand'), mano_dir, num_train=2, num_eval=2)
  fixtures.make_ho3d(str(root / 'ho3d'), mano_dir)
  fixtures.make_dex_ycb(str(root / 'dex_ycb'), mano_dir)
  for name, module in (('freihand', freihand), ('ho3d', ho3d), ('dex_ycb', dex_ycb)):
    module.Builder(
        data_dir=str(root / 'tfds'), file_format=splits.STREAMING_FILE_FORMAT
    ).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(root / name))
    )


def _metrics(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_a_four_dataset_mixture_trains_resumes_after_kill_9_and_evaluates_on_each(
    tmp_path, monkeypatch
):
  """A shrunken model on FreiHAND 0.4 / DexYCB 0.3 / HO-3D 0.2 / synthetic 0.1 (the fixtures), killed
  with SIGKILL after step 3 of 6 and rerun: every step's loss and the final metrics of each eval set
  equal, bit for bit, those of a run never interrupted; results.json and metrics.jsonl carry each
  set's metrics and mean-mesh baseline under its name."""
  import os
  import signal
  import subprocess
  import sys

  from _inference_workdir import write_tiny_config_file

  _prepare_real_fixtures(tmp_path, monkeypatch)
  eval_sets = (('freihand', 'evaluation'), ('dex_ycb', 'test'), ('synthetic_hands/tiny', 'test'))
  config_file = write_tiny_config_file(
      tmp_path / 'config.py',
      tmp_path / 'tfds',
      **{
          'dataset.name': 'freihand',
          'dataset.config_name': 'default',
          'dataset.mixture': (
              ('freihand', 'train', 0.4),
              ('dex_ycb', 'train', 0.3),
              ('ho3d', 'train', 0.2),
              ('synthetic_hands/tiny', 'train', 0.1),
          ),
          'dataset.num_workers': 2,
          'dataset.max_rotation_deg': 30.0,
          'eval.datasets': eval_sets,
          'eval.num_export': 1,
          'batch_size': 4,
          'num_train_steps': 6,
          'log_every_steps': 1,
          'checkpoint_every_steps': 1,
          'eval_every_steps': 6,
      },
  )
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  command = [sys.executable, '-m', 'diffhand_jax.main', f'--config={config_file}']
  env = dict(os.environ, JAX_PLATFORMS='cpu')

  def run(workdir):
    done = subprocess.run(
        command + [f'--workdir={workdir}'], cwd=repo, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return done.stdout

  straight = run(tmp_path / 'straight')
  assert 'train on freihand:train 8 (0.4), dex_ycb:train' in straight

  killed = tmp_path / 'killed'
  process = subprocess.Popen(
      command + [f'--workdir={killed}'],
      cwd=repo,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  output = ''
  for line in process.stdout:
    output += line
    if line.startswith('step 3/'):
      process.send_signal(signal.SIGKILL)
      break
  process.wait(timeout=120)
  assert process.returncode == -signal.SIGKILL, output[-3000:]
  resumed = run(killed)
  assert 'resumed from step ' in resumed, resumed[-2000:]

  train_rows = {
      name: {r['step']: r['loss'] for r in _metrics(tmp_path / name) if r['split'] == 'train'}
      for name in ('straight', 'killed')
  }
  assert sorted(train_rows['killed']) == list(range(1, 7))
  assert train_rows['killed'] == train_rows['straight']  # bit for bit

  labels = [f'{dataset}:{split}' for dataset, split in eval_sets]
  results = {
      name: json.loads((tmp_path / name / 'results.json').read_text())
      for name in ('straight', 'killed')
  }
  assert results['killed'] == results['straight']
  per_set = results['straight']['datasets']
  assert list(per_set) == labels
  for label in labels:
    assert per_set[label]['num_examples'] > 0
    assert np.isfinite(per_set[label]['pa_mpvpe']) and per_set[label]['baseline_pa_mpvpe'] > 0
  assert results['straight']['pa_mpvpe'] == per_set[labels[0]]['pa_mpvpe']  # the first at the top
  eval_rows = {r['split']: r for r in _metrics(tmp_path / 'straight') if r['split'] != 'train'}
  assert sorted(eval_rows) == sorted(labels)
  for label in labels:
    assert eval_rows[label]['baseline_pa_mpvpe'] == per_set[label]['baseline_pa_mpvpe']
  export = tmp_path / 'straight' / 'export' / 'step_6'
  assert (export / '0000.obj').exists() and (export / 'dex_ycb_test' / '0000.obj').exists()
  assert (tmp_path / 'straight' / 'eval_per_sample_synthetic_hands_tiny_test.npz').exists()
