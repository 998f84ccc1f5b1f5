"""The train loop's pieces (mesh, sharding rules, deterministic batches, frame conventions) and an
end-to-end run of main's training function with resume."""

import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from diffhand_jax import input_pipeline, train
from _inference_workdir import tiny_config


def test_make_mesh_fills_in_one_axis():
  devices = jax.devices()
  mesh = train.make_mesh({'data': -1, 'fsdp': 1})
  assert dict(mesh.shape) == {'data': len(devices), 'fsdp': 1}
  with pytest.raises(ValueError, match='one axis'):
    train.make_mesh({'data': -1, 'fsdp': -1})
  with pytest.raises(ValueError, match='needs'):
    train.make_mesh({'data': len(devices) + 1, 'fsdp': 1})


def test_fsdp_rule_shards_largest_divisible_dimension():
  P = jax.sharding.PartitionSpec
  assert train.param_spec((1024, 4096), 4, 1000) == P(None, 'fsdp')
  assert train.param_spec((1024, 4098), 4, 1000) == P('fsdp', None)  # 4098 % 4 != 0
  assert train.param_spec((3, 5), 4, 1) == P()  # nothing divisible: replicated
  assert train.param_spec((1024, 4096), 4, 10**8) == P()  # small tensors are replicated
  assert train.param_spec((1024, 4096), 1, 1) == P()


def test_global_indices_are_epoch_permutations_and_resumable():
  n, batch = 10, 4
  first_two_epochs = np.concatenate([train_step for train_step in
                                     (input_pipeline.global_indices(n, batch, 7, s) for s in range(5))])
  np.testing.assert_array_equal(np.sort(first_two_epochs[:10]), np.arange(10))
  np.testing.assert_array_equal(np.sort(first_two_epochs[10:20]), np.arange(10))
  assert not np.array_equal(first_two_epochs[:10], first_two_epochs[10:20])
  np.testing.assert_array_equal(input_pipeline.global_indices(n, batch, 7, 3),
                                first_two_epochs[12:16])  # a pure function of the step


def _fake_split(count, size=8, seed=0):
  rng = np.random.default_rng(seed)
  joints = rng.normal(0, 0.03, (count, 21, 3)) + np.array([0, 0, 0.5])
  return {
      'image': rng.integers(0, 255, (count, size, size, 3), dtype=np.uint8),
      'K': np.tile(np.array([[20.0, 0, 3.5], [0, 20.0, 3.5], [0, 0, 1]]), (count, 1, 1)),
      'joints_3d': joints, 'vertices_3d': rng.normal(0, 0.03, (count, 778, 3)) + joints[:, :1],
      'has_3d': np.ones(count, bool), 'hand_side': np.array(['right', 'left'] * (count // 2)),
  }


def test_process_slices_concatenate_to_the_global_batch():
  arrays = _fake_split(12)
  whole = next(input_pipeline.train_batches(arrays, batch_size=6, seed=1, start_step=3, vertex_scale=0.1))
  parts = [next(input_pipeline.train_batches(arrays, batch_size=6, seed=1, start_step=3, vertex_scale=0.1,
                                             process_index=p, process_count=3)) for p in range(3)]
  for key in ('image', 'vertices', 'joints_2d'):
    np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in parts]))


def test_mirroring_commutes_with_projection():
  arrays = _fake_split(2)
  is_left = np.array([False, True])
  images, K, joints, vertices = input_pipeline.mirror_left_hands(
      arrays['image'], arrays['K'], arrays['joints_3d'], arrays['vertices_3d'], is_left)
  width = images.shape[2]
  before = input_pipeline.project(arrays['joints_3d'], arrays['K'])
  after = input_pipeline.project(joints, K)
  np.testing.assert_allclose(after[1, :, 0], width - 1 - before[1, :, 0], atol=1e-9)
  np.testing.assert_allclose(after[1, :, 1], before[1, :, 1], atol=1e-9)
  np.testing.assert_array_equal(images[1], arrays['image'][1][:, ::-1])
  np.testing.assert_array_equal(images[0], arrays['image'][0])
  np.testing.assert_allclose(after[0], before[0])


def test_resize_keeps_projection_consistent():
  arrays = _fake_split(2, size=8)
  images, K = input_pipeline.resize_frames(arrays['image'], arrays['K'], 16)
  assert images.shape == (2, 16, 16, 3)
  before = input_pipeline.project(arrays['joints_3d'], arrays['K'])
  after = input_pipeline.project(arrays['joints_3d'], K)
  np.testing.assert_allclose(after, (before + 0.5) * 2 - 0.5, atol=1e-9)


def _tiny_config(data_dir):
  config = tiny_config(data_dir)  # the inference tests' tiny run, logging every step and exporting one
  config.log_every_steps = 1
  config.eval.num_export = 1
  return config


def _train_losses(workdir):
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r['loss'] for r in records if r['split'] == 'train'}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """One 4-step tiny run, shared by the tests below (each copies the workdir before changing it)."""
  root = tmp_path_factory.mktemp('train')
  config = _tiny_config(root / 'tfds')
  results = train.train_and_evaluate(config, str(root / 'run'))
  return config, root, results


def test_train_writes_metrics_results_checkpoints_and_exports(trained):
  config, root, results = trained
  workdir = root / 'run'
  assert results['step'] == 4
  on_disk = json.loads((workdir / 'results.json').read_text())
  for key in ('mpjpe', 'pa_mpjpe', 'mpvpe', 'pa_mpvpe', 'pa_auc_j', 'pa_auc_v', 'pa_f5', 'pa_f15',
              'baseline_pa_mpvpe', 'step'):
    assert key in on_disk
  assert sorted(_train_losses(workdir)) == [1, 2, 3, 4]
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert any(r['split'] == 'test' for r in records)
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  assert sorted(os.listdir(workdir / 'export' / 'step_4')) == ['0000.obj', '0000.png']
  assert (workdir / 'config.json').exists()


def test_resume_continues_and_matches_an_uninterrupted_run(trained, tmp_path):
  config, root, _ = trained
  workdir = tmp_path / 'run'
  shutil.copytree(root / 'run', workdir)
  config = ml_collections.ConfigDict(config.to_dict())
  config.num_train_steps = 6
  config.eval_every_steps = 6
  config.eval.num_export = 0
  results = train.train_and_evaluate(config, str(workdir))
  assert results['step'] == 6
  resumed = _train_losses(workdir)
  assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
  # Data order and RNG are functions of the step and the state is restored exactly, so the resumed
  # steps' losses equal those of a run that was never interrupted.
  straight = tmp_path / 'straight'
  train.train_and_evaluate(config, str(straight))
  uninterrupted = _train_losses(straight)
  for step in (1, 2, 3, 4, 5, 6):
    assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-6, abs=1e-7)


def test_newest_damaged_checkpoint_falls_back_to_previous(trained, tmp_path, capsys):
  config, root, _ = trained
  workdir = tmp_path / 'run'
  shutil.copytree(root / 'run', workdir)
  for path in sorted((workdir / 'checkpoints' / '4').rglob('*')):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(b'garbage')  # corrupt every file of the newest checkpoint
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.num_export = 0
  results = train.evaluate_checkpoint(config, str(workdir))
  assert results['step'] == 2
  assert 'could not be restored' in capsys.readouterr().out


def test_evaluate_mode_with_hypotheses_writes_oracle_and_per_sample_errors(trained, tmp_path):
  config, root, _ = trained
  workdir = tmp_path / 'run'
  shutil.copytree(root / 'run', workdir)
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.num_export = 0
  config.model.num_hypotheses = 3
  results = train.evaluate_checkpoint(config, str(workdir))
  summary = results['hypotheses']
  assert summary['num_hypotheses'] == 3
  # The best-of-K choice can only beat (or tie) hypothesis 0 on the metric it picks by.
  assert summary['oracle']['pa_mpvpe'] <= summary['first']['pa_mpvpe'] + 1e-9
  assert results['pa_mpvpe'] == pytest.approx(summary['aggregated']['pa_mpvpe'])
  per_sample = np.load(workdir / 'eval_per_sample.npz')
  assert per_sample['pa_mpvpe'].shape == (results['num_examples'],)
  assert per_sample['pa_mpvpe'].mean() == pytest.approx(results['pa_mpvpe'])
  assert np.all(per_sample['uncertainty_m'] > 0)  # three different noises give three meshes


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  config = _tiny_config(tmp_path / 'tfds')
  config.eval.num_export = 0
  config.num_train_steps = 6
  config.checkpoint_every_steps = 1
  real_batches = input_pipeline.train_batches

  def poisoned(*args, **kwargs):
    for step, batch in enumerate(real_batches(*args, **kwargs), start=kwargs['start_step'] + 1):
      if step == 3:
        batch = dict(batch, vertices=np.full_like(batch['vertices'], np.nan))
      yield batch

  monkeypatch.setattr(input_pipeline, 'train_batches', poisoned)
  workdir = tmp_path / 'run'
  with pytest.raises(FloatingPointError, match='by step 3'):
    train.train_and_evaluate(config, str(workdir))
  steps = sorted(int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit())
  assert steps[-1] == 2  # the diverged state was never saved
  monkeypatch.setattr(input_pipeline, 'train_batches', real_batches)
  results = train.evaluate_checkpoint(config, str(workdir))
  assert results['step'] == 2 and np.isfinite(results['pa_mpvpe'])
