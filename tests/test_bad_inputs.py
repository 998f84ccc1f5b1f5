"""Ordinary mistakes, as a new user makes them, get one clear message and exit status 2, never a traceback,
and change no file already in the workdir. Each case below is one finding of a round of probes (the
comment names it); the cases that need a trained run copy the tests' tiny run."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from diffhand_jax import main as main_command
from diffhand_jax.runs import lock
from _inference_workdir import write_tiny_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(REPO, 'configs', 'synthetic.py')


def _snapshot(folder) -> dict[str, str]:
  """Every file under ``folder`` with the md5 of its bytes."""
  result = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        result[os.path.relpath(path, folder)] = hashlib.md5(f.read()).hexdigest()
  return result


def _main(capsys, *argv):
  """(exit status, stderr) of `main` run in this process on ``argv``."""
  status = main_command.main(list(argv))
  captured = capsys.readouterr()
  return status, captured.err


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A copy-me trained run: (workdir, config file) of the tests' tiny 4-step run."""
  from _inference_workdir import tiny_workdir

  workdir, data_dir = tiny_workdir()
  config_file = write_tiny_config_file(tmp_path_factory.mktemp('config') / 'tiny.py', data_dir)
  return workdir, config_file


def _copy(trained, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained[0], workdir)
  return workdir


# ----- 4. config mistakes are found before anything is built -----------------------------------------------


def test_every_config_mistake_is_reported_at_once_before_the_workdir_is_made(tmp_path, capsys):
  workdir = tmp_path / 'run'
  status, err = _main(
      capsys,
      f'--config={SYNTHETIC}',
      f'--workdir={workdir}',
      '--config.batch_size=0',
      '--config.model.sampling_steps=0',
      '--config.eval.aggregate=bogus',
      '--config.checkpoint_every_steps=0',
      '--config.keep_checkpoints=0',  # finding 2: it kept nothing
      '--config.dataset.name=freihnd',
  )
  assert status == 2
  assert 'the run cannot start (6 problems)' in err
  for field in (
      'batch_size = 0',
      'sampling_steps = 0',
      "aggregate = 'bogus'",
      'checkpoint_every_steps = 0',
      'keep_checkpoints = 0',
      "name = 'freihnd'",
  ):
    assert field in err, field
  assert 'Traceback' not in err
  assert not workdir.exists()


@pytest.mark.parametrize(
    'argv, message',
    [
        ([f'--config={os.path.join("configs", "no_such_config.py")}'], 'No such file'),
        ([f'--config={SYNTHETIC}', '--config.model.widht=3'], 'Did you mean "width"'),
        (
            [f'--config={SYNTHETIC}', '--config.batch_size=abc'],
            "invalid literal for int() with base 10: 'abc'",
        ),
        (
            [f'--config={SYNTHETIC}', '--config.mode=evaluat'],
            "config.mode = 'evaluat': must be one of",
        ),
    ],
)
def test_flag_mistakes(tmp_path, capsys, argv, message):
  status, err = _main(capsys, *argv, f'--workdir={tmp_path / "run"}')
  assert status == 2 and message in err and 'Traceback' not in err


def test_a_workdir_that_is_a_file(tmp_path, capsys):
  a_file = tmp_path / 'notes.txt'
  a_file.write_text('mine')
  status, err = _main(capsys, f'--config={SYNTHETIC}', f'--workdir={a_file}')
  assert status == 2 and 'is a file, not a folder' in err
  assert a_file.read_text() == 'mine'


def test_evaluate_without_a_checkpoint(tmp_path, capsys):
  status, err = _main(
      capsys, f'--config={SYNTHETIC}', f'--workdir={tmp_path}', '--config.mode=evaluate'
  )
  assert status == 2 and 'no checkpoint in' in err and 'to evaluate' in err


def test_the_paper_config_without_mano_data_or_weights_says_all_three(
    tmp_path, capsys, monkeypatch
):
  monkeypatch.delenv('DIFFHAND_MANO_DIR', raising=False)
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(tmp_path / 'hf'))
  config = os.path.join(REPO, 'configs', 'freihand.py')
  status, err = _main(
      capsys,
      f'--config={config}',
      f'--workdir={tmp_path / "run"}',
      f'--config.dataset.data_dir={tmp_path / "tfds"}',
  )
  assert status == 2 and 'the run cannot start (3 problems)' in err
  assert 'needs the MANO model' in err and 'DIFFHAND_MANO_DIR' in err
  assert 'tfds build datasets/freihand' in err
  assert 'timm/deit3_large_patch16_224.fb_in22k_ft_in1k' in err and 'hf download' in err
  assert 'Traceback' not in err and not (tmp_path / 'run').exists()
  # Memory mode needs none of them (no data read, no weights loaded).
  status, err = _main(
      capsys,
      f'--config={config}',
      '--config.mode=memory',
      '--config.model.encoder=deit_tiny_patch16_224',
      '--config.model.img_size=32',
      '--config.batch_size=1',
      '--config.model.width=32',
      '--config.model.num_heads=2',
      '--config.model.num_blocks=1',
  )
  assert status == 0, err


# ----- 1. a changed model never wipes a run --------------------------------------------------------------------


def test_a_changed_model_size_is_refused_in_seconds_and_changes_nothing(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  before = _snapshot(workdir)
  start = time.time()
  result = subprocess.run(
      [
          sys.executable,
          '-m',
          'diffhand_jax.main',
          f'--config={trained[1]}',
          f'--workdir={workdir}',
          '--config.model.width=48',
          '--config.num_train_steps=6',
      ],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=REPO,
  )
  elapsed = time.time() - start
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'model.width: 32 in the workdir, 48 now' in result.stderr
  assert '--move_aside' in result.stderr
  assert 'Traceback' not in result.stderr + result.stdout
  assert elapsed < 60
  assert _snapshot(workdir) == before


def test_a_run_in_use_is_refused_naming_its_host_and_pid(trained, tmp_path, capsys):
  workdir = _copy(trained, tmp_path)
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    holder = lock.WorkdirLock(workdir)
    holder._record['pid'] = sleeper.pid  # pylint: disable=protected-access - a live run's lock
    holder._write()  # pylint: disable=protected-access
    before = _snapshot(workdir)
    status, err = _main(
        capsys, f'--config={trained[1]}', f'--workdir={workdir}', '--config.num_train_steps=6'
    )
    assert status == 2
    assert f'host {socket.gethostname()}, pid {sleeper.pid}' in err
    assert _snapshot(workdir) == before
  finally:
    sleeper.kill()
    sleeper.wait()


# ----- 3. a damaged newest checkpoint: the older good one survives the next save ------------------------------


def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_good_one_kept(
    trained, tmp_path, capsys
):
  workdir = _copy(trained, tmp_path)
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
  newest, older = steps[-1], steps[-2]
  for root, _, names in os.walk(os.path.join(workdir, 'checkpoints', str(newest), 'state')):
    for name in names:
      if not name.startswith('_'):
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'damaged')
  # One more step than the older checkpoint, with a save at every step.
  status, err = _main(
      capsys,
      f'--config={trained[1]}',
      f'--workdir={workdir}',
      f'--config.num_train_steps={older + 1}',
      '--config.checkpoint_every_steps=1',
      '--config.keep_checkpoints=1',
      '--config.eval_every_steps=1000',
  )
  assert status == 0, err
  kept = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
  assert older in kept and older + 1 in kept  # keep=1, but the last good one is never rotated out
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', 'corrupt', str(newest)))


# ----- 7. errors that used to end in a traceback ----------------------------------------------------------------


def test_the_nan_stop_is_one_line(tmp_path, capsys, monkeypatch):
  from diffhand_jax.training import train

  def diverge(config, workdir):
    raise FloatingPointError(
        'the training loss became nan by step 3; stopping. The last good checkpoint is kept'
    )

  monkeypatch.setattr(train, 'train_and_evaluate', diverge)
  status, err = _main(
      capsys,
      f'--config={SYNTHETIC}',
      f'--workdir={tmp_path / "run"}',
      f'--config.dataset.data_dir={tmp_path / "tfds"}',
  )
  assert status == 2 and 'became nan by step 3' in err and 'Traceback' not in err


def test_ctrl_c_during_training_exits_130_after_checkpointing(tmp_path, capsys, monkeypatch):
  from diffhand_jax.training import train

  monkeypatch.setattr(
      train,
      'train_and_evaluate',
      lambda config, workdir: {'step': 3, 'preempted': True, 'signal': 'SIGINT'},
  )
  status, _ = _main(capsys, f'--config={SYNTHETIC}', f'--workdir={tmp_path / "run"}')
  assert status == 130
  assert not os.path.exists(os.path.join(tmp_path, 'run', lock.LOCK_FILE))  # the lock is released


@pytest.mark.slow
def test_ctrl_c_checkpoints_the_current_step_and_a_second_one_quits(trained, tmp_path):
  """A real SIGINT to a training process: one checkpoints and exits 130 with a one-line message."""
  workdir = str(tmp_path / 'run')
  config_file = write_tiny_config_file(
      tmp_path / 'cfg.py',
      os.path.join(os.path.dirname(trained[0]), 'tfds'),
      num_train_steps=100000,
      log_every_steps=1,
      eval_every_steps=100000,
      checkpoint_every_steps=100000,
  )
  process = subprocess.Popen(
      [
          sys.executable,
          '-m',
          'diffhand_jax.main',
          f'--config={config_file}',
          f'--workdir={workdir}',
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      cwd=REPO,
  )
  lines = []
  for line in process.stdout:
    lines.append(line)
    if line.startswith('step 3/'):
      process.send_signal(2)
      break
  rest, _ = process.communicate(timeout=300)
  output = ''.join(lines) + rest
  assert process.returncode == 130, output[-3000:]
  assert 'interrupted (Ctrl-C): saved a checkpoint at step' in output and 'Traceback' not in output
  assert any(s.isdigit() for s in os.listdir(os.path.join(workdir, 'checkpoints')))


# ----- 5. and 6. predict: a run that does not fit, silent garbage, an output that is a file --------------------


def test_predict_skips_what_it_cannot_read_and_names_it(trained, tmp_path, capsys):
  import json  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from diffhand_jax import predict  # pylint: disable=g-import-not-at-top

  images = tmp_path / 'images'
  images.mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(images / 'good.png')
  Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(images / 'far_box.png')
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(images / 'dot.png')
  boxes = tmp_path / 'boxes.json'
  boxes.write_text(
      json.dumps(
          {'good.png': [8, 8, 56, 56], 'far_box.png': [500, 500, 600, 600], 'dot.png': [0, 0, 1, 1]}
      )
  )
  output = tmp_path / 'out'
  argv = [
      f'--workdir={trained[0]}',
      f'--images={images}',
      f'--boxes={boxes}',
      '--num_hypotheses=1',
      '--steps=2',
  ]
  status = predict.main(argv + [f'--output={output}'])
  err = capsys.readouterr().err
  assert status == 0  # one image could be processed
  assert (
      'far_box.png: the box [500.0, 500.0, 600.0, 600.0] lies outside the image (64×64 pixels)'
      in err
  )
  assert 'dot.png' in err and '1×1 pixels is too small' in err
  assert sorted(p.name for p in output.iterdir() if p.suffix == '.json') == ['good.json']
  # Nothing processable: exit 2.
  (images / 'good.png').unlink()
  assert predict.main(argv + [f'--output={tmp_path / "out2"}']) == 2
  # An --output that is a file: exit 2, the file untouched.
  a_file = tmp_path / 'results.txt'
  a_file.write_text('mine')
  assert predict.main(argv + [f'--output={a_file}']) == 2
  assert 'is a file, not a folder' in capsys.readouterr().err and a_file.read_text() == 'mine'


def test_predict_on_a_run_of_another_model_says_so(trained, tmp_path, capsys):
  """A checkpoint's shapes and the config that opens it disagree (a hand-edited run): a mismatch message,
  not 'no checkpoint', and no traceback."""
  import json  # pylint: disable=g-import-not-at-top

  from diffhand_jax import predict  # pylint: disable=g-import-not-at-top

  workdir = _copy(trained, tmp_path)
  for root, _, names in os.walk(os.path.join(workdir, 'checkpoints')):
    for name in names:
      path = os.path.join(root, name)
      if os.path.basename(root) == 'config' and name == 'metadata':  # the checkpoint's config item
        payload = json.loads(open(path).read())
        payload['model']['width'] = 48
        with open(path, 'w') as f:
          f.write(json.dumps(payload))
  images = tmp_path / 'images'
  images.mkdir()
  shutil.copy(os.path.join(REPO, 'docs', 'procedural_hand.png'), images / 'a.png')
  status = predict.main(
      [
          f'--workdir={workdir}',
          f'--images={images}',
          f'--output={tmp_path / "o"}',
          '--detector=none',
      ]
  )
  err = capsys.readouterr().err
  assert status == 2 and 'another shape than this config' in err and 'Traceback' not in err
