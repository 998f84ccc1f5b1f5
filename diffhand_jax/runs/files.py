"""Writing files that must never be seen half-written: the one atomic write of the project."""

from __future__ import annotations

import json
import os
from typing import Any, Callable


def atomic_write(
    path: str, write: Callable[[str], None], check: Callable[[str], None] | None = None
) -> str:
  """Calls ``write(tmp)`` (and ``check(tmp)``, which may raise) on a temporary file beside ``path``, then
  renames it over ``path``. A failure leaves ``path`` as it was and removes the temporary file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f'.{os.path.basename(path)}.tmp{os.getpid()}')
  try:
    write(tmp)
    if check is not None:
      check(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def write_json_atomic(path: str, payload: Any) -> str:
  """``payload`` as indented JSON at ``path``, atomically."""

  def write(tmp: str) -> None:
    with open(tmp, 'w') as f:
      json.dump(payload, f, indent=2)

  return atomic_write(path, write)


def write_text_atomic(path: str, text: str) -> str:
  def write(tmp: str) -> None:
    with open(tmp, 'w') as f:
      f.write(text)

  return atomic_write(path, write)
