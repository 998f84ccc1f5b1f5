"""Tests of the whole model (diffhand_jax/models/diffhand.py) with the 'tiny' preset."""

import time
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from diffhand_jax.runs import model_presets
from diffhand_jax import diffusion, mano
from diffhand_jax.training import losses
from diffhand_jax.models import diffhand

BATCH = 2


def _images(seed=0, batch=BATCH, size=64):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def _depth(seed=5, batch=BATCH, size=64):
  return jax.random.uniform(jax.random.key(seed), (batch, size, size, 1), minval=0.3, maxval=1.0)


@pytest.fixture(scope="module")
def tiny():
  """(config, rgb model, depth model, depth-model params): one init serves both models."""
  config = model_presets.get_model_config("tiny")
  rgb_model = diffhand.build_model(config)
  config_depth = model_presets.get_model_config("tiny")
  config_depth.use_depth = True
  depth_model = diffhand.build_model(config_depth)
  params = diffhand.init(depth_model, jax.random.key(0), config.img_size, batch=BATCH)
  return config, rgb_model, depth_model, params


@pytest.fixture(scope="module")
def rgb_fns(tiny):
  """Jitted functions of the RGB model, compiled once for the whole module."""
  _, rgb_model, _, _ = tiny
  return {
      "apply": jax.jit(rgb_model.apply),
      "encode": jax.jit(
          lambda v, images: rgb_model.apply(v, images, method=diffhand.DiffHand.encode)
      ),
      "denoise": jax.jit(
          lambda v, cond, x_t, t: rgb_model.apply(v, cond, x_t, t, method=diffhand.DiffHand.denoise)
      ),
  }


def _rgb_params(params):
  return {name: value for name, value in params.items() if name != "depth_block"}


def test_rgb_params_are_the_depth_params_without_the_depth_block(tiny):
  config, rgb_model, _, params = tiny
  rgb_shapes = diffhand.param_shapes(rgb_model, config.img_size, batch=BATCH)
  assert jax.tree_util.tree_structure(rgb_shapes) == jax.tree_util.tree_structure(
      _rgb_params(params)
  )
  assert "depth_block" in params


def test_call_is_encode_then_denoise(tiny, rgb_fns):
  config, rgb_model, _, params = tiny
  variables = {"params": _rgb_params(params)}
  x_t = jax.random.normal(jax.random.key(1), (BATCH, 778, 3))
  t = jnp.array([10, 900], jnp.int32)
  x0_hat, camera = rgb_fns["apply"](variables, _images(), x_t, t)
  chex.assert_shape(x0_hat, (BATCH, 778, 3))
  chex.assert_shape(camera, (BATCH, 3))
  chex.assert_tree_all_finite((x0_hat, camera))
  cond = rgb_fns["encode"](variables, _images())
  chex.assert_shape(cond.features, (BATCH, 16, 32))  # (64/16)^2 patches, ViT width 32
  chex.assert_shape(cond.embedding, (BATCH, 32))
  two_step = rgb_fns["denoise"](variables, cond, x_t, t)
  np.testing.assert_allclose(np.asarray(two_step[0]), np.asarray(x0_hat), atol=1e-5)
  np.testing.assert_allclose(np.asarray(two_step[1]), np.asarray(camera), atol=1e-6)


def test_depth_block_is_an_exact_no_op_at_init_but_trainable(tiny, rgb_fns):
  config, rgb_model, depth_model, params = tiny
  x_t = jax.random.normal(jax.random.key(1), (BATCH, 778, 3))
  t = jnp.array([10, 900], jnp.int32)
  rgb = rgb_fns["apply"]({"params": _rgb_params(params)}, _images(), x_t, t)
  with_depth = jax.jit(depth_model.apply)({"params": params}, _images(), x_t, t, _depth())
  for a, b in zip(rgb, with_depth):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # Only the output projection starts at zero; the inner convolutions have a normal init.
  block = params["depth_block"]
  assert not np.any(np.asarray(block["zero_proj"]["kernel"]))
  assert not np.any(np.asarray(block["zero_proj"]["bias"]))
  assert np.all(np.asarray(block["conv_in"]["kernel"]).std() > 0)

  # ... so a loss on I_F reaches the zero projection at once (it would not if every layer were zero).
  def feature_loss(depth_params, features):
    grid_features = depth_model.apply(
        {"params": {"depth_block": depth_params}},
        _depth(),
        (4, 4),
        features.shape[-1],
        method=lambda m, *a: m.depth_block(*a),
    )
    return jnp.sum((features + grid_features) ** 2)

  features = jax.random.normal(jax.random.key(2), (BATCH, 16, 32))
  grads = jax.jit(jax.grad(feature_loss))(block, features)
  assert np.abs(np.asarray(grads["zero_proj"]["kernel"])).max() > 0


def test_depth_errors(tiny):
  config, rgb_model, depth_model, params = tiny
  with pytest.raises(ValueError, match="use_depth=True"):
    depth_model.apply({"params": params}, _images(), method=diffhand.DiffHand.encode)
  with pytest.raises(ValueError, match="use_depth=False"):
    rgb_model.apply(
        {"params": _rgb_params(params)}, _images(), _depth(), method=diffhand.DiffHand.encode
    )


class _Calls:
  """A plain (identity-hashed) record of what ran."""

  def __init__(self):
    self.names = []

  def append(self, name):
    self.names.append(name)

  def count(self, name):
    return self.names.count(name)


class _CountingEncoder(nn.Module):
  """Wraps an encoder and counts, at run time, how often it executes (jax.debug.callback runs once per
  execution: once per scan iteration inside a scan, once per batch under vmap)."""

  inner: nn.Module
  counter: Any

  @nn.compact
  def __call__(self, images):
    jax.debug.callback(lambda: self.counter.append("encode"))
    return self.inner(images)


class _CountingDecoder(nn.Module):
  inner: nn.Module
  counter: Any

  @nn.compact
  def __call__(self, *args):
    jax.debug.callback(lambda: self.counter.append("decode"))
    return self.inner(*args)


def test_reconstruct_encodes_once_and_shares_the_condition(tiny, rgb_fns):
  config, rgb_model, _, params = tiny
  params = _rgb_params(params)
  calls = _Calls()
  # Same parameter tree: the wrappers' children take the wrapped modules' names.
  counting = rgb_model.clone(
      encoder=_CountingEncoder(rgb_model.encoder.clone(), calls),
      decoder=_CountingDecoder(rgb_model.decoder.clone(), calls),
  )
  wrapped = dict(params, encoder={"inner": params["encoder"]}, decoder={"inner": params["decoder"]})
  num_steps, num_hypotheses = 3, 4
  noise = jax.random.normal(jax.random.key(7), (num_hypotheses, BATCH, 778, 3))
  noise = noise.at[1].set(noise[0])  # hypotheses 0 and 1 start from the same noise
  run = jax.jit(
      lambda p, images, n: diffhand.reconstruct(
          counting,
          p,
          images,
          jax.random.key(0),
          num_steps=num_steps,
          num_hypotheses=num_hypotheses,
          noise=n,
      )
  )
  out = jax.block_until_ready(run(wrapped, _images(), noise))
  jax.effects_barrier()
  assert calls.count("encode") == 1, calls.names
  assert (
      calls.count("decode") == num_steps
  ), calls.names  # one batched decoder pass per step for all K

  vertices = np.asarray(out["vertices"])
  chex.assert_shape(out["vertices"], (BATCH, num_hypotheses, 778, 3))
  chex.assert_shape(out["camera"], (BATCH, num_hypotheses, 3))
  chex.assert_shape(out["vertices_std"], (BATCH, 778))
  np.testing.assert_allclose(vertices[:, 0], vertices[:, 1], atol=1e-5)
  assert np.abs(vertices[:, 0] - vertices[:, 2]).max() > 1e-3
  np.testing.assert_allclose(np.asarray(out["vertices_mean"]), vertices.mean(1), atol=1e-6)

  # Independent path: encode again, then DDIM (η = 0, trailing steps round((3 - i)·1000/3) − 1 = 999, 666, 332, then −1)
  # written out in numpy around single denoiser calls, on hypothesis 2's noise.
  variables = {"params": params}
  cond = rgb_fns["encode"](variables, _images())
  alphas = np.asarray(diffusion.cosine_schedule().alphas_cumprod, np.float64)
  alpha = lambda t: 1.0 if t < 0 else alphas[t]
  x = np.asarray(noise[2], np.float64)
  for t_now, t_next in [(999, 666), (666, 332), (332, -1)]:
    x0_hat, camera = rgb_fns["denoise"](
        variables, cond, jnp.asarray(x, jnp.float32), jnp.full((BATCH,), t_now, jnp.int32)
    )
    x0_hat = np.asarray(x0_hat, np.float64)
    eps_hat = (x - np.sqrt(alpha(t_now)) * x0_hat) / np.sqrt(1.0 - alpha(t_now))
    x = np.sqrt(alpha(t_next)) * x0_hat + np.sqrt(1.0 - alpha(t_next)) * eps_hat
  np.testing.assert_allclose(vertices[:, 2], x, atol=1e-4)
  np.testing.assert_allclose(np.asarray(out["camera"][:, 3]), np.asarray(camera), atol=1e-6)


def test_initial_noise_is_a_function_of_the_key():
  noise, sampler_keys = diffhand.initial_noise(jax.random.key(3), 3, BATCH, 778)
  again, _ = diffhand.initial_noise(jax.random.key(3), 3, BATCH, 778)
  other, _ = diffhand.initial_noise(jax.random.key(4), 3, BATCH, 778)
  chex.assert_shape(noise, (3, BATCH, 778, 3))
  assert sampler_keys.shape[0] == 3
  np.testing.assert_array_equal(np.asarray(noise), np.asarray(again))
  assert not np.allclose(np.asarray(noise), np.asarray(other))
  assert not np.allclose(np.asarray(noise[0]), np.asarray(noise[1]))
  assert abs(float(noise.std()) - 1.0) < 0.02


def test_regression_variant_is_one_pass_from_zeros(tiny, rgb_fns):
  config, rgb_model, _, params = tiny
  params = {"params": _rgb_params(params)}
  regression = rgb_model.clone(diffusion=False)
  x_a = jax.random.normal(jax.random.key(1), (BATCH, 778, 3))
  out = jax.jit(
      lambda p, images, key: diffhand.reconstruct(regression, p, images, key, num_hypotheses=3)
  )(params["params"], _images(), jax.random.key(0))
  # Reference: the diffusion model's own decoder pass at x_t = 0, t = regression_timestep = 0.
  zeros_at_0 = rgb_fns["apply"](
      params, _images(), jnp.zeros_like(x_a), jnp.zeros((BATCH,), jnp.int32)
  )[0]
  for k in range(3):
    np.testing.assert_allclose(np.asarray(out["vertices"][:, k]), np.asarray(zeros_at_0), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out["vertices_std"]), 0.0)
  # denoise ignores x_t and t.
  cond = rgb_fns["encode"](params, _images())
  denoise = jax.jit(
      lambda v, c, x, t: regression.apply(v, c, x, t, method=diffhand.DiffHand.denoise)
  )
  out_a = denoise(params, cond, x_a, jnp.array([5, 600], jnp.int32))[0]
  out_b = denoise(params, cond, -2.0 * x_a, jnp.array([999, 1], jnp.int32))[0]
  np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))


def test_paper_preset_encoder_is_deit3_large():
  """Parameter count of the encoder, worked by hand from DeiT III Large's shapes: patch embedding
  16·16·3·1024 + 1024, class token 1024, position embedding 196·1024, 24 blocks of
  (2 LN 4096 + qkv 1024·3072 + 3072 + proj 1024² + 1024 + fc1 1024·4096 + 4096 + fc2 4096·1024 + 1024
  + LayerScale 2048), final LN 2048. (timm: 304.37 M with the 1000-class head of 1,025,000.)"""
  config = model_presets.get_model_config("paper")
  model = diffhand.build_model(config)
  shapes = diffhand.param_shapes(model, config.img_size)
  block = (
      2 * 2048
      + 1024 * 3072
      + 3072
      + 1024 * 1024
      + 1024
      + 1024 * 4096
      + 4096
      + 4096 * 1024
      + 1024
      + 2048
  )
  expected = 16 * 16 * 3 * 1024 + 1024 + 1024 + 196 * 1024 + 24 * block + 2048
  assert diffhand.num_params(shapes["encoder"]) == expected == 304_374_760 - 1_025_000
  assert len(model.decoder.fps_indices) == 2
  assert tuple(len(level) for level in model.decoder.fps_indices) == (195, 49)
  assert model.decoder.num_blocks == 3


def test_training_on_one_batch_drives_the_loss_down(tiny):
  """200 Adam steps on one fixed batch (random t and noise each step) cut the full training
  loss (losses.total_loss) by more than 10x, measured on fixed (t, noise) draws before and after."""
  config, rgb_model, _, params = tiny
  params = _rgb_params(params)
  hand = mano.load_procedural()
  regressor = jnp.asarray(mano.joint_regressor21(hand))
  faces = jnp.asarray(hand.faces)
  template = np.asarray(hand.v_template, np.float32)
  wrist = np.asarray(regressor)[0] @ template
  angle = np.deg2rad(35.0)
  rotation = np.array(
      [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
  )
  gt_metres = np.stack([template - wrist, (template - wrist) @ rotation.T * 1.1])
  gt_verts = jnp.asarray(gt_metres / config.vertex_scale, jnp.float32)  # model space
  gt_joints = jnp.einsum("jn,bnc->bjc", regressor, gt_verts)
  gt_camera = jnp.array([[0.4, 0.1, -0.2], [0.5, -0.1, 0.0]], jnp.float32)
  gt_joints_2d = losses.project_weak_perspective(gt_joints, gt_camera)
  images = _images(seed=11)
  schedule = diffusion.cosine_schedule(config.num_timesteps)

  def loss_fn(p, t, noise):
    x_t = diffusion.q_sample(schedule, gt_verts, t, noise)
    x0_hat, camera = rgb_model.apply({"params": p}, images, x_t, t)
    return losses.total_loss(x0_hat, gt_verts, gt_joints, gt_joints_2d, camera, regressor, faces)[0]

  optimizer = optax.adam(2e-3)

  @jax.jit
  def train_step(p, opt_state, t, noise):
    loss, grads = jax.value_and_grad(loss_fn)(p, t, noise)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  opt_state = optimizer.init(params)
  # The loss before and after, on fixed (t, noise) draws; train_step's loss is computed before its
  # update, so one compiled function serves both training and measuring.
  eval_draws = [
      (jnp.array([t0, t1], jnp.int32), jax.random.normal(jax.random.key(100 + i), gt_verts.shape))
      for i, (t0, t1) in enumerate([(0, 999), (250, 750), (500, 100), (900, 400)])
  ]
  measure = lambda p: float(
      np.mean([train_step(p, opt_state, t, noise)[2] for t, noise in eval_draws])
  )

  before = measure(params)
  rng = np.random.default_rng(42)
  start = time.perf_counter()
  for _ in range(200):
    t = jnp.asarray(rng.integers(0, config.num_timesteps, BATCH), jnp.int32)
    noise = jnp.asarray(rng.standard_normal(gt_verts.shape), jnp.float32)
    params, opt_state, loss = train_step(params, opt_state, t, noise)
  after = measure(params)
  print(
      f"loss {before:.4f} -> {after:.4f} ({before / after:.1f}x) in "
      f"{time.perf_counter() - start:.1f} s"
  )
  assert np.isfinite(after)
  assert after < before / 10.0


def test_orientation_head_is_opt_in_and_leaves_the_denoiser_unchanged():
  config = model_presets.get_model_config("tiny")
  plain = diffhand.build_model(config)
  config.orientation_head = True
  with_head = diffhand.build_model(config)
  params = diffhand.init(with_head, jax.random.key(0), config.img_size, batch=BATCH)
  assert params["orientation_head"]["kernel"].shape[-1] == 6
  plain_params = diffhand.init(plain, jax.random.key(0), config.img_size, batch=BATCH)
  assert "orientation_head" not in plain_params
  images = _images()
  x_t = jax.random.normal(jax.random.key(3), (BATCH, 778, 3))
  t = jnp.full((BATCH,), 500, jnp.int32)
  x0, camera = with_head.apply({"params": params}, images, x_t, t)
  out = with_head.apply({"params": params}, images, x_t, t, method=with_head.training_pass)
  np.testing.assert_array_equal(x0, out["x0_hat"])
  np.testing.assert_array_equal(camera, out["camera"])
  assert out["orientation"].shape == (BATCH, 6) and out["orientation"].dtype == jnp.float32
  # Without the head, the same params minus the head give the same meshes: the head is off to the side.
  without = {k: v for k, v in params.items() if k != "orientation_head"}
  np.testing.assert_array_equal(plain.apply({"params": without}, images, x_t, t)[0], x0)
  assert set(plain.apply({"params": without}, images, x_t, t, method=plain.training_pass)) == {
      "x0_hat",
      "camera",
  }
  cond = plain.apply({"params": without}, images, method=plain.encode)
  with pytest.raises(ValueError, match="orientation head"):
    plain.apply({"params": without}, cond, method=plain.orientation)
