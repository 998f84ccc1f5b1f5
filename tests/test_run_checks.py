"""The run-directory layer's guards: config validation, the resume rule, the workdir lock, checkpoints
that are never lost, Ctrl-C, and pretrained encoders by name. Unit level: no model is trained here.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from diffhand_jax.models import checkpoint_errors, pretrained, vit
from diffhand_jax.runs import checkpoints, checks, lock, run_config, state as state_lib
from diffhand_jax.training import preemption

CONFIG_NAMES = ('synthetic', 'freihand', 'ho3d', 'dexycb')


# ----- config validation ---------------------------------------------------------------------------


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_the_shipped_configs_are_valid(name):
  assert checks.validate_config(run_config.config_file(name)) == []


def test_every_bad_field_is_reported_at_once():
  config = run_config.config_file('synthetic')
  config.batch_size = -1
  config.model.sampling_steps = 0
  config.model.num_hypotheses = 0
  config.eval.aggregate = 'bogus'
  config.checkpoint_every_steps = 0
  config.keep_checkpoints = 0
  config.dataset.name = 'no_such_dataset'
  problems = checks.validate_config(config)
  expected = [
      'config.batch_size = -1',
      'config.model.sampling_steps = 0',
      'config.model.num_hypotheses = 0',
      "config.eval.aggregate = 'bogus'",
      'config.checkpoint_every_steps = 0',
      'config.keep_checkpoints = 0',
      "config.dataset.name = 'no_such_dataset'",
  ]
  for start in expected:
    assert any(p.startswith(start) for p in problems), (start, problems)
  assert len(problems) == len(expected), problems
  message = str(checks.RunCheckError(problems))
  assert message.startswith(f'the run cannot start ({len(expected)} problems)')


def test_cross_field_rules():
  config = run_config.config_file('synthetic')
  config.model.sampling_steps = config.model.num_timesteps + 1
  config.grad_accum_steps = 3  # does not divide batch 8
  config.mesh = {'data': -1, 'fsdp': -1}
  problems = checks.validate_config(config)
  assert any('sampling_steps' in p and f'<= {config.model.num_timesteps}' in p for p in problems)
  assert any('grad_accum_steps' in p and 'must divide config.batch_size (8)' in p for p in problems)
  assert any('at most one axis may be -1' in p for p in problems)
  config = run_config.config_file('synthetic')
  config.model.width = 30
  config.model.num_heads = 4
  config.model.encoder = 'deit_nonexistent'
  problems = checks.validate_config(config)
  assert any(
      'config.model.width = 30: must be a multiple of config.model.num_heads (4)' in p
      for p in problems
  )
  assert any(
      p.startswith("config.model does not describe a network: unknown ViT model 'deit_nonexistent'")
      for p in problems
  )


def test_mesh_must_fit_the_devices_and_split_the_batch():
  config = run_config.config_file('synthetic')  # batch 8
  config.mesh = {'data': 3, 'fsdp': 1}
  assert checks.mesh_problems(config, 4) == [
      "config.mesh = {'data': 3, 'fsdp': 1} needs 3 devices, 4 are present"
  ]
  config.mesh = {'data': -1, 'fsdp': 3}
  assert 'does not divide the 4 devices' in checks.mesh_problems(config, 4)[0]
  config.mesh = {'data': -1, 'fsdp': 1}
  assert checks.mesh_problems(config, 4) == []
  assert 'does not split over the mesh' in checks.mesh_problems(config, 16)[0]


def test_workdir_problems(tmp_path):
  a_file = tmp_path / 'file'
  a_file.write_text('x')
  assert 'is a file, not a folder' in checks.workdir_problem(str(a_file), 'train')
  assert 'is a file, so the folder cannot be made' in checks.workdir_problem(
      str(a_file / 'run'), 'train'
  )
  assert checks.workdir_problem(None, 'train') == "--workdir is required in mode 'train'"
  assert checks.workdir_problem(None, 'memory') is None
  assert checks.workdir_problem(str(tmp_path / 'new' / 'run'), 'train') is None


# ----- the resume rule -------------------------------------------------------------------------------


def test_resume_mismatches_name_structural_fields_only():
  saved = run_config.config_file('synthetic')
  new = run_config.config_file('synthetic')
  for key, value in (
      ('sampling_steps', 3),
      ('num_hypotheses', 2),
      ('eta', 0.5),
      ('dtype', 'bfloat16'),
      ('encoder_init', ''),
  ):
    new.model[key] = value
  new.num_train_steps = 10
  new.optimizer.learning_rate = 1.0
  new.eval.aggregate = 'mean'
  assert run_config.resume_mismatches(saved, new) == []
  new.model.width = 48
  new.ema_decay = 0.0
  new.dataset.hand_model = 'mano'
  assert run_config.resume_mismatches(saved, new) == [
      ('dataset.hand_model', 'procedural', 'mano'),
      ('ema_decay > 0', True, False),
      ('model.width', 32, 48),
  ]
  # The JSON round trip (lists for tuples) and placeholder fields (None) change nothing.
  again = run_config.config_from_json(json.loads(saved.to_json_best_effort()))
  assert run_config.resume_mismatches(saved, again) == []


# ----- the workdir lock ---------------------------------------------------------------------------------


def _write_lock(workdir, **record):
  os.makedirs(workdir, exist_ok=True)
  (workdir / lock.LOCK_FILE).write_text(json.dumps(record))


def test_a_live_holder_is_named_and_refused(tmp_path):
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    _write_lock(
        tmp_path,
        host=socket.gethostname(),
        pid=sleeper.pid,
        started=time.time(),
        heartbeat=time.time(),
    )
    with pytest.raises(
        lock.WorkdirLockedError, match=f'host {socket.gethostname()}, pid {sleeper.pid}'
    ):
      lock.WorkdirLock(str(tmp_path)).acquire()
    with pytest.raises(lock.WorkdirLockedError):
      lock.move_run_aside(str(tmp_path))
  finally:
    sleeper.kill()
    sleeper.wait()
  # The same lock, its process gone (kill -9): the rerun takes it at once.
  holder = lock.WorkdirLock(str(tmp_path)).acquire()
  assert lock.read_lock(str(tmp_path))['pid'] == os.getpid()
  holder.release()
  assert not (tmp_path / lock.LOCK_FILE).exists()


def test_another_hosts_lock_holds_until_its_lease_runs_out(tmp_path):
  now = time.time()
  _write_lock(
      tmp_path, host='node-that-went-away', pid=1234, started=now - 1000, heartbeat=now - 10
  )
  with pytest.raises(lock.WorkdirLockedError, match='node-that-went-away, pid 1234'):
    lock.WorkdirLock(str(tmp_path)).acquire()
  # A requeue on another node after the old node died: no heartbeat for longer than the lease.
  _write_lock(
      tmp_path,
      host='node-that-went-away',
      pid=1234,
      started=now - 1000,
      heartbeat=now - lock.LEASE_SECONDS - 1,
  )
  with lock.WorkdirLock(str(tmp_path)):
    assert lock.read_lock(str(tmp_path))['host'] == socket.gethostname()


def test_the_heartbeat_renews_the_lease(tmp_path):
  holder = lock.WorkdirLock(str(tmp_path), heartbeat=0.05).acquire()
  first = lock.read_lock(str(tmp_path))['heartbeat']
  time.sleep(0.5)
  assert lock.read_lock(str(tmp_path))['heartbeat'] > first
  holder.release()


def test_move_aside_keeps_everything(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'config.json').write_text('{}')
  moved = lock.move_run_aside(str(workdir))
  assert not workdir.exists() and os.path.basename(moved).startswith('run.')
  assert open(os.path.join(moved, 'config.json')).read() == '{}'
  assert lock.move_run_aside(str(workdir)) is None  # nothing there: nothing to move


# ----- checkpoints ------------------------------------------------------------------------------------------


def _state(value: float, width: int = 3, ema: bool = False) -> state_lib.TrainState:
  params = {'encoder': {'w': jnp.full((4, width), value)}, 'head': {'b': jnp.full((2,), value)}}
  return state_lib.TrainState(
      step=jnp.asarray(int(value), jnp.int32),
      params=params,
      opt_state={'mu': jax.tree_util.tree_map(jnp.zeros_like, params)},
      ema_params=jax.tree_util.tree_map(lambda x: x + 0.5, params) if ema else {},
      rng=jnp.zeros((2,), jnp.uint32),
  )


def _config(ema: bool = False, keep: int = 3) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      {'ema_decay': 0.9 if ema else 0.0, 'checkpoint_every_steps': 1, 'keep_checkpoints': keep}
  )


def _abstract(state):
  return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def _save(workdir, steps, config, **state_kwargs):
  manager = checkpoints.checkpoint_manager(str(workdir), config)
  for step in steps:
    checkpoints.save(manager, step, _state(float(step), **state_kwargs), config)
  manager.wait_until_finished()
  manager.close()


def _damage(workdir, step):
  for root, _, names in os.walk(workdir / 'checkpoints' / str(step) / 'state'):
    for name in names:
      if name not in ('_METADATA', '_CHECKPOINT_METADATA'):
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'garbage')


def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_older_one_restores(tmp_path, capsys):
  _save(tmp_path, (1, 2), _config(keep=3))
  _damage(tmp_path, 2)
  config = _config(keep=1)  # even keeping one, the good checkpoint must survive the next saves
  manager, restored = checkpoints.open_for_training(str(tmp_path), config, _abstract(_state(0.0)))
  assert int(restored.step) == 1
  np.testing.assert_array_equal(restored.params['encoder']['w'], np.full((4, 3), 1.0))
  assert (tmp_path / 'checkpoints' / 'corrupt' / '2').is_dir()
  assert manager.all_steps() == [1]
  out = capsys.readouterr().out
  assert out.count('warning:') == 1 and 'moved it to' in out and 'Traceback' not in out
  for step in (2, 3):
    checkpoints.save(manager, step, _state(float(step)), config)
    manager.wait_until_finished()
  # Rotation keeps the newest (keep=1) and the one known to restore, never the other way round.
  assert manager.all_steps() == [1, 3]
  manager.close()


def test_a_checkpoint_of_another_shape_is_a_mismatch_not_damage(tmp_path):
  config = _config()
  _save(tmp_path, (1,), config)
  manager = checkpoints.checkpoint_manager(str(tmp_path), config)
  with pytest.raises(
      checkpoints.CheckpointMismatchError,
      match=r'params/encoder/w: saved \(4, 3\), the model has \(4, 5\)',
  ):
    checkpoints.restore_latest(manager, _abstract(_state(0.0, width=5)))
  manager.close()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1']  # nothing moved


def test_restore_params_reads_the_params_item_only(tmp_path):
  config = _config(ema=True)
  _save(tmp_path, (1, 3), config, ema=True)
  abstract_params = _abstract(_state(0.0)).params  # the params' shapes only: no optimiser state
  # The raw params live in the state item only; read from it without the optimiser's structure.
  params, step = checkpoints.restore_params(str(tmp_path), abstract_params, config, use_ema=False)
  assert step == 3
  np.testing.assert_array_equal(params['encoder']['w'], np.full((4, 3), 3.0))
  # Destroy the whole state item of step 3: the params item alone must still restore.
  shutil.rmtree(tmp_path / 'checkpoints' / '3' / 'state')
  params, step = checkpoints.restore_params(str(tmp_path), abstract_params, config)
  assert step == 3
  np.testing.assert_array_equal(params['encoder']['w'], np.full((4, 3), 3.5))  # the EMA params
  assert checkpoints.saved_config(str(tmp_path))['ema_decay'] == 0.9


def test_checkpoints_from_before_the_items_still_restore(tmp_path):
  """The layout of earlier releases: one unnamed item holding the train state."""
  legacy = ocp.CheckpointManager(
      str(tmp_path / 'checkpoints'), options=ocp.CheckpointManagerOptions(create=True)
  )
  legacy.save(4, args=ocp.args.StandardSave(_state(4.0)))
  legacy.wait_until_finished()
  legacy.close()
  config = _config()
  manager = checkpoints.checkpoint_manager(str(tmp_path), config)
  assert int(checkpoints.restore_latest(manager, _abstract(_state(0.0))).step) == 4
  manager.close()
  params, step = checkpoints.restore_params(str(tmp_path), _abstract(_state(0.0)).params, config)
  assert step == 4 and float(params['head']['b'][0]) == 4.0
  assert checkpoints.saved_config(str(tmp_path)) is None


def test_no_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint in'):
    checkpoints.restore_params(str(tmp_path), _abstract(_state(0.0)).params, _config())


# ----- Ctrl-C ------------------------------------------------------------------------------------------------


def test_ctrl_c_asks_for_a_checkpoint_and_a_second_one_quits():
  with preemption.PreemptionSignal() as signals:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    assert signals.received and signals.signal_name == 'SIGINT'
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.5)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ----- pretrained encoders by name ---------------------------------------------------------------------------


def test_hub_ids_and_files_are_told_apart(tmp_path):
  assert pretrained.is_hub_id('timm/deit3_large_patch16_224.fb_in22k_ft_in1k')
  assert not pretrained.is_hub_id('weights/model.safetensors')
  assert not pretrained.is_hub_id(str(tmp_path))
  assert not pretrained.is_hub_id('./owner/name')
  problem = pretrained.source_problem(str(tmp_path / 'absent.pth'))
  assert problem.startswith(
      f"config.model.encoder_init = '{tmp_path / 'absent.pth'}': no such file"
  )
  assert pretrained.source_problem('') is None


def test_an_uncached_hub_model_offline_names_the_repo_the_file_and_the_command(
    tmp_path, monkeypatch
):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(tmp_path / 'hub'))
  repo = 'timm/deit_tiny_patch16_224.fb_in1k'
  problem = pretrained.source_problem(repo)
  assert repo in problem and 'model.safetensors' in problem and 'HF_HUB_OFFLINE=1' in problem
  assert f'hf download {repo} model.safetensors' in problem
  with pytest.raises(checkpoint_errors.CheckpointError, match='hf download'):
    pretrained.resolve(repo)


def test_pretrained_weights_for_an_encoder_no_family_reads_are_refused_before_compute(tmp_path):
  """The synthetic config's CNN encoder has no pretrained family: a source for it is a field problem
  when training (and only then), and reading it says what to do."""
  config = run_config.config_file('synthetic')
  assert config.model.encoder.startswith('cnn_')
  config.model.encoder_init = str(tmp_path / 'weights.safetensors')
  problem = (
      f"config.model.encoder_init = '{tmp_path / 'weights.safetensors'}': pretrained weights load "
      "into ViT and HRNet encoders only; use ''"
  )
  assert checks.validate_config(config, mode='train') == [problem]
  assert checks.validate_config(config, mode='evaluate') == []
  with pytest.raises(checkpoint_errors.CheckpointError, match="use --config.model.encoder_init=''"):
    pretrained.encoder_variables(config)
  config.model.encoder_init = ''
  assert pretrained.encoder_variables(config) is None


def test_one_checkpoint_mismatch_error():
  """A state dict that does not fit a ViT and a run's checkpoint of another model raise one class."""
  assert vit.CheckpointMismatchError is checkpoint_errors.CheckpointMismatchError
  assert checkpoints.CheckpointMismatchError is checkpoint_errors.CheckpointMismatchError


def test_the_orientation_term_needs_its_head():
  config = run_config.config_file('synthetic')
  config.model.orientation_head = False
  config.loss.lambda_orientation = 1.0
  config.loss.timestep_top_fraction = 1.5
  problems = checks.validate_config(config)
  assert any(
      p.startswith('config.loss.lambda_orientation = 1.0: needs config.model.orientation_head=True')
      for p in problems
  )
  assert any(p.startswith('config.loss.timestep_top_fraction = 1.5') for p in problems)
  config.model.orientation_head = True
  config.loss.timestep_top_fraction = 0.25
  assert checks.validate_config(config) == []


def test_the_point_distance_is_one_the_losses_know():
  from diffhand_jax.training import losses

  assert checks.POINT_DISTANCES == losses.POINT_DISTANCES
  assert checks.TIMESTEP_SAMPLINGS == losses.TIMESTEP_SAMPLINGS
  config = run_config.config_file('synthetic')
  config.loss.point_distance = 'l1'
  assert any(p.startswith('config.loss.point_distance') for p in checks.validate_config(config))


def test_batch_norm_fields_are_checked_before_training():
  config = run_config.config_file('synthetic')
  config.batch_norm.statistics = 'sync'
  assert checks.validate_config(config, mode='train') == [
      "config.batch_norm.statistics = 'sync': must be one of ['synchronised', 'per_device']"
  ]
  assert checks.validate_config(config, mode='evaluate') == []
  config.batch_norm.statistics = 'per_device'
  assert checks.validate_config(config, mode='train') == []
