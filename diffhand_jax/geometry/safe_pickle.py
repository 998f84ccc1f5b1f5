"""Allow-listed globals for reading pickles of numpy data without running pickle code.

`NUMPY_GLOBALS` maps the (module, name) pairs that numpy arrays, dtypes and scalars pickle to (including
Python 2 pickles with latin1 strings) onto inert re-implementations. Unpicklers (`mano.load`,
`source_io.load_latin1_pickle`) resolve these and refuse every other global.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np


def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
  if subtype is not np.ndarray:
    raise pickle.UnpicklingError(f'refused array subtype {subtype!r}')
  return np.ndarray.__new__(np.ndarray, shape, dtype)


def scalar(dtype: np.dtype, data: Any = None) -> Any:
  if isinstance(data, str):
    data = data.encode('latin1')
  return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


def frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
  if isinstance(buf, str):
    buf = buf.encode('latin1')
  array = np.frombuffer(bytes(buf), dtype=dtype)
  if order == 'F':
    return array.reshape(shape, order='F').copy()
  return array.reshape(shape).copy()


def codecs_encode(text: Any, encoding: str = 'utf-8', errors: str = 'strict') -> bytes:
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1', 'utf-8', 'utf8', 'ascii'):
    raise pickle.UnpicklingError('refused _codecs.encode call')
  return text.encode(encoding, errors)


_NUMPY_MODULES = ('numpy.core.multiarray', 'numpy._core.multiarray')
NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, '_reconstruct'): reconstruct for m in _NUMPY_MODULES},
    **{(m, 'scalar'): scalar for m in _NUMPY_MODULES},
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
    ('numpy.core.numeric', '_frombuffer'): frombuffer,
    ('numpy._core.numeric', '_frombuffer'): frombuffer,
    ('_codecs', 'encode'): codecs_encode,
}
