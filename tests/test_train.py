"""The train loop's pieces (mesh, sharding rules, deterministic batches, frame conventions) and an
end-to-end run of main's training function with resume."""

import json
import os
import shutil
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffhand_jax.data import input_pipeline
from diffhand_jax.training import train
from diffhand_jax.runs import state as state_lib
from diffhand_jax.training import sharding, step as step_lib
from _inference_workdir import tiny_config


def test_make_mesh_fills_in_one_axis():
  devices = jax.devices()
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1})
  assert dict(mesh.shape) == {'data': len(devices), 'fsdp': 1}
  with pytest.raises(ValueError, match='one axis'):
    sharding.make_mesh({'data': -1, 'fsdp': -1})
  with pytest.raises(ValueError, match='needs'):
    sharding.make_mesh({'data': len(devices) + 1, 'fsdp': 1})


def test_fsdp_rule_shards_largest_divisible_dimension():
  P = jax.sharding.PartitionSpec
  assert sharding.param_spec((1024, 4096), 4, 1000) == P(None, 'fsdp')
  assert sharding.param_spec((1024, 4098), 4, 1000) == P('fsdp', None)  # 4098 % 4 != 0
  assert sharding.param_spec((3, 5), 4, 1) == P()  # nothing divisible: replicated
  assert sharding.param_spec((1024, 4096), 4, 10**8) == P()  # small tensors are replicated
  assert sharding.param_spec((1024, 4096), 1, 1) == P()


def test_global_indices_are_epoch_permutations_and_resumable():
  n, batch = 10, 4
  first_two_epochs = np.concatenate(
      [
          train_step
          for train_step in (input_pipeline.global_indices(n, batch, 7, s) for s in range(5))
      ]
  )
  np.testing.assert_array_equal(np.sort(first_two_epochs[:10]), np.arange(10))
  np.testing.assert_array_equal(np.sort(first_two_epochs[10:20]), np.arange(10))
  assert not np.array_equal(first_two_epochs[:10], first_two_epochs[10:20])
  np.testing.assert_array_equal(
      input_pipeline.global_indices(n, batch, 7, 3), first_two_epochs[12:16]
  )  # a pure function of the step


def _fake_split(count, size=8, seed=0):
  rng = np.random.default_rng(seed)
  joints = rng.normal(0, 0.03, (count, 21, 3)) + np.array([0, 0, 0.5])
  return {
      'image': rng.integers(0, 255, (count, size, size, 3), dtype=np.uint8),
      'K': np.tile(np.array([[20.0, 0, 3.5], [0, 20.0, 3.5], [0, 0, 1]]), (count, 1, 1)),
      'joints_3d': joints,
      'vertices_3d': rng.normal(0, 0.03, (count, 778, 3)) + joints[:, :1],
      'has_3d': np.ones(count, bool),
      'hand_side': np.array(['right', 'left'] * (count // 2)),
  }


def test_process_slices_concatenate_to_the_global_batch():
  arrays = _fake_split(12)
  whole = next(
      input_pipeline.train_batches(arrays, batch_size=6, seed=1, start_step=3, vertex_scale=0.1)
  )
  parts = [
      next(
          input_pipeline.train_batches(
              arrays,
              batch_size=6,
              seed=1,
              start_step=3,
              vertex_scale=0.1,
              process_index=p,
              process_count=3,
          )
      )
      for p in range(3)
  ]
  for key in ('image', 'vertices', 'joints_2d'):
    np.testing.assert_array_equal(whole[key], np.concatenate([p[key] for p in parts]))


def test_mirroring_commutes_with_projection():
  arrays = _fake_split(2)
  is_left = np.array([False, True])
  images, K, joints, vertices = input_pipeline.mirror_left_hands(
      arrays['image'], arrays['K'], arrays['joints_3d'], arrays['vertices_3d'], is_left
  )
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


def test_export_writes_meshes_panel_rows_and_a_contact_sheet(tmp_path, monkeypatch):
  from PIL import Image

  from diffhand_jax.geometry import render
  from diffhand_jax.training import evaluation

  arrays = _fake_split(4)  # 8 px images: right, left, right (no 3D truth), left
  arrays['has_3d'][2] = False
  batch = input_pipeline.prepare_batch(arrays, vertex_scale=1.0)
  # A prediction 1 cm off the truth, root-relative in the mirrored frame as predict_split returns it.
  prediction = {'vertices': batch['vertices'] + np.array([0.01, 0.0, 0.0], np.float32)}
  per_sample = {'pa_mpvpe': np.array([12.34, 5.0, 7.0, 8.0]), 'mpvpe': np.array([40.12, 1, 2, 3])}
  topology = types.SimpleNamespace(faces=np.arange(777).reshape(259, 3))
  calls, panel_row = [], render.panel_row

  def recording_panel_row(image, prediction, faces, K, truth=None, **kwargs):
    calls.append((prediction, truth, kwargs['caption']))
    return panel_row(image, prediction, faces, K, truth, **kwargs)

  monkeypatch.setattr(render, 'panel_row', recording_panel_row)
  evaluation.export_examples(tmp_path, prediction, arrays, topology, 3, per_sample)
  assert sorted(os.listdir(tmp_path)) == [
      '0000.obj',
      '0000.png',
      '0001.obj',
      '0001.png',
      '0002.obj',
      '0002.png',
      'contact_sheet.png',
  ]
  # The truth is drawn where the split has it, in each image's own camera frame (left hands mirrored
  # back); the prediction is placed at the true wrist the same way.
  for i, (pred, truth, caption) in enumerate(calls):
    if i == 2:
      assert truth is None and caption == '0002'
      continue
    np.testing.assert_allclose(truth, arrays['vertices_3d'][i], atol=1e-6)
    sign = -1.0 if arrays['hand_side'][i] == 'left' else 1.0
    np.testing.assert_allclose(
        pred - truth, np.broadcast_to([sign * 0.01, 0, 0], pred.shape), atol=1e-6
    )
  assert calls[0][2] == '0000 \u00b7 PA-MPVPE 12.3 mm \u00b7 MPVPE 40.1 mm'
  # 8 px images are drawn x32: rows of 3 panels (2 without truth) under labels, over a caption.
  label, gap = render.LABEL_HEIGHT, render.PANEL_GAP
  row_shapes = [np.asarray(Image.open(tmp_path / f'{i:04d}.png')).shape for i in range(3)]
  assert row_shapes[0] == row_shapes[1] == (2 * label + 256, 3 * 256 + 2 * gap, 3)
  assert row_shapes[2] == (2 * label + 256, 2 * 256 + gap, 3)
  sheet = np.asarray(Image.open(tmp_path / 'contact_sheet.png'))
  # Two rows per line, 8 px apart and from the edges: 2 lines of the largest row's size.
  assert sheet.shape == (2 * row_shapes[0][0] + 3 * 8, 2 * row_shapes[0][1] + 3 * 8, 3)
  # Other callers keep working without the errors.
  evaluation.export_examples(tmp_path / 'plain', prediction, arrays, topology, 1)
  assert sorted(os.listdir(tmp_path / 'plain')) == ['0000.obj', '0000.png', 'contact_sheet.png']


def _tiny_config(data_dir):
  config = tiny_config(
      data_dir
  )  # the inference tests' tiny run, logging every step and exporting one
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
  for key in (
      'mpjpe',
      'pa_mpjpe',
      'mpvpe',
      'pa_mpvpe',
      'pa_auc_j',
      'pa_auc_v',
      'pa_f5',
      'pa_f15',
      'baseline_pa_mpvpe',
      'step',
  ):
    assert key in on_disk
  assert sorted(_train_losses(workdir)) == [1, 2, 3, 4]
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert any(r['split'] == 'test' for r in records)
  for row in (r for r in records if r['split'] == 'train'):  # throughput you can see (perf/ names)
    perf = {k: v for k, v in row.items() if k.startswith('perf/')}
    assert set(perf) == {
        'perf/step_time_seconds',
        'perf/images_per_sec',
        'perf/images_per_sec_per_device',
        'perf/per_device_tflops_per_sec',
        'perf/mfu',
        'perf/input_wait_fraction',
    }
    assert perf['perf/images_per_sec'] == pytest.approx(
        config.batch_size / perf['perf/step_time_seconds']
    )
    assert 0 < perf['perf/mfu'] < 1 and 0 <= perf['perf/input_wait_fraction'] <= 1
  assert os.listdir(workdir / 'tensorboard')  # clu's writer
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  assert sorted(os.listdir(workdir / 'export' / 'step_4')) == [
      '0000.obj',
      '0000.png',
      'contact_sheet.png',
  ]
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
  out = capsys.readouterr().out
  assert out.count('warning: the checkpoint at step 4 could not be read') == 1
  # Moved aside, never deleted; the good step 2 is where it was.
  assert (workdir / 'checkpoints' / 'corrupt' / '4').is_dir() and (
      workdir / 'checkpoints' / '2'
  ).is_dir()


def test_evaluate_mode_with_hypotheses_writes_oracle_and_per_sample_errors(
    trained, tmp_path, monkeypatch
):
  """The reported errors are those of config.eval.aggregate's mesh of the K hypotheses, the oracle's
  and hypothesis 0's, each worked out here from the hypotheses the evaluation sampled."""
  from diffhand_jax import metrics

  config, root, _ = trained
  workdir = tmp_path / 'run'
  shutil.copytree(root / 'run', workdir)
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.num_export = 0
  config.model.num_hypotheses = 3
  config.eval.aggregate = 'mean'  # configs/synthetic.py's is 'aligned_mean'
  sampled, real_summarize = [], metrics.summarize_hypotheses

  def recording_summarize(vertices, gt_vertices, gt_joints, joint_regressor, **kwargs):
    sampled.append((vertices, gt_vertices, gt_joints, np.asarray(joint_regressor)))
    return real_summarize(vertices, gt_vertices, gt_joints, joint_regressor, **kwargs)

  monkeypatch.setattr(metrics, 'summarize_hypotheses', recording_summarize)
  results = train.evaluate_checkpoint(config, str(workdir))
  ((hyps, gt_vertices, gt_joints, regressor),) = sampled
  assert hyps.shape == (results['num_examples'], 3, 778, 3)

  def pa_mpvpe(mesh):  # (B, N, 3) → per-sample PA-MPVPE, mm
    joints = np.einsum('jn,bnc->bjc', regressor, mesh)
    return metrics.evaluate_per_sample(joints, gt_joints, mesh, gt_vertices)['pa_mpvpe']

  summary = results['hypotheses']
  assert summary['num_hypotheses'] == 3
  # config.eval.aggregate = 'mean': the vertex-wise mean of the three hypotheses.
  assert results['sampler']['aggregate'] == 'mean'
  mean_errors = pa_mpvpe(hyps.sum(axis=1) / 3)
  assert results['pa_mpvpe'] == pytest.approx(mean_errors.mean(), rel=1e-9)
  # The best-of-K oracle takes each image's best hypothesis; 'first' is hypothesis 0 alone.
  each = np.stack([pa_mpvpe(hyps[:, k]) for k in range(3)], axis=1)
  assert summary['oracle']['pa_mpvpe'] == pytest.approx(each.min(axis=1).mean(), rel=1e-9)
  assert summary['first']['pa_mpvpe'] == pytest.approx(each[:, 0].mean(), rel=1e-9)
  # The best-of-K choice can only beat (or tie) hypothesis 0 on the metric it picks by.
  assert summary['oracle']['pa_mpvpe'] <= summary['first']['pa_mpvpe'] + 1e-9
  per_sample = np.load(workdir / 'eval_per_sample.npz')
  assert per_sample['pa_mpvpe'].shape == (results['num_examples'],)
  np.testing.assert_allclose(per_sample['pa_mpvpe'], mean_errors, rtol=1e-9)
  assert per_sample['pa_mpvpe'].mean() == pytest.approx(results['pa_mpvpe'])
  assert np.all(per_sample['uncertainty_m'] > 0)  # three different noises give three meshes

  # config.eval.aggregate = 'medoid': the same hypotheses (the same key), and per image the one with
  # the smallest summed mean per-vertex distance to the others.
  config.eval.aggregate = 'medoid'
  medoid_results = train.evaluate_checkpoint(config, str(workdir))
  again = sampled[-1][0]
  np.testing.assert_array_equal(again, hyps)
  distances = np.array(
      [
          [[np.linalg.norm(h[j] - h[k], axis=-1).mean() for k in range(3)] for j in range(3)]
          for h in hyps
      ]
  )  # (B, K, K)
  medoid = hyps[np.arange(len(hyps)), distances.sum(axis=-1).argmin(axis=-1)]
  assert medoid_results['sampler']['aggregate'] == 'medoid'
  assert medoid_results['pa_mpvpe'] == pytest.approx(pa_mpvpe(medoid).mean(), rel=1e-9)
  assert medoid_results['pa_mpvpe'] != pytest.approx(results['pa_mpvpe'], rel=1e-6)


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


@pytest.mark.parametrize('way_out', ['end', 'signal', 'nan', 'error'])
def test_every_way_out_closes_the_writers_checkpoints_and_input_once(
    tmp_path, monkeypatch, way_out
):
  """The end of training, a signal (SIGTERM), the NaN stop and any other error each close the metric
  writers, the checkpoint manager and the input pipeline exactly once, and give absl's logger back.
  """
  import logging

  import orbax.checkpoint as ocp

  from diffhand_jax.training import metric_log, preemption

  config = _tiny_config(tmp_path / 'tfds')
  config.eval.num_export = 0
  config.num_train_steps = 2
  closed = {'writers': 0, 'checkpoints': 0, 'input': 0}
  real_logger_close, real_manager_close = metric_log.Logger.close, ocp.CheckpointManager.close
  real_batches = input_pipeline.train_batches

  def logger_close(self):
    closed['writers'] += 1
    real_logger_close(self)

  def manager_close(self):
    closed['checkpoints'] += 1
    real_manager_close(self)

  class Batches:  # the real pipeline, counting its close (and poisoned for the NaN stop)

    def __init__(self, *args, **kwargs):
      self.inner = real_batches(*args, **kwargs)

    def __next__(self):
      batch = next(self.inner)
      if way_out == 'nan':
        batch = dict(batch, vertices=np.full_like(batch['vertices'], np.nan))
      elif way_out == 'error':
        raise OSError('the disk went away')
      return batch

    def close(self):
      closed['input'] += 1
      self.inner.close()

  def signal_at_once(self):  # as if SIGTERM arrived during the first step
    self.received, self.signal_name = True, 'SIGTERM'
    return self

  monkeypatch.setattr(metric_log.Logger, 'close', logger_close)
  monkeypatch.setattr(ocp.CheckpointManager, 'close', manager_close)
  monkeypatch.setattr(input_pipeline, 'train_batches', Batches)
  if way_out == 'signal':
    monkeypatch.setattr(preemption.PreemptionSignal, '__enter__', signal_at_once)
  filters_before = list(logging.getLogger('absl').filters)
  workdir = str(tmp_path / 'run')
  if way_out == 'end':
    assert train.train_and_evaluate(config, workdir)['step'] == 2
  elif way_out == 'signal':
    assert train.train_and_evaluate(config, workdir) == {
        'step': 1,
        'preempted': True,
        'signal': 'SIGTERM',
    }
  else:
    with pytest.raises(FloatingPointError if way_out == 'nan' else OSError):
      train.train_and_evaluate(config, workdir)
  assert closed == {'writers': 1, 'checkpoints': 1, 'input': 1}
  assert logging.getLogger('absl').filters == filters_before


# ----- gradient accumulation, bf16 compute, AOT memory report ----------------------------------------


def _step_setup(config, with_state: bool = True):
  """(initial state or None, jitted train step, mesh) of a config, on this process's devices."""
  topology, model, schedule, optimizer, mesh = step_lib.build_components(config)
  _, shardings = sharding.sharded_abstract_state(config, model, optimizer, mesh)
  state = None
  if with_state:  # unjitted, the EMA shares the params' buffers: copy, as the step donates both
    state = state_lib.create_train_state(config, model, optimizer, jax.random.PRNGKey(config.seed))
    state = jax.tree_util.tree_map(jnp.copy, state)
  return (
      state,
      step_lib.jit_train_step(config, model, optimizer, schedule, topology, mesh, shardings),
      mesh,
  )


def _random_batch(config, has_3d):
  """A fixed global batch in train_batch_spec's shapes; has_3d (B,) as given."""
  rng = np.random.default_rng(0)
  batch = {
      key: rng.normal(0.0, 0.3, spec.shape).astype(np.float32)
      for key, spec in step_lib.train_batch_spec(config).items()
  }
  batch['has_3d'] = np.asarray(has_3d, np.float32)
  return batch


def _jaxpr_equations(jaxpr):
  """Every equation of a jaxpr and of the jaxprs nested in it (pjit, scan, custom_vjp, ...)."""
  for equation in jaxpr.eqns:
    yield equation
    for value in equation.params.values():
      for sub in (value if isinstance(value, (tuple, list)) else (value,)):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _jaxpr_equations(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _jaxpr_equations(sub)


def test_micro_batches_take_every_kth_row():
  x = np.arange(12).reshape(6, 2)
  split = step_lib.micro_batches({'x': x}, 3)['x']
  assert split.shape == (3, 2, 2)
  for j in range(3):
    np.testing.assert_array_equal(split[j], x[j::3])


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
  """Two micro-batches give the one-batch losses, gradient norm and updates over two steps, although the
  labelled examples (has_3d) are spread unevenly over the micro-batches (2 in one, 1 in the other).
  """
  config = tiny_config(tmp_path / 'tfds')
  # A smaller network than the tiny preset's: this test is about the step, and compiles it twice.
  config.model.encoder_overrides.depth = 1
  config.model.decoder = 'vanilla'
  config.model.vanilla_depth = 1
  config.batch_size = 4
  config.optimizer.warmup_steps = 1  # step 0 has learning rate 0; step 1 updates at the peak
  config.optimizer.learning_rate = 1e-3
  # The auxiliary orientation term must be accumulated too (it once was not).
  config.model.orientation_head = True
  config.loss.lambda_orientation = 1.0
  batch = _random_batch(config, has_3d=[1.0, 0.0, 1.0, 1.0])
  topology, model, schedule, optimizer, mesh = step_lib.build_components(config)
  _, shardings = sharding.sharded_abstract_state(config, model, optimizer, mesh)
  first_state = state_lib.create_train_state(
      config, model, optimizer, jax.random.PRNGKey(config.seed)
  )
  runs = {}
  for num_micro in (1, 2):
    config.grad_accum_steps = num_micro
    step_fn = step_lib.jit_train_step(config, model, optimizer, schedule, topology, mesh, shardings)
    state = jax.tree_util.tree_map(jnp.copy, first_state)  # fresh buffers: the step donates them
    initial = np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(state.params)])
    global_batch = sharding.to_global(batch, sharding.batch_sharding(mesh))
    if num_micro == 2:  # the step really runs a scan over 2 micro-batches of 2 examples
      jaxpr = jax.make_jaxpr(step_fn)(state, global_batch)
      scans = [e for e in _jaxpr_equations(jaxpr.jaxpr) if e.primitive.name == 'scan']
      assert any(
          e.params['length'] == 2 and any(v.aval.shape == (2, 2, 32, 32, 3) for v in e.invars)
          for e in scans
      )
    parts = []
    for _ in range(2):
      state, step_parts = step_fn(state, global_batch)
      parts.append({k: float(v) for k, v in step_parts.items()})
    final = np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(state.params)])
    runs[num_micro] = parts, initial, final
  (one, initial, one_final), (two, _, two_final) = runs[1], runs[2]
  for step in range(2):
    for key in ('total', 'vertex', 'joint_2d', 'smooth', 'orientation'):
      assert two[step][key] == pytest.approx(one[step][key], rel=1e-5), (step, key)
    assert two[step]['grad_norm'] == pytest.approx(one[step]['grad_norm'], rel=1e-5)
  update = np.linalg.norm(one_final - initial)
  assert update > 0
  assert np.linalg.norm(two_final - one_final) <= 1e-4 * update


def _bf16_config(data_dir):
  config = tiny_config(data_dir)
  config.model.dtype = 'bfloat16'
  config.model.diffusion = (
      False  # a fixed input per example, so the loss on a fixed batch must fall
  )
  config.optimizer.warmup_steps = 1
  config.optimizer.learning_rate = 3e-3
  config.num_train_steps = 8
  return config


def test_bfloat16_compute_keeps_float32_params_and_loss_and_trains(tmp_path):
  config = _bf16_config(tmp_path / 'tfds')
  state, step_fn, mesh = _step_setup(config)
  batch = sharding.to_global(
      _random_batch(config, has_3d=[1.0, 1.0]), sharding.batch_sharding(mesh)
  )

  def dot_dtypes(step):
    jaxpr = jax.make_jaxpr(step)(state, batch)
    return [
        e.invars[0].aval.dtype
        for e in _jaxpr_equations(jaxpr.jaxpr)
        if e.primitive.name == 'dot_general'
    ]

  bf16_dots = dot_dtypes(step_fn)
  # The encoder's and decoder's matmuls run in bfloat16 (forward and backward); only the heads, the
  # camera and the losses' few matmuls stay float32.
  assert bf16_dots.count(jnp.bfloat16) > 3 * bf16_dots.count(jnp.float32) > 0
  float32_config = ml_collections.ConfigDict(config.to_dict())
  float32_config.model.dtype = 'float32'
  assert jnp.bfloat16 not in dot_dtypes(_step_setup(float32_config, with_state=False)[1])

  losses = []
  for _ in range(config.num_train_steps):
    state, parts = step_fn(state, batch)
    assert parts['total'].dtype == jnp.float32
    losses.append(float(parts['total']))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.8 * losses[0]
  for tree in (state.params, state.opt_state):
    for leaf in jax.tree_util.tree_leaves(tree):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32


def test_aot_memory_report(tmp_path, capsys, monkeypatch):
  """Compiles (never runs) the tiny bf16 step; the param bytes are the float32 size of the model's
  params as `diffhand.param_shapes` gives them, independently of the train state, and the compiler's
  figures are those of XLA's analysis of the program it compiled."""
  from diffhand_jax.training import memory
  from diffhand_jax.models import diffhand

  analysed, real_analysis = [], jax.stages.Compiled.memory_analysis

  def recording_analysis(compiled):
    analysed.append(real_analysis(compiled))
    return analysed[-1]

  monkeypatch.setattr(jax.stages.Compiled, 'memory_analysis', recording_analysis)
  config = _bf16_config(tmp_path / 'tfds')
  report = memory.print_memory_report(config)
  (stats,) = analysed  # one compile, one analysis
  for key in (
      'argument_bytes',
      'output_bytes',
      'temp_bytes',
      'total_bytes',
      'param_bytes',
      'opt_state_bytes',
  ):
    assert report[key] > 0, key
  for key, stat in (
      ('argument_bytes', 'argument_size_in_bytes'),
      ('output_bytes', 'output_size_in_bytes'),
      ('alias_bytes', 'alias_size_in_bytes'),
      ('temp_bytes', 'temp_size_in_bytes'),
      ('generated_code_bytes', 'generated_code_size_in_bytes'),
  ):
    assert report[key] == getattr(stats, stat), key
  # The generated code is the compiled program's own code: a GPU's kernels (cubin and constants) take
  # some; XLA's CPU backend reports none (0, measured with jax 0.10). It counts in the peak estimate
  # with the other four terms.
  if jax.default_backend() == 'cpu':
    assert report['generated_code_bytes'] == 0
  else:
    assert report['generated_code_bytes'] > 0
  assert report['total_bytes'] == (
      stats.argument_size_in_bytes
      + stats.output_size_in_bytes
      - stats.alias_size_in_bytes
      + stats.temp_size_in_bytes
      + stats.generated_code_size_in_bytes
  )
  _, model, _, _, _ = step_lib.build_components(config)
  shapes = jax.tree_util.tree_leaves(diffhand.param_shapes(model, config.model.img_size))
  assert report['param_bytes'] == sum(4 * int(np.prod(leaf.shape)) for leaf in shapes)
  # AdamW keeps two float32 moments per param (plus step counters); the state is an argument and,
  # donated, an output written over it.
  assert 2 * report['param_bytes'] <= report['opt_state_bytes'] <= 2 * report['param_bytes'] + 64
  assert report['argument_bytes'] >= report['param_bytes'] + report['opt_state_bytes']
  assert report['alias_bytes'] >= report['param_bytes'] + report['opt_state_bytes']
  printed = capsys.readouterr().out
  assert 'temporaries' in printed and 'total (peak estimate)' in printed
  generated_row = f"{'generated code':<24}{report['generated_code_bytes'] / memory.MIB:>12.2f}"
  assert f'\n  {generated_row}\n' in printed


def test_a_state_saved_before_it_held_batch_statistics_resumes(tmp_path):
  """Runs written before the train state had batch_stats and ema_batch_stats (#32) resume: the fields
  come back empty, as a model without BatchNorm has them, and nothing is taken for damage."""
  import json
  import flax.struct
  import orbax.checkpoint as ocp
  from diffhand_jax.runs import checkpoints

  @flax.struct.dataclass
  class StateBefore:
    step: jax.Array
    params: dict
    opt_state: tuple
    ema_params: dict
    rng: jax.Array

  config = _tiny_config(tmp_path / 'tfds')
  components = state_lib.build(config)
  state = state_lib.create_train_state(
      config, components.model, components.optimizer, jax.random.PRNGKey(0)
  )
  before = StateBefore(state.step, state.params, state.opt_state, state.ema_params, state.rng)
  manager = checkpoints.checkpoint_manager(str(tmp_path / 'run'), config)
  manager.save(
      2,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(before),
          params=ocp.args.StandardSave(checkpoints.inference_params(state, config)),
          config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
      ),
      force=True,
  )
  manager.wait_until_finished()
  manager.close()
  abstract, _ = sharding.sharded_abstract_state(
      config, components.model, components.optimizer, sharding.make_mesh(config.mesh)
  )
  restored = checkpoints.restore_for_training(str(tmp_path / 'run'), abstract)
  assert isinstance(restored, state_lib.TrainState)
  assert restored.batch_stats == {} and restored.ema_batch_stats == {}
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored.params, state.params)
  assert not (tmp_path / 'run' / 'checkpoints' / 'corrupt').exists()
