"""A run's config: saved as workdir/config.json, read back by everything that opens a trained run."""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import jax
import ml_collections

from diffhand_jax.runs import files


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """workdir/config.json: what opens a trained run when its checkpoints carry no config (older runs), and what a rerun is checked against."""
  if jax.process_index() == 0:
    files.write_json_atomic(
        os.path.join(workdir, 'config.json'), json.loads(config.to_json_best_effort())
    )


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: is {workdir!r} a training workdir?')
  with open(path) as f:
    try:
      payload = json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f'{path} is not valid JSON: {error}') from None
  return config_from_json(payload)


def config_from_json(payload: dict) -> ml_collections.ConfigDict:
  """A config saved as JSON (config.json, or a checkpoint's config item) as a ConfigDict again."""
  config = ml_collections.ConfigDict(payload)
  # JSON turns tuples into lists; the model wants its static fields hashable.
  config.model.fps_sizes = tuple(config.model.fps_sizes)
  config.model.depth_channels = tuple(config.model.depth_channels)
  if config.dataset.get('tip_ids') is not None:
    config.dataset.tip_ids = tuple(config.dataset.tip_ids)
  return config


# The repository's configs/ folder (configs are files that `--config=configs/<name>.py` names, not an
# installed package).
CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'configs'
)


def config_file(name_or_path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file: a path, or a name in the checkout's configs/ ('synthetic')."""
  path = name_or_path
  if not path.endswith('.py'):
    path = os.path.join(CONFIGS_DIR, f'{name_or_path}.py')
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'config file {path} does not exist (configs/ is in the repository checkout, '
        'not in an installed package)'
    )
  name = 'diffhand_config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# Fields of config.model a resume may change: they choose how to sample, the compute dtype, and where the
# encoder started from, not the shapes or the meaning of the saved state.
RESUMABLE_MODEL_FIELDS = ('sampling_steps', 'num_hypotheses', 'eta', 'dtype', 'encoder_init')
# Outside config.model, what fixes the saved state's structure or the meaning of its vertices.
STRUCTURAL_FIELDS = ('dataset.hand_model', 'dataset.tip_ids')


def _plain(value: Any) -> Any:
  """JSON-comparable: ConfigDicts as dicts, tuples as lists."""
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  if isinstance(value, dict):
    return {key: _plain(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(item) for item in value]
  return value


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
  if isinstance(value, dict):
    flat = {}
    for key, item in value.items():
      flat.update(_flatten(item, f'{prefix}.{key}'))
    return flat
  return {prefix: value}


def structure_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The fields of ``config`` that fix the saved state's structure or meaning (dotted keys)."""
  # None is a field's default, as good as absent (configs gain placeholder fields over time).
  fields = {
      key: value
      for key, value in _flatten(_plain(config.get('model', {})), 'model').items()
      if key.split('.')[1] not in RESUMABLE_MODEL_FIELDS and value is not None
  }
  for key in STRUCTURAL_FIELDS:
    section, name = key.split('.')
    fields[key] = _plain(config.get(section, {}).get(name))
  # A depth run that trains its block only keeps optimiser state for that block alone.
  if config.get('model', {}).get('use_depth', False):
    fields['depth.train'] = (config.get('depth') or {}).get('train', 'all')
  # The EMA copy is part of the saved state when, and only when, ema_decay > 0.
  fields['ema_decay > 0'] = bool(config.get('ema_decay', 0.0) > 0)
  return fields


def resume_mismatches(
    saved: ml_collections.ConfigDict, new: ml_collections.ConfigDict
) -> list[tuple[str, Any, Any]]:
  """(field, saved value, new value) for every structural field that differs."""
  before, after = structure_fields(saved), structure_fields(new)
  missing = object()
  return [
      (key, before.get(key, '<absent>'), after.get(key, '<absent>'))
      for key in sorted(set(before) | set(after))
      if before.get(key, missing) != after.get(key, missing)
  ]
