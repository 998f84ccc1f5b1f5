"""Starting a run from another run's weights (config.init_from): the two-stage depth schedule, where a
depth-conditioned run starts from a trained RGB run (docs/design.md §4, §11).

  problem = init_from_problem(config, workdir)      # None, or why the source cannot start this run
  variables = read_source(config)                   # {'params', 'batch_stats'}, numpy, read only
  state = state_lib.with_variables(state, variables, shardings)

Every param of the source run is copied; the new run may only add params (the depth block, whose
zero output projection then adds exactly 0), so its first predictions are the source run's. The source
workdir is only read, never written (no quarantine of damaged checkpoints, no config.json).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from diffhand_jax.runs import checkpoints, run_config, state as state_lib

PyTree = Any

# Fields of config.model a run may change from its init_from run: the depth block is what it adds.
ADDED_MODEL_FIELDS = ('use_depth', 'depth_channels')


def source_config(init_from: str) -> ml_collections.ConfigDict:
  """The config of the run in ``init_from`` (its newest checkpoint's, else its config.json)."""
  payload = checkpoints.saved_config(init_from)
  if payload is not None:
    return run_config.config_from_json(payload)
  return run_config.load_config(init_from)


def model_mismatches(
    source: ml_collections.ConfigDict, config: ml_collections.ConfigDict
) -> list[tuple[str, Any, Any]]:
  """The structural fields (`run_config.structure_fields`) that differ between the source run and
  ``config``, other than the depth block's own."""
  return [
      (key, old, new)
      for key, old, new in run_config.resume_mismatches(source, config)
      if key.split('.')[-1] not in ADDED_MODEL_FIELDS
      and key not in ('ema_decay > 0', 'depth.train')
  ]


def init_from_problem(config: ml_collections.ConfigDict, workdir: str | None) -> str | None:
  """Why config.init_from cannot start the run in ``workdir``, or None (also when it is unset)."""
  source = config.get('init_from')
  if not source:
    return None
  if workdir and os.path.realpath(source) == os.path.realpath(workdir):
    return (
        f"config.init_from = {source!r} is the run's own --workdir: a run started from another "
        'must train in a new workdir (the source run is only read)'
    )
  if not os.path.isdir(checkpoints.checkpoint_dir(source)):
    return (
        f'config.init_from = {source!r}: no checkpoint in {checkpoints.checkpoint_dir(source)} '
        '(train the RGB run first)'
    )
  try:
    saved = source_config(source)
  except (FileNotFoundError, ValueError, KeyError, AttributeError) as error:
    return f'config.init_from = {source!r}: its config cannot be read ({error})'
  mismatches = model_mismatches(saved, config)
  if mismatches:
    fields = '; '.join(f'{key}: {old!r} there, {new!r} now' for key, old, new in mismatches)
    return (
        f'config.init_from = {source!r} holds another model; only the depth block may be added '
        f'({fields})'
    )
  return None


def read_source(config: ml_collections.ConfigDict) -> dict[str, PyTree]:
  """The weights config.init_from's run samples with (its EMA params where it keeps them, and its
  BatchNorm statistics), as numpy trees {'params', 'batch_stats'}; reads only."""
  source = config.init_from
  problem = init_from_problem(config, None)
  if problem:
    raise ValueError(problem)
  saved = source_config(source)
  network = state_lib.build_network(saved)
  params, batch_stats, step = checkpoints.restore_variables(
      source,
      state_lib.abstract_params(saved, network.model),
      state_lib.abstract_batch_stats(saved, network.model),
      saved,
      quarantine=False,
  )
  to_numpy = lambda tree: jax.tree_util.tree_map(np.asarray, tree)  # noqa: E731
  return {'params': to_numpy(params), 'batch_stats': to_numpy(batch_stats or {}), 'step': step}
