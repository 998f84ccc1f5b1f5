"""HRNet as DiffHand's encoder (config.model.encoder='hrnet_...'): the model it builds, and its pretrained
weights through models/pretrained.py from a local timm file, a converted file and an offline Hub cache.
"""

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
from diffhand_jax.runs import model_presets  # noqa: E402

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
