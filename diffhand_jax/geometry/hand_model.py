"""The hand model a run uses, and what the losses and the metrics need from it (W, faces, template)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax.geometry import mano


@flax.struct.dataclass
class HandTopology:
  """What the losses and the metrics need from the hand model.

  joint_regressor: float32 (21, N), W of the paper's Eq. 9; faces: int32 (F, 3); template: (N, 3) m.
  """

  joint_regressor: jax.Array
  faces: jax.Array
  template: np.ndarray = flax.struct.field(pytree_node=False)


# The MANO folder (MANO_RIGHT.pkl, MANO_LEFT.pkl) when a config or builder names none.
MANO_DIR_ENV = 'DIFFHAND_MANO_DIR'
MANO_URL = 'https://mano.is.tue.mpg.de'
MANO_FILES = ('MANO_RIGHT.pkl', 'MANO_LEFT.pkl')


def mano_dir_problem(
    configured: str | None, needed_for: str, files: tuple[str, ...] = MANO_FILES
) -> tuple[str, str | None]:
  """(the MANO folder, None), or ('', what is missing and how to get it): the ``configured`` folder,
  else $DIFFHAND_MANO_DIR, must hold ``files``."""
  folder = os.path.expanduser(configured or os.environ.get(MANO_DIR_ENV, ''))
  if not folder:
    return '', (
        f'{needed_for} needs the MANO model, but no MANO folder is set: download '
        f'{" and ".join(files)} from {MANO_URL} (under their licence) and set {MANO_DIR_ENV}='
        f"/path/to/folder (or the config's mano_dir)"
    )
  missing = [name for name in files if not os.path.isfile(os.path.join(folder, name))]
  if missing:
    where = "the config's mano_dir" if configured else MANO_DIR_ENV
    return '', (
        f'{needed_for} needs {" and ".join(missing)} in {folder} (the folder comes from '
        f'{where}); download them from {MANO_URL}'
    )
  return folder, None


def load_hand_model(dataset_config: Mapping[str, Any]) -> mano.ManoModel:
  """The procedural hand, or MANO_RIGHT.pkl from the config's mano_dir / $DIFFHAND_MANO_DIR."""
  kind = dataset_config.get('hand_model', 'procedural')
  if kind == 'procedural':
    return mano.load_procedural()
  folder, problem = mano_dir_problem(
      dataset_config.get('mano_dir'), 'this config (hand_model "mano")', ('MANO_RIGHT.pkl',)
  )
  if problem:
    raise FileNotFoundError(problem)
  return mano.load(os.path.join(folder, 'MANO_RIGHT.pkl'), side='right')


def load_side_model(dataset_config: Mapping[str, Any], side: str) -> tuple[mano.ManoModel, str]:
  """The run's hand model for one side, and a name for it: ``mano.load_procedural('left')`` for the
  procedural hand, else the path of MANO_RIGHT.pkl / MANO_LEFT.pkl (config's mano_dir or
  $DIFFHAND_MANO_DIR). Raises FileNotFoundError saying what is missing."""
  if side not in ('right', 'left'):
    raise ValueError(f"side must be 'right' or 'left', got {side!r}")
  if dataset_config.get('hand_model', 'procedural') == 'procedural':
    return mano.load_procedural(side), f"mano.load_procedural('{side}')"
  name = f'MANO_{side.upper()}.pkl'
  folder, problem = mano_dir_problem(
      dataset_config.get('mano_dir'), f'MANO parameters of a {side} hand', (name,)
  )
  if problem:
    raise FileNotFoundError(problem)
  path = os.path.abspath(os.path.join(folder, name))
  return mano.load(path, side=side), path


def hand_topology(hand_model: mano.ManoModel, tip_ids=None) -> HandTopology:
  W = mano.joint_regressor21(hand_model, tip_ids)
  return HandTopology(
      joint_regressor=jnp.asarray(W, jnp.float32),
      faces=jnp.asarray(np.asarray(hand_model.faces), jnp.int32),
      template=np.asarray(hand_model.v_template),
  )
