"""MANO hand model in JAX: safe file loading, linear blend skinning, joint regressors.

Conventions (docs/design.md §2):

* metres; MANO's 16 joints in MANO order (0 wrist; 1-3 index; 4-6 middle; 7-9 little; 10-12 ring;
  13-15 thumb); the 21-joint order is FreiHAND/OpenPose (wrist, thumb, index, middle, ring, little,
  each base -> tip).
* pose vectors are axis-angle, 48 = 3 global + 15 x 3 finger values, relative to the parent joint, as
  in MANO / smplx / manopth.

The official ``MANO_{RIGHT,LEFT}.pkl`` files pickle chumpy objects and a ``scipy.sparse`` joint
regressor. They are read with a restricted unpickler (:func:`_RestrictedUnpickler`): it never calls
anything outside a short allow-list of numpy / scipy reconstruction helpers, maps every ``chumpy``
class to an inert stub, and refuses every other global with an error naming the file and the global.
Plain ``.npz`` files with the same keys are read with ``allow_pickle=False``.

MANO's left-hand shapedirs bug (docs/design.md §2) is handled by :func:`fix_left_shapedirs`;
:func:`load` applies it automatically when ``side='left'`` and a ``MANO_RIGHT`` file of the same
format sits in the same folder.
"""

from __future__ import annotations

import _compat_pickle
import functools
import io
import os
import pickle
import warnings
from typing import Any, Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffhand_jax import metrics
from diffhand_jax.geometry import conventions, fitting, safe_pickle

NUM_VERTICES = 778
NUM_JOINTS = 16
NUM_HAND_POSE = 45  # 15 finger joints x 3

# The conventions mano re-exports (public names since the first release).
TIP_IDS = conventions.TIP_IDS
MANO16_TO_21 = conventions.MANO16_TO_21

# MANO's kinematic tree: parent of each of the 16 joints (root = -1).
MANO_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)

PROCEDURAL_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'assets', 'procedural_hand.npz'
)


class ManoFileError(ValueError):
  """A MANO model file is missing, unreadable, unsafe or has the wrong content."""


# ----------------------------------------------------------------------------------------------
# The model pytree
# ----------------------------------------------------------------------------------------------


@struct.dataclass
class ManoModel:
  """MANO model arrays (a JAX pytree; ``parents``, ``side`` and ``tip_ids`` are static).

  Attributes:
    v_template: (778, 3) rest-pose template vertices, metres.
    shapedirs: (778, 3, S) shape blend shapes (S = 10 for MANO).
    posedirs: (778, 3, 135) pose-corrective blend shapes.
    J_regressor: (16, 778) dense joint regressor.
    weights: (778, 16) skinning weights.
    faces: (F, 3) int32 triangles (1538 for MANO, 1552 for the closed procedural hand).
    hands_components: (45, 45) PCA basis of the finger pose, one component per row.
    hands_mean: (45,) mean finger pose (added when ``flat_hand_mean=False``).
    parents: static tuple of 16 parent indices (root -1).
    side: static 'right' or 'left'.
    tip_ids: static (thumb, index, middle, ring, little) tip vertex ids, or None when the file has
      none (the official MANO files; use :data:`TIP_IDS` then).
    pose_axes: optional (15, 3, 3) per finger joint the (flex, abduction, twist) unit axes in the
      rest frame (procedural hand only).
    pose_limits: optional (15, 3, 2) per finger joint and axis [min, max] angle, radians.
  """

  v_template: jax.Array
  shapedirs: jax.Array
  posedirs: jax.Array
  J_regressor: jax.Array
  weights: jax.Array
  faces: jax.Array
  hands_components: jax.Array
  hands_mean: jax.Array
  parents: tuple[int, ...] = struct.field(pytree_node=False, default=MANO_PARENTS)
  side: str = struct.field(pytree_node=False, default='right')
  tip_ids: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
  pose_axes: jax.Array | None = None
  pose_limits: jax.Array | None = None

  @property
  def num_betas(self) -> int:
    return int(self.shapedirs.shape[-1])

  @property
  def num_faces(self) -> int:
    return int(self.faces.shape[0])


# ----------------------------------------------------------------------------------------------
# Restricted unpickling of the official files
# ----------------------------------------------------------------------------------------------


class _ChumpyStub:
  """Inert stand-in for any chumpy class: it only records what the pickle hands it."""

  def __init__(self, *args: Any, **kwargs: Any) -> None:
    self._stub_args = args
    self._stub_kwargs = kwargs
    self._stub_state: Any = None

  def __setstate__(self, state: Any) -> None:
    self._stub_state = state

  def __reduce__(self):  # never re-pickle a stub into something that looks like chumpy
    raise TypeError('chumpy stubs cannot be pickled')


class _SparseStub:
  """Stand-in for scipy.sparse csc/csr/coo matrices; densified by :func:`_to_numpy`."""

  def __init__(self, *args: Any, **kwargs: Any) -> None:
    self._stub_args = args
    self._stub_state: Any = None
    self._format = 'csc'

  def __setstate__(self, state: Any) -> None:
    self._stub_state = state


def _sparse_stub_class(fmt: str) -> type:
  return type(f'_Sparse_{fmt}', (_SparseStub,), {'_format_name': fmt})


_SPARSE_STUBS = {fmt: _sparse_stub_class(fmt) for fmt in ('csc', 'csr', 'coo')}


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
  # copyreg._reconstructor, limited to plain objects of allow-listed (stub) classes.
  if (
      base is not object
      or not isinstance(cls, type)
      or not issubclass(cls, (_ChumpyStub, _SparseStub))
  ):
    raise pickle.UnpicklingError(f'refused copy_reg._reconstructor({cls!r}, {base!r})')
  return object.__new__(cls)


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    **safe_pickle.NUMPY_GLOBALS,
    ('copyreg', '_reconstructor'): _safe_reconstructor,
    ('builtins', 'object'): object,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'complex'): complex,
    ('collections', 'OrderedDict'): dict,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only allow-listed globals; everything else is refused."""

  def __init__(self, file: io.BufferedIOBase, source: str) -> None:
    super().__init__(file, encoding='latin1', fix_imports=True)
    self._source = source

  def find_class(self, module: str, name: str) -> Any:
    # Python 2 names (copy_reg, __builtin__, ...) as the standard Unpickler's fix_imports maps them.
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
      module = _compat_pickle.IMPORT_MAPPING[module]
    if module == 'chumpy' or module.startswith('chumpy.'):
      return _ChumpyStub
    if module.startswith('scipy.sparse'):
      fmt = name.split('_')[0]
      if name in ('csc_matrix', 'csr_matrix', 'coo_matrix', 'csc_array', 'csr_array', 'coo_array'):
        return _SPARSE_STUBS[fmt]
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    raise ManoFileError(
        f'{self._source}: refused to load global {module}.{name!s} from the pickle '
        '(only numpy/scipy data and chumpy stubs are allowed; no pickle code is executed)'
    )


def _chumpy_array(obj: _ChumpyStub) -> np.ndarray | None:
  """The numpy value held by a chumpy stub (Ch objects keep it in their state under 'x')."""
  state = obj._stub_state
  if isinstance(state, dict):
    for key in ('x', 'a', 'r'):
      value = state.get(key)
      if isinstance(value, np.ndarray):
        return value
      if isinstance(value, _ChumpyStub):
        return _chumpy_array(value)
  if isinstance(state, tuple):
    for value in state:
      if isinstance(value, dict):
        inner = _ChumpyStub()
        inner._stub_state = value
        found = _chumpy_array(inner)
        if found is not None:
          return found
  for value in obj._stub_args:
    if isinstance(value, np.ndarray):
      return value
  return None


def _sparse_dense(obj: _SparseStub, source: str, key: str) -> np.ndarray:
  state = obj._stub_state
  if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
    state = state[1]
  if not isinstance(state, dict):
    raise ManoFileError(f'{source}: {key!r} is a sparse matrix without readable state')
  state = {k.lstrip('_'): v for k, v in state.items()}
  fmt = type(obj)._format_name
  shape = tuple(int(s) for s in state.get('shape', ()))
  if len(shape) != 2:
    raise ManoFileError(f'{source}: {key!r} sparse matrix has no 2-D shape')
  import scipy.sparse  # local import: scipy is only needed for official files

  try:
    if fmt == 'coo':
      matrix = scipy.sparse.coo_matrix((state['data'], (state['row'], state['col'])), shape=shape)
    else:
      cls = scipy.sparse.csc_matrix if fmt == 'csc' else scipy.sparse.csr_matrix
      matrix = cls((state['data'], state['indices'], state['indptr']), shape=shape)
  except (KeyError, ValueError) as err:
    raise ManoFileError(f'{source}: {key!r} sparse matrix is malformed ({err})') from None
  return np.asarray(matrix.todense())


def _to_numpy(value: Any, source: str, key: str) -> np.ndarray:
  if isinstance(value, _ChumpyStub):
    array = _chumpy_array(value)
    if array is None:
      raise ManoFileError(f'{source}: {key!r} is a chumpy object without a stored array')
    return np.asarray(array)
  if isinstance(value, _SparseStub):
    return _sparse_dense(value, source, key)
  if hasattr(value, 'todense'):  # a real scipy.sparse matrix (npz never has one; kept for safety)
    return np.asarray(value.todense())
  try:
    return np.asarray(value)
  except Exception as err:  # noqa: BLE001 - report which key failed, not a deep traceback
    raise ManoFileError(f'{source}: {key!r} cannot be read as an array ({err})') from None


def _read_pickle(path: str) -> Mapping[str, Any]:
  with open(path, 'rb') as handle:
    raw = handle.read()
  try:
    data = _RestrictedUnpickler(io.BytesIO(raw), path).load()
  except ManoFileError:
    raise
  except (
      EOFError,
      pickle.UnpicklingError,
      ValueError,
      TypeError,
      AttributeError,
      IndexError,
      KeyError,
      MemoryError,
  ) as err:
    raise ManoFileError(
        f'{path}: not a readable MANO pickle (truncated or corrupt: '
        f'{type(err).__name__}: {err})'
    ) from None
  if not isinstance(data, dict):
    raise ManoFileError(
        f'{path}: expected a pickled dict of MANO arrays, got {type(data).__name__}'
    )
  return data


def _read_npz(path: str) -> Mapping[str, Any]:
  try:
    with np.load(path, allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
  except ValueError as err:
    raise ManoFileError(f'{path}: cannot read npz without pickles ({err})') from None
  except Exception as err:  # noqa: BLE001 - zipfile / OSError variants of a truncated file
    raise ManoFileError(f'{path}: not a readable .npz file ({type(err).__name__}: {err})') from None


# ----------------------------------------------------------------------------------------------
# Building a model from a dict of arrays
# ----------------------------------------------------------------------------------------------

_REQUIRED_KEYS = (
    'v_template',
    'shapedirs',
    'posedirs',
    'J_regressor',
    'weights',
    'kintree_table',
    'f',
    'hands_components',
    'hands_mean',
)


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
  missing = [key for key in _REQUIRED_KEYS if key not in arrays]
  if missing:
    raise ManoFileError(f'{source}: missing key(s) {missing}; found {sorted(arrays)}')
  np_arrays = {key: _to_numpy(arrays[key], source, key) for key in _REQUIRED_KEYS}
  for key in ('tip_ids', 'pose_axes', 'pose_limits'):
    if key in arrays and arrays[key] is not None:
      np_arrays[key] = _to_numpy(arrays[key], source, key)

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


# ----------------------------------------------------------------------------------------------
# Public loading API
# ----------------------------------------------------------------------------------------------


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
  return _read_pickle(path)


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

  No pickle code is executed (see module docstring). With ``side='left'``, if a right-hand file
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


# ----------------------------------------------------------------------------------------------
# Forward kinematics and skinning
# ----------------------------------------------------------------------------------------------


def rodrigues(rotvec: jax.Array) -> jax.Array:
  """Axis-angle (..., 3) -> rotation matrices (..., 3, 3); exact, with finite gradients at 0."""
  theta2 = jnp.sum(rotvec * rotvec, axis=-1)[..., None, None]
  small = theta2 < 1e-12
  theta2_safe = jnp.where(small, 1.0, theta2)
  theta = jnp.sqrt(theta2_safe)
  sin_over = jnp.where(small, 1.0 - theta2 / 6.0, jnp.sin(theta) / theta)
  # (1 - cos t) / t^2 written as 2 sin^2(t/2) / t^2 to avoid cancellation in float32.
  cos_term = jnp.where(small, 0.5 - theta2 / 24.0, 2.0 * jnp.sin(theta / 2.0) ** 2 / theta2_safe)
  x, y, z = rotvec[..., 0], rotvec[..., 1], rotvec[..., 2]
  zero = jnp.zeros_like(x)
  skew = jnp.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(
      rotvec.shape[:-1] + (3, 3)
  )
  eye = jnp.eye(3, dtype=rotvec.dtype)
  return eye + sin_over * skew + cos_term * (skew @ skew)


def _joint_levels(parents: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
  """Groups joints (except the root) by depth so each level is one batched matmul."""
  depth = [0] * len(parents)
  for joint in range(1, len(parents)):
    depth[joint] = depth[parents[joint]] + 1
  levels = []
  for level in range(1, max(depth) + 1):
    joints = np.array([j for j in range(len(parents)) if depth[j] == level])
    levels.append((joints, np.array([parents[j] for j in joints])))
  return levels


def full_pose(
    model: ManoModel,
    pose: jax.Array,
    *,
    flat_hand_mean: bool = False,
    use_pca: bool = False,
    num_pca_comps: int | None = None,
) -> jax.Array:
  """(B, 48) axis-angle pose with the PCA expansion and the hand mean applied (as smplx / manopth)."""
  global_orient, hand = pose[:, :3], pose[:, 3:]
  if use_pca:
    ncomps = hand.shape[-1] if num_pca_comps is None else num_pca_comps
    if hand.shape[-1] != ncomps or not 1 <= ncomps <= model.hands_components.shape[0]:
      raise ValueError(
          f'with use_pca the pose must be (B, 3 + num_pca_comps) with num_pca_comps <= '
          f'{model.hands_components.shape[0]}; got pose {pose.shape} and '
          f'num_pca_comps={num_pca_comps}'
      )
    hand = hand @ model.hands_components[:ncomps].astype(hand.dtype)
  elif hand.shape[-1] != NUM_HAND_POSE:
    raise ValueError(f'pose must be (B, 48) axis-angle (or set use_pca=True); got {pose.shape}')
  if not flat_hand_mean:
    hand = hand + model.hands_mean.astype(hand.dtype)
  return jnp.concatenate([global_orient, hand], axis=-1)


def forward(
    model: ManoModel,
    pose: jax.Array,
    betas: jax.Array | None = None,
    *,
    flat_hand_mean: bool = False,
    use_pca: bool = False,
    num_pca_comps: int | None = None,
    trans: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """MANO linear blend skinning with shape and pose blend shapes (the smplx MANO layer).

  Args:
    model: a :class:`ManoModel`.
    pose: (B, 48) axis-angle (3 global + 45 finger values), or (B, 3 + ncomps) with ``use_pca``.
      A single unbatched (48,) pose is accepted too (then the outputs have no batch axis).
    betas: (B, S') or (S',) shape coefficients, S' <= model's S (missing ones are zero); or None.
    flat_hand_mean: if False (MANO's default), ``hands_mean`` is added to the finger pose.
    use_pca: the finger pose holds PCA coefficients on ``hands_components`` (manopth semantics: also
      with 45 components).
    num_pca_comps: number of PCA coefficients; defaults to ``pose.shape[-1] - 3``.
    trans: optional (B, 3) translation added to vertices and joints.

  Returns:
    vertices (B, 778, 3) and joints (B, 16, 3) in metres, MANO joint order. jit- and vmap-safe.
  """
  pose = jnp.asarray(pose)
  unbatched = pose.ndim == 1
  if unbatched:
    pose = pose[None]
  chex.assert_rank(pose, 2)
  dtype = jnp.result_type(pose.dtype, jnp.float32)
  pose = pose.astype(dtype)
  batch = pose.shape[0]
  num_betas_model = model.shapedirs.shape[-1]
  if betas is None:
    betas = jnp.zeros((batch, num_betas_model), dtype)
  betas = jnp.asarray(betas, dtype)
  if betas.ndim == 1:
    betas = betas[None]
  chex.assert_rank(betas, 2)
  if betas.shape[-1] > num_betas_model:
    raise ValueError(
        f'betas has {betas.shape[-1]} coefficients but the model has {num_betas_model}'
    )
  betas = jnp.broadcast_to(betas, (batch, betas.shape[-1]))

  pose48 = full_pose(
      model, pose, flat_hand_mean=flat_hand_mean, use_pca=use_pca, num_pca_comps=num_pca_comps
  )
  num_joints = len(model.parents)
  shapedirs = model.shapedirs[..., : betas.shape[-1]].astype(dtype)
  v_shaped = model.v_template.astype(dtype) + jnp.einsum('bs,vcs->bvc', betas, shapedirs)
  joints_rest = jnp.einsum('jv,bvc->bjc', model.J_regressor.astype(dtype), v_shaped)

  rotations = rodrigues(pose48.reshape(batch, num_joints, 3))
  pose_feature = (rotations[:, 1:] - jnp.eye(3, dtype=dtype)).reshape(batch, -1)
  v_posed = v_shaped + jnp.einsum('bk,vck->bvc', pose_feature, model.posedirs.astype(dtype))

  # Kinematic chain: global rotation G_j = G_parent R_j, global joint t_j = G_parent (J_j - J_p) + t_p.
  parents = np.array(model.parents)
  rel_joints = joints_rest.at[:, 1:].add(-joints_rest[:, parents[1:]])
  global_rot = rotations
  global_trans = rel_joints
  for joints, joint_parents in _joint_levels(model.parents):
    parent_rot = global_rot[:, joint_parents]
    global_trans = global_trans.at[:, joints].set(
        jnp.einsum('bjik,bjk->bji', parent_rot, rel_joints[:, joints])
        + global_trans[:, joint_parents]
    )
    global_rot = global_rot.at[:, joints].set(parent_rot @ rotations[:, joints])
  posed_joints = global_trans
  # Skinning transforms map rest-pose points: x -> G_j (x - J_j) + t_j.
  skin_trans = global_trans - jnp.einsum('bjik,bjk->bji', global_rot, joints_rest)
  weights = model.weights.astype(dtype)
  vert_rot = jnp.einsum('vj,bjik->bvik', weights, global_rot)
  vert_trans = jnp.einsum('vj,bji->bvi', weights, skin_trans)
  vertices = jnp.einsum('bvik,bvk->bvi', vert_rot, v_posed) + vert_trans

  if trans is not None:
    trans = jnp.asarray(trans, dtype).reshape(-1, 1, 3)
    vertices = vertices + trans
    posed_joints = posed_joints + trans
  if unbatched:
    return vertices[0], posed_joints[0]
  return vertices, posed_joints


# ----------------------------------------------------------------------------------------------
# 21 joints and the joint regressor W
# ----------------------------------------------------------------------------------------------


def _resolve_tips(tip_ids: Any) -> tuple[int, ...]:
  if isinstance(tip_ids, str):
    if tip_ids not in TIP_IDS:
      raise ValueError(f'unknown tip id set {tip_ids!r}; known: {sorted(TIP_IDS)}')
    return TIP_IDS[tip_ids]
  tips = tuple(int(t) for t in np.asarray(tip_ids).reshape(-1))
  if len(tips) != 5:
    raise ValueError(
        f'tip_ids must be 5 vertex ids (thumb, index, middle, ring, little), got {tips}'
    )
  return tips


def joints21(vertices: jax.Array, joints16: jax.Array, tip_ids: Any) -> jax.Array:
  """MANO joints plus fingertip vertices in the 21-order (wrist, thumb, index, middle, ring, little).

  Args:
    vertices: (..., 778, 3).
    joints16: (..., 16, 3) in MANO order.
    tip_ids: 5 vertex ids (thumb, index, middle, ring, little), or a key of :data:`TIP_IDS`.

  Returns:
    (..., 21, 3).
  """
  tips = _resolve_tips(tip_ids)
  chex.assert_equal(vertices.shape[-2:], (NUM_VERTICES, 3))
  chex.assert_equal(joints16.shape[-2:], (NUM_JOINTS, 3))
  tip_points = jnp.take(vertices, jnp.asarray(tips), axis=-2)
  stacked = jnp.concatenate([joints16, tip_points.astype(joints16.dtype)], axis=-2)
  return jnp.take(stacked, jnp.asarray(MANO16_TO_21), axis=-2)


def joint_regressor21(model: ManoModel, tip_ids: Any = None) -> np.ndarray:
  """The (21, 778) matrix W of the paper's Eq. 9: MANO's J_regressor rows plus one-hot tip rows, in
  the 21-order, so that ``W @ V`` = ``joints21(V, J_regressor @ V, tip_ids)`` for any mesh V.

  ``tip_ids`` defaults to the model's own (procedural hand) or FreiHAND's.
  """
  if tip_ids is None:
    tip_ids = model.tip_ids if model.tip_ids is not None else TIP_IDS['freihand']
  tips = _resolve_tips(tip_ids)
  tip_rows = np.zeros((5, NUM_VERTICES), np.float32)
  tip_rows[np.arange(5), np.array(tips)] = 1.0
  stacked = np.concatenate([np.asarray(model.J_regressor, np.float32), tip_rows], axis=0)
  return stacked[np.array(MANO16_TO_21)]


def regress_joints16(model: ManoModel, vertices: jax.Array) -> jax.Array:
  """MANO's J_regressor applied to (posed) vertices: (..., 778, 3) -> (..., 16, 3)."""
  return jnp.einsum('jv,...vc->...jc', model.J_regressor.astype(vertices.dtype), vertices)


# ----------------------------------------------------------------------------------------------
# Plausible poses (procedural hand's joint limits)
# ----------------------------------------------------------------------------------------------

# Finger joints (MANO joints 1..15) grouped per finger: index, middle, little, ring, thumb.
_FINGER_JOINTS = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11), (12, 13, 14))


def _limits_of(model: ManoModel) -> tuple[np.ndarray, np.ndarray]:
  if model.pose_axes is not None and model.pose_limits is not None:
    return np.asarray(model.pose_axes, np.float64), np.asarray(model.pose_limits, np.float64)
  # Official MANO files have no limits; the procedural hand is laid out like MANO's template, so its
  # axes are a reasonable stand-in.
  procedural = load_procedural(model.side)
  return np.asarray(procedural.pose_axes, np.float64), np.asarray(
      procedural.pose_limits, np.float64
  )


def _angles_to_pose(axes: np.ndarray, angles: np.ndarray) -> np.ndarray:
  """(n, 15, 3) angles along each joint's (flex, abduction, twist) axes -> (n, 45) axis-angle."""
  return np.einsum('njk,jkc->njc', angles, axes).reshape(angles.shape[0], NUM_HAND_POSE)


def pose_to_angles(model: ManoModel, pose: Any) -> np.ndarray:
  """(n, 48) absolute axis-angle pose -> (n, 15, 3) coordinates along each joint's limit axes."""
  axes, _ = _limits_of(model)
  hand = np.asarray(pose, np.float64).reshape(-1, 48)[:, 3:].reshape(-1, 15, 3)
  return np.einsum('njc,jkc->njk', hand, axes)


def _as_generator(rng: Any) -> np.random.Generator:
  if isinstance(rng, np.random.Generator):
    return rng
  if isinstance(rng, (int, np.integer)):
    return np.random.default_rng(int(rng))
  key = jnp.asarray(rng)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  seed = np.asarray(key).astype(np.uint32).reshape(-1)
  return np.random.default_rng([int(s) for s in seed])


def sample_random_pose(
    rng: Any,
    model: ManoModel,
    n: int,
    *,
    flat_hand_mean: bool = True,
    random_global_orient: bool = False,
) -> np.ndarray:
  """Plausible random poses within the model's joint limits.

  Each finger gets one curl level that drives its three joints (with jitter), so fingers flex
  forward together; spread shrinks as a finger curls; the thumb opposes (palmar abduction, flexion
  across the palm and pronation, all within its limits).

  Args:
    rng: a numpy Generator, an int seed, or a JAX PRNG key.
    model: a :class:`ManoModel` (limits from the file; official MANO models borrow the procedural
      hand's limits).
    n: number of poses.
    flat_hand_mean: if True (default) the result is the absolute pose, to be used with
      ``forward(..., flat_hand_mean=True)``; if False ``hands_mean`` is subtracted so that
      ``forward(..., flat_hand_mean=False)`` gives the same hands.
    random_global_orient: draw a uniformly random global rotation instead of zero.

  Returns:
    (n, 48) float32 axis-angle poses.
  """
  generator = _as_generator(rng)
  axes, limits = _limits_of(model)
  low, high = limits[..., 0], limits[..., 1]
  angles = np.zeros((n, 15, 3))
  for finger, joints in enumerate(_FINGER_JOINTS):
    curl = generator.uniform(0.0, 1.0, size=(n, 1)) ** 0.8
    joints = np.array(joints)
    flex = low[joints, 0] + curl * (high[joints, 0] - low[joints, 0])
    flex = flex + generator.normal(0.0, 0.12, size=(n, 3)) * (high[joints, 0] - low[joints, 0])
    angles[:, joints, 0] = flex
    spread = generator.uniform(low[joints, 1], high[joints, 1], size=(n, 3))
    angles[:, joints, 1] = spread * (1.0 - 0.7 * curl) if finger < 4 else spread
    angles[:, joints, 2] = generator.uniform(low[joints, 2], high[joints, 2], size=(n, 3))
  angles = np.clip(angles, low, high)
  hand = _angles_to_pose(axes, angles)
  if not flat_hand_mean:
    hand = hand - np.asarray(model.hands_mean, np.float64)
  global_orient = np.zeros((n, 3))
  if random_global_orient:
    quats = generator.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    quats *= np.sign(quats[:, :1] + 1e-12)
    half = np.arccos(np.clip(quats[:, 0], -1.0, 1.0))
    sin_half = np.sin(half)[:, None]
    global_orient = np.where(
        sin_half > 1e-8, quats[:, 1:] / np.maximum(sin_half, 1e-8) * 2.0 * half[:, None], 0.0
    )
  return np.concatenate([global_orient, hand], axis=1).astype(np.float32)


_NAMED_POSES = ('flat', 'fist', 'point', 'relaxed')


def named_pose(model: ManoModel, name: str, *, flat_hand_mean: bool = True) -> np.ndarray:
  """A named pose (48,) within the joint limits: 'flat', 'fist', 'point' (index extended) or
  'relaxed'. Absolute pose by default (use with ``forward(..., flat_hand_mean=True)``)."""
  if name not in _NAMED_POSES:
    raise ValueError(f'unknown pose {name!r}; choose one of {_NAMED_POSES}')
  axes, limits = _limits_of(model)
  low, high = limits[..., 0], limits[..., 1]
  fraction = np.zeros(
      (15, 3)
  )  # position within [low, high] for flex; abduction/twist as fraction too
  angles = np.zeros((15, 3))
  if name == 'flat':
    angles[:] = 0.0
  else:
    curl = {'fist': (0.9, 0.85, 0.7), 'point': (0.9, 0.85, 0.7), 'relaxed': (0.2, 0.25, 0.2)}[name]
    for finger in range(4):
      for joint, amount in zip(_FINGER_JOINTS[finger], curl):
        fraction[joint, 0] = amount
    if name == 'point':
      fraction[list(_FINGER_JOINTS[0]), 0] = 0.0
    thumb = {
        'fist': ((0.75, 0.55, 0.8), (0.5, 0.5, 0.5), (0.35, 0.5, 0.5)),
        'point': ((0.75, 0.55, 0.8), (0.45, 0.5, 0.5), (0.45, 0.5, 0.5)),
        'relaxed': ((0.3, 0.3, 0.4), (0.15, 0.5, 0.5), (0.15, 0.5, 0.5)),
    }[name]
    for joint, values in zip(_FINGER_JOINTS[4], thumb):
      fraction[joint] = values
    angles = low + fraction * (high - low)
    # Abduction and twist of the four fingers stay at zero (within limits, which contain 0).
    for finger in range(4):
      angles[list(_FINGER_JOINTS[finger]), 1:] = 0.0
  hand = _angles_to_pose(axes, angles[None])[0]
  if not flat_hand_mean:
    hand = hand - np.asarray(model.hands_mean, np.float64)
  return np.concatenate([np.zeros(3), hand]).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# MANO parameters from a mesh
# ----------------------------------------------------------------------------------------------

# A joint's rigid segment for the closed-form start: the vertices it moves with a skinning weight above
# this.
_SEGMENT_WEIGHT = 0.8
# mano.fit solves batches larger than this in chunks of this size.
_FIT_CHUNK = 128


@functools.partial(jax.jit, static_argnames=('num_iterations',))
def _fit_parameters(
    model: ManoModel,
    x0: jax.Array,
    targets: jax.Array,
    prior_weights: jax.Array,
    num_iterations: int,
) -> tuple[jax.Array, jax.Array]:
  """Levenberg–Marquardt over x = (pose (48,) absolute, betas (S,), trans (3,)) per sample."""
  num_betas = model.shapedirs.shape[-1]
  mean = model.hands_mean.astype(x0.dtype)

  def residual(x, target):
    pose, betas, trans = x[:48], x[48 : 48 + num_betas], x[48 + num_betas :]
    vertices, _ = forward(model, pose[None], betas[None], flat_hand_mean=True, trans=trans[None])
    return jnp.concatenate(
        [
            (vertices[0] - target).reshape(-1),
            prior_weights[0] * (pose[3:] - mean),
            prior_weights[1] * betas,
        ]
    )

  return fitting.levenberg_marquardt(residual, x0, targets, num_iterations=num_iterations)


def fit(
    model: ManoModel,
    vertices: Any,
    *,
    flat_hand_mean: bool = False,
    num_iterations: int = 10,
    pose_prior: float = 1e-3,
    shape_prior: float = 1e-4,
) -> dict[str, np.ndarray]:
  """MANO parameters that reproduce a mesh: the inverse of :func:`forward`.

  Args:
    model: the hand model whose topology the mesh has (MANO or the procedural hand, the side the
      mesh shows).
    vertices: (B, 778, 3) (or (778, 3)) metres, in any frame.
    flat_hand_mean: the convention of the returned pose, as in :func:`forward`.
    num_iterations: Levenberg–Marquardt iterations (each costs a forward pass per parameter).
    pose_prior: weight (metres per radian) of a pull of the finger pose towards the model's mean pose;
      shape_prior: of the betas towards 0 (metres per unit). Both are mild: at the defaults a
      1-radian deviation costs as much as a 0.04 mm error on every vertex.

  The pose starts in closed form: each joint's global rotation by Kabsch on the vertices it moves
  most, the local rotations from those; the betas start at 0. Then a batched, jitted Levenberg–Marquardt
  (`geometry/fitting.py`) minimises the squared vertex distances plus the priors.

  Returns:
    dict of numpy arrays: 'pose' (B, 48) axis-angle, 'betas' (B, S), 'trans' (B, 3), 'vertices'
    (B, 778, 3) = forward(model, pose, betas, flat_hand_mean=flat_hand_mean, trans=trans)[0], and
    'error' (B,), the mean vertex distance to the input in metres. Without a batch axis in, none out.
  """
  targets = np.asarray(vertices, np.float64)
  unbatched = targets.ndim == 2
  if unbatched:
    targets = targets[None]
  if targets.ndim != 3 or targets.shape[1:] != (NUM_VERTICES, 3):
    raise ValueError(f'mano.fit: vertices must be (B, {NUM_VERTICES}, 3), got {np.shape(vertices)}')
  if not np.all(np.isfinite(targets)):
    raise ValueError('mano.fit: vertices hold NaN or inf')
  batch = len(targets)
  num_betas = model.num_betas
  mean = np.asarray(model.hands_mean, np.float64)

  # Closed-form start: every joint's global rotation by Kabsch, from the vertices that follow that joint
  # most (rest template → mesh); the local rotations are then G_parent^T G_joint. Blend shapes and betas
  # are ignored here, so this is close but not exact; Levenberg–Marquardt finishes it.
  zero = np.zeros((1, 48), np.float32)
  rest_vertices, rest_joints = (
      np.asarray(a, np.float64)[0]
      for a in forward(model, zero, np.zeros((1, num_betas), np.float32), flat_hand_mean=True)
  )
  weights = np.asarray(model.weights, np.float64)
  owner = weights.argmax(1)
  global_rotations = np.zeros((batch, NUM_JOINTS, 3, 3))
  translation = None
  for joint in range(NUM_JOINTS):
    chosen = (owner == joint) & (weights[:, joint] > _SEGMENT_WEIGHT)
    if chosen.sum() < 4:
      chosen = owner == joint
    rotation, shift = metrics.rigid_transform_batch(
        targets[:, chosen], np.broadcast_to(rest_vertices[chosen], (batch, int(chosen.sum()), 3))
    )
    global_rotations[:, joint] = rotation
    if joint == 0:
      translation = shift
  local = global_rotations.copy()
  for joint, parent in enumerate(model.parents):
    if parent >= 0:
      local[:, joint] = np.swapaxes(global_rotations[:, parent], 1, 2) @ global_rotations[:, joint]
  start_pose = _rotation_to_axis_angle(local).reshape(batch, 48)
  # forward rotates about the wrist J0: v -> R (v - J0) + J0 + trans.
  root = rest_joints[0]
  trans = translation - root + global_rotations[:, 0] @ root
  x0 = np.concatenate([start_pose, np.zeros((batch, num_betas)), trans], 1)
  # Fit around the mesh's centre, so that float32 keeps sub-millimetre steps far from the origin.
  centre = targets.mean(1)
  x0[:, -3:] -= centre
  centred = targets - centre[:, None]
  priors = jnp.asarray([pose_prior, shape_prior], jnp.float32)
  # Large batches go in chunks of one shape (the last one padded): bounded memory, one compilation.
  chunk = batch if batch <= _FIT_CHUNK else _FIT_CHUNK
  solved = []
  for start in range(0, batch, chunk):
    rows = np.minimum(np.arange(start, start + chunk), batch - 1)
    x, _ = _fit_parameters(
        model,
        jnp.asarray(x0[rows], jnp.float32),
        jnp.asarray(centred[rows], jnp.float32),
        priors,
        int(num_iterations),
    )
    solved.append(np.asarray(x, np.float64)[: min(chunk, batch - start)])
  x = np.concatenate(solved)
  pose = x[:, :48].copy()
  betas = x[:, 48 : 48 + num_betas]
  trans = x[:, 48 + num_betas :] + centre
  if not flat_hand_mean:
    pose[:, 3:] -= mean
  fitted = np.asarray(
      forward(model, pose, betas, flat_hand_mean=flat_hand_mean, trans=trans)[0], np.float64
  )
  error = np.linalg.norm(fitted - targets, axis=-1).mean(-1)
  result = {'pose': pose, 'betas': betas, 'trans': trans, 'vertices': fitted, 'error': error}
  return {k: v[0] for k, v in result.items()} if unbatched else result


def _rotation_to_axis_angle(rotation: np.ndarray) -> np.ndarray:
  """Rotation matrices (..., 3, 3) -> axis-angle (..., 3), exact also near 0 and π."""
  from scipy.spatial.transform import Rotation  # pylint: disable=g-import-not-at-top

  shape = rotation.shape[:-2]
  return Rotation.from_matrix(rotation.reshape(-1, 3, 3)).as_rotvec().reshape(*shape, 3)
