"""The two-stage depth schedule end to end on synthetic_hands/tiny (issue #33): an RGB run,
`estimate_depth` (a small DPT with random weights, killed half-way and resumed), a depth run started
from the RGB run (its first predictions are the RGB run's, bit for bit), refusals that keep the RGB
run's workdir safe, a resume of the depth run after a kill, the depth block trained alone, and
`predict` on raw images with the depth estimated inside the sampler's compiled call."""

import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from _inference_workdir import tiny_config, tiny_workdir, write_tiny_config_file

ESTIMATOR = {'depth.estimator_init': 'random:0', 'depth.estimator_size': 32, 'depth.shard_size': 4}


def _depth_config(data_dir, **overrides):
  config = tiny_config(data_dir)
  config.model.use_depth = True
  for key, value in {**ESTIMATOR, **overrides}.items():
    section, _, name = key.rpartition('.')
    (config[section] if section else config)[name] = value
  return config


@pytest.mark.slow
def test_the_two_stage_depth_schedule_end_to_end(tmp_path, capsys, monkeypatch):
  from diffhand_jax import estimate_depth, main, predict
  from diffhand_jax.data import depth as depth_lib
  from diffhand_jax.inference import depth as inference_depth, loading
  from diffhand_jax.runs import checkpoints
  from diffhand_jax.training import train

  rgb_workdir, data_dir = tiny_workdir()
  config_file = write_tiny_config_file(
      tmp_path / 'depth_config.py',
      data_dir,
      **{'model.use_depth': True, 'init_from': rgb_workdir},
  )
  estimator_flags = [f'--config.{key}={value}' for key, value in ESTIMATOR.items()]

  # estimate_depth, killed after its first shard, then resumed: the same maps as one go.
  writes = []
  real_write = depth_lib.write_shard

  def write_then_die(directory, start, stop, maps):
    writes.append((start, stop))
    path = real_write(directory, start, stop, maps)
    if len(writes) == 1:
      raise KeyboardInterrupt
    return path

  monkeypatch.setattr(depth_lib, 'write_shard', write_then_die)
  args = [f'--config={config_file}'] + estimator_flags
  assert estimate_depth.main(args) == 130
  assert 'rerun to resume' in capsys.readouterr().err
  assert estimate_depth.main(args) == 0, capsys.readouterr().err
  monkeypatch.setattr(depth_lib, 'write_shard', real_write)
  assert writes == [(0, 4), (4, 6), (0, 3)]  # train: 6 rows in shards of 4, resumed; test: 3 rows
  config = _depth_config(data_dir)
  directory = depth_lib.stored_directory(config.dataset, 'train')
  stored = depth_lib.StoredDepth(directory).read(np.arange(6))
  estimator = inference_depth.load_estimator(config.depth)
  frames = depth_lib.splits.load_split(config.dataset, 'train', features=('image',))['image']
  from diffhand_jax.data import input_pipeline

  again = np.asarray(inference_depth.estimate(estimator, input_pipeline.normalise_images(frames)))
  np.testing.assert_allclose(stored, again, atol=1.0 / 65535)

  # The depth run may not train in the RGB run's workdir: the changed model is refused there.
  assert main.main([f'--config={config_file}', f'--workdir={rgb_workdir}'] + estimator_flags) == 2
  assert 'init_from' in capsys.readouterr().err
  before = checkpoints.saved_config(rgb_workdir)

  # Step 0 of the depth run predicts exactly what the RGB run predicts.
  zero = _depth_config(data_dir, init_from=rgb_workdir, num_train_steps=0)
  zero_results = train.train_and_evaluate(zero, str(tmp_path / 'step0'))
  rgb_results = json.load(open(os.path.join(rgb_workdir, 'results.json')))
  for key in ('pa_mpvpe', 'mpvpe', 'pa_mpjpe', 'mpjpe'):
    assert zero_results[key] == rgb_results[key], key
  rgb_run, zero_run = loading.load_trained(rgb_workdir), loading.load_trained(
      str(tmp_path / 'step0')
  )
  for path, value in jax.tree_util.tree_leaves_with_path(rgb_run.params):
    np.testing.assert_array_equal(
        np.asarray(value), np.asarray(_at(zero_run.params, path)), err_msg=str(path)
    )
  assert zero_run.estimator is not None and zero_run.estimator.name == 'random:0'

  # The depth run, killed after its first checkpoint (step 2 of 4), resumes to the end.
  workdir = str(tmp_path / 'depth')
  full = _depth_config(data_dir, init_from=rgb_workdir, **{'depth.train': 'depth_block'})
  monkeypatch.setattr(train, 'log_window', _raise_after(train.log_window, 4))
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(full, workdir)
  monkeypatch.undo()
  results = train.train_and_evaluate(full, workdir)
  assert results['step'] == 4
  assert 'resumed from step 2' in capsys.readouterr().out
  depth_run = loading.load_trained(workdir, use_ema=False)
  # Only the depth block trained; the RGB run's weights are those it started from.
  changed = {
      jax.tree_util.keystr(path)
      for path, value in jax.tree_util.tree_leaves_with_path(depth_run.params)
      if not _has(rgb_run.params, path)
      or not np.array_equal(np.asarray(value), np.asarray(_at(rgb_run.params, path)))
  }
  assert changed and all(key.startswith("['depth_block']") for key in changed), changed
  assert checkpoints.saved_config(rgb_workdir) == before  # the RGB run was only read

  # predict on raw images: the user gives images, the run's estimator gives the depth.
  images = tmp_path / 'images'
  images.mkdir()
  for i, frame in enumerate(frames[:2]):
    Image.fromarray(frame).save(images / f'{i}.png')
  out = tmp_path / 'out'
  status = predict.main(
      [f'--workdir={workdir}', f'--images={images}', f'--output={out}', '--detector=none']
      + ['--steps=2', '--batch_size=2']
  )
  assert status == 0, capsys.readouterr().err
  record = json.load(open(out / '0.json'))
  assert np.asarray(record['hands'][0]['vertices']).shape == (778, 3)

  # The samplers behind predict, TTA, submissions, the app and --video estimate the depth themselves:
  # a sampler's meshes are those of reconstruct given the estimator's depth of the same images.
  from diffhand_jax.inference import sampling, tta, video
  from diffhand_jax.models import diffhand

  run = loading.load_trained(workdir)
  samplers = sampling.SamplerCache(run)
  crops = input_pipeline.normalise_images(frames[:2])
  key = jax.random.key(3)
  sampled = samplers.get(num_steps=2, num_hypotheses=1, eta=0.0, batch_size=2).sample(crops, key)
  expected = diffhand.reconstruct(
      run.model,
      run.params,
      crops,
      jax.random.fold_in(key, 0),
      num_steps=2,
      schedule=run.schedule,
      depth=inference_depth.estimate(run.estimator, crops),
  )
  np.testing.assert_allclose(
      sampled['vertices'], np.asarray(expected['vertices']) * 0.1, rtol=1e-4, atol=1e-6
  )
  augmented = samplers.get(num_steps=2, num_hypotheses=1, eta=0.0, batch_size=2).predict(
      crops, key, tta_config=tta.TTAConfig(angles_deg=(10.0,), scales=(1.0,))
  )
  assert np.all(np.isfinite(augmented['vertices']))
  warm = video.warm_start_sampler(
      samplers, num_steps=2, strength=0.5, num_hypotheses=1, method='mean', eta=0.0
  )
  first = warm(crops, None, warm.noise(key, 2), key)
  second = warm(crops, first['vertices'], warm.noise(key, 2), key)
  assert not first['warm'] and second['warm'] and np.all(np.isfinite(second['vertices']))


def _raise_after(log_window, step):
  def wrapped(config, workdir, done, *args, **kwargs):
    log_window(config, workdir, done, *args, **kwargs)
    if done == step:
      raise KeyboardInterrupt

  return wrapped


def _at(tree, path):
  for entry in path:
    tree = tree[entry.key]
  return tree


def _has(tree, path):
  try:
    _at(tree, path)
    return True
  except KeyError:
    return False
