"""A run's config: saved as workdir/config.json, read back by everything that opens a trained run."""

from __future__ import annotations

import importlib.util
import json
import os

import jax
import ml_collections

from diffhand_jax.runs import files


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """workdir/config.json: what `load_for_inference` (predict, evaluate) rebuilds the model from."""
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
  config = ml_collections.ConfigDict(payload)
  # JSON turns tuples into lists; the model wants its static fields hashable.
  config.model.fps_sizes = tuple(config.model.fps_sizes)
  config.model.depth_channels = tuple(config.model.depth_channels)
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
