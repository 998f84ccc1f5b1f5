"""Issue #36: readers never write, a full disk and a refused run lose nothing, and each failure is one
line. Readers (`load_trained`, and through it predict, submissions, the app, video, the benchmarks) read
a run in place, even while it trains or on a read-only disk; only the training process that owns the
run quarantines a damaged checkpoint (checkpoints/corrupt/)."""

import errno
import logging
import os
import shutil
import stat
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest

from diffhand_jax import main as main_command
from diffhand_jax.inference import loading
from _inference_workdir import tiny_workdir, write_tiny_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROG_ERROR = 'python -m diffhand_jax.main: error:'


def _tree(folder) -> dict[str, tuple]:
  """Every path under ``folder`` (folders too) with its kind, size, mtime and bytes."""
  result = {}
  for root, dirs, names in os.walk(folder):
    for name in dirs + names:
      path = os.path.join(root, name)
      info = os.lstat(path)
      content = None
      if stat.S_ISREG(info.st_mode):
        with open(path, 'rb') as f:
          content = f.read()
      result[os.path.relpath(path, folder)] = (
          info.st_mode,
          info.st_size,
          info.st_mtime_ns,
          content,
      )
  return result


class _WriteWatch:
  """Records Python-level writes (opening for writing, mkdir, rename, remove, rmtree) under a folder
  through an audit hook; tensorstore's own writes are caught by comparing `_tree`s."""

  _active = None  # the watch in force: audit hooks cannot be removed, so one hook serves them all
  _installed = False

  def __init__(self, folder):
    self.folder = os.path.realpath(folder)
    self.writes = []

  def _hook(self, event, args):
    if event == 'open' and args and isinstance(args[0], str):
      mode = args[1] if len(args) > 1 and isinstance(args[1], str) else 'r'
      paths = [args[0]] if any(c in mode for c in 'wax+') else []
    elif event in ('os.mkdir', 'os.rename', 'os.remove', 'os.rmdir', 'shutil.rmtree', 'os.unlink'):
      paths = [a for a in args[:2] if isinstance(a, (str, os.PathLike))]
    else:
      return
    for path in paths:
      if os.path.realpath(os.fspath(path)).startswith(self.folder):
        self.writes.append((event, os.fspath(path)))

  def __enter__(self):
    if not _WriteWatch._installed:
      sys.addaudithook(lambda e, a: _WriteWatch._active and _WriteWatch._active._hook(e, a))
      _WriteWatch._installed = True
    _WriteWatch._active = self
    return self

  def __exit__(self, *exc):
    _WriteWatch._active = None


def _damage_data(step_dir):
  """Garbage in every data file of a checkpoint, its metadata left whole: the read fails late, inside
  tensorstore, with other reads still in flight."""
  for root, _, names in os.walk(step_dir):
    for name in names:
      if name not in ('_METADATA', '_CHECKPOINT_METADATA', 'metadata') and not name.endswith(
          '.txt'
      ):
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'garbage')


@pytest.fixture
def run_copy(tmp_path):
  """A copy of the tests' tiny run (checkpoints 2 and 4); made writable again afterwards."""
  workdir = str(tmp_path / 'run')
  shutil.copytree(tiny_workdir()[0], workdir)
  yield workdir
  for root, dirs, names in os.walk(workdir):
    for name in dirs + names + ['.']:
      os.chmod(os.path.join(root, name), 0o755)


def _read_only(folder):
  for root, dirs, names in os.walk(folder):
    for name in names:
      os.chmod(os.path.join(root, name), 0o444)
    for name in dirs:
      os.chmod(os.path.join(root, name), 0o555)
  os.chmod(folder, 0o555)


# ----- 1. readers never write ---------------------------------------------------------------------------


def test_a_reader_of_a_damaged_read_only_run_falls_back_writes_nothing_and_says_one_line(
    run_copy, capfd, caplog
):
  checkpoint_dir = os.path.join(run_copy, 'checkpoints')
  _damage_data(os.path.join(checkpoint_dir, '4'))
  # A save in flight (never finalised) is never a candidate, whatever it holds.
  os.makedirs(os.path.join(checkpoint_dir, '6.orbax-checkpoint-tmp-1234', 'params'))
  _read_only(run_copy)  # root is not stopped by it: the snapshot and the audit hook are
  before = _tree(run_copy)
  with _WriteWatch(run_copy) as watch:
    run = loading.load_trained(run_copy)
    time.sleep(1.0)  # tensorstore's late callbacks arrive after the failed read returns
  assert run.step == 2
  assert watch.writes == []
  assert _tree(run_copy) == before
  out, err = capfd.readouterr()
  text = out + err
  assert 'Event loop is closed' not in text and 'Traceback' not in text
  lines = [line for line in text.splitlines() if line.strip()]
  assert len(lines) == 1, text[-3000:]
  assert lines[0].startswith('warning:') and 'step 4' in lines[0] and 'step 2' in lines[0]
  # Under pytest, log records reach caplog rather than stderr: orbax's must not reach either.
  assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_every_checkpoint_damaged_is_one_short_message(run_copy, capfd):
  for step in ('2', '4'):
    _damage_data(os.path.join(run_copy, 'checkpoints', step))
  before = _tree(run_copy)
  with pytest.raises(FileNotFoundError) as error:
    loading.load_trained(run_copy)
  time.sleep(1.0)
  message = str(error.value)
  assert 'steps 4, 2' in message and 'could not be read' in message
  assert len(message.splitlines()) <= 3
  out, err = capfd.readouterr()
  assert len((out + err).splitlines()) <= 3, (out + err)[-3000:]
  assert _tree(run_copy) == before


def test_a_checkpoint_rotated_away_while_read_is_read_again_from_the_newer_one(
    run_copy, monkeypatch, capfd
):
  """As when training saves step 6 and rotation deletes step 4 while a reader reads step 4."""
  checkpoint_dir = os.path.join(run_copy, 'checkpoints')
  real_metadata = ocp.CheckpointManager.item_metadata
  rotated = []

  def metadata_during_rotation(self, step, *args, **kwargs):
    if step == 4 and not rotated:
      rotated.append(step)
      shutil.copytree(os.path.join(checkpoint_dir, '4'), os.path.join(checkpoint_dir, '6'))
      shutil.rmtree(os.path.join(checkpoint_dir, '4'))
    return real_metadata(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'item_metadata', metadata_during_rotation)
  run = loading.load_trained(run_copy)
  assert rotated and run.step == 6
  assert sorted(os.listdir(checkpoint_dir)) == ['2', '6']  # nothing moved, nothing made
  out, err = capfd.readouterr()
  assert 'warning' not in out + err and 'Traceback' not in out + err


# ----- 2. a full disk during training ---------------------------------------------------------------------


def test_a_full_disk_stops_training_with_one_line_no_temporary_checkpoint_and_honest_results(
    tmp_path, monkeypatch, capsys
):
  """Checkpoint 3's writes fail as on a full disk (in orbax's background thread, as tensorstore's
  would); the evaluation at step 3 must not report a step that has no checkpoint."""
  real_save = ocp.StandardCheckpointHandler.async_save

  async def full_disk_at_step_3(self, directory, *args, **kwargs):
    commits = await real_save(self, directory, *args, **kwargs)
    if f'{os.sep}3.orbax-checkpoint-tmp' not in str(directory):
      return commits

    class NoSpace:

      def result(self, timeout=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))

    return [NoSpace()]

  monkeypatch.setattr(ocp.StandardCheckpointHandler, 'async_save', full_disk_at_step_3)
  _, data_dir = tiny_workdir()
  config = write_tiny_config_file(tmp_path / 'tiny.py', data_dir)
  workdir = tmp_path / 'run'
  status = main_command.main(
      [
          f'--config={config}',
          f'--workdir={workdir}',
          '--config.num_train_steps=5',
          '--config.checkpoint_every_steps=1',
          '--config.eval_every_steps=3',
      ]
  )
  out, err = capsys.readouterr()
  assert status == 2, err[-3000:]
  assert 'Traceback' not in out + err
  errors = [line for line in err.splitlines() if line.strip()]
  assert len(errors) == 1, err[-3000:]
  assert errors[0].startswith(PROG_ERROR)
  assert 'No space left on device' in errors[0] and str(workdir / 'checkpoints') in errors[0]
  names = os.listdir(workdir / 'checkpoints')
  assert not [name for name in names if 'orbax-checkpoint-tmp' in name], names
  if (workdir / 'results.json').exists():
    import json

    step = json.loads((workdir / 'results.json').read_text())['step']
    assert str(step) in names


# ----- 3. a refused run changes nothing -------------------------------------------------------------------


def test_a_refused_run_leaves_no_trace_and_the_fixed_rerun_starts(tmp_path, capsys):
  _, data_dir = tiny_workdir()
  config = write_tiny_config_file(
      tmp_path / 'tiny.py',
      data_dir,
      num_train_steps=1,
      eval_every_steps=1,
      checkpoint_every_steps=1,
  )
  weights = tmp_path / 'encoder.safetensors'
  weights.write_bytes(b'not a safetensors file')
  workdir = tmp_path / 'run'
  status = main_command.main(
      [f'--config={config}', f'--workdir={workdir}', f'--config.model.encoder_init={weights}']
  )
  err = capsys.readouterr().err
  assert status == 2 and 'Traceback' not in err and str(weights) in err
  assert not workdir.exists() or os.listdir(workdir) == [], os.listdir(workdir)
  status = main_command.main([f'--config={config}', f'--workdir={workdir}'])
  err = capsys.readouterr().err
  assert status == 0, err[-3000:]
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['1']


def test_a_refused_run_leaves_an_existing_run_unchanged(run_copy, tmp_path, capsys):
  _, data_dir = tiny_workdir()
  config = write_tiny_config_file(tmp_path / 'tiny.py', data_dir)
  os.remove(os.path.join(run_copy, 'checkpoints', '2', 'params', '_METADATA'))
  _damage_data(os.path.join(run_copy, 'checkpoints', '4'))
  before = _tree(run_copy)
  status = main_command.main(
      [f'--config={config}', f'--workdir={run_copy}', '--config.model.width=48']
  )
  assert status == 2 and 'another model' in capsys.readouterr().err
  assert _tree(run_copy) == before


# ----- 4. reading a run while it trains -------------------------------------------------------------------


@pytest.mark.slow
def test_reading_a_run_while_it_trains_loses_nothing(tmp_path):
  _, data_dir = tiny_workdir()
  config = write_tiny_config_file(
      tmp_path / 'tiny.py',
      data_dir,
      num_train_steps=60,
      checkpoint_every_steps=1,
      keep_checkpoints=1,
      eval_every_steps=60,
      log_every_steps=20,
  )
  workdir = tmp_path / 'run'
  training = subprocess.Popen(
      [sys.executable, '-m', 'diffhand_jax.main', f'--config={config}', f'--workdir={workdir}'],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      cwd=REPO,
  )
  loads, refusals = [], []
  try:
    while training.poll() is None:
      if not (workdir / 'checkpoints').is_dir() or not any(
          name.isdigit() for name in os.listdir(workdir / 'checkpoints')
      ):
        time.sleep(0.2)
        continue
      try:
        loads.append(loading.load_trained(str(workdir)).step)
      except FileNotFoundError as error:  # rotated away twice in a row: a clean refusal
        refusals.append(str(error))
    output = training.communicate(timeout=600)[0]
  finally:
    if training.poll() is None:
      training.kill()
  assert training.returncode == 0, output[-3000:]
  assert not (workdir / 'checkpoints' / 'corrupt').exists()
  assert loads, refusals
  assert loads == sorted(loads)  # each load found the newest one or a newer one
