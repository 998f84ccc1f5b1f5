"""config.sharding_rules: (regex over the state path, spec) pairs, first match wins. Checked on an
abstract 8-device mesh (jax.sharding.AbstractMesh), so nothing is compiled and no devices are needed.
"""

import json

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from diffhand_jax.runs import state as state_lib
from diffhand_jax.training import memory, sharding
from _inference_workdir import tiny_config

MESH = AbstractMesh((2, 4), ('data', 'fsdp'))


def _abstract_state(config=None):
  """A TrainState of ShapeDtypeStructs with encoder/decoder-like params and the real optimiser's state."""
  config = config or tiny_config('/nonexistent')
  fc1 = {'kernel': jnp.zeros((64, 256)), 'bias': jnp.zeros((256,))}
  params = {
      'encoder': {'blocks_0': {'mlp': {'fc1': fc1}}, 'pos_embed': jnp.zeros((1, 17, 18))},
      'decoder': {'proj': {'kernel': jnp.zeros((64, 3)), 'bias': jnp.zeros((3,))}},
  }
  optimizer = state_lib.make_optimizer(config)
  build = lambda: state_lib.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=optimizer.init(params),
      ema_params=params,
      rng=jnp.zeros((2,), jnp.uint32),
  )
  return jax.eval_shape(build)


def _specs(shardings):
  flat, _ = jax.tree_util.tree_flatten_with_path(shardings)
  return {state_lib.leaf_path(path): named.spec for path, named in flat}


def test_paths_name_params_moments_and_ema():
  specs = _specs(sharding.state_shardings(MESH, _abstract_state(), min_size=1))
  assert 'params/encoder/blocks_0/mlp/fc1/kernel' in specs
  assert 'opt_state/1/0/mu/encoder/blocks_0/mlp/fc1/kernel' in specs
  assert 'opt_state/1/0/nu/decoder/proj/bias' in specs
  assert 'ema_params/encoder/pos_embed' in specs
  assert 'step' in specs and 'rng' in specs


def test_default_rules_reproduce_the_fsdp_rule_for_every_leaf():
  state = _abstract_state()
  for min_size in (1, 1000):
    specs = _specs(sharding.state_shardings(MESH, state, min_size=min_size))
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    for path, leaf in flat:  # the rule worked out independently, per leaf
      assert specs[state_lib.leaf_path(path)] == sharding.param_spec(leaf.shape, 4, min_size)
  specs = _specs(sharding.state_shardings(MESH, state, min_size=1))
  assert specs['params/encoder/blocks_0/mlp/fc1/kernel'] == P(
      None, 'fsdp'
  )  # 256 is the largest dim
  assert specs['params/decoder/proj/kernel'] == P('fsdp', None)  # 3 does not divide by 4
  assert specs['step'] == P()


def test_first_matching_rule_wins_and_unmatched_tensors_are_replicated():
  rules = (
      ('decoder/', 'replicate'),  # before the kernel rule: decoder kernels stay whole
      ('mu/.*kernel$', (('data', 'fsdp'), None)),  # Adam's first moment over all 8 devices
      ('kernel$', (None, 'fsdp')),
      ('pos_embed', 'fsdp_largest'),
  )
  specs = _specs(sharding.state_shardings(MESH, _abstract_state(), min_size=1, rules=rules))
  assert specs['params/decoder/proj/kernel'] == P()
  assert specs['opt_state/1/0/mu/decoder/proj/kernel'] == P()
  assert specs['opt_state/1/0/mu/encoder/blocks_0/mlp/fc1/kernel'] == P(('data', 'fsdp'), None)
  assert specs['opt_state/1/0/nu/encoder/blocks_0/mlp/fc1/kernel'] == P(None, 'fsdp')
  assert specs['ema_params/encoder/blocks_0/mlp/fc1/kernel'] == P(None, 'fsdp')
  assert specs['params/encoder/pos_embed'] == P()  # 'fsdp_largest': no dimension divides by 4
  assert specs['params/encoder/blocks_0/mlp/fc1/bias'] == P()  # no rule matches
  assert specs['rng'] == P()


def test_rules_survive_the_json_round_trip_of_config_json():
  rules = (('fc1/kernel$', (None, 'fsdp')), ('.*', 'fsdp_largest'))
  reloaded = json.loads(json.dumps(rules))  # what workdir/config.json gives back: lists
  state = _abstract_state()
  assert _specs(sharding.state_shardings(MESH, state, 1, rules)) == _specs(
      sharding.state_shardings(MESH, state, 1, reloaded)
  )


@pytest.mark.parametrize(
    'rules, message',
    [
        (
            (('fc1/kernel$', ('fsdp',)),),
            r'params/encoder/blocks_0/mlp/fc1/kernel of shape \(64, 256\).*one entry',
        ),
        (
            (('decoder/proj/kernel', (None, 'fsdp')),),
            r'params/decoder/proj/kernel of shape \(64, 3\).*' r'dimension 1 \(3\) does not divide',
        ),
        ((('kernel$', (None, 'model')),), r"no axis 'model'"),
    ],
)
def test_a_spec_that_does_not_fit_names_the_tensor(rules, message):
  with pytest.raises(ValueError, match=message):
    sharding.state_shardings(MESH, _abstract_state(), min_size=1, rules=rules)


@pytest.mark.parametrize(
    'rules, message',
    [
        ((('[unclosed', 'replicate'),), 'not a valid regex'),
        ((('.*', 'shard_everything'),), 'spec must be one of'),
        (('.*',), r'sharding_rules\[0\].*a pair'),
    ],
)
def test_malformed_rules_are_reported_with_their_index(rules, message):
  with pytest.raises(ValueError, match=message):
    sharding.check_sharding_rules(rules)


def test_per_device_bytes_follow_the_shardings():
  state = _abstract_state()
  shardings = sharding.state_shardings(MESH, state, 1, (('fc1/kernel$', (None, 'fsdp')),))
  sharded = jax.tree_util.tree_map(
      lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
      state.params,
      shardings.params,
  )
  # float32; fc1/kernel (64, 256) is split over the 4 fsdp devices, the other params are replicated.
  expected = 4 * (64 * 256 // 4 + 256 + 17 * 18 + 64 * 3 + 3)
  assert memory.per_device_bytes(sharded) == expected
