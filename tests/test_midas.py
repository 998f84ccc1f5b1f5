"""The Flax DPT (MiDaS v3) against transformers' DPTForDepthEstimation (random weights), its loading from
a directory and from a Hugging Face cache this test lays out itself, and its refusals."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from diffhand_jax.models import midas  # noqa: E402
from diffhand_jax.models.checkpoint_errors import CheckpointError, CheckpointMismatchError  # noqa: E402

RELATIVE_TOLERANCE = 1e-4

# Two configs of different sizes. SMALL reads like Intel/dpt-large (readout 'project', factors 4, 2, 1,
# 1/2) shrunk, with a block after the last one the neck reads; WIDER has patch 8, readout 'add', no
# biases in the fusion units and a non-default head input.
SMALL = dict(
    hidden_size=32,
    num_hidden_layers=5,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=64,
    patch_size=16,
    backbone_out_indices=[0, 1, 2, 3],
    neck_hidden_sizes=[8, 16, 32, 32],
    fusion_hidden_size=16,
)
WIDER = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=256,
    image_size=48,
    patch_size=8,
    backbone_out_indices=[0, 1, 2, 3],
    readout_type='add',
    reassemble_factors=[4, 2, 1, 0.5],
    neck_hidden_sizes=[16, 24, 32, 48],
    fusion_hidden_size=32,
    use_bias_in_fusion_residual=False,
    head_in_index=-2,
)


def _reference(config_kwargs, seed=0):
  """A transformers DPTForDepthEstimation whose every tensor is random at a scale where it matters.

  transformers starts the class token and position embedding at zero and LayerNorms at (1, 0); a wrong
  token order or a dropped LayerNorm affine would then be invisible. Every tensor is redrawn.
  """
  config = transformers.DPTConfig(**config_kwargs)
  torch.manual_seed(seed)
  model = transformers.DPTForDepthEstimation(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if param.ndim == 1 and 'norm' in name and name.endswith('weight'):
        param.normal_(1.0, 0.3)
      elif param.ndim == 1:
        param.normal_(0.0, 0.2)
      elif 'token' in name or 'position' in name:
        param.normal_(0.0, 0.5)
      else:  # a Linear or conv kernel, at 1/sqrt(fan in) so activations keep their scale
        param.normal_(0.0, (param.numel() / param.shape[0]) ** -0.5)
    # Centre the last conv's output on a random batch, so that its ReLU keeps about half the map.
    size = config_kwargs['image_size']
    captured = []
    hook = model.head.head[4].register_forward_hook(lambda m, i, out: captured.append(out))
    model(pixel_values=torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(9)))
    hook.remove()
    model.head.head[4].bias -= captured[0].median()
  return config, model


@pytest.fixture(scope='module')
def small():
  """(config, model) for SMALL, made once: building a transformers model costs seconds."""
  return _reference(SMALL)


def _state_dict(model):
  return {name: value.numpy() for name, value in model.state_dict().items()}


def _assert_matches(module, params, model, size, batch=2, seed=1):
  pixels = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
  with torch.no_grad():
    expected = model(pixel_values=pixels).predicted_depth.numpy()
  actual = np.asarray(
      jax.jit(module.apply)({'params': params}, jnp.asarray(pixels.numpy().transpose(0, 2, 3, 1)))
  )
  assert actual.shape == expected.shape
  # The ReLU at the end must leave most of the map alive, else the comparison says little.
  assert (expected > 0).mean() > 0.2
  scale = np.abs(expected).max()
  np.testing.assert_allclose(actual, expected, atol=RELATIVE_TOLERANCE * scale, rtol=0)
  return actual


def test_matches_transformers_predicted_depth(small):
  config, model = small
  module, params = midas.from_transformers(config.to_dict(), _state_dict(model))
  _assert_matches(module, params, model, SMALL['image_size'])


def test_matches_transformers_predicted_depth_on_a_wider_config():
  config, model = _reference(WIDER)
  module, params = midas.from_transformers(config.to_dict(), _state_dict(model))
  _assert_matches(module, params, model, WIDER['image_size'])


def test_matches_transformers_at_another_size(small):
  # 80 px on 64-px weights: the position embedding is resized (5x5 from 4x4), and the odd grid makes
  # the stride-2 stage 3x3, so the fusion resizes a stage to its hidden map (the align_corners=False
  # path). Torch tensors are accepted as they are.
  config, model = small
  module, params = midas.from_transformers(config.to_dict(), model.state_dict())
  depth = _assert_matches(module, params, model, 80)
  assert depth.shape == (2, 96, 96)


def _save_pretrained(tmp_path, reference):
  """transformers' own writer lays out config.json + model.safetensors; returns the directory and the
  (module, params) that from_transformers makes of the model in memory (the equality tests' path).
  """
  config, model = reference
  directory = tmp_path / 'dpt'
  model.save_pretrained(directory)
  return directory, midas.from_transformers(config.to_dict(), _state_dict(model))


def _assert_same(loaded, expected):
  assert loaded[0] == expected[0]  # the same module (a dataclass: its fields)
  assert jax.tree_util.tree_structure(loaded[1]) == jax.tree_util.tree_structure(expected[1])
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded[1], expected[1])


def test_load_from_a_directory_and_a_weights_file(tmp_path, small):
  directory, expected = _save_pretrained(tmp_path, small)
  assert sorted(os.listdir(directory)) == ['config.json', 'model.safetensors']
  _assert_same(midas.load(str(directory)), expected)
  _assert_same(midas.load(str(directory / 'model.safetensors')), expected)


def _hub_cache(hf_home, repo_id, files):
  """The Hugging Face cache layout of some files of one repository, as hf_hub_download leaves it."""
  revision = 'b' * 40
  repo_dir = os.path.join(hf_home, 'hub', 'models--' + repo_id.replace('/', '--'))
  snapshot = os.path.join(repo_dir, 'snapshots', revision)
  os.makedirs(snapshot)
  os.makedirs(os.path.join(repo_dir, 'refs'))
  with open(os.path.join(repo_dir, 'refs', 'main'), 'w') as file:
    file.write(revision)
  for path in files:
    shutil.copy(path, os.path.join(snapshot, os.path.basename(path)))


def test_load_a_hub_id_offline_through_the_cache(tmp_path, monkeypatch, small):
  directory, expected = _save_pretrained(tmp_path, small)
  hf_home = str(tmp_path / 'hf_home')
  _hub_cache(hf_home, 'Intel/dpt-tiny-test', directory.iterdir())
  _hub_cache(hf_home, 'Intel/config-only', [directory / 'config.json'])
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', os.path.join(hf_home, 'hub'))

  assert midas.source_problem('Intel/dpt-tiny-test') is None
  _assert_same(midas.load('Intel/dpt-tiny-test'), expected)

  # Not cached (the default id, here) or cached without weights: one message naming the repository and
  # the command that fills the cache.
  for repo_id, absent in [(midas.DEFAULT_HUB_ID, 'config.json'), ('Intel/config-only', 'model')]:
    with pytest.raises(CheckpointError) as error:
      midas.load(repo_id) if repo_id != midas.DEFAULT_HUB_ID else midas.load()
    message = str(error.value)
    assert repo_id in message and absent in message and 'HF_HUB_OFFLINE' in message
    assert f'huggingface-cli download {repo_id}' in message
    assert repo_id in midas.source_problem(repo_id)


def test_configs_it_does_not_build_are_refused_naming_the_field():
  config = transformers.DPTConfig(**SMALL).to_dict()
  for field, value in [
      ('is_hybrid', True),
      ('backbone_config', {'model_type': 'dinov2'}),
      ('use_batch_norm_in_fusion_residual', True),
      ('hidden_act', 'relu'),
      ('backbone_out_indices', [0, 1, 2, 9]),
  ]:
    with pytest.raises(CheckpointError, match=f'DPT config field {field} = '):
      midas.module_from_config(dict(config, **{field: value}))


def test_state_dict_problems_are_all_listed(small):
  config, model = small
  state_dict = _state_dict(model)
  del state_dict['neck.convs.2.weight']
  state_dict['head.head.0.bias'] = np.zeros(3, np.float32)
  state_dict['neck.extra.weight'] = np.zeros(3, np.float32)
  with pytest.raises(CheckpointMismatchError) as error:
    midas.from_transformers(config.to_dict(), state_dict, source='weights.bin')
  message = str(error.value)
  assert message.startswith('weights.bin does not fit this DPT')
  for text in ('missing keys (1): neck.convs.2.weight', 'unused keys (1): neck.extra.weight'):
    assert text in message
  assert 'head.head.0.bias: checkpoint (3,), model (8,)' in message
  # A state dict for another backbone width: named as a backbone problem.
  _, wider = _reference(dict(SMALL, hidden_size=48, intermediate_size=96))
  with pytest.raises(CheckpointMismatchError, match=r'backbone[\s\S]*shape mismatches'):
    midas.from_transformers(config.to_dict(), _state_dict(wider))


def test_bad_files_are_one_line_errors(tmp_path, small):
  with pytest.raises(CheckpointError, match='no such file or directory'):
    midas.load(str(tmp_path / 'absent'))
  (tmp_path / 'empty').mkdir()
  with pytest.raises(
      CheckpointError, match='holds neither model.safetensors nor pytorch_model.bin'
  ):
    midas.load(str(tmp_path / 'empty'))
  directory, _ = _save_pretrained(tmp_path, small)
  (directory / 'config.json').write_text('{not json')
  with pytest.raises(CheckpointError, match=r'config\.json: cannot read it as JSON'):
    midas.load(str(directory))
  (directory / 'config.json').write_text(json.dumps([1, 2]))
  with pytest.raises(CheckpointError, match='expected a JSON object'):
    midas.load(str(directory))


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('in_size, out_size', [(4, 5), (24, 10), (3, 6), (7, 7), (1, 3)])
def test_bilinear_resize_matches_torch_interpolate(in_size, out_size, align_corners):
  x = torch.randn(2, 3, in_size, in_size + 1, generator=torch.Generator().manual_seed(3))
  expected = torch.nn.functional.interpolate(
      x, size=(out_size, out_size + 2), mode='bilinear', align_corners=align_corners
  ).numpy()
  actual = midas.resize_bilinear(
      jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
      (out_size, out_size + 2),
      align_corners=align_corners,
  )
  np.testing.assert_allclose(np.asarray(actual).transpose(0, 3, 1, 2), expected, atol=1e-5)


def test_renormalize_gives_the_processor_normalisation():
  # uint8 images normalised with ImageNet statistics, then renormalized, equal DPT's own normalisation
  # (x / 255 - 0.5) / 0.5, i.e. x / 127.5 - 1, worked by hand here.
  images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  imagenet = ((images / 255.0 - mean) / std).astype(np.float32)
  expected = images / 127.5 - 1.0
  np.testing.assert_allclose(
      midas.renormalize(jnp.asarray(imagenet), mean, std), expected, atol=1e-6
  )
  np.testing.assert_allclose(midas.normalize(images), expected, atol=1e-6)


def test_pixels_of_the_wrong_shape_are_refused(small):
  config, _ = small
  module = midas.module_from_config(config.to_dict())
  with pytest.raises(ValueError, match=r'RGB pixels \(B, H, W, 3\)'):
    module.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 1)))


def test_fields_a_config_json_leaves_out_take_transformers_defaults():
  # A config.json lists only what differs from DPTConfig's defaults; the module must read the rest as
  # transformers does. DPTConfig() is the independent source of those defaults.
  assert midas.module_from_config({'model_type': 'dpt'}) == midas.module_from_config(
      transformers.DPTConfig().to_dict()
  )
  # And the DPT-Large fields it carries are what transformers builds from them.
  large = transformers.DPTConfig(**midas.DPT_LARGE_CONFIG).to_dict()
  assert midas.module_from_config(large) == midas.module_from_config(midas.DPT_LARGE_CONFIG)


def test_online_a_repository_with_torch_weights_only_is_read(tmp_path, monkeypatch, small):
  # Online and not cached: the files are downloaded; a repository without model.safetensors falls back
  # to pytorch_model.bin. The download is a stand-in serving config.json and a torch state dict.
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  from huggingface_hub.errors import EntryNotFoundError  # pylint: disable=g-import-not-at-top

  config, model = small
  served = tmp_path / 'served'
  served.mkdir()
  config.to_json_file(served / 'config.json')
  torch.save(model.state_dict(), served / 'pytorch_model.bin')  # older repositories' torch file
  asked = []

  def download(repo_id, filename, **unused_kwargs):
    asked.append((repo_id, filename))
    if not (served / filename).exists():
      raise EntryNotFoundError(f'{filename} not in {repo_id}')
    return str(served / filename)

  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', False)
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(tmp_path / 'empty_cache'))
  monkeypatch.setattr(huggingface_hub, 'hf_hub_download', download)
  _assert_same(
      midas.load('Intel/old-dpt'), midas.from_transformers(config.to_dict(), _state_dict(model))
  )
  assert [name for _, name in asked] == ['config.json', 'model.safetensors', 'pytorch_model.bin']
