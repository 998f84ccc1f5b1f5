"""SIGTERM (what SLURM and most schedulers send before a kill) as a flag the training loop checks."""

from __future__ import annotations

import jax

from diffhand_jax.training import metric_log


class PreemptionSignal:
  """Turns SIGTERM (what SLURM and most schedulers send before a kill) into a flag the loop checks
  after each step, so that the step in flight finishes and a checkpoint is written.

  Only in a single process: with several, JAX's coordination service catches SIGTERM and every process
  agrees on the step to stop at through `CheckpointManager.reached_preemption`.
  """

  def __init__(self):
    self.received = False
    self._previous = None

  def _handle(self, signum, frame):
    del frame
    metric_log.print0(f'received signal {signum}: checkpointing after this step', flush=True)
    self.received = True

  def __enter__(self):
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    import signal

    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
