"""The Flax ViT against timm's own VisionTransformer (random weights), and its import rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
from timm.layers import resample_abs_pos_embed  # noqa: E402
from timm.models.vision_transformer import checkpoint_filter_fn  # noqa: E402

import _jaxpr  # noqa: E402
from diffhand_jax.models import vit  # noqa: E402

TOLERANCE = 1e-4


def _timm_model(name: str, seed: int = 0, **kwargs):
  """A random timm model whose every parameter matters.

  timm initialises LayerScale to 1e-6 and the class token to ~1e-6, which would make a wrong attention
  or a wrong token order nearly invisible; draw those (and the LayerNorm affines) at O(1) instead.
  """
  torch.manual_seed(seed)
  model = timm.create_model(name, pretrained=False, **kwargs).eval()
  with torch.no_grad():
    for param_name, param in model.named_parameters():
      if 'gamma' in param_name or 'token' in param_name or 'norm' in param_name:
        param.normal_(0.0, 0.5)
      elif param_name.endswith('bias'):
        param.normal_(0.0, 0.1)
  return model


def _timm_at_size(name: str, state_dict, img_size: int):
  """timm's model at another input size, loaded from `state_dict` as timm loads pretrained weights."""
  model = timm.create_model(name, pretrained=False, img_size=img_size).eval()
  model.load_state_dict(checkpoint_filter_fn(state_dict, model))
  return model


def _images(batch: int, size: int, seed: int = 1) -> torch.Tensor:
  return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _compare(module, params, timm_model, images: torch.Tensor) -> None:
  with torch.no_grad():
    expected = timm_model.forward_features(images).numpy()
  features, embedding = jax.jit(module.apply)(
      {'params': params}, jnp.asarray(images.numpy().transpose(0, 2, 3, 1))
  )
  prefix = timm_model.num_prefix_tokens
  assert features.shape == expected[:, prefix:].shape
  assert embedding.shape == expected[:, 0].shape
  np.testing.assert_allclose(np.asarray(features), expected[:, prefix:], atol=TOLERANCE, rtol=0)
  np.testing.assert_allclose(np.asarray(embedding), expected[:, 0], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize('name', ['deit_tiny_patch16_224', 'deit3_small_patch16_224'])
def test_matches_timm_forward_features_at_native_size(name):
  timm_model = _timm_model(name)
  state_dict = {key: value.numpy() for key, value in timm_model.state_dict().items()}
  module, params = vit.from_timm(name, state_dict)
  _compare(module, params, timm_model, _images(2, 224))


@pytest.mark.parametrize('name', ['deit_tiny_patch16_224', 'deit3_small_patch16_224'])
def test_matches_timm_with_interpolated_position_embedding(name):
  # 224 weights used at 160 (10x10 grid): timm resamples pos_embed when it loads them into a model made
  # at img_size=160; from_timm must resample the same way. Torch tensors are accepted as they are.
  timm_model = _timm_model(name)
  timm_160 = _timm_at_size(name, timm_model.state_dict(), 160)
  module, params = vit.from_timm(name, timm_model.state_dict(), img_size=160)
  assert params['pos_embed'].shape[1] == 100 + (0 if 'deit3' in name else 1)
  _compare(module, params, timm_160, _images(2, 160))


def test_distilled_deit_excludes_both_tokens_from_features():
  name = 'deit_tiny_distilled_patch16_224'
  timm_model = _timm_model(name)
  timm_64 = _timm_at_size(name, timm_model.state_dict(), 64)
  module, params = vit.from_timm(name, timm_model.state_dict(), img_size=64)
  assert module.num_prefix_tokens == 2
  _compare(module, params, timm_64, _images(2, 64))


@pytest.mark.parametrize(
    'old_grid, new_grid', [((14, 14), (16, 16)), ((14, 14), (10, 10)), ((5, 7), (12, 3))]
)
@pytest.mark.parametrize('num_prefix_tokens', [0, 1])
def test_resample_pos_embed_matches_timm(old_grid, new_grid, num_prefix_tokens):
  pos_embed = torch.randn(
      1,
      num_prefix_tokens + old_grid[0] * old_grid[1],
      8,
      generator=torch.Generator().manual_seed(2),
  )
  expected = resample_abs_pos_embed(
      pos_embed, new_size=new_grid, old_size=old_grid, num_prefix_tokens=num_prefix_tokens
  ).numpy()
  actual = vit.resample_pos_embed(
      pos_embed.numpy(), new_grid, num_prefix_tokens=num_prefix_tokens, old_grid=old_grid
  )
  np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=0)


def test_antialias_bicubic_rows_sum_to_one_and_preserve_constants():
  for in_size, out_size in [(14, 16), (14, 5), (3, 3), (1, 4)]:
    matrix = vit.antialias_bicubic_matrix(in_size, out_size)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)
  np.testing.assert_allclose(vit.antialias_bicubic_matrix(6, 6), np.eye(6), atol=1e-12)


def _tiny_timm_state_dict(name: str = 'deit3_small_patch16_224') -> dict:
  return {
      key: value.numpy()
      for key, value in timm.create_model(name, pretrained=False).state_dict().items()
  }


def test_missing_and_unused_keys_are_all_listed():
  state_dict = _tiny_timm_state_dict()
  del state_dict['blocks.3.attn.qkv.bias']
  del state_dict['norm.weight']
  state_dict['blocks.0.extra.weight'] = np.zeros(3, np.float32)
  state_dict['reg_token'] = np.zeros((1, 1, 384), np.float32)
  with pytest.raises(vit.CheckpointMismatchError) as error:
    vit.from_timm('deit3_small_patch16_224', state_dict)
  message = str(error.value)
  for key in ('blocks.3.attn.qkv.bias', 'norm.weight', 'blocks.0.extra.weight', 'reg_token'):
    assert key in message
  assert 'missing keys (2)' in message and 'unused keys (2)' in message
  assert 'head.weight' not in message  # the classifier is skipped, not reported


def test_wrong_model_reports_shape_mismatches():
  state_dict = _tiny_timm_state_dict('deit_tiny_patch16_224')
  with pytest.raises(vit.CheckpointMismatchError, match='shape mismatches') as error:
    vit.from_timm('deit_small_patch16_224', state_dict)
  assert 'blocks.0.attn.qkv.weight' in str(error.value)
  # DeiT weights (no LayerScale) given for DeiT III: the LayerScale keys are missing.
  with pytest.raises(vit.CheckpointMismatchError, match=r'blocks\.0\.ls1\.gamma'):
    vit.from_timm('deit3_small_patch16_224', _tiny_timm_state_dict('deit_small_patch16_224'))


def test_original_deit3_layer_scale_names_are_accepted():
  state_dict = _tiny_timm_state_dict()
  legacy = {
      key.replace('.ls1.gamma', '.gamma_1').replace('.ls2.gamma', '.gamma_2'): value
      for key, value in state_dict.items()
  }
  assert 'blocks.0.gamma_1' in legacy
  _, params = vit.from_timm('deit3_small_patch16_224', state_dict)
  _, legacy_params = vit.from_timm('deit3_small_patch16_224', legacy)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, legacy_params)


def test_unknown_model_and_wrong_image_size_are_clear_errors():
  with pytest.raises(ValueError, match='unknown ViT model'):
    vit.create('resnet50')
  module = vit.create('deit_tiny_patch16_224', img_size=32, depth=1)
  params = vit.init_params(module, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='built for 32x32'):
    module.apply({'params': params}, jnp.zeros((1, 48, 48, 3)))


@pytest.mark.parametrize(
    'name', ['deit_tiny_patch16_224', 'deit3_small_patch16_224', 'deit_tiny_distilled_patch16_224']
)
def test_random_init_has_the_layout_of_imported_params(name):
  module = vit.create(name, img_size=160)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 160, 160, 3)))['params']
  _, params = vit.from_timm(
      name, timm.create_model(name, pretrained=False).state_dict(), img_size=160
  )
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
  jax.tree_util.tree_map(lambda s, p: np.testing.assert_equal(s.shape, p.shape), shapes, params)


def _primitive_names(fn, *args):
  """The name of every primitive in fn's jaxpr, with repeats, also inside nested ones (pjit, remat)."""
  return [eqn.primitive.name for eqn in _jaxpr.equations(fn, *args)]


def test_conv_and_matmul_patch_embeddings_agree():
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 48, 3))
  matmul = vit.create('deit_tiny_patch16_224', img_size=(32, 48), depth=1)
  conv = vit.create('deit_tiny_patch16_224', img_size=(32, 48), depth=1, patch_embed_impl='conv')
  params = vit.init_params(matmul, jax.random.PRNGKey(0))
  # The key picks the computation: XLA's convolution for 'conv', none at all for the default 'matmul'
  # (else the two agreeing below would say nothing).
  conv_names = _primitive_names(conv.apply, {'params': params}, images)
  matmul_names = _primitive_names(matmul.apply, {'params': params}, images)
  assert 'conv_general_dilated' in conv_names
  assert 'conv_general_dilated' not in matmul_names
  outputs = [jax.jit(model.apply)({'params': params}, images) for model in (matmul, conv)]
  for expected, actual in zip(*outputs):
    assert expected.shape[1:] in ((6, 192), (192,))
    np.testing.assert_allclose(actual, expected, atol=1e-5)


def test_bfloat16_compute_stays_close_to_float32():
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  module = vit.create('deit3_small_patch16_224', img_size=32, depth=2)
  params = vit.init_params(module, jax.random.PRNGKey(0))
  features, embedding = jax.jit(module.apply)({'params': params}, images)
  features_bf16, embedding_bf16 = jax.jit(module.clone(dtype=jnp.bfloat16).apply)(
      {'params': params}, images
  )
  assert features_bf16.dtype == jnp.bfloat16 and embedding_bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(features_bf16, np.float32), features, atol=0.1)
  # remat changes memory, not values.
  features_remat, _ = jax.jit(module.clone(remat=True).apply)({'params': params}, images)
  np.testing.assert_allclose(features_remat, features, atol=1e-6)
  # And remat=True does rematerialise: one remat (jax.checkpoint) per block in the forward jaxpr, which
  # is what the backward pass recomputes; the plain model has none.
  is_remat = lambda name: 'remat' in name or 'checkpoint' in name
  remat_names = _primitive_names(module.clone(remat=True).apply, {'params': params}, images)
  plain_names = _primitive_names(module.apply, {'params': params}, images)
  assert sum(map(is_remat, remat_names)) == 2, remat_names  # depth=2
  assert not any(map(is_remat, plain_names)), plain_names
