"""Multi-process start-up: `jax.distributed.initialize` when this process is one of several.

Three ways in, checked in order:
  1. Explicit: DIFFHAND_COORDINATOR=host:port, DIFFHAND_NUM_PROCESSES=N, DIFFHAND_PROCESS_ID=i
     (what launch/local.sh sets; also handy on clusters without SLURM).
  2. SLURM: inside `srun` with more than one task, JAX reads the SLURM variables itself.
  3. Otherwise a single process: nothing to do.
"""

from __future__ import annotations

import os

import jax


def _slurm_multi_task() -> bool:
  return int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_STEP_ID' in os.environ


def maybe_initialize() -> str:
  """Initialises jax.distributed if needed; returns how ('explicit', 'slurm' or 'single')."""
  coordinator = os.environ.get('DIFFHAND_COORDINATOR', '')
  if coordinator:
    try:
      num_processes = int(os.environ['DIFFHAND_NUM_PROCESSES'])
      process_id = int(os.environ['DIFFHAND_PROCESS_ID'])
    except (KeyError, ValueError):
      raise ValueError(
          'DIFFHAND_COORDINATOR is set, so DIFFHAND_NUM_PROCESSES and DIFFHAND_PROCESS_ID '
          'must be set to integers too'
      ) from None
    _cpu_collectives()
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )
    return 'explicit'
  if _slurm_multi_task():
    jax.distributed.initialize()
    return 'slurm'
  return 'single'


def _cpu_collectives() -> None:
  """Processes on CPU devices exchange data through gloo (the default CPU backend cannot)."""
  if os.environ.get('JAX_PLATFORMS', '') == 'cpu':
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
