"""Reading the official files of the real hand datasets, with errors that name the file and the index.

Shared by the TFDS builders in ``datasets/{freihand,ho3d,dex_ycb}`` (docs/design.md §7). Everything here is plain
numpy / PIL; nothing needs TensorFlow. Every failure is a :class:`SourceError` whose message starts with the
offending file (and the example index where there is one), never a deep traceback from PIL or pickle.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation
import tensorflow_datasets as tfds
import yaml

from diffhand_jax.geometry import hand_model, mano, safe_pickle


class SourceError(ValueError):
  """A dataset source file is missing, truncated, corrupt, or holds values of the wrong shape."""


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def _open_image(path: str, what: str):
  if not os.path.isfile(path):
    raise SourceError(f'{path}: {what} is missing')
  with open(path, 'rb') as handle:
    data = handle.read()
  try:
    image = Image.open(io.BytesIO(data))
    image.load()  # decodes every pixel, so a truncated file fails here and not in TFDS
  except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
    raise SourceError(
        f'{path}: cannot decode the {what} (truncated or corrupt: {type(err).__name__}: ' f'{err})'
    ) from None
  return image, data


def read_rgb(path: str, *, what: str = 'image') -> tuple[np.ndarray, bytes, str]:
  """Decodes an RGB image completely (so truncated files are caught here).

  Returns:
    (pixels (H, W, 3) uint8, the file's bytes, PIL's format name such as 'JPEG' or 'PNG').
  """
  image, data = _open_image(path, what)
  fmt = image.format or ''
  if image.mode != 'RGB':
    image = image.convert('RGB')
  return np.asarray(image, np.uint8), data, fmt


def encodable_rgb(path: str, encoding: str, *, what: str = 'image') -> tuple[Any, tuple[int, int]]:
  """What to hand TFDS's Image feature for ``path``: the original bytes when they already are an RGB image
  in ``encoding`` ('jpeg' or 'png'; no re-compression), else the decoded (H, W, 3) array.

  Returns:
    (bytes or array, (height, width)).
  """
  image, data = _open_image(path, what)
  size = (image.height, image.width)
  if (
      image.mode == 'RGB'
      and (image.format or '').lower() in {'jpeg': ('jpeg', 'mpo'), 'png': ('png',)}[encoding]
  ):
    return data, size
  return np.asarray(image.convert('RGB'), np.uint8), size


def read_gray(path: str, *, what: str = 'image') -> np.ndarray:
  """Decodes a single-channel image to (H, W) of its own integer type (uint8 or uint16...)."""
  image, _ = _open_image(path, what)
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    return (
        np.asarray(image).astype(np.uint16)
        if image.mode != 'I'
        else np.asarray(image).astype(np.int64)
    )
  if image.mode != 'L':
    image = image.convert('L')
  return np.asarray(image, np.uint8)


# --------------------------------------------------------------------------------------------------
# Arrays: shape and finiteness checks
# --------------------------------------------------------------------------------------------------


def as_array(
    value: Any, shape: Sequence[int], path: str, *, index: Any = None, key: str = ''
) -> np.ndarray:
  """``value`` as a float64 array of ``shape``; an error naming the file, index and key otherwise."""
  where = path + (f' [index {index}]' if index is not None else '') + (f' {key!r}' if key else '')
  if value is None:
    raise SourceError(f'{where}: holds None where an array of shape {tuple(shape)} is expected')
  try:
    array = np.asarray(value, np.float64)
  except (TypeError, ValueError) as err:
    raise SourceError(f'{where}: not numeric ({err})') from None
  if array.size == int(np.prod(shape)) and array.shape != tuple(shape):
    array = array.reshape(shape)  # e.g. FreiHAND's [[61 floats]] or a (3, 1) column
  if array.shape != tuple(shape):
    raise SourceError(f'{where}: has shape {array.shape}, expected {tuple(shape)}')
  if not np.all(np.isfinite(array)):
    raise SourceError(f'{where}: contains NaN or inf')
  return array


def read_json_list(path: str, *, length: int | None = None, length_source: str = '') -> list:
  """A json file holding a list; its length must equal ``length`` when given."""
  if not os.path.isfile(path):
    raise SourceError(f'{path}: file is missing')
  try:
    with open(path) as handle:
      data = json.load(handle)
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise SourceError(f'{path}: not valid json (truncated or corrupt: {err})') from None
  if not isinstance(data, list):
    raise SourceError(f'{path}: expected a json list, got {type(data).__name__}')
  if length is not None and len(data) != length:
    raise SourceError(
        f'{path}: has {len(data)} items but {length_source or "the split"} has {length}'
    )
  return data


# --------------------------------------------------------------------------------------------------
# Python 2 pickles (HO-3D meta files), read without running pickle code
# --------------------------------------------------------------------------------------------------


class _DataUnpickler(pickle.Unpickler):
  """Resolves numpy's array / dtype / scalar reconstructors only; any other global is refused."""

  def __init__(self, file: Any, source: str) -> None:
    super().__init__(file, encoding='latin1')
    self._source = source

  def find_class(self, module: str, name: str) -> Any:
    found = safe_pickle.NUMPY_GLOBALS.get((module, name))
    if found is None:
      raise SourceError(
          f'{self._source}: refused to load {module}.{name} from the pickle (only numpy '
          'arrays and plain Python values are allowed; no pickle code is executed)'
      )
    return found


def load_latin1_pickle(path: str) -> Any:
  """Loads a (Python 2) pickle of numpy arrays and plain values with latin1 strings, safely."""
  if not os.path.isfile(path):
    raise SourceError(f'{path}: file is missing')
  with open(path, 'rb') as handle:
    data = handle.read()
  try:
    return _DataUnpickler(io.BytesIO(data), path).load()
  except SourceError:
    raise
  except Exception as err:  # noqa: BLE001 - EOFError, UnpicklingError, ValueError... of a corrupt file
    raise SourceError(
        f'{path}: not a readable pickle (truncated or corrupt: {type(err).__name__}: ' f'{err})'
    ) from None


# --------------------------------------------------------------------------------------------------
# MANO
# --------------------------------------------------------------------------------------------------


def resolve_mano_dir(configured: str | None, dataset: str) -> str:
  """The MANO folder: the builder config's ``mano_dir``, else $DIFFHAND_MANO_DIR; a clear error otherwise."""
  folder, problem = hand_model.mano_dir_problem(
      configured, f'{dataset} (to compute the hand vertices)'
  )
  if problem:
    raise SourceError(
        problem
        + '. With the environment variable the config "default" builds; a folder given as tfds '
        'build --config \'{"name": "custom", "mano_dir": "/path/to/folder"}\' needs a new config name '
        '(train with --config.dataset.config_name=custom).'
    )
  return folder


class ManoEvaluator:
  """MANO forward passes for one example at a time, compiled once per (side, flat_hand_mean, use_pca)."""

  def __init__(self, mano_dir: str) -> None:
    self.models = {
        'right': mano.load(os.path.join(mano_dir, 'MANO_RIGHT.pkl'), side='right'),
        'left': mano.load(os.path.join(mano_dir, 'MANO_LEFT.pkl'), side='left'),
    }
    self._compiled: dict = {}

  def _fn(self, side: str, flat_hand_mean: bool, use_pca: bool):
    key = (side, flat_hand_mean, use_pca)
    if key not in self._compiled:
      model = self.models[side]

      def run(pose, betas, trans):
        return mano.forward(
            model,
            pose,
            betas,
            flat_hand_mean=flat_hand_mean,
            use_pca=use_pca,
            num_pca_comps=45 if use_pca else None,
            trans=trans,
        )

      self._compiled[key] = jax.jit(run)
    return self._compiled[key]

  def __call__(
      self,
      side: str,
      pose: np.ndarray,
      betas: np.ndarray,
      trans: np.ndarray,
      *,
      flat_hand_mean: bool,
      use_pca: bool = False,
  ) -> tuple[np.ndarray, np.ndarray]:
    """pose (48,), betas (10,), trans (3,) -> vertices (778, 3), joints16 (16, 3), float64 numpy."""
    fn = self._fn(side, flat_hand_mean, use_pca)
    verts, joints = fn(
        np.asarray(pose, np.float32)[None],
        np.asarray(betas, np.float32)[None],
        np.asarray(trans, np.float32)[None],
    )
    return np.asarray(verts[0], np.float64), np.asarray(joints[0], np.float64)

  def rest_root(self, side: str, betas: np.ndarray) -> np.ndarray:
    """The rest-pose wrist joint (3,) of the shaped template: the centre of the global rotation."""
    model = self.models[side]
    shapedirs = np.asarray(model.shapedirs, np.float64)[..., : len(betas)]
    shaped = np.asarray(model.v_template, np.float64) + shapedirs @ np.asarray(betas, np.float64)
    return np.asarray(model.J_regressor, np.float64)[0] @ shaped


# --------------------------------------------------------------------------------------------------
# Rotations and boxes
# --------------------------------------------------------------------------------------------------


def axis_angle_to_matrix(rotvec: np.ndarray) -> np.ndarray:
  """(3,) axis-angle -> (3, 3) rotation (Rodrigues)."""
  rotvec = np.asarray(rotvec, np.float64)
  angle = float(np.linalg.norm(rotvec))
  if angle < 1e-12:
    return np.eye(3)
  axis = rotvec / angle
  skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
  return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


def matrix_to_axis_angle(matrix: np.ndarray) -> np.ndarray:
  """(3, 3) rotation -> (3,) axis-angle with angle in [0, pi]."""
  return Rotation.from_matrix(np.asarray(matrix, np.float64)).as_rotvec()


def bbox_of_points(points_2d: np.ndarray) -> np.ndarray:
  """(N, 2) pixels -> (4,) float32 x0, y0, x1, y1 (tight)."""
  points_2d = np.asarray(points_2d, np.float64).reshape(-1, 2)
  return np.concatenate([points_2d.min(0), points_2d.max(0)]).astype(np.float32)


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
  """(N, 3) camera-frame points (OpenCV) -> (N, 2) pixels."""
  uvw = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
  return uvw[:, :2] / uvw[:, 2:3]


def require_file(path: str, what: str) -> str:
  if not os.path.isfile(path):
    raise SourceError(f'{path}: {what} is missing')
  return path


def load_yaml(path: str) -> Mapping[str, Any]:
  require_file(path, 'yaml file')
  try:
    with open(path) as handle:
      data = yaml.safe_load(handle)
  except yaml.YAMLError as err:
    raise SourceError(f'{path}: not valid yaml ({err})') from None
  if not isinstance(data, dict):
    raise SourceError(f'{path}: expected a yaml mapping, got {type(data).__name__}')
  return data


# --------------------------------------------------------------------------------------------------
# The common TFDS schema (docs/design.md §7)
# --------------------------------------------------------------------------------------------------


def common_features(image_encoding: str) -> dict:
  """The features every hand builder emits; frames keep their original size (H, W vary by dataset)."""
  tensor = tfds.features.Tensor
  return {
      'image': tfds.features.Image(
          shape=(None, None, 3),
          dtype=np.uint8,
          encoding_format=image_encoding,
          doc='the original frame',
      ),
      'K': tensor(
          shape=(3, 3),
          dtype=np.float32,
          doc='intrinsics, OpenCV convention (pixel centres at integers)',
      ),
      'joints_3d': tensor(
          shape=(21, 3), dtype=np.float32, doc='metres, OpenCV camera frame, 21-order'
      ),
      'vertices_3d': tensor(shape=(778, 3), dtype=np.float32, doc='metres, OpenCV camera frame'),
      'mano_pose': tensor(
          shape=(48,),
          dtype=np.float32,
          doc='axis-angle, global first, in the OpenCV camera frame; use flat_hand_mean=False',
      ),
      'mano_shape': tensor(shape=(10,), dtype=np.float32),
      'has_3d': tensor(
          shape=(), dtype=np.bool_, doc='False where the split has no 3D ground truth'
      ),
      'hand_side': tfds.features.Text(doc="'right' or 'left'"),
      'bbox': tensor(shape=(4,), dtype=np.float32, doc='x0, y0, x1, y1 pixels of the hand'),
  }


def empty_targets() -> dict:
  """Zero 3D targets for examples without ground truth (has_3d=False)."""
  return {
      'joints_3d': np.zeros((21, 3), np.float32),
      'vertices_3d': np.zeros((778, 3), np.float32),
      'mano_pose': np.zeros(48, np.float32),
      'mano_shape': np.zeros(10, np.float32),
  }
