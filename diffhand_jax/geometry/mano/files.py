"""Loading MANO models: the official ``.pkl`` files (read by `official_pickle.py`), the ``.npz`` form
with the same keys (read with ``allow_pickle=False``), a dict of arrays in either direction
(`model_from_arrays`, `model_to_arrays`), the mirrored hand, and the licence-free procedural hand.

MANO's left-hand shapedirs bug (docs/design.md §2) is handled by :func:`fix_left_shapedirs`;
:func:`load` applies it automatically when ``side='left'`` and a ``MANO_RIGHT`` file of the same
format sits in the same folder.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from diffhand_jax.geometry.mano import official_pickle
from diffhand_jax.geometry.mano.model import (
    FILE_KEYS,
    NUM_HAND_POSE,
    NUM_JOINTS,
    NUM_VERTICES,
    ManoFileError,
    ManoModel,
)

# diffhand_jax/assets/procedural_hand.npz (this file is diffhand_jax/geometry/mano/files.py).
PROCEDURAL_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    'assets',
    'procedural_hand.npz',
)


def _read_npz(path: str) -> Mapping[str, Any]:
  try:
    with np.load(path, allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
  except ValueError as err:
    raise ManoFileError(f'{path}: cannot read npz without pickles ({err})') from None
  except Exception as err:  # noqa: BLE001 - zipfile / OSError variants of a truncated file
    raise ManoFileError(f'{path}: not a readable .npz file ({type(err).__name__}: {err})') from None


def _check_shape(source: str, key: str, array: np.ndarray, expected: Sequence[int | None]) -> None:
  ok = array.ndim == len(expected) and all(
      e is None or e == s for e, s in zip(expected, array.shape)
  )
  if not ok:
    want = '(' + ', '.join('*' if e is None else str(e) for e in expected) + ')'
    raise ManoFileError(f'{source}: {key!r} has shape {array.shape}, expected {want}')


def model_from_arrays(
    arrays: Mapping[str, Any], *, side: str = 'right', source: str = '<arrays>'
) -> ManoModel:
  """Validates a dict with the MANO file keys and builds a :class:`ManoModel`.

  Args:
    arrays: the keys of docs/design.md §7 (``v_template``, ``shapedirs``, ``posedirs``, ``J_regressor``,
      ``weights``, ``kintree_table``, ``f``, ``hands_components``, ``hands_mean``), optionally
      ``tip_ids`` (5,), ``pose_axes`` (15, 3, 3) and ``pose_limits`` (15, 3, 2).
    side: 'right' or 'left'.
    source: the file name used in error messages.
  """
  if side not in ('right', 'left'):
    raise ValueError(f"side must be 'right' or 'left', got {side!r}")
  missing = [key for key in FILE_KEYS if key not in arrays]
  if missing:
    raise ManoFileError(f'{source}: missing key(s) {missing}; found {sorted(arrays)}')
  np_arrays = {key: official_pickle.to_numpy(arrays[key], source, key) for key in FILE_KEYS}
  for key in ('tip_ids', 'pose_axes', 'pose_limits'):
    if key in arrays and arrays[key] is not None:
      np_arrays[key] = official_pickle.to_numpy(arrays[key], source, key)

  V, J = NUM_VERTICES, NUM_JOINTS
  _check_shape(source, 'v_template', np_arrays['v_template'], (V, 3))
  _check_shape(source, 'shapedirs', np_arrays['shapedirs'], (V, 3, None))
  _check_shape(source, 'posedirs', np_arrays['posedirs'], (V, 3, 9 * (J - 1)))
  _check_shape(source, 'J_regressor', np_arrays['J_regressor'], (J, V))
  _check_shape(source, 'weights', np_arrays['weights'], (V, J))
  _check_shape(source, 'kintree_table', np_arrays['kintree_table'], (2, J))
  _check_shape(source, 'f', np_arrays['f'], (None, 3))
  _check_shape(source, 'hands_components', np_arrays['hands_components'], (None, NUM_HAND_POSE))
  _check_shape(source, 'hands_mean', np_arrays['hands_mean'].reshape(-1), (NUM_HAND_POSE,))
  for key, array in np_arrays.items():
    if array.dtype.kind not in 'biuf':
      raise ManoFileError(f'{source}: {key!r} has non-numeric dtype {array.dtype}')
    if array.dtype.kind == 'f' and not np.all(np.isfinite(array)):
      raise ManoFileError(f'{source}: {key!r} contains NaN or inf')

  faces = np_arrays['f'].astype(np.int64)
  if faces.size == 0 or faces.min() < 0 or faces.max() >= V:
    raise ManoFileError(
        f'{source}: face indices must lie in [0, {V}), got range '
        f'[{faces.min() if faces.size else None}, {faces.max() if faces.size else None}]'
    )
  parents_raw = np_arrays['kintree_table'][0].astype(np.int64)
  parents = [-1] + [int(p) for p in parents_raw[1:]]
  for child, parent in enumerate(parents[1:], start=1):
    if not 0 <= parent < child:
      raise ManoFileError(
          f'{source}: kintree_table gives joint {child} the parent {parent}; parents '
          'must precede their children'
      )

  tip_ids = None
  if 'tip_ids' in np_arrays:
    tips = np_arrays['tip_ids'].astype(np.int64).reshape(-1)
    if tips.shape != (5,) or tips.min() < 0 or tips.max() >= V:
      raise ManoFileError(
          f'{source}: tip_ids must be 5 vertex ids in [0, {V}), got {tips.tolist()}'
      )
    tip_ids = tuple(int(t) for t in tips)
  pose_axes = pose_limits = None
  if 'pose_axes' in np_arrays and 'pose_limits' in np_arrays:
    _check_shape(source, 'pose_axes', np_arrays['pose_axes'], (J - 1, 3, 3))
    _check_shape(source, 'pose_limits', np_arrays['pose_limits'], (J - 1, 3, 2))
    pose_axes = jnp.asarray(np_arrays['pose_axes'], jnp.float32)
    pose_limits = jnp.asarray(np_arrays['pose_limits'], jnp.float32)

  f32 = lambda key: jnp.asarray(np_arrays[key], jnp.float32)  # noqa: E731
  return ManoModel(
      v_template=f32('v_template'),
      shapedirs=f32('shapedirs'),
      posedirs=f32('posedirs'),
      J_regressor=f32('J_regressor'),
      weights=f32('weights'),
      faces=jnp.asarray(faces, jnp.int32),
      hands_components=f32('hands_components'),
      hands_mean=jnp.asarray(np_arrays['hands_mean'].reshape(-1), jnp.float32),
      parents=tuple(parents),
      side=side,
      tip_ids=tip_ids,
      pose_axes=pose_axes,
      pose_limits=pose_limits,
  )


def model_to_arrays(model: ManoModel) -> dict[str, np.ndarray]:
  """The inverse of :func:`model_from_arrays`: a dict of numpy arrays with the MANO file keys."""
  kintree = np.stack([np.array(model.parents, np.int64), np.arange(NUM_JOINTS)])
  kintree[0, 0] = 4294967295  # what the official files store for the root (uint32 -1)
  arrays = {
      'v_template': np.array(model.v_template),
      'shapedirs': np.array(model.shapedirs),
      'posedirs': np.array(model.posedirs),
      'J_regressor': np.array(model.J_regressor),
      'weights': np.array(model.weights),
      'kintree_table': kintree,
      'f': np.asarray(model.faces).astype(np.uint32),
      'hands_components': np.array(model.hands_components),
      'hands_mean': np.array(model.hands_mean),
  }
  if model.tip_ids is not None:
    arrays['tip_ids'] = np.asarray(model.tip_ids, np.int64)
  if model.pose_axes is not None and model.pose_limits is not None:
    arrays['pose_axes'] = np.asarray(model.pose_axes)
    arrays['pose_limits'] = np.asarray(model.pose_limits)
  return arrays


def _read_any(path: str) -> Mapping[str, Any]:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'MANO model file {path!r} does not exist. Download MANO_RIGHT.pkl / MANO_LEFT.pkl from '
        'https://mano.is.tue.mpg.de (their licence) and point the config or DIFFHAND_MANO_DIR at '
        'the folder, or use mano.load_procedural().'
    )
  if os.path.isdir(path):
    raise ManoFileError(f'{path}: is a folder; pass the path of MANO_RIGHT.pkl or MANO_LEFT.pkl')
  with open(path, 'rb') as handle:
    head = handle.read(4)
  if head.startswith(b'PK'):
    return _read_npz(path)
  if path.endswith('.npz'):
    raise ManoFileError(f'{path}: not a valid .npz (zip) file; it may be truncated')
  return official_pickle.read_pickle(path)


def _right_sibling(path: str) -> str | None:
  folder, name = os.path.split(os.fspath(path))
  candidates = []
  if 'LEFT' in name:
    candidates.append(name.replace('LEFT', 'RIGHT'))
  if 'left' in name:
    candidates.append(name.replace('left', 'right'))
  for candidate in candidates:
    full = os.path.join(folder, candidate)
    if os.path.isfile(full) and os.path.abspath(full) != os.path.abspath(path):
      return full
  return None


def fix_left_shapedirs(left: ManoModel, right: ManoModel) -> ManoModel:
  """MANO's left-hand shapedirs bug (docs/design.md §2).

  The released left model's first shape direction has the wrong sign in x: when
  ``sum |L.shapedirs[:, 0, :] - R.shapedirs[:, 0, :]| < 1`` the left x-components equal the right
  ones instead of their mirror, so they are negated. Otherwise ``left`` is returned unchanged.
  """
  if left.shapedirs.shape != right.shapedirs.shape:
    return left
  difference = float(jnp.sum(jnp.abs(left.shapedirs[:, 0, :] - right.shapedirs[:, 0, :])))
  if difference < 1.0:
    return left.replace(shapedirs=left.shapedirs.at[:, 0, :].multiply(-1.0))
  return left


def load(path: str | os.PathLike, *, side: str = 'right') -> ManoModel:
  """Loads a MANO model from the official ``.pkl`` or from a ``.npz`` with the same keys.

  No pickle code is executed (`official_pickle.py`). With ``side='left'``, if a right-hand file
  (the name with LEFT -> RIGHT) lies in the same folder, the left shapedirs fix of
  :func:`fix_left_shapedirs` is applied.

  Raises:
    FileNotFoundError: the file is missing.
    ManoFileError: the file is truncated, unsafe, misses keys, or has wrong shapes; the message
      names the file and the problem.
  """
  if side not in ('right', 'left'):
    raise ValueError(f"side must be 'right' or 'left', got {side!r}")
  path = os.fspath(path)
  name = os.path.basename(path).upper()
  if ('LEFT' in name and side == 'right') or ('RIGHT' in name and side == 'left'):
    warnings.warn(f'{path}: file name suggests the other hand than side={side!r}', stacklevel=2)
  model = model_from_arrays(_read_any(path), side=side, source=path)
  if side == 'left':
    right_path = _right_sibling(path)
    if right_path is not None:
      right = model_from_arrays(_read_any(right_path), side='right', source=right_path)
      model = fix_left_shapedirs(model, right)
  return model


def mirror_model(model: ManoModel) -> ManoModel:
  """The model of the other hand, mirrored through the x = 0 plane.

  Vertices and shape directions get x negated, faces are re-wound to keep normals outward, and the
  axis-angle quantities (``hands_mean``, ``hands_components`` columns, joint axes) get their y and z
  components negated (mirroring a rotation about axis a by angle t gives the rotation about M a by
  -t). ``posedirs`` are mirrored exactly: the pose feature of joint j, R - I, becomes M (R - I) M.
  """
  flip = jnp.array([-1.0, 1.0, 1.0], jnp.float32)
  rot_flip = jnp.array([1.0, -1.0, -1.0], jnp.float32)
  # posedirs[v, c, 9 j + 3 a + b] multiplies (R_j - I)[a, b]; mirrored: M_cc M_aa M_bb.
  sign_ab = (flip[:, None] * flip[None, :]).reshape(-1)
  feature_sign = jnp.tile(sign_ab, NUM_JOINTS - 1)
  posedirs = model.posedirs * flip[None, :, None] * feature_sign[None, None, :]
  hand_sign = jnp.tile(rot_flip, NUM_JOINTS - 1)
  pose_axes = None if model.pose_axes is None else model.pose_axes * rot_flip
  return model.replace(
      v_template=model.v_template * flip,
      shapedirs=model.shapedirs * flip[None, :, None],
      posedirs=posedirs,
      faces=model.faces[:, ::-1],
      hands_components=model.hands_components * hand_sign[None, :],
      hands_mean=model.hands_mean * hand_sign,
      side='left' if model.side == 'right' else 'right',
      pose_axes=pose_axes,
  )


def load_procedural(side: str = 'right') -> ManoModel:
  """The licence-free procedural hand shipped in ``diffhand_jax/assets/procedural_hand.npz``.

  The left hand is the mirror image of the right (:func:`mirror_model`).
  """
  if side not in ('right', 'left'):
    raise ValueError(f"side must be 'right' or 'left', got {side!r}")
  right = model_from_arrays(_read_any(PROCEDURAL_PATH), side='right', source=PROCEDURAL_PATH)
  return right if side == 'right' else mirror_model(right)
