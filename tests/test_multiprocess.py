"""Two processes over localhost (launch/local.sh, one fake CPU device each) train exactly as one process
does: same global batches, same losses. Slow: it starts three Python processes."""

import json
import os
import subprocess
import sys

import pytest

from _inference_workdir import write_tiny_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return {r['step']: r['loss'] for r in records if r['split'] == 'train'}


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  config_file = tmp_path / 'tiny_config.py'
  write_tiny_config_file(config_file, tmp_path / 'tfds', log_every_steps=1)
  command = [sys.executable, '-m', 'diffhand_jax.main', f'--config={config_file}']
  env = dict(os.environ, LOG_DIR=str(tmp_path / 'logs'))
  single = subprocess.run(
      command + [f'--workdir={tmp_path / "one"}'],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert single.returncode == 0, single.stderr[-3000:]
  multi = subprocess.run(
      [os.path.join(REPO, 'launch', 'local.sh'), '2', '--']
      + command
      + [f'--workdir={tmp_path / "two"}'],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  logs = ''.join(open(tmp_path / 'logs' / f'process_{i}.log').read()[-2000:] for i in range(2))
  assert multi.returncode == 0, logs
  assert 'process 1 of 2' in logs
  one, two = _losses(tmp_path / 'one'), _losses(tmp_path / 'two')
  assert sorted(one) == sorted(two) == [1, 2, 3, 4]
  for step in one:
    assert two[step] == pytest.approx(one[step], rel=1e-5)
  assert os.path.exists(tmp_path / 'two' / 'results.json')  # written once, by process 0


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_rerun_resumes(tmp_path):
  """SIGTERM (what SLURM sends) makes main checkpoint at the current step and exit 0; the same command
  then resumes from that step."""
  import signal
  import time

  config_file = tmp_path / 'long_config.py'
  write_tiny_config_file(
      config_file,
      tmp_path / 'tfds',
      num_train_steps=100000,
      log_every_steps=1,
      checkpoint_every_steps=100000,
      eval_every_steps=100000,
  )
  workdir = tmp_path / 'run'
  command = [
      sys.executable,
      '-m',
      'diffhand_jax.main',
      f'--config={config_file}',
      f'--workdir={workdir}',
  ]
  process = subprocess.Popen(
      command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  deadline = time.time() + 300
  output = ''
  while time.time() < deadline:
    line = process.stdout.readline()
    output += line
    if line.startswith('step 3/'):
      process.send_signal(signal.SIGTERM)
      break
  rest, _ = process.communicate(timeout=300)
  output += rest
  assert process.returncode == 0, output[-3000:]
  assert 'preempted: saved a checkpoint at step' in output
  saved = int(output.split('preempted: saved a checkpoint at step ')[1].split(';')[0])
  assert saved >= 3
  assert str(saved) in os.listdir(workdir / 'checkpoints')

  config_file.write_text(
      config_file.read_text().replace(
          '100000\n  config.log_every_steps', f'{saved + 2}\n  config.log_every_steps'
      )
  )
  resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'resumed from step {saved}' in resumed.stdout
  assert sorted(_losses(workdir))[-1] == saved + 2


@pytest.mark.slow
def test_meshes_match_one_device(tmp_path):
  """With 8 fake CPU devices, meshes (data=8), (data=2, fsdp=4) and (fsdp=8) give the same losses and
  parameters after 3 steps as one device, and FSDP really shards the parameters."""
  import numpy as np

  out = tmp_path / 'meshes.npz'
  env = dict(os.environ, PYTHONPATH=REPO)
  result = subprocess.run(
      [
          sys.executable,
          os.path.join(REPO, 'tests', '_mesh_equivalence.py'),
          str(tmp_path / 'tfds'),
          str(out),
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  runs = np.load(out)
  reference_losses, reference_params = runs['one_device_losses'], runs['one_device_params']
  for name in ('data8', 'data2_fsdp4', 'fsdp8'):
    np.testing.assert_allclose(runs[f'{name}_losses'], reference_losses, rtol=1e-5)
    relative = np.linalg.norm(runs[f'{name}_params'] - reference_params) / np.linalg.norm(
        reference_params
    )
    assert relative <= 1e-5, (name, relative)
  assert int(runs['data8_sharded_leaves']) == 0
  assert int(runs['fsdp8_sharded_leaves']) > 0 and int(runs['data2_fsdp4_sharded_leaves']) > 0


def _run(command, env, timeout=900):
  result = subprocess.run(
      command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
  )
  assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
  return result


@pytest.mark.slow
def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path):
  """2 processes x 2 fake CPU devices (launch/local.sh) and 1 process x 4 give the same losses, on a
  (data=2, fsdp=2) mesh whose fsdp axis shards params across the processes, with 2 micro-batches."""
  config_file = tmp_path / 'config.py'
  write_tiny_config_file(
      config_file,
      tmp_path / 'tfds',
      log_every_steps=1,
      batch_size=8,
      grad_accum_steps=2,
      mesh={'data': 2, 'fsdp': 2},
      fsdp_min_size=1,
  )
  command = [sys.executable, '-m', 'diffhand_jax.main', f'--config={config_file}']
  env = dict(os.environ, LOG_DIR=str(tmp_path / 'logs'), JAX_PLATFORMS='cpu')
  single_env = dict(
      env, XLA_FLAGS='--xla_force_host_platform_device_count=4 ' + env.get('XLA_FLAGS', '')
  )
  single = _run(command + [f'--workdir={tmp_path / "one"}'], single_env)
  assert "mesh {'data': 2, 'fsdp': 2}" in single.stdout
  multi = subprocess.run(
      [os.path.join(REPO, 'launch', 'local.sh'), '2', '2', '--']
      + command
      + [f'--workdir={tmp_path / "two"}'],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  logs = [open(tmp_path / 'logs' / f'process_{i}.log').read() for i in range(2)]
  assert multi.returncode == 0, ''.join(log[-2000:] for log in logs)
  assert 'process 1 of 2 (explicit), 2 local / 4 global devices' in logs[1]
  one, two = _losses(tmp_path / 'one'), _losses(tmp_path / 'two')
  assert sorted(one) == sorted(two) == [1, 2, 3, 4]
  for step in one:
    assert two[step] == pytest.approx(one[step], rel=1e-5)


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_with_the_uninterrupted_losses(tmp_path):
  """kill -9 at a random step of a run that checkpoints every step; rerunning the same command resumes
  from the newest readable checkpoint (the one in flight at the kill may be torn), and every step's
  loss in metrics.jsonl equals that of a run never interrupted."""
  import random
  import signal
  import time

  num_steps = 10
  config_file = tmp_path / 'config.py'
  write_tiny_config_file(
      config_file,
      tmp_path / 'tfds',
      num_train_steps=num_steps,
      log_every_steps=1,
      checkpoint_every_steps=1,
      keep_checkpoints=3,
      eval_every_steps=num_steps,
  )
  command = [sys.executable, '-m', 'diffhand_jax.main', f'--config={config_file}']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  _run(command + [f'--workdir={tmp_path / "straight"}'], env)

  kill_after = random.randint(3, num_steps - 2)
  workdir = tmp_path / 'killed'
  process = subprocess.Popen(
      command + [f'--workdir={workdir}'],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
  )
  deadline, output = time.time() + 600, ''
  while time.time() < deadline and process.poll() is None:
    line = process.stdout.readline()
    output += line
    if line.startswith(f'step {kill_after}/'):
      process.send_signal(signal.SIGKILL)
      break
  process.wait(timeout=60)
  assert (
      process.returncode == -signal.SIGKILL
  ), f'not killed after step {kill_after}:\n{output[-3000:]}'

  resumed = _run(command + [f'--workdir={workdir}'], env)
  assert 'resumed from step ' in resumed.stdout, (kill_after, resumed.stdout[-2000:])
  resumed_from = int(resumed.stdout.split('resumed from step ')[1].split()[0])
  assert 1 <= resumed_from <= num_steps, kill_after
  with open(workdir / 'metrics.jsonl') as f:
    train_records = [json.loads(line) for line in f if '"train"' in line]
  assert sorted(r['step'] for r in train_records) == list(range(1, num_steps + 1))  # no step twice
  straight, killed = _losses(tmp_path / 'straight'), _losses(workdir)
  for step in range(1, num_steps + 1):
    assert killed[step] == pytest.approx(straight[step], rel=1e-6, abs=1e-7), (
        step,
        kill_after,
        resumed_from,
    )


@pytest.mark.slow
def test_memory_mode_compiles_without_data_or_workdir(tmp_path):
  """`main --config.mode=memory` prints the per-device memory table, needs no --workdir, and reads no
  data (the dataset is never built)."""
  config_file = tmp_path / 'config.py'
  write_tiny_config_file(config_file, tmp_path / 'tfds', mode='memory', grad_accum_steps=2)
  result = _run(
      [sys.executable, '-m', 'diffhand_jax.main', f'--config={config_file}'],
      dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  assert 'in 2 micro-batch(es)' in result.stdout
  for row in (
      'arguments',
      'outputs',
      'temporaries',
      'generated code',
      'total (peak estimate)',
      'params',
      'optimiser state',
  ):
    assert f'\n  {row}' in result.stdout, row
  assert not (tmp_path / 'tfds').exists()
