"""HRNet as DiffHand's encoder (config.model.encoder='hrnet_...'): the model it builds, and its pretrained
weights through models/pretrained.py from a local timm file, a converted file and an offline Hub cache.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
safetensors_torch = pytest.importorskip('safetensors.torch')

from diffhand_jax.models import diffhand, hrnet, pretrained  # noqa: E402
from diffhand_jax.inference import loading, sampling  # noqa: E402
from diffhand_jax.runs import checkpoints, model_presets, state as state_lib  # noqa: E402
from diffhand_jax.training import sharding, step as step_lib, train  # noqa: E402
from _inference_workdir import tiny_config  # noqa: E402

NAME = 'hrnet_w18_small'
HUB_ID = 'timm/hrnet_w18_small.fixture'


def _config(encoder_init=''):
  """The tiny model preset with the smallest HRNet at 64 px (a 2x2 grid of I_F)."""
  config = ml_collections.ConfigDict({'model': model_presets.get_model_config('tiny')})
  config.model.encoder = NAME
  config.model.encoder_overrides = model_presets.unset_encoder_overrides()
  config.model.encoder_init = encoder_init
  return config


@pytest.fixture(scope='module')
def timm_state_dict():
  """A random timm hrnet_w18_small's state dict with non-trivial BatchNorm statistics."""
  torch.manual_seed(0)
  model = timm.create_model(NAME, pretrained=False).eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
  return {key: value.clone() for key, value in model.state_dict().items()}


def _expected(state_dict):
  _, variables = hrnet.from_timm(NAME, state_dict)
  return jax.tree_util.tree_map(np.asarray, variables)


def _assert_same(actual, expected):
  assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
  jax.tree_util.tree_map(np.testing.assert_array_equal, actual, expected)


def test_diffhand_with_an_hrnet_encoder_reads_its_features_and_embedding():
  config = _config()
  assert (
      diffhand.encoder_family(NAME) == 'hrnet' and diffhand.encoder_family('hrnet_w64') == 'hrnet'
  )
  model = diffhand.build_model(config.model)
  assert isinstance(model.encoder, hrnet.HRNet)
  variables = diffhand.init_variables(model, jax.random.PRNGKey(0), 64)
  assert set(variables['batch_stats']) == {'encoder'}
  assert 'encoder' in variables['params'] and 'decoder' in variables['params']
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 64, 64, 3))
  cond = model.apply(variables, images, method=diffhand.DiffHand.encode)
  # I_F: the 2x2 grid of 2048 channels at 1/32, projected to the decoder's width inside the decoder.
  assert cond.features.shape == (2, 4, 2048) and cond.embedding.shape == (2, 2048)
  encoder_out = model.encoder.apply(
      {
          'params': variables['params']['encoder'],
          'batch_stats': variables['batch_stats']['encoder'],
      },
      images,
  )
  np.testing.assert_array_equal(cond.features, encoder_out[0])
  x_t = jnp.zeros((2, model.num_vertices, 3))
  x0_hat, camera = model.apply(
      variables, cond, x_t, jnp.zeros((2,), jnp.int32), method=diffhand.DiffHand.denoise
  )
  assert x0_hat.shape == (2, model.num_vertices, 3) and camera.shape == (2, 3)
  # Training the statistics: the batch's are used and the running ones come back updated.
  _, updates = model.apply(
      variables, images, None, True, method=diffhand.DiffHand.encode, mutable=['batch_stats']
  )
  before = variables['batch_stats']['encoder']['bn1']['mean']
  assert not np.allclose(updates['batch_stats']['encoder']['bn1']['mean'], before)


@pytest.mark.parametrize('extension', ['.pth', '.safetensors'])
def test_encoder_init_from_a_local_timm_file(tmp_path, timm_state_dict, extension):
  path = str(tmp_path / f'hrnet{extension}')
  if extension == '.pth':
    torch.save({'state_dict': timm_state_dict}, path)
  else:
    safetensors_torch.save_file(timm_state_dict, path)
  config = _config(path)
  assert pretrained.config_problems(config) == [] and pretrained.source_problems(config) == []
  _assert_same(pretrained.encoder_variables(config), _expected(timm_state_dict))


def test_encoder_init_from_a_converted_file(tmp_path, timm_state_dict):
  source = str(tmp_path / 'hrnet.pth')
  torch.save(timm_state_dict, source)
  output = str(tmp_path / 'hrnet.msgpack')
  module, variables = pretrained.convert(NAME, source, output)
  assert isinstance(module, hrnet.HRNet) and set(variables) == {'params', 'batch_stats'}
  _assert_same(pretrained.encoder_variables(_config(output)), _expected(timm_state_dict))


def test_encoder_init_from_a_hub_id_offline_through_the_cache(
    tmp_path, timm_state_dict, monkeypatch
):
  # The standard Hugging Face cache layout of one file, as hf_hub_download leaves it.
  weights = str(tmp_path / 'weights.safetensors')
  safetensors_torch.save_file(timm_state_dict, weights)
  revision = 'a' * 40
  repo_dir = tmp_path / 'hf_home' / 'hub' / ('models--' + HUB_ID.replace('/', '--'))
  os.makedirs(repo_dir / 'snapshots' / revision)
  os.makedirs(repo_dir / 'refs')
  (repo_dir / 'refs' / 'main').write_text(revision)
  shutil.copy(weights, repo_dir / 'snapshots' / revision / pretrained.HUB_FILENAME)
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(tmp_path / 'hf_home' / 'hub'))
  config = _config(HUB_ID)
  assert pretrained.source_problems(config) == []
  _assert_same(pretrained.encoder_variables(config), _expected(timm_state_dict))
  config.model.encoder_init = 'timm/hrnet_w64.not_cached'
  assert 'HF_HUB_OFFLINE=1' in pretrained.source_problems(config)[0]


def test_a_file_of_another_width_is_refused_with_its_keys(tmp_path, timm_state_dict):
  path = str(tmp_path / 'hrnet.pth')
  torch.save(timm_state_dict, path)
  config = _config(path)
  config.model.encoder = 'hrnet_w18_small_v2'
  with pytest.raises(pretrained.CheckpointError, match='hrnet_w18_small_v2'):
    pretrained.encoder_variables(config)


# ----- BatchNorm statistics in training: the step, the train state, checkpoints and inference ---------


def _step_inputs(model, batch_size=4):
  variables = diffhand.init_variables(model, jax.random.PRNGKey(0), 64)
  images = jax.random.normal(jax.random.PRNGKey(1), (batch_size, 64, 64, 3))
  batch = {
      'image': images,
      'x_t': jnp.zeros((batch_size, model.num_vertices, 3)),
      't': jnp.zeros((batch_size,), jnp.int32),
  }
  return variables, batch


def _batch_norm_config(**batch_norm):
  config = _config()
  config.batch_norm = ml_collections.ConfigDict(
      dict({'statistics': 'synchronised', 'freeze': False}, **batch_norm)
  )
  return config


def test_step_trains_synchronised_or_per_device_statistics_or_freezes_them():
  model = diffhand.build_model(_config().model)
  variables, batch = _step_inputs(model)
  params, stats = variables['params'], variables['batch_stats']

  def run(config, rows=slice(None), num_devices=1):
    part = {key: value[rows] for key, value in batch.items()}
    return step_lib.training_pass(model, params, stats, part, config, num_devices)

  synchronised = _batch_norm_config()
  out, whole = run(synchronised)
  assert out['x0_hat'].shape == (4, model.num_vertices, 3)
  # The first BN's running variance: the blocks' mean of per-block variances is not the whole batch's.
  changed = lambda a, b: not np.allclose(a['encoder']['bn1']['var'], b['encoder']['bn1']['var'])
  assert changed(whole, stats)
  # per_device: each device's block of rows normalised alone; the running statistics move by the mean
  # of the blocks' updates.
  per_device = _batch_norm_config(statistics='per_device')
  out, blocks = run(per_device, num_devices=2)
  first_out, first = run(per_device, slice(0, 2))
  _, second = run(per_device, slice(2, 4))
  np.testing.assert_allclose(out['x0_hat'][:2], first_out['x0_hat'], rtol=1e-4, atol=1e-5)
  jax.tree_util.tree_map(
      lambda b, f, s: np.testing.assert_allclose(b, (f + s) / 2, rtol=1e-4, atol=1e-6),
      blocks,
      first,
      second,
  )
  assert changed(blocks, whole)
  # Frozen: running statistics normalise, and stay as they were.
  _, frozen = run(_batch_norm_config(freeze=True))
  assert frozen is stats
  with pytest.raises(ValueError, match='config.batch_norm.statistics'):
    run(_batch_norm_config(statistics='sync'))


def _hrnet_run_config(data_dir, weights, steps):
  """The inference tests' tiny run with hrnet_w18_small at 64 px from a local timm file (EMA on)."""
  config = tiny_config(data_dir)
  config.model.encoder = NAME
  config.model.encoder_overrides = model_presets.unset_encoder_overrides()
  config.model.img_size = 64
  config.model.encoder_init = weights
  config.num_train_steps = steps
  config.eval_every_steps = steps
  config.checkpoint_every_steps = 1
  config.log_every_steps = 1
  assert config.ema_decay > 0 and config.batch_norm.statistics == 'synchronised'
  return config


def _saved_state(workdir, config):
  components = state_lib.build(config)
  abstract, _ = sharding.sharded_abstract_state(
      config, components.model, components.optimizer, sharding.make_mesh(config.mesh)
  )
  return checkpoints.restore_for_training(str(workdir), abstract)


def _train_losses(workdir):
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r['loss'] for r in records if r['split'] == 'train'}


def test_hrnet_run_resumes_bit_identically_with_its_statistics_then_evaluates_and_predicts(
    tmp_path, timm_state_dict
):
  weights = str(tmp_path / 'hrnet.safetensors')
  safetensors_torch.save_file(timm_state_dict, weights)
  data_dir = tmp_path / 'tfds'
  config = _hrnet_run_config(data_dir, weights, steps=2)
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir))
  first = _saved_state(workdir, config)
  start = _expected(timm_state_dict)['batch_stats']
  # Trained (synchronised) statistics moved away from the file's, and the EMA keeps its own copy.
  assert not np.allclose(first.batch_stats['encoder']['bn1']['var'], start['bn1']['var'])
  assert not np.allclose(first.ema_batch_stats['encoder']['bn1']['var'], start['bn1']['var'])

  # Resumed from step 2 to 3 against a run never interrupted: the same state, bit for bit.
  config = _hrnet_run_config(data_dir, weights, steps=3)
  os.remove(weights)  # a resume never reads the pretrained file again
  train.train_and_evaluate(config, str(workdir))
  straight = tmp_path / 'straight'
  safetensors_torch.save_file(timm_state_dict, weights)
  train.train_and_evaluate(config, str(straight))
  resumed_state, straight_state = _saved_state(workdir, config), _saved_state(straight, config)
  assert int(resumed_state.step) == int(straight_state.step) == 3
  for name in ('batch_stats', 'ema_batch_stats', 'params', 'ema_params'):
    jax.tree_util.tree_map(
        np.testing.assert_array_equal, getattr(resumed_state, name), getattr(straight_state, name)
    )
  assert _train_losses(workdir) == _train_losses(straight)

  # Evaluation and inference read the EMA statistics that the checkpoint stores with the EMA params.
  run = loading.load_trained(str(workdir))
  jax.tree_util.tree_map(
      np.testing.assert_array_equal, run.batch_stats, resumed_state.ema_batch_stats
  )
  results = train.evaluate_checkpoint(config, str(workdir))
  assert results['step'] == 3 and np.isfinite(results['pa_mpvpe'])
  sampler = sampling.SamplerCache(run).get(num_steps=2, num_hypotheses=1, eta=0.0, batch_size=2)
  images = np.random.default_rng(0).normal(size=(3, 64, 64, 3)).astype(np.float32)
  out = sampler.sample(images, jax.random.PRNGKey(0))
  assert out['vertices'].shape == (3, 1, 778, 3) and np.all(np.isfinite(out['vertices']))
  # The statistics matter: other statistics give other meshes.
  other = dataclasses.replace(
      sampler, batch_stats=jax.tree_util.tree_map(lambda s: s * 2.0, run.batch_stats)
  )
  assert not np.allclose(other.sample(images, jax.random.PRNGKey(0))['vertices'], out['vertices'])
