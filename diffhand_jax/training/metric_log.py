"""Training logs: metrics.jsonl and TensorBoard (process 0 only), and their repair on resume."""

from __future__ import annotations

import json
import logging
import os
from typing import Mapping

import jax

from diffhand_jax.runs import files


class _ProgressNotes(logging.Filter):
  """Prints clu's progress notes (ReportProgress: steps/s, percent done, ETA, time per part) as
  'progress: ...' lines. clu logs them at INFO through absl; every other record keeps the threshold the
  absl logger had."""

  PREFIX = 'Setting work unit notes: '

  def __init__(self, threshold: int):
    super().__init__()
    self.threshold = threshold

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if message.startswith(self.PREFIX):
      print(f'progress: {message[len(self.PREFIX):]}', flush=True)
      return False
    return record.levelno >= self.threshold


class Logger:
  """metrics.jsonl, plus TensorBoard through clu's metric writers; written by process 0 only.

  `report_progress(step)` is clu's ReportProgress: it writes steps/s to TensorBoard, and its note (steps/s,
  percent done, ETA, and the share of time spent in `with logger.report_progress.timed('eval'):`) is
  printed by process 0 every ``every_steps``.

  A context manager: leaving ``with Logger(...) as logger:`` closes it, however the block ends;
  ``close()`` does too, and closing twice is harmless.
  """

  def __init__(self, workdir: str, *, num_train_steps: int | None = None, every_steps: int = 100):
    # Waits for a Logger (heavy): clu imports TensorFlow, seconds, and importing torch after it
    # crashed the tests' process; print0's importers need neither.
    from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top

    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.writer = metric_writers.create_default_writer(
        os.path.join(workdir, 'tensorboard'), just_logging=not self.enabled, asynchronous=False
    )
    self.report_progress = periodic_actions.ReportProgress(
        num_train_steps=num_train_steps, writer=self.writer, every_steps=every_steps
    )
    self._absl = logging.getLogger('absl')
    self._previous_level = self._absl.level
    self._notes = None
    self._closed = False
    if self.enabled:
      self._notes = _ProgressNotes(self._absl.getEffectiveLevel())
      self._absl.addFilter(self._notes)
      self._absl.setLevel(min(self._absl.getEffectiveLevel(), logging.INFO))

  def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
    """One metrics.jsonl row {'step', 'split', **values}; TensorBoard tags are '<split>/<name>', or the
    name itself where it has a '/' already (perf/images_per_sec)."""
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, **{k: float(v) for k, v in values.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    self.writer.write_scalars(
        int(step), {(k if '/' in k else f'{split}/{k}'): float(v) for k, v in values.items()}
    )
    self.writer.flush()

  def close(self) -> None:
    """Closes the writers and gives absl's logger back its level; once, however often it is called."""
    if self._closed:
      return
    self._closed = True
    self.writer.close()
    if self._notes is not None:
      self._absl.removeFilter(self._notes)
      self._absl.setLevel(self._previous_level)
      self._notes = None

  def __enter__(self) -> Logger:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def truncate_metrics_log(path: str, step: int) -> None:
  """On resume, drops log lines from steps after the restored checkpoint (they will be redone), and a
  line cut short by a kill."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]

  def keep(line: str) -> bool:
    try:
      return line.endswith('\n') and json.loads(line)['step'] <= step
    except (json.JSONDecodeError, KeyError, TypeError):
      return False

  kept = [line for line in lines if keep(line)]
  if len(kept) != len(lines):
    files.write_text_atomic(path, ''.join(kept))


def format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return (
      f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'
      if seconds >= 3600
      else f'{seconds // 60}m{seconds % 60:02d}s'
  )


def print0(*args, **kwargs) -> None:
  """Progress output, from process 0 only."""
  if jax.process_index() == 0:
    print(*args, **kwargs)
