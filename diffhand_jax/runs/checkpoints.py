"""A run's orbax checkpoints in workdir/checkpoints/<step>/, each with three items:

  state    the whole train state (params, optimiser moments, EMA, step, rng): what a resume restores
  params   the params inference uses (the EMA params where the run keeps them): what `restore_params`
           reads, without the optimiser state
  config   the run's config, as JSON

Checkpoints written before the items existed (one unnamed item holding the train state) still restore.

A checkpoint whose shapes do not fit the model asked for is a *mismatch* (another model was trained in
this workdir), never corruption: `CheckpointMismatchError` (models/checkpoint_errors.py, re-exported here)
names the differing arrays. A checkpoint that cannot be read is damaged: it is moved aside to
checkpoints/corrupt/<step> (never deleted), with one warning, and the next older one is tried.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from diffhand_jax.models.checkpoint_errors import CheckpointMismatchError
from diffhand_jax.runs import state as state_lib

ITEMS = ('state', 'params', 'config')
LEGACY_ITEM = 'default'  # the single item of checkpoints written before ITEMS
CORRUPT_DIR = 'corrupt'


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def _item_handlers() -> dict[str, ocp.CheckpointHandler]:
  # Named handlers let a restore read one item alone without orbax warning about the others.
  return {
      'state': ocp.StandardCheckpointHandler(),
      'params': ocp.StandardCheckpointHandler(),
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


def inference_params(state: Any, config: ml_collections.ConfigDict) -> Any:
  """The params inference uses: the EMA params where the run keeps them."""
  return state.ema_params if config.ema_decay > 0 else state.params


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state: Any,
    config: ml_collections.ConfigDict,
    *,
    force: bool = False,
) -> None:
  """Saves ``state`` at ``step`` with its inference params and the config (asynchronously)."""
  manager.save(
      step,
      args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          params=ocp.args.StandardSave(inference_params(state, config)),
          config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
      ),
      force=force,
  )


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


def move_aside(manager: ocp.CheckpointManager, step: int, reason: str) -> str:
  """Moves a damaged checkpoint to checkpoints/corrupt/<step> (never deletes it); returns where."""
  source = _step_dir(manager, step)
  target_dir = os.path.join(str(manager.directory), CORRUPT_DIR)
  target = os.path.join(target_dir, str(step))
  if jax.process_index() == 0:
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


def _state_target(metadata: Any, field: str, abstract: Any) -> Any:
  """A restore target for a saved train state: ``field`` ('params' or 'ema_params') as ``abstract``, every
  other array as saved. So a state restores without the optimiser that made its moments."""
  saved = jax.tree_util.tree_map(
      lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), metadata
  )
  return dict(saved, **{field: abstract})


def _restore_item(manager, step: int, item: str, abstract: Any, *, field: str | None = None) -> Any:
  """One item of a checkpoint, its shapes checked first: a mismatch raises, damage returns None.

  field: restore the 'state' item for this one of its fields, given as ``abstract``; the other fields
  take their saved shapes (and are read, then dropped)."""
  if is_legacy(manager, step):
    legacy = _legacy_manager(os.path.dirname(str(manager.directory)))
    try:
      metadata = _metadata_tree(legacy.item_metadata(step))
    except Exception as error:  # pylint: disable=broad-except
      legacy.close()
      move_aside(manager, step, _short(error))
      return None
    # A legacy checkpoint holds the train state.
    problems = _item_mismatches(metadata, abstract, field)
    if problems:
      legacy.close()
      raise _mismatch_error(manager, step, 'arrays', problems)
    target = abstract if field is None else _state_target(metadata, field, abstract)
    try:
      restored = legacy.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as error:  # pylint: disable=broad-except
      move_aside(manager, step, _short(error))
      return None
    finally:
      legacy.close()
    return restored if field is None else restored[field]
  try:
    metadata = _metadata_tree(manager.item_metadata(step)[item])
  except Exception as error:  # pylint: disable=broad-except - a missing or unreadable metadata file
    move_aside(manager, step, _short(error))
    return None
  problems = _item_mismatches(metadata, abstract, field)
  if problems:
    raise _mismatch_error(manager, step, f'its {item}', problems)
  target = abstract if field is None else _state_target(metadata, field, abstract)
  try:
    restored = manager.restore(
        step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)})
    )
  except Exception as error:  # pylint: disable=broad-except - orbax raises many types for damaged data
    move_aside(manager, step, _short(error))
    return None
  return restored[item] if field is None else restored[item][field]


def _item_mismatches(metadata: Any, abstract: Any, field: str | None) -> list[str]:
  """`shape_mismatches` of a saved item against ``abstract``, or of its ``field`` alone."""
  if field is None:
    return shape_mismatches(metadata, abstract)
  return shape_mismatches({field: metadata.get(field, {})}, {field: abstract})


def open_for_training(
    workdir: str, config: ml_collections.ConfigDict, abstract_state: Any
) -> tuple[ocp.CheckpointManager, Any]:
  """(the manager a training run saves with, the state it resumes from or None). The checkpoint it
  resumes from is protected from rotation for this run: it is the newest one known to restore."""
  manager = checkpoint_manager(workdir, config)
  state = restore_latest(manager, abstract_state)
  if state is None:
    return manager, None
  manager.close()
  return checkpoint_manager(workdir, config, protect_step=int(state.step)), state


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> Any:
  """The train state of the newest readable checkpoint, or None when there is none. Damaged ones are
  moved aside; one whose shapes do not fit ``abstract_state`` raises `CheckpointMismatchError`."""
  for step in sorted(manager.all_steps(), reverse=True):
    state = _restore_item(manager, step, 'state', abstract_state)
    if state is not None:
      return state
  return None


def restore_params(
    workdir: str, abstract_params: Any, config: ml_collections.ConfigDict, *, use_ema: bool = True
) -> tuple[Any, int]:
  """(params, step) of the newest readable checkpoint in ``workdir``, reading only the params item:
  the EMA params where the run keeps them (``use_ema=False`` asks for the raw params, which only the
  state item holds). Checkpoints written before the params item read the state item. Either way
  ``abstract_params`` (`state.abstract_params`) is all it needs: no optimiser."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise FileNotFoundError(
        f'no checkpoint in {checkpoint_dir(workdir)}: is {workdir} a training workdir? (train with '
        f'python -m diffhand_jax.main --config=... --workdir={workdir})'
    )
  # The field of a saved train state that holds the params asked for.
  field = 'ema_params' if use_ema and config.ema_decay > 0 else 'params'
  manager = checkpoint_manager(workdir, create=False)
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      if is_legacy(manager, step) or (not use_ema and config.ema_decay > 0):
        params = _restore_item(manager, step, 'state', abstract_params, field=field)
      else:
        params = _restore_item(manager, step, 'params', abstract_params)
      if params is not None:
        return params, int(step)
  finally:
    manager.close()
  raise FileNotFoundError(
      f'no checkpoint in {checkpoint_dir(workdir)}: train first (python -m diffhand_jax.main '
      f'--config=... --workdir={workdir})'
  )


def saved_config(workdir: str) -> dict | None:
  """The config item of the newest checkpoint, or None (no checkpoint, or one from before the item)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return None
  manager = checkpoint_manager(workdir, create=False)
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      if is_legacy(manager, step):
        return None
      try:
        return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
            'config'
        ]
      except Exception:  # pylint: disable=broad-except - damaged: the restore of the state will say so
        continue
  finally:
    manager.close()
  return None
