"""A run's orbax checkpoints in workdir/checkpoints/<step>/, each with three items:

  state    the whole train state (params, optimiser moments, EMA, step, rng): what a resume restores
  params   the params inference uses (the EMA params where the run keeps them): what `restore_params`
           reads, without the optimiser state
  batch_stats  the encoder's BatchNorm statistics inference uses (the EMA's where the run keeps one);
           only for a model that has them (HRNet), so runs without are as they were
  config   the run's config, as JSON

Checkpoints written before the items existed (one unnamed item holding the train state) still restore.

A checkpoint whose shapes do not fit the model asked for is a *mismatch* (another model was trained in
this workdir), never corruption: `CheckpointMismatchError` (models/checkpoint_errors.py, re-exported here)
names the differing arrays. A checkpoint that cannot be read is damaged, and the next older one is
tried. Only finalised checkpoints are candidates (orbax writes <step>.orbax-checkpoint-tmp-* and renames
it when complete).

Readers (`restore_params`, `saved_config`: everything that opens a trained run) never write: they skip
a damaged checkpoint with one warning line, and read again, once, when rotation in the run that trains
removed the one they were reading. Only the training process that owns the run (`restore_latest`,
`restore_params(quarantine=True)`) moves a damaged checkpoint aside to checkpoints/corrupt/<step>, never
deleting it. A save that fails (a full disk) raises `CheckpointWriteError`, one line, and `close` removes
its temporary folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import threading
import time
from typing import Any, Callable, Iterator

import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from diffhand_jax.models.checkpoint_errors import CheckpointError, CheckpointMismatchError
from diffhand_jax.runs import state as state_lib

ITEMS = ('state', 'params', 'batch_stats', 'config')
LEGACY_ITEM = 'default'  # the single item of checkpoints written before ITEMS
CORRUPT_DIR = 'corrupt'
# In the name of a save that has not finished: never a candidate.
TMP_MARK = '.orbax-checkpoint-tmp'


class CheckpointWriteError(CheckpointError):
  """A checkpoint could not be written (a full disk, a quota, a read-only file system): one line."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def _item_handlers() -> dict[str, ocp.CheckpointHandler]:
  # Named handlers let a restore read one item alone without orbax warning about the others.
  return {
      'state': ocp.StandardCheckpointHandler(),
      'params': ocp.StandardCheckpointHandler(),
      'batch_stats': ocp.StandardCheckpointHandler(),
      'config': ocp.JsonCheckpointHandler(),
  }


def checkpoint_manager(
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    *,
    create: bool = True,
    protect_step: int | None = None,
) -> ocp.CheckpointManager:
  """The manager of workdir/checkpoints/; ``config`` gives the save interval and how many to keep.

  protect_step: a checkpoint known to restore (the one a run resumed from), which rotation never
  deletes, whatever config.keep_checkpoints says, until a later run resumes from a newer one.
  """
  policy = None
  if config is not None:
    policy = checkpoint_managers.LatestN(int(config.get('keep_checkpoints', 3)))
    if protect_step is not None:
      policy = checkpoint_managers.AnyPreservationPolicy(
          [policy, checkpoint_managers.CustomSteps([int(protect_step)])]
      )
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=int(config.checkpoint_every_steps) if config is not None else 1,
      preservation_policy=policy,
      create=create,
      # A training run owns its workdir: saves a killed run left unfinished go when it restarts.
      cleanup_tmp_directories=config is not None,
      enable_async_checkpointing=True,
  )
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options, item_handlers=_item_handlers()
  )


def _legacy_manager(workdir: str) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options, item_handlers=ocp.StandardCheckpointHandler()
  )


def _reader(workdir: str) -> ocp.CheckpointManager:
  """A manager that only reads: it creates, deletes and cleans up nothing, so a run can be read while
  it trains, or on a read-only disk."""
  options = ocp.CheckpointManagerOptions(
      read_only=True, create=False, save_interval_steps=0, enable_async_checkpointing=False
  )
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options, item_handlers=_item_handlers()
  )


class _OrbaxRecords(logging.Filter):
  """Drops absl records logged from orbax's modules; ``failures_only``: only those with a traceback."""

  def __init__(self, failures_only: bool):
    super().__init__()
    self.failures_only = failures_only

  def filter(self, record: logging.LogRecord) -> bool:
    from_orbax = f'{os.sep}orbax{os.sep}' in record.pathname
    return not from_orbax or (self.failures_only and not record.exc_info)


@contextlib.contextmanager
def quiet_orbax(*, failures_only: bool = False) -> Iterator[None]:
  """Orbax logs what it then raises (a damaged file, a failed save) with its traceback, or warns that a
  manager reads only; these callers report each failure in one line of their own instead."""
  _drop_closed_loop_reports()
  absl_logger = logging.getLogger('absl')
  records = _OrbaxRecords(failures_only)
  absl_logger.addFilter(records)
  try:
    yield
  finally:
    absl_logger.removeFilter(records)


def _drop_closed_loop_reports() -> None:
  """Installs (once per process) an unraisable-exception hook that drops "Event loop is closed".

  Why: orbax runs each read in a fresh asyncio loop and closes it as soon as one read fails, while
  tensorstore still holds the other reads of the checkpoint; as each of those completes, its callback
  calls the closed loop's call_soon_threadsafe from tensorstore's thread, and Python reports the
  RuntimeError as unraisable: a traceback block per array, printed after the read has already failed
  (and been reported in one line); orbax's read coroutines left pending are reported as they are
  closed. Nothing is lost by dropping them; other reports pass through."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_closed_loop', False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == 'Event loop is closed':
      return
    # The same closed loop leaves orbax's own read coroutines unfinished; closing them raises too.
    code = getattr(unraisable.object, 'cr_code', None)
    if code is not None and f'{os.sep}orbax{os.sep}' in code.co_filename:
      return
    previous(unraisable)

  hook.drops_closed_loop = True
  sys.unraisablehook = hook


def inference_params(state: Any, config: ml_collections.ConfigDict) -> Any:
  """The params inference uses: the EMA params where the run keeps them."""
  return state.ema_params if config.ema_decay > 0 else state.params


def inference_batch_stats(state: Any, config: ml_collections.ConfigDict) -> Any:
  """The BatchNorm statistics inference uses, with `inference_params`: the EMA's where the run keeps
  one; {} for a model without them."""
  return state.ema_batch_stats if config.ema_decay > 0 else state.batch_stats


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    config: ml_collections.ConfigDict,
    *,
    force: bool = False,
) -> None:
  """Saves ``state`` at ``step`` with its inference params and the config (asynchronously). A save
  that failed in the background (a full disk) raises `CheckpointWriteError` here or in `finish`."""
  items = {
      'state': ocp.args.StandardSave(state),
      'params': ocp.args.StandardSave(inference_params(state, config)),
      'config': ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
  }
  batch_stats = inference_batch_stats(state, config)
  if batch_stats:
    items['batch_stats'] = ocp.args.StandardSave(batch_stats)
  with _write_errors(manager):
    manager.save(step, args=ocp.args.Composite(**items), force=force)


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the saves in flight; one that failed raises `CheckpointWriteError`."""
  with _write_errors(manager):
    manager.wait_until_finished()


def close(manager: ocp.CheckpointManager, *, failing: bool = False) -> None:
  """Finishes the saves in flight and closes the manager. After a failed save (or with ``failing``:
  an error already on its way out, which a failed save is not raised over) it waits for orbax's
  writes to stop and removes what they left (<step>.orbax-checkpoint-tmp-*)."""
  try:
    finish(manager)
  except CheckpointWriteError:
    if not failing:
      failing = True
      raise
  finally:
    try:
      manager.close()
    except Exception:  # pylint: disable=broad-except - the failed save, raised again by orbax
      if not failing:
        raise
    finally:
      if failing:
        _join_orbax_threads()
        remove_unfinished(str(manager.directory))


def _join_orbax_threads(timeout: float = 120.0) -> None:
  """Waits for orbax's background threads. After a failed save, orbax's wait returns at the first
  failure while the save's other items are still being written into its temporary folder."""
  deadline = time.monotonic() + timeout
  for thread in threading.enumerate():
    target = getattr(thread, '_target', None)  # a plain Thread names its work here
    owner = type(thread).__module__ if target is None else getattr(target, '__module__', '')
    if thread is not threading.current_thread() and (owner or '').startswith('orbax'):
      thread.join(max(0.0, deadline - time.monotonic()))


def remove_unfinished(directory: str) -> list[str]:
  """Removes the temporary folders of saves that never finished; for the process that owns the run,
  once its saves have stopped. Returns their names."""
  if jax.process_index() != 0 or not os.path.isdir(directory):
    return []
  names = [name for name in os.listdir(directory) if TMP_MARK in name]
  for name in names:
    shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
  return names


# What a full or failing disk says when tensorstore reports it as text rather than as an OSError.
_DISK_ERRORS = ('No space left on device', 'Disk quota exceeded', 'Read-only file system')


def _os_error(error: BaseException) -> OSError | None:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.strerror:
      return error
    error = error.__cause__ or error.__context__
  return None


@contextlib.contextmanager
def _write_errors(manager: ocp.CheckpointManager) -> Iterator[None]:
  """Turns a failed checkpoint write into one line: the cause, the path, the last complete step."""
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except - re-raised unless the disk said no
    cause = _os_error(error)
    if cause is not None:
      what = f'{cause.strerror}' + (f' ({cause.filename})' if cause.filename else '')
    elif any(text in str(error) for text in _DISK_ERRORS):
      what = _short(error)
    else:
      raise
    directory = str(manager.directory)
    steps = sorted(int(name) for name in os.listdir(directory) if name.isdigit())
    last = f'step {steps[-1]}' if steps else 'none'
    raise CheckpointWriteError(
        f'a checkpoint could not be written to {directory}: {what}; the last complete checkpoint '
        f'is {last}. Free space there and rerun the same command to resume'
    ) from None


def _step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def is_legacy(manager: ocp.CheckpointManager, step: int) -> bool:
  return os.path.isdir(os.path.join(_step_dir(manager, step), LEGACY_ITEM))


def _leaves_with_paths(tree: Any) -> dict[str, Any]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {state_lib.leaf_path(path): leaf for path, leaf in flat}


def shape_mismatches(saved: Any, expected: Any, *, limit: int = 8) -> list[str]:
  """Where the saved arrays (orbax metadata or arrays) and the expected abstract tree differ: missing or
  extra arrays, and arrays of another shape. [] when they fit."""
  saved_leaves = _leaves_with_paths(saved)
  expected_leaves = _leaves_with_paths(expected)
  problems = []
  for path in sorted(set(expected_leaves) | set(saved_leaves)):
    if path not in saved_leaves:
      problems.append(f'{path}: missing from the checkpoint')
    elif path not in expected_leaves:
      problems.append(f'{path}: in the checkpoint but not in the model')
    else:
      have = tuple(getattr(saved_leaves[path], 'shape', ()))
      want = tuple(getattr(expected_leaves[path], 'shape', ()))
      if have != want:
        problems.append(f'{path}: saved {have}, the model has {want}')
  if len(problems) > limit:
    problems = problems[:limit] + [f'... and {len(problems) - limit} more']
  return problems


def _metadata_tree(metadata: Any) -> Any:
  return getattr(metadata, 'tree', metadata)


def _mismatch_error(manager, step: int, what: str, problems: list[str]) -> CheckpointMismatchError:
  return CheckpointMismatchError(
      f"{_step_dir(manager, step)} holds {what} of another shape than this config's model, so it "
      'belongs to a different model (not a damaged file):\n    '
      + '\n    '.join(problems)
      + '\n  Train this config in a new workdir, or rerun with the config that wrote this run.'
  )


def move_aside(manager: ocp.CheckpointManager, step: int, reason: str) -> str | None:
  """Moves a damaged checkpoint to checkpoints/corrupt/<step> (never deletes it); returns where. Only
  the training process that owns the run calls it; a folder already gone is left alone (None)."""
  source = _step_dir(manager, step)
  target_dir = os.path.join(str(manager.directory), CORRUPT_DIR)
  target = os.path.join(target_dir, str(step))
  if jax.process_index() == 0 and os.path.isdir(source):
    os.makedirs(target_dir, exist_ok=True)
    if os.path.exists(target):
      target = f'{target}.{int(time.time())}'
    os.rename(source, target)
    print(
        f'warning: the checkpoint at step {step} could not be read ({reason}); moved it to {target} '
        'and trying an earlier one',
        flush=True,
    )
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'diffhand checkpoint {step} moved aside')
  manager.reload()
  return target


def _short(error: BaseException) -> str:
  text = f'{type(error).__name__}: {error}'.splitlines()[0]
  return text if len(text) <= 200 else text[:197] + '...'


class _Unreadable(Exception):
  """A checkpoint that could not be read: damaged, or ``gone`` (rotation removed it while it was read)."""

  def __init__(self, step: int, reason: str, gone: bool):
    super().__init__(reason)
    self.step, self.reason, self.gone = step, reason, gone


@contextlib.contextmanager
def _reading(manager: ocp.CheckpointManager, step: int) -> Iterator[None]:
  """Turns any failure to read ``step`` into `_Unreadable` (orbax raises many types for damaged data)."""
  try:
    yield
  except Exception as error:  # pylint: disable=broad-except
    gone = not os.path.isdir(_step_dir(manager, step))
    raise _Unreadable(step, _short(error), gone) from None


def _state_target(metadata: Any, field: str, abstract: Any) -> Any:
  """A restore target for a saved train state: ``field`` ('params' or 'ema_params') as ``abstract``, every
  other array as saved. So a state restores without the optimiser that made its moments."""
  saved = jax.tree_util.tree_map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), metadata
  )
  return dict(saved, **{field: abstract})


def _restore_legacy(manager, step: int, abstract: Any, field: str | None) -> Any:
  legacy = _legacy_manager(os.path.dirname(str(manager.directory)))
  try:
    with _reading(manager, step):
      metadata = _metadata_tree(legacy.item_metadata(step))
    # A legacy checkpoint holds the train state.
    problems = _item_mismatches(metadata, abstract, field)
    if problems:
      raise _mismatch_error(manager, step, 'arrays', problems)
    target = abstract if field is None else _state_target(metadata, field, abstract)
    with _reading(manager, step):
      restored = legacy.restore(step, args=ocp.args.StandardRestore(target))
  finally:
    legacy.close()
  return restored if field is None else restored[field]


def _restore_item(manager, step: int, item: str, abstract: Any, *, field: str | None = None) -> Any:
  """One item of a checkpoint, its shapes checked first: a mismatch raises `CheckpointMismatchError`,
  a failed read `_Unreadable`.

  field: restore the 'state' item for this one of its fields, given as ``abstract``; the other fields
  take their saved shapes (and are read, then dropped)."""
  if is_legacy(manager, step):
    return _restore_legacy(manager, step, abstract, field)
  with _reading(manager, step):
    metadata = _metadata_tree(manager.item_metadata(step)[item])
  problems = _item_mismatches(metadata, abstract, field)
  if problems:
    raise _mismatch_error(manager, step, f'its {item}', problems)
  absent = _absent_empty_fields(metadata, abstract) if field is None else []
  if absent:
    target = {name: value for name, value in _fields(abstract).items() if name not in absent}
  else:
    target = abstract if field is None else _state_target(metadata, field, abstract)
  with _reading(manager, step):
    restored = manager.restore(
        step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)})
    )
  if absent:
    return type(abstract)(**restored[item], **{name: {} for name in absent})
  return restored[item] if field is None else restored[item][field]


def _fields(tree: Any) -> dict[str, Any]:
  return {f.name: getattr(tree, f.name) for f in dataclasses.fields(tree)}


def _absent_empty_fields(metadata: Any, abstract: Any) -> list[str]:
  """The fields of a train state ``abstract`` that a state saved before they existed lacks, and that
  hold nothing here (batch_stats and ema_batch_stats of a model without BatchNorm, added for #32): the
  restore leaves them out of its target and puts them back empty, so older runs resume."""
  if not dataclasses.is_dataclass(abstract) or not hasattr(metadata, 'keys'):
    return []
  return [
      name
      for name, value in _fields(abstract).items()
      if name not in metadata and not jax.tree_util.tree_leaves(value)
  ]


def _item_mismatches(metadata: Any, abstract: Any, field: str | None) -> list[str]:
  """`shape_mismatches` of a saved item against ``abstract``, or of its ``field`` alone."""
  if field is None:
    return shape_mismatches(metadata, abstract)
  return shape_mismatches({field: metadata.get(field, {})}, {field: abstract})


def _newest_readable(
    manager: ocp.CheckpointManager, read: Callable[[int], Any], *, quarantine: bool
) -> tuple[Any, int | None, dict[int, str]]:
  """(read(step), step, {damaged step: reason}) for the newest finalised checkpoint that reads; the
  value and step are None when none does. Orbax lists finalised steps only: a save in flight
  (<step>.orbax-checkpoint-tmp-*) is never a candidate, so never taken for a damaged one.

  A step removed while it was read (rotation in the run that trains) is no damage: the steps are
  listed again, once, for the newer one that replaced it. quarantine: move damaged ones aside (the
  training process that owns the run only)."""
  damaged: dict[int, str] = {}
  listed_again = False
  steps = sorted(manager.all_steps(), reverse=True)
  while steps:
    step = steps.pop(0)
    try:
      return read(step), step, damaged
    except _Unreadable as error:
      if error.gone:
        if not listed_again:
          listed_again = True
          manager.reload()
          steps = [s for s in sorted(manager.all_steps(), reverse=True) if s not in damaged]
        continue
      damaged[step] = error.reason
      if quarantine:
        move_aside(manager, step, error.reason)
  return None, None, damaged


def restore_for_training(workdir: str, abstract_state: Any) -> Any:
  """The train state of the newest readable checkpoint in ``workdir``, or None (none yet). Writes
  nothing but the quarantine of damaged ones (the training process owns the run); one whose shapes
  do not fit ``abstract_state`` raises `CheckpointMismatchError`."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None
  with quiet_orbax():
    manager = checkpoint_manager(workdir, create=False)
    try:
      return restore_latest(manager, abstract_state)
    finally:
      manager.close()


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> Any:
  """The train state of the newest readable checkpoint, or None when there is none. Damaged ones are
  moved aside; one whose shapes do not fit ``abstract_state`` raises `CheckpointMismatchError`."""
  with quiet_orbax():
    state, _, _ = _newest_readable(
        manager, lambda step: _restore_item(manager, step, 'state', abstract_state), quarantine=True
    )
  return state


def restore_params(
    workdir: str,
    abstract_params: Any,
    config: ml_collections.ConfigDict,
    *,
    use_ema: bool = True,
    quarantine: bool = False,
) -> tuple[Any, int]:
  """(params, step): `restore_variables` for a model without BatchNorm statistics."""
  params, _, step = restore_variables(
      workdir, abstract_params, {}, config, use_ema=use_ema, quarantine=quarantine
  )
  return params, step


def restore_variables(
    workdir: str,
    abstract_params: Any,
    abstract_batch_stats: Any,
    config: ml_collections.ConfigDict,
    *,
    use_ema: bool = True,
    quarantine: bool = False,
) -> tuple[Any, Any, int]:
  """(params, batch_stats, step) of the newest readable checkpoint in ``workdir``, reading only the
  params item, and the batch_stats item where ``abstract_batch_stats`` (the model's, `{}` for none) is
  not empty:
  the EMA params where the run keeps them (``use_ema=False`` asks for the raw params, which only the
  state item holds). Checkpoints written before the params item read the state item. Either way
  ``abstract_params`` (`state.abstract_params`) is all it needs: no optimiser.

  A reader writes nothing (the workdir may be read-only, or in use by the run that trains): a damaged
  checkpoint is skipped with one warning line. quarantine: move damaged ones aside instead, for the
  process that owns the run (`main`'s evaluate mode)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise FileNotFoundError(
        f'no checkpoint in {checkpoint_dir(workdir)}: is {workdir} a training workdir? (train with '
        f'python -m diffhand_jax.main --config=... --workdir={workdir})'
    )
  # The field of a saved train state that holds the params asked for.
  field = 'ema_params' if use_ema and config.ema_decay > 0 else 'params'

  def read(step: int) -> Any:
    if is_legacy(manager, step) or (not use_ema and config.ema_decay > 0):
      params = _restore_item(manager, step, 'state', abstract_params, field=field)
      if not abstract_batch_stats:
        return params, {}
      stats_field = 'ema_batch_stats' if field == 'ema_params' else 'batch_stats'
      return params, _restore_item(manager, step, 'state', abstract_batch_stats, field=stats_field)
    params = _restore_item(manager, step, 'params', abstract_params)
    if not abstract_batch_stats:
      return params, {}
    return params, _restore_item(manager, step, 'batch_stats', abstract_batch_stats)

  with quiet_orbax():
    manager = checkpoint_manager(workdir, create=False) if quarantine else _reader(workdir)
    try:
      variables, step, damaged = _newest_readable(manager, read, quarantine=quarantine)
    finally:
      manager.close()
  if step is None:
    raise FileNotFoundError(_none_readable(workdir, damaged))
  if damaged and not quarantine:
    print(
        f'warning: {_steps_text(damaged)} could not be read '
        f'({damaged[max(damaged)]}); using step {step}',
        flush=True,
    )
  params, batch_stats = variables
  return params, batch_stats, int(step)


def _steps_text(damaged: dict[int, str]) -> str:
  steps = sorted(damaged, reverse=True)
  if len(steps) == 1:
    return f'the checkpoint at step {steps[0]}'
  return 'the checkpoints at steps ' + ', '.join(str(step) for step in steps)


def _none_readable(workdir: str, damaged: dict[int, str]) -> str:
  if not damaged:
    return (
        f'no checkpoint in {checkpoint_dir(workdir)}: train first (python -m diffhand_jax.main '
        f'--config=... --workdir={workdir})'
    )
  steps = ', '.join(str(step) for step in sorted(damaged, reverse=True))
  return (
      f'no readable checkpoint in {checkpoint_dir(workdir)}: steps {steps} could not be read '
      f'(step {max(damaged)}: {damaged[max(damaged)]})\n  resume the training there to move them '
      'aside (python -m diffhand_jax.main --config=... --workdir=...), or train afresh'
  )


def open_for_training(
    workdir: str, config: ml_collections.ConfigDict, abstract_state: Any
) -> tuple[ocp.CheckpointManager, Any]:
  """(the manager a training run saves with, the state it resumes from or None). The checkpoint it
  resumes from is protected from rotation for this run: it is the newest one known to restore."""
  state = restore_for_training(workdir, abstract_state)
  protect = None if state is None else int(state.step)
  return checkpoint_manager(workdir, config, protect_step=protect), state


def saved_config(workdir: str) -> dict | None:
  """The config item of the newest checkpoint, or None (no checkpoint, or one from before the item).
  Reads only: a damaged one is passed over (the restore of its arrays says so)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None

  def read(step: int) -> dict | None:
    if is_legacy(manager, step):
      return None
    with _reading(manager, step):
      return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']

  with quiet_orbax():
    manager = _reader(workdir)
    try:
      payload, _, _ = _newest_readable(manager, read, quarantine=False)
    finally:
      manager.close()
  return payload
