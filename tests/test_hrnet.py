"""The Flax HRNet against timm's own HighResolutionNet (random weights and BN statistics), and its import."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')

from diffhand_jax.models import hrnet  # noqa: E402

# Max |ours - timm| over max |timm|, for the features and for the embedding.
TOLERANCE = 1e-4


def _timm_model(name: str, seed: int = 0):
  """A random timm HRNet in eval mode whose every BatchNorm matters.

  timm initialises BN to weight 1, bias 0 and its running statistics to mean 0, variance 1, which would
  hide a BN applied to the wrong tensor or with swapped statistics; draw all four (and the neck's conv
  biases) at random instead.
  """
  torch.manual_seed(seed)
  model = timm.create_model(name, pretrained=False).eval()
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.2)
        module.running_mean.normal_(0.0, 0.2)
        module.running_var.uniform_(0.5, 2.0)
      elif isinstance(module, torch.nn.Conv2d) and module.bias is not None:
        module.bias.normal_(0.0, 0.2)
  return model


def _images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
  return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _relative_error(actual, expected) -> float:
  return float(np.max(np.abs(np.asarray(actual) - expected)) / np.max(np.abs(expected)))


def _compare(name: str, size: int) -> None:
  timm_model = _timm_model(name)
  images = _images(2, size)
  with torch.no_grad():
    expected = timm_model.forward_features(images)
    expected_pool = timm_model.forward_head(expected, pre_logits=True).numpy()
  expected = expected.numpy().transpose(0, 2, 3, 1)  # NCHW -> NHWC
  module, variables = hrnet.from_timm(name, timm_model.state_dict())
  assert set(variables) == {'params', 'batch_stats'}
  features, embedding = jax.jit(module.apply)(
      variables, jnp.asarray(images.numpy().transpose(0, 2, 3, 1))
  )
  grid = size // 32
  assert features.shape == (2, grid * grid, 2048)
  assert embedding.shape == (2, 2048) == expected_pool.shape
  features_error = _relative_error(features, expected.reshape(2, grid * grid, 2048))
  embedding_error = _relative_error(embedding, expected_pool)
  print(f'{name}: relative error features {features_error:.2e}, embedding {embedding_error:.2e}')
  assert features_error < TOLERANCE
  assert embedding_error < TOLERANCE
  # I_E is the mean of I_F over the grid.
  np.testing.assert_allclose(embedding, np.asarray(features).mean(axis=1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name, size', [('hrnet_w18_small', 96), ('hrnet_w18_small_v2', 64)])
def test_matches_timm_forward_features_and_pool(name, size):
  _compare(name, size)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['hrnet_w18', 'hrnet_w64'])
def test_matches_timm_forward_features_and_pool_standard_widths(name):
  _compare(name, 64)


def test_keep_grid_gives_the_feature_map():
  timm_model = _timm_model('hrnet_w18_small')
  _, variables = hrnet.from_timm('hrnet_w18_small', timm_model.state_dict())
  images = jnp.asarray(_images(1, 64).numpy().transpose(0, 2, 3, 1))
  flat, embedding = hrnet.create('hrnet_w18_small').apply(variables, images)
  grid, grid_embedding = hrnet.create('hrnet_w18_small', keep_grid=True).apply(variables, images)
  assert grid.shape == (1, 2, 2, 2048)
  np.testing.assert_array_equal(grid.reshape(1, 4, 2048), flat)
  np.testing.assert_array_equal(grid_embedding, embedding)


def test_train_mode_uses_batch_statistics_like_torch():
  # Train mode normalises with the batch's statistics, as torch's train(); the running mean moves by
  # torch's momentum 0.1. (Flax updates the running variance with the biased batch variance, torch with
  # the unbiased one, so only the mean is compared.)
  name = 'hrnet_w18_small'
  timm_model = _timm_model(name)
  module, variables = hrnet.from_timm(name, timm_model.state_dict())
  images = _images(2, 64)
  timm_model.train()
  with torch.no_grad():
    expected = timm_model.forward_features(images).numpy().transpose(0, 2, 3, 1)
  (features, _), updates = jax.jit(
      lambda v, x: module.apply(v, x, train=True, mutable=['batch_stats'])
  )(variables, jnp.asarray(images.numpy().transpose(0, 2, 3, 1)))
  assert _relative_error(features, expected.reshape(2, 4, 2048)) < 1e-3
  expected_mean = timm_model.bn1.running_mean.numpy()
  np.testing.assert_allclose(
      updates['batch_stats']['bn1']['mean'], expected_mean, rtol=1e-4, atol=1e-5
  )
  stage_bn = timm_model.stage3[0].branches[2][1].bn2.running_mean.numpy()
  np.testing.assert_allclose(
      updates['batch_stats']['stage3_0']['branches_2_1']['bn2']['mean'],
      stage_bn,
      rtol=1e-3,
      atol=1e-4,
  )
  # Inference (the default) leaves the statistics alone and needs no mutable collection.
  module.apply(variables, jnp.zeros((1, 64, 64, 3)))


def test_random_init_has_the_layout_of_imported_variables():
  module = hrnet.create('hrnet_w18_small_v2')
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  _, variables = hrnet.from_timm(
      'hrnet_w18_small_v2', timm.create_model('hrnet_w18_small_v2', pretrained=False).state_dict()
  )
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(variables)
  jax.tree_util.tree_map(lambda s, v: np.testing.assert_equal(s.shape, v.shape), shapes, variables)


# Tracing each width takes ~2 s: two structurally different widths in the fast suite, the rest slow.
_FAST_WIDTHS = ('hrnet_w18_small', 'hrnet_w64')


@pytest.mark.parametrize(
    'name',
    [
        name if name in _FAST_WIDTHS else pytest.param(name, marks=pytest.mark.slow)
        for name in hrnet.HRNET_CONFIGS
    ],
)
def test_every_registered_width_has_timms_variable_names(name):
  # The name rule covers every timm variant: same names and shapes, without running anything.
  with torch.device('meta'):  # shapes only: no weights are allocated or initialised
    timm_model = timm.create_model(name, pretrained=False)
  timm_shapes = {
      key: tuple(value.shape)
      for key, value in timm_model.state_dict().items()
      if not key.endswith('num_batches_tracked') and not key.startswith('classifier.')
  }
  ours = {
      key: tuple(shape[i] for i in np.argsort(perm)) if perm else tuple(shape)
      for key, (_, _, perm, shape) in hrnet._key_map(hrnet.create(name)).items()
  }
  assert ours == timm_shapes, name


def _state_dict(name: str = 'hrnet_w18_small') -> dict:
  return {
      key: value.numpy()
      for key, value in timm.create_model(name, pretrained=False).state_dict().items()
  }


def test_missing_and_unused_keys_are_all_listed():
  state_dict = _state_dict()
  del state_dict['stage4.0.fuse_layers.3.0.2.1.running_var']
  del state_dict['final_layer.0.bias']
  state_dict['stage5.0.conv.weight'] = np.zeros((3,), np.float32)
  with pytest.raises(hrnet.CheckpointMismatchError) as error:
    hrnet.from_timm('hrnet_w18_small', state_dict)
  message = str(error.value)
  for key in (
      'stage4.0.fuse_layers.3.0.2.1.running_var',
      'final_layer.0.bias',
      'stage5.0.conv.weight',
  ):
    assert key in message
  assert 'missing keys (2)' in message and 'unused keys (1)' in message
  assert 'classifier' not in message and 'num_batches_tracked' not in message


def test_wrong_width_reports_shape_mismatches():
  with pytest.raises(hrnet.CheckpointMismatchError, match='shape mismatches') as error:
    hrnet.from_timm('hrnet_w18_small_v2', _state_dict('hrnet_w18_small'))
  assert 'transition1.0.0.weight' in str(error.value)


def test_unknown_model_and_bad_image_size_are_clear_errors():
  with pytest.raises(ValueError, match='unknown HRNet model'):
    hrnet.create('resnet50')
  assert hrnet.get_config('hrnet_w64.ms_in1k') is hrnet.HRNET_CONFIGS['hrnet_w64']
  module = hrnet.create('hrnet_w18_small')
  with pytest.raises(ValueError, match='multiples of 32'):
    jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 72, 64, 3)))


def test_vit_only_encoder_overrides_with_hrnet_are_a_clear_error():
  from diffhand_jax.models import diffhand
  from diffhand_jax.runs import model_presets

  model_config = model_presets.get_model_config('paper')
  model_config.encoder = 'hrnet_w18_small'
  model_config.encoder_overrides.embed_dim = 192
  with pytest.raises(ValueError, match=r'sets embed_dim, which the hrnet encoder') as error:
    diffhand.build_model(model_config)
  assert 'stem_width' in str(error.value)  # the fields it does have are listed
  model_config.encoder_overrides.embed_dim = None
  assert isinstance(diffhand.build_model(model_config).encoder, hrnet.HRNet)
