"""One run per workdir: a lease in workdir/run.lock, renewed by a heartbeat.

The lock file names the host and pid that hold the workdir and when they last renewed it. A second run
stops at once, naming them. A lock left by a run that died (kill -9, preemption, a node that went away)
does not block the rerun: on the same host a dead pid frees it at once, and on any host a heartbeat
older than the lease does. In multi-process runs process 0 holds the lock.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any

from diffhand_jax.runs import files

LOCK_FILE = 'run.lock'
HEARTBEAT_SECONDS = 30.0
LEASE_SECONDS = 180.0  # a heartbeat older than this belongs to a run that is gone


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, but another user's
    return True
  return True


def read_lock(workdir: str) -> dict[str, Any] | None:
  """The lock record of ``workdir``, or None when there is none (or it is unreadable: a torn write)."""
  try:
    with open(os.path.join(workdir, LOCK_FILE)) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def holder_problem(
    workdir: str, *, lease: float = LEASE_SECONDS, now: float | None = None
) -> str | None:
  """Why ``workdir`` cannot be taken now (a live run holds it), or None."""
  record = read_lock(workdir)
  if record is None:
    return None
  now = time.time() if now is None else now
  host, pid = record.get('host'), record.get('pid')
  age = now - float(record.get('heartbeat', 0.0))
  if (
      host == socket.gethostname()
      and isinstance(pid, int)
      and (pid == os.getpid() or not _pid_alive(pid))
  ):
    return None  # this process, or a dead one on this host
  if age > lease:
    return None  # nobody renewed it: its run is gone (or the pid was reused)
  return (
      f'{workdir} is in use by another run: host {host}, pid {pid} (started '
      f'{time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0)))}, last '
      f'heartbeat {age:.0f} s ago). Wait for it, stop it, or use another --workdir. A lock whose '
      f'heartbeat is older than {lease:.0f} s is taken over ({os.path.join(workdir, LOCK_FILE)}).'
  )


class WorkdirLock:
  """Holds workdir/run.lock while a run works in it (a context manager); renews it every
  ``heartbeat`` seconds from a daemon thread, and removes it on exit."""

  def __init__(
      self, workdir: str, *, heartbeat: float = HEARTBEAT_SECONDS, lease: float = LEASE_SECONDS
  ):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self.heartbeat = heartbeat
    self.lease = lease
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._record = {
        'host': socket.gethostname(),
        'pid': os.getpid(),
        'started': time.time(),
        'heartbeat': time.time(),
    }

  def _write(self) -> None:
    self._record['heartbeat'] = time.time()
    files.write_json_atomic(self.path, self._record)

  def acquire(self) -> WorkdirLock:
    problem = holder_problem(self.workdir, lease=self.lease)
    if problem:
      raise WorkdirLockedError(problem)
    os.makedirs(self.workdir, exist_ok=True)
    self._write()
    # Two runs that start together both see no holder; the last writer wins and the other stops.
    time.sleep(0.05)
    record = read_lock(self.workdir) or {}
    if (record.get('host'), record.get('pid')) != (self._record['host'], self._record['pid']):
      raise WorkdirLockedError(
          holder_problem(self.workdir, lease=self.lease) or f'{self.path} was taken'
      )
    self._thread = threading.Thread(target=self._renew, name='workdir-lock-heartbeat', daemon=True)
    self._thread.start()
    return self

  def _renew(self) -> None:
    while not self._stop.wait(self.heartbeat):
      try:
        self._write()
      except OSError:  # a full or vanished disk: the run itself will report it
        pass

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
      self._thread = None
    record = read_lock(self.workdir) or {}
    if (record.get('host'), record.get('pid')) == (self._record['host'], self._record['pid']):
      try:
        os.remove(self.path)
      except OSError:
        pass

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> bool:
    self.release()
    return False


def move_run_aside(workdir: str) -> str | None:
  """Renames ``workdir`` to ``workdir.<YYYYmmdd-HHMMSS>`` (nothing is deleted) so that a new run can
  start there; None when there is nothing to move. Refuses while a live run holds it."""
  path = os.path.abspath(workdir)
  if not os.path.isdir(path) or not os.listdir(path):
    return None
  problem = holder_problem(path)
  if problem:
    raise WorkdirLockedError(problem)
  target = f'{path}.{time.strftime("%Y%m%d-%H%M%S")}'
  suffix = 1
  while os.path.exists(target):
    target = f'{path}.{time.strftime("%Y%m%d-%H%M%S")}.{suffix}'
    suffix += 1
  os.rename(path, target)
  return target
