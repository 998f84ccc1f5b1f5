"""Opening a trained run: its config, its model and the params of its newest checkpoint."""

from __future__ import annotations

import os

from diffhand_jax.runs import checkpoints, run_config, state as state_lib


def load_for_inference(workdir: str, *, use_ema: bool = True):
  """Rebuilds the model of a training run and restores its newest checkpoint.

  Returns (config, model, params, topology, schedule); params are the EMA params when the run kept them
  and ``use_ema``.
  """
  config = run_config.load_config(workdir)
  components = state_lib.build(config)
  manager = checkpoints.checkpoint_manager(workdir, config)
  state = checkpoints.restore_latest(
      manager, state_lib.abstract_state(config, components.model, components.optimizer)
  )
  manager.close()
  if state is None:
    raise FileNotFoundError(f'no checkpoint in {os.path.join(workdir, "checkpoints")}')
  params = state.ema_params if (use_ema and config.ema_decay > 0) else state.params
  return config, components.model, params, components.topology, components.schedule
