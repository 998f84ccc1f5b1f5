"""bfloat16 compute (config.model.dtype='bfloat16', params and optimiser state float32) gives the float32
losses within a stated tolerance, on the tiny model over its first steps, where the two runs have not
yet decorrelated. The 200-step measurement on the demo config is `python -m diffhand_jax.bench
bf16_parity` (docs/performance.md, "bfloat16 against float32")."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffhand_jax.runs import state as state_lib
from diffhand_jax.training import sharding, step as step_lib
from _inference_workdir import tiny_config

STEPS = 6
# Measured on the 2-core CPU: the largest per-step relative difference over these 6 steps is 1.1%
# (the demo config's first 20 steps: 2.1%, bench bf16_parity). bfloat16 keeps 8 bits of mantissa
# (relative rounding 0.4%); the tolerance is about 3x the measurement.
TOLERANCE = 0.03


def _losses(config, dtype, batches):
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.dtype = dtype
  topology, model, schedule, optimizer, mesh = step_lib.build_components(config)
  _, shardings = sharding.sharded_abstract_state(config, model, optimizer, mesh)
  state = state_lib.create_train_state(config, model, optimizer, jax.random.PRNGKey(config.seed))
  state = jax.tree_util.tree_map(jnp.copy, state)  # fresh buffers: the step donates them
  step_fn = step_lib.jit_train_step(config, model, optimizer, schedule, topology, mesh, shardings)
  out = []
  for batch in batches:
    state, parts = step_fn(state, sharding.to_global(batch, sharding.batch_sharding(mesh)))
    assert parts['total'].dtype == jnp.float32
    out.append(float(parts['total']))
  for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  return np.array(out)


def test_tiny_model_bfloat16_losses_match_float32_within_the_stated_tolerance(tmp_path):
  config = tiny_config(tmp_path / 'tfds')  # the data is never built: the batches are made here
  # Smaller than the tiny preset, to compile fast (as tests/test_train.py's step tests); the ViT's
  # and the decoder's attention still run in the compute dtype.
  config.model.encoder_overrides.depth = 1
  config.model.decoder = 'vanilla'
  config.model.vanilla_depth = 1
  config.batch_size = 4
  config.optimizer.warmup_steps = 1
  config.optimizer.learning_rate = 1e-3
  rng = np.random.default_rng(0)
  spec = step_lib.train_batch_spec(config)
  batches = []
  for _ in range(STEPS):
    batch = {k: rng.normal(0.0, 0.3, s.shape).astype(np.float32) for k, s in spec.items()}
    batch['has_3d'] = np.ones(spec['has_3d'].shape, np.float32)
    batches.append(batch)
  float32 = _losses(config, 'float32', batches)
  bfloat16 = _losses(config, 'bfloat16', batches)
  relative = np.abs(bfloat16 - float32) / float32
  assert np.all(np.isfinite(bfloat16))
  assert relative.max() < TOLERANCE, (relative, float32, bfloat16)
  assert relative.max() > 0  # the bfloat16 run did compute in bfloat16
