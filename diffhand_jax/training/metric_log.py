"""Training logs: metrics.jsonl and TensorBoard (process 0 only), and their repair on resume."""

from __future__ import annotations

import json
import os
from typing import Mapping

import jax

from diffhand_jax.runs import files


class Logger:
  """metrics.jsonl + TensorBoard, written by process 0 only."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.writer = None
    if self.enabled:
      from tensorboardX import SummaryWriter

      self.writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, **{k: float(v) for k, v in values.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for name, value in values.items():
      self.writer.add_scalar(f'{split}/{name}', float(value), int(step))
    self.writer.flush()

  def close(self):
    if self.writer is not None:
      self.writer.close()


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
