"""Opening a trained run for inference (`load_trained`) builds the network and restores its params, and
never builds an optimiser: nothing of optax's is called, whichever params are asked for."""

from _inference_workdir import tiny_workdir
import jax
import numpy as np
import optax
import pytest

from diffhand_jax.inference import loading
from diffhand_jax.runs import checkpoints, run_config, state as state_lib

# The optax constructors that `state.make_optimizer` calls.
OPTIMISER_PARTS = ('chain', 'clip_by_global_norm', 'adamw', 'warmup_cosine_decay_schedule')


@pytest.fixture(scope='module')
def trained():
  """(workdir, its config, the newest checkpoint's whole train state, restored as training does)."""
  workdir, _ = tiny_workdir()
  config = run_config.load_config(workdir)
  components = state_lib.build(config)
  manager = checkpoints.checkpoint_manager(workdir, create=False)
  try:
    state = checkpoints.restore_latest(
        manager, state_lib.abstract_state(config, components.model, components.optimizer)
    )
  finally:
    manager.close()
  return workdir, config, state


def _refuse(*args, **kwargs):
  raise AssertionError('opening a run for inference built an optimiser')


@pytest.mark.parametrize('use_ema', [True, False])
def test_opening_a_run_builds_no_optimiser(trained, monkeypatch, use_ema):
  workdir, config, state = trained
  assert config.ema_decay > 0  # so that use_ema=False reads the raw params from the state item
  monkeypatch.setattr(state_lib, 'make_optimizer', _refuse)
  for name in OPTIMISER_PARTS:
    monkeypatch.setattr(optax, name, _refuse)
  run = loading.load_trained(workdir, use_ema=use_ema)
  assert run.step == int(state.step)
  expected = state.ema_params if use_ema else state.params
  assert jax.tree_util.tree_structure(run.params) == jax.tree_util.tree_structure(expected)
  jax.tree_util.tree_map(np.testing.assert_array_equal, run.params, expected)
