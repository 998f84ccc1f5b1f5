"""Reading the official ``MANO_{RIGHT,LEFT}.pkl`` files without running pickle code.

They pickle chumpy objects and a ``scipy.sparse`` joint regressor. :class:`_RestrictedUnpickler` never
calls anything outside a short allow-list of numpy / scipy reconstruction helpers
(`geometry/safe_pickle.py`), maps every ``chumpy`` class to an inert stub, and refuses every other global
with an error naming the file and the global. :func:`to_numpy` turns what it read into numpy arrays.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from typing import Any, Mapping

import numpy as np
import scipy.sparse

from diffhand_jax.geometry import safe_pickle
from diffhand_jax.geometry.mano.model import ManoFileError


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
  """Stand-in for scipy.sparse csc/csr/coo matrices; densified by :func:`to_numpy`."""

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
  try:
    if fmt == 'coo':
      matrix = scipy.sparse.coo_matrix((state['data'], (state['row'], state['col'])), shape=shape)
    else:
      cls = scipy.sparse.csc_matrix if fmt == 'csc' else scipy.sparse.csr_matrix
      matrix = cls((state['data'], state['indices'], state['indptr']), shape=shape)
  except (KeyError, ValueError) as err:
    raise ManoFileError(f'{source}: {key!r} sparse matrix is malformed ({err})') from None
  return np.asarray(matrix.todense())


def to_numpy(value: Any, source: str, key: str) -> np.ndarray:
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


def read_pickle(path: str) -> Mapping[str, Any]:
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
