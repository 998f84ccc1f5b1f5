"""The CNN encoder keeps the ViT's output contract and plugs into the model by name."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffhand_jax.runs import model_presets
from diffhand_jax.models import cnn, diffhand


def test_cnn_encoder_shapes_and_grid():
  module = cnn.create('cnn_small')
  images = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 48, 3))
  params = module.init(jax.random.PRNGKey(1), images)['params']
  features, embedding = module.apply({'params': params}, images)
  # Three stride-2 stages: 64x48 -> 8x6 cells, one token each.
  chex.assert_shape(features, (2, 8 * 6, 128))
  chex.assert_shape(embedding, (2, 128))
  # Each sample's tokens depend on that sample only.
  other = images.at[1].set(0.0)
  features_other, _ = module.apply({'params': params}, other)
  np.testing.assert_array_equal(np.asarray(features[0]), np.asarray(features_other[0]))
  assert np.max(np.abs(np.asarray(features[1] - features_other[1]))) > 1e-3


def test_cnn_encoder_in_diffhand_and_errors():
  config = model_presets.get_model_config('tiny')
  config.encoder = 'cnn_small'
  config.encoder_overrides = {'widths': (16, 16, 32)}
  model = diffhand.build_model(config)
  params = diffhand.init(model, jax.random.PRNGKey(0), config.img_size)
  x0_hat, camera = model.apply(
      {'params': params},
      jnp.zeros((2, 64, 64, 3)),
      jnp.zeros((2, 778, 3)),
      jnp.zeros((2,), jnp.int32),
  )
  chex.assert_shape(x0_hat, (2, 778, 3))
  chex.assert_shape(camera, (2, 3))
  # The encoder the name picks: a ConvEncoder of the overridden widths, built here directly, has the
  # model's encoder params and, applied with them, gives the model's image condition (a ViT would
  # neither hold conv kernels nor give 8 x 8 = 64 tokens of width 32).
  images = jax.random.normal(jax.random.PRNGKey(2), (2, 64, 64, 3))
  direct = cnn.ConvEncoder(widths=(16, 16, 32), blocks_per_stage=1)
  shapes = lambda tree: jax.tree_util.tree_map(lambda leaf: leaf.shape, tree)
  expected = jax.eval_shape(direct.init, jax.random.PRNGKey(0), images)['params']
  assert shapes(params['encoder']) == shapes(expected)
  features, embedding = direct.apply({'params': params['encoder']}, images)
  chex.assert_shape(features, (2, 64, 32))
  cond = model.apply({'params': params}, images, method=diffhand.DiffHand.encode)
  np.testing.assert_allclose(np.asarray(cond.features), np.asarray(features), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
      np.asarray(cond.embedding), np.asarray(embedding), rtol=1e-6, atol=1e-6
  )
  with pytest.raises(ValueError, match='unknown CNN encoder'):
    cnn.create('cnn_huge')
