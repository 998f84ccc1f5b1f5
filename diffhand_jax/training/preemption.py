"""SIGTERM (what SLURM and most schedulers send before a kill) and Ctrl-C (SIGINT) as a flag the training
loop checks after each step."""

from __future__ import annotations

import signal
import threading

import jax

from diffhand_jax.training import metric_log


class PreemptionSignal:
  """Turns SIGTERM and SIGINT into a flag the loop checks after each step, so that the step in flight
  finishes and a checkpoint is written. A second SIGINT (Ctrl-C pressed again) quits at once, with
  KeyboardInterrupt.

  SIGTERM only in a single process: with several, JAX's coordination service catches SIGTERM and every
  process agrees on the step to stop at through `CheckpointManager.reached_preemption`.
  """

  def __init__(self):
    self.received = False
    self.signal_name = ''
    self._previous: dict[int, object] = {}

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:
      # The next Ctrl-C is not caught: it raises KeyboardInterrupt wherever the loop is.
      signal.signal(signal.SIGINT, signal.default_int_handler)
    if not self.received:
      self.received, self.signal_name = True, name
      again = ' (Ctrl-C again quits at once)' if signum == signal.SIGINT else ''
      metric_log.print0(f'received {name}: checkpointing after this step{again}', flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
      if jax.process_count() == 1:
        self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}
    return False
