"""The train loop's pieces (mesh, sharding rules, deterministic batches, frame conventions) and an
end-to-end run of main's training function with resume."""

import json
import os

import jax
import numpy as np
import pytest

from diffhand_jax import input_pipeline, train


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
  from configs import synthetic
  config = synthetic.get_config()
  config.dataset.config_name = 'tiny'
  config.dataset.data_dir = str(data_dir)
  config.model = __import__('configs.model_presets', fromlist=['x']).get_model_config('tiny')
  config.model.img_size = 32
  config.model.sampling_steps = 2
  config.batch_size = 2
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 2
  config.eval.batch_size = 3
  config.eval.num_export = 1
  return config


def test_train_evaluate_export_and_resume(tmp_path):
  workdir = tmp_path / 'run'
  config = _tiny_config(tmp_path / 'tfds')
  results = train.train_and_evaluate(config, str(workdir))
  assert results['step'] == 4
  on_disk = json.loads((workdir / 'results.json').read_text())
  for key in ('mpjpe', 'pa_mpjpe', 'mpvpe', 'pa_mpvpe', 'pa_auc_j', 'pa_auc_v', 'pa_f5', 'pa_f15',
              'baseline_pa_mpvpe', 'step'):
    assert key in on_disk
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if r['split'] == 'train'] == [2, 4]
  assert any(r['split'] == 'test' for r in records)
  assert sorted(os.listdir(workdir / 'checkpoints'))[-1] == '4'
  exported = sorted(os.listdir(workdir / 'export' / 'step_4'))
  assert exported == ['0000.obj', '0000.png']

  config.num_train_steps = 6
  config.eval_every_steps = 6
  results = train.train_and_evaluate(config, str(workdir))
  assert results['step'] == 6
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if r['split'] == 'train'] == [2, 4, 6]
