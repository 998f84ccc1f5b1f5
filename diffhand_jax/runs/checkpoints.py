"""A run's orbax checkpoints: the manager over workdir/checkpoints/ and the restore of the newest one."""

from __future__ import annotations

import os

import orbax.checkpoint as ocp


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=config.checkpoint_every_steps,
      max_to_keep=config.get('keep_checkpoints', 3),
      create=True,
      enable_async_checkpointing=True,
  )
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options
  )


def restore_latest(manager: ocp.CheckpointManager, abstract_state):
  """The newest readable checkpoint, or None. A damaged newest one is skipped with a warning."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as error:  # orbax raises many types for truncated or partial directories
      print(
          f'warning: checkpoint at step {step} could not be restored ({type(error).__name__}: '
          f'{error}); trying an earlier one',
          flush=True,
      )
  return None
