"""Tests of the cross-modality decoder (diffhand_jax/models/decoder.py).

Small widths (D = 16, one block) keep compile time low; the structure (FPS levels, U shape, attention
wiring) is the same as the paper-size decoder's.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffhand_jax.runs import model_presets
from diffhand_jax.geometry import topology
from diffhand_jax.models import decoder

BATCH = 2
NUM_PATCHES = 16
IMAGE_DIM = 24


def _config(num_vertices, fps_sizes, kind="cross_modality", feature_block="channel_attention"):
  config = model_presets.get_model_config("tiny")
  config.width = 16
  config.num_heads = 2
  config.num_blocks = 1
  config.mlp_ratio = 2.0
  config.num_vertices = num_vertices
  config.fps_sizes = fps_sizes
  config.decoder = kind
  config.feature_block = feature_block
  return config


def _template(num_vertices):
  return np.random.default_rng(num_vertices).normal(size=(num_vertices, 3)).astype(np.float32)


def _inputs(num_vertices, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  x_t = jax.random.normal(keys[0], (BATCH, num_vertices, 3))
  t = jnp.array([0, 731], jnp.int32)
  features = jax.random.normal(keys[1], (BATCH, NUM_PATCHES, IMAGE_DIM))
  embedding = jax.random.normal(keys[2], (BATCH, IMAGE_DIM))
  return x_t, t, features, embedding


@pytest.fixture(scope="module")
def built():
  """{N: (module, params, apply)} for the cross-modality decoder at N = 778 and N = 200."""
  result = {}
  for num_vertices, fps_sizes in [(778, (195, 49)), (200, (50, 13))]:
    module = decoder.build_decoder(_config(num_vertices, fps_sizes), _template(num_vertices))
    params = decoder.jit_init(module, jax.random.key(0), *_inputs(num_vertices))
    result[num_vertices] = (module, params, jax.jit(module.apply))
  return result


@pytest.mark.parametrize("num_vertices,fps_sizes", [(778, (195, 49)), (200, (50, 13))])
def test_cross_modality_shapes(built, num_vertices, fps_sizes):
  module, params, apply = built[num_vertices]
  # The FPS hierarchy has the configured level sizes and indexes the level above.
  chex.assert_equal(tuple(len(level) for level in module.fps_indices), fps_sizes)
  decoder.check_fps_indices(module.fps_indices, num_vertices)
  x0_hat = apply(params, *_inputs(num_vertices))
  chex.assert_shape(x0_hat, (BATCH, num_vertices, 3))
  chex.assert_type(x0_hat, jnp.float32)
  chex.assert_tree_all_finite(x0_hat)
  # The learned upsampling maps go N/16 → N/4 → N, and the position embedding covers every vertex.
  block = params["params"]["vertex_block0"]
  chex.assert_shape(block["upsample2"]["kernel"], (fps_sizes[0], fps_sizes[1]))
  chex.assert_shape(block["upsample1"]["kernel"], (num_vertices, fps_sizes[0]))
  chex.assert_shape(params["params"]["vertex_embedding"]["position"], (num_vertices, 16))


def test_changing_image_features_changes_output(built):
  module, params, apply = built[778]
  x_t, t, features, embedding = _inputs(778)
  reference = apply(params, x_t, t, features, embedding)
  changed = apply(params, x_t, t, features.at[0].multiply(-1.0), embedding)
  # Only sample 0's I_F changed: sample 0's output moves, sample 1's is untouched.
  assert np.abs(np.asarray(changed[0] - reference[0])).max() > 1e-4
  np.testing.assert_array_equal(np.asarray(changed[1]), np.asarray(reference[1]))


def test_timestep_changes_output(built):
  module, params, apply = built[778]
  x_t, t, features, embedding = _inputs(778)
  reference = apply(params, x_t, t, features, embedding)
  changed = apply(params, x_t, t + 100, features, embedding)
  assert np.abs(np.asarray(changed - reference)).max() > 1e-4


def test_u_shape_restores_cardinality_and_routes_through_fps_levels():
  """A vertex outside the first FPS level reaches the other vertices only through the coarse levels,
  which never see it, so perturbing it changes its own output row only. A vertex in the first level
  reaches every vertex through the attention and the upsampling maps."""
  num_vertices, width = 200, 16
  levels = decoder._as_index_tuples(topology.fps_hierarchy(_template(num_vertices), sizes=(50, 13)))
  block = decoder.VertexBlock(levels, num_heads=2, mlp_ratio=2.0)
  keys = jax.random.split(jax.random.key(1), 4)
  h = jax.random.normal(keys[0], (1, num_vertices, width))
  global_embedding = jax.random.normal(keys[1], (1, width))
  tokens = jax.random.normal(keys[2], (1, NUM_PATCHES, width))
  params = decoder.jit_init(block, keys[3], h, global_embedding, tokens)
  apply = jax.jit(block.apply)
  reference = np.asarray(apply(params, h, global_embedding, tokens))
  chex.assert_shape(reference, (1, num_vertices, width))

  inside = levels[0][0]
  outside = next(i for i in range(num_vertices) if i not in set(levels[0]))
  # Not a constant shift: the LayerNorms would remove that.
  delta = jax.random.normal(jax.random.key(9), (width,))
  for vertex, reaches_all in [(outside, False), (inside, True)]:
    moved = np.asarray(apply(params, h.at[0, vertex].add(delta), global_embedding, tokens))
    changed_rows = np.flatnonzero(np.abs(moved - reference).max(axis=-1)[0] > 1e-6)
    if reaches_all:
      assert len(changed_rows) == num_vertices
    else:
      np.testing.assert_array_equal(changed_rows, [vertex])


def test_vanilla_variant_shapes_and_inputs():
  config = _config(778, (195, 49), kind="vanilla")
  module = decoder.build_decoder(config)
  assert isinstance(module, decoder.VanillaDecoder)
  assert module.depth == 2 * config.num_blocks
  x_t, t, features, embedding = _inputs(778)
  params = decoder.jit_init(module, jax.random.key(0), x_t, t, features, embedding)
  apply = jax.jit(module.apply)
  reference = apply(params, x_t, t, features, embedding)
  chex.assert_shape(reference, (BATCH, 778, 3))
  chex.assert_tree_all_finite(reference)
  # No cross-attention: I_F is ignored; the image enters through I_E (in E_g) only.
  np.testing.assert_array_equal(
      np.asarray(apply(params, x_t, t, features * 3.0, embedding)), np.asarray(reference)
  )
  assert (
      np.abs(np.asarray(apply(params, x_t, t, features, embedding + 1.0) - reference)).max() > 1e-4
  )
  assert "cross_attention" not in str(jax.tree_util.tree_structure(params))


@pytest.mark.parametrize("kind", ["channel_attention", "mlp", "none"])
def test_feature_block_switch(kind):
  module = decoder.build_decoder(_config(200, (50, 13), feature_block=kind), _template(200))
  shapes = jax.eval_shape(module.init, jax.random.key(0), *_inputs(200))
  block = shapes["params"].get("feature_block0", {})
  # The default is channel attention then an MLP; 'mlp' keeps the MLP alone; 'none' has no block.
  assert ("channel_attention" in block) == (kind == "channel_attention")
  assert ("mlp" in block) == (kind != "none")
  assert (not block) == (kind == "none")
  out = jax.eval_shape(module.apply, shapes, *_inputs(200))
  chex.assert_shape(out, (BATCH, 200, 3))


def test_channel_attention_is_point_permutation_equivariant():
  """XCA mixes channels with a (d × d) map computed from sums over points, so permuting the points
  permutes the output the same way."""
  layer = decoder.ChannelAttention(num_heads=2)
  x = jax.random.normal(jax.random.key(3), (2, 40, 8))
  params = decoder.jit_init(layer, jax.random.key(4), x)
  permutation = np.random.default_rng(0).permutation(40)
  apply = jax.jit(layer.apply)
  out = apply(params, x)
  out_permuted = apply(params, x[:, permutation])
  np.testing.assert_allclose(np.asarray(out_permuted), np.asarray(out)[:, permutation], atol=1e-5)


def test_sinusoidal_embedding_hand_worked():
  embedding = np.asarray(decoder.sinusoidal_embedding(jnp.array([0, 1]), 4, max_period=100.0))
  # half = 2 frequencies: 100^(-0/2) = 1 and 100^(-1/2) = 0.1.
  expected = np.array([[1, 1, 0, 0], [np.cos(1.0), np.cos(0.1), np.sin(1.0), np.sin(0.1)]])
  np.testing.assert_allclose(embedding, expected, rtol=1e-6, atol=1e-7)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="fps_indices\\[1\\] indexes 3 points"):
    decoder.check_fps_indices(((0, 5, 7), (0, 3)), 10)
  with pytest.raises(ValueError, match="repeats"):
    decoder.check_fps_indices(((0, 0),), 10)
  with pytest.raises(ValueError, match="config.decoder"):
    decoder.build_decoder(_config(200, (50, 13), kind="unet"), _template(200))
  with pytest.raises(ValueError, match="template_vertices has shape"):
    decoder.build_decoder(_config(200, (50, 13)), _template(100))
  module = decoder.build_decoder(_config(200, (50, 13), feature_block="conv"), _template(200))
  with pytest.raises(ValueError, match="feature_block must be one of"):
    jax.eval_shape(module.init, jax.random.key(0), *_inputs(200))


def test_upsampling_starts_as_template_interpolation():
  """The point-axis maps start as inverse-distance interpolation: rows sum to 1, k non-zeros per row,
  and a coarse point that is also a fine point maps onto itself alone."""
  from diffhand_jax import mano
  from diffhand_jax.geometry import topology

  template = np.asarray(mano.load_procedural().v_template)
  fps = topology.fps_hierarchy(template, sizes=(195, 49))
  levels = decoder.upsampling_neighbours(template, fps, k=3)
  init = decoder._interpolation_init(levels[0])
  kernel = np.asarray(init(None, (778, 195)))
  np.testing.assert_allclose(kernel.sum(axis=1), 1.0, rtol=1e-5)
  assert np.all((kernel > 0).sum(axis=1) <= 3)
  coincident = np.asarray(fps[0])  # fine vertex fps[0][j] is coarse point j
  np.testing.assert_allclose(kernel[coincident, np.arange(195)], 1.0)
