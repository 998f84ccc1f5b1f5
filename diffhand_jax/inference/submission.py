"""Benchmark submission files: writers, readers and validators, and predictions of a checkpoint placed
in the camera frame (`predict_absolute`, `write_submission`).

`python -m diffhand_jax.submission` (diffhand_jax/submission.py) is the command; its docstring describes
the formats and where the roots come from.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from diffhand_jax.data import input_pipeline, splits
from diffhand_jax.geometry import conventions
from diffhand_jax.inference import crops, loading, pipeline, sampling
from diffhand_jax.runs import files

NUM_JOINTS = 21
NUM_VERTICES = 778
BENCHMARKS = ('freihand', 'ho3d', 'dexycb')


# Units sanity: a hand's extent (bounding-box diagonal of its joints) is ~0.1-0.3 m. The bounds reject
# millimetres, centimetres and model-space units (x10) for metre files, and metres for millimetre files.
_EXTENT_BOUNDS = {'m': (1e-3, 1.0), 'mm': (1.0, 1000.0)}
_MAX_ABS = {'m': 20.0, 'mm': 20000.0}


class SubmissionError(ValueError):
  """A submission does not have the official format."""


# ==================================================================================================
# Frames and joint orders
# ==================================================================================================


def to_ho3d(joints: np.ndarray, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Our convention → HO-3D's submission convention.

  joints (M, 21, 3) in 21-order and vertices (M, N, 3), OpenCV frame → joints in HO-3D order and both
  in the OpenGL frame.
  """
  joints = np.asarray(joints, np.float64)
  vertices = np.asarray(vertices, np.float64)
  return (
      joints[:, conventions.TO_HO3D] * conventions.OPENGL_FLIP,
      vertices * conventions.OPENGL_FLIP,
  )


def from_ho3d(joints: np.ndarray, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The inverse of `to_ho3d` (diag(1, -1, -1) is its own inverse)."""
  joints = np.asarray(joints, np.float64)
  vertices = np.asarray(vertices, np.float64)
  return (
      joints[:, conventions.HO3D_TO_21] * conventions.OPENGL_FLIP,
      vertices * conventions.OPENGL_FLIP,
  )


# ==================================================================================================
# Validation
# ==================================================================================================


def _extent(points: np.ndarray) -> np.ndarray:
  return np.linalg.norm(points.max(axis=-2) - points.min(axis=-2), axis=-1)


def validate_points(
    name: str,
    joints: np.ndarray,
    vertices: np.ndarray | None,
    *,
    unit: str,
    frame: str,
    expected_count: int | None,
) -> None:
  """Checks arrays about to be written (or just read back). Raises SubmissionError.

  joints (M, 21, 3); vertices (M, 778, 3) or None; unit 'm' | 'mm'; frame 'opencv' (z > 0 in front of
  the camera) or 'opengl' (z < 0).
  """
  joints = np.asarray(joints, np.float64)
  if joints.ndim != 3 or joints.shape[1:] != (NUM_JOINTS, 3):
    raise SubmissionError(f'{name}: joints must be (M, {NUM_JOINTS}, 3), got {joints.shape}')
  count = len(joints)
  if count == 0:
    raise SubmissionError(f'{name}: no predictions')
  if expected_count is not None and count != expected_count:
    raise SubmissionError(
        f'{name}: {count} predictions, but the evaluation set has {expected_count}'
    )
  arrays = {'joints': joints}
  if vertices is not None:
    vertices = np.asarray(vertices, np.float64)
    if vertices.shape != (count, NUM_VERTICES, 3):
      raise SubmissionError(
          f'{name}: vertices must be ({count}, {NUM_VERTICES}, 3), got {vertices.shape}'
      )
    arrays['vertices'] = vertices
  for key, value in arrays.items():
    bad = ~np.all(np.isfinite(value), axis=(1, 2))
    if bad.any():
      raise SubmissionError(
          f'{name}: {key} of sample {int(np.argmax(bad))} (and {int(bad.sum()) - 1} '
          'more) are not finite'
      )
    if np.abs(value).max() > _MAX_ABS[unit]:
      raise SubmissionError(
          f'{name}: {key} reach {np.abs(value).max():.4g} {unit} from the camera; '
          f'are the units {unit}?'
      )
  low, high = _EXTENT_BOUNDS[unit]
  extent = float(np.median(_extent(joints)))
  if not low <= extent <= high:
    raise SubmissionError(
        f'{name}: the median hand extent is {extent:.4g} {unit}, outside [{low}, '
        f'{high}] {unit}; are the units {unit} (and not model space)?'
    )
  sign = 1.0 if frame == 'opencv' else -1.0
  wrist_depth = sign * joints[:, 0, 2]
  if not np.median(wrist_depth) > 0:
    raise SubmissionError(
        f'{name}: the wrists lie behind the camera for the {frame} frame (median '
        f'z = {np.median(joints[:, 0, 2]):.4g} {unit}); was the root added and the '
        'frame converted?'
    )
  if frame == 'opengl':
    # The check of HO-3D's own pred.py: a sample with every z > 0 is not in the OpenGL frame.
    for key, value in arrays.items():
      wrong = np.all(value[..., 2] > 0, axis=1)
      if wrong.any():
        raise SubmissionError(
            f'{name}: {key} of sample {int(np.argmax(wrong))} have every z > 0, so '
            'they are not in the OpenGL frame that HO-3D expects'
        )


def validate_pred_json(
    payload: Any, *, expected_count: int | None, frame: str, name: str = 'pred.json'
) -> tuple[np.ndarray, np.ndarray]:
  """Checks a loaded FreiHAND/HO-3D `pred.json` ([xyz_list, verts_list]); returns them as arrays."""
  if not isinstance(payload, list) or len(payload) != 2:
    raise SubmissionError(f'{name}: must be a list [xyz_list, verts_list] of length 2')
  xyz_list, verts_list = payload
  if not isinstance(xyz_list, list) or not isinstance(verts_list, list):
    raise SubmissionError(f'{name}: both entries must be lists')
  if len(xyz_list) != len(verts_list):
    raise SubmissionError(f'{name}: {len(xyz_list)} joint sets but {len(verts_list)} meshes')
  try:
    joints = np.asarray(xyz_list, np.float64)
    vertices = np.asarray(verts_list, np.float64)
  except (ValueError, TypeError):
    raise SubmissionError(
        f'{name}: every entry must be a list of [x, y, z] numbers, with 21 joints and '
        f'{NUM_VERTICES} vertices per sample'
    ) from None
  validate_points(name, joints, vertices, unit='m', frame=frame, expected_count=expected_count)
  return joints, vertices


# ==================================================================================================
# Writers and readers
# ==================================================================================================


def _json_list(array: np.ndarray, decimals: int) -> list:
  # Rounding to a micrometre keeps the file ~3x smaller and changes no metric at the 0.01 mm level.
  return np.round(np.asarray(array, np.float64), decimals).tolist()


def _write_pred_zip(
    path: str,
    joints: np.ndarray,
    vertices: np.ndarray,
    *,
    frame: str,
    expected_count: int | None,
    decimals: int,
) -> str:
  validate_points(path, joints, vertices, unit='m', frame=frame, expected_count=expected_count)

  def write(tmp):
    payload = json.dumps([_json_list(joints, decimals), _json_list(vertices, decimals)])
    with zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
      archive.writestr('pred.json', payload)  # flat: no folder inside the zip

  def check(tmp):
    read_joints, read_vertices = read_pred_zip(tmp, frame=frame, expected_count=expected_count)
    tolerance = 0.6 * 10.0**-decimals
    if (
        np.abs(read_joints - joints).max() > tolerance
        or np.abs(read_vertices - vertices).max() > tolerance
    ):
      raise SubmissionError(f'{path}: the written file does not read back as the predictions')

  return files.atomic_write(path, write, check)


def read_pred_zip(
    path: str, *, frame: str = 'opencv', expected_count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Reads and validates a FreiHAND/HO-3D `pred.zip` (or a bare `pred.json`): returns the arrays as
  stored (joints (M, 21, 3), vertices (M, 778, 3), in the file's frame and joint order)."""
  if not os.path.exists(path):
    raise SubmissionError(f'{path} does not exist')
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
      if names != ['pred.json']:
        raise SubmissionError(
            f'{path}: the zip must hold exactly pred.json at its top level, holds {names}'
        )
      text = archive.read('pred.json')
  else:
    with open(path, 'rb') as f:
      text = f.read()
  try:
    payload = json.loads(text)
  except json.JSONDecodeError as error:
    raise SubmissionError(f'{path}: pred.json is not valid JSON ({error})') from None
  return validate_pred_json(payload, expected_count=expected_count, frame=frame, name=path)


def write_freihand(
    path: str,
    joints: np.ndarray,
    vertices: np.ndarray,
    *,
    expected_count: int | None = None,
    decimals: int = 6,
) -> str:
  """FreiHAND `pred.zip`: joints (M, 21, 3) 21-order and vertices (M, 778, 3), metres, OpenCV camera
  frame, absolute, in evaluation id order."""
  return _write_pred_zip(
      path, joints, vertices, frame='opencv', expected_count=expected_count, decimals=decimals
  )


def write_ho3d(
    path: str,
    joints: np.ndarray,
    vertices: np.ndarray,
    *,
    expected_count: int | None = None,
    decimals: int = 6,
) -> str:
  """HO-3D v2 `pred.zip` from OUR convention: joints (M, 21, 3) in 21-order, vertices (M, 778, 3),
  metres, OpenCV frame, absolute, in evaluation.txt order. Converts to HO-3D order and OpenGL."""
  ho3d_joints, ho3d_vertices = to_ho3d(joints, vertices)
  return _write_pred_zip(
      path,
      ho3d_joints,
      ho3d_vertices,
      frame='opengl',
      expected_count=expected_count,
      decimals=decimals,
  )


def read_ho3d(path: str, *, expected_count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads an HO-3D `pred.zip` back into OUR convention (21-order, OpenCV)."""
  return from_ho3d(*read_pred_zip(path, frame='opengl', expected_count=expected_count))


_TOOLKIT_NEEDS_ALL = (
    "dex-ycb-toolkit's hpe_eval.py asserts a line for every sample of the split whose "
    "joint_3d is not all -1 and stops at the first missing one ('missing image id in result file')"
)


def validate_dexycb_ids(
    name: str,
    ids: Sequence[int],
    count: int,
    *,
    expected_count: int | None = None,
    num_samples: int | None = None,
    required_ids: Sequence[int] | None = None,
) -> np.ndarray:
  """Checks the image ids of a DexYCB result file: (M,) distinct integers >= 0, one per prediction.

  expected_count: the number of samples the toolkit scores in the split (a complete file has that many
  lines). num_samples: the toolkit's split length (ids are indices below it). required_ids: the ids the
  toolkit scores, each of which needs a line. Returns the ids as int64.
  """
  ids = np.asarray(ids)
  if ids.shape != (count,):
    raise SubmissionError(f'{name}: {ids.shape} ids for {count} predictions')
  if not np.issubdtype(ids.dtype, np.integer):
    if not np.all(np.equal(np.mod(ids.astype(np.float64), 1), 0)):
      raise SubmissionError(f'{name}: image ids must be integers')
    ids = ids.astype(np.int64)
  ids = ids.astype(np.int64)
  if len(np.unique(ids)) != len(ids):
    raise SubmissionError(f'{name}: image ids repeat')
  if ids.min() < 0:
    raise SubmissionError(f'{name}: image ids must be >= 0')
  if num_samples is not None and ids.max() >= num_samples:
    raise SubmissionError(
        f'{name}: image id {int(ids.max())} is past the split, whose toolkit indices run '
        f'0..{num_samples - 1}'
    )
  if required_ids is not None:
    missing = np.setdiff1d(np.asarray(required_ids, np.int64), ids)
    if missing.size:
      raise SubmissionError(
          f'{name}: no line for {missing.size} of the {len(required_ids)} samples the '
          f'toolkit scores (ids {missing[:5].tolist()}{" ..." if missing.size > 5 else ""}); '
          + _TOOLKIT_NEEDS_ALL
      )
  if expected_count is not None and count != expected_count:
    raise SubmissionError(
        f'{name}: {count} lines, but the toolkit scores {expected_count} samples of this '
        f'split; {_TOOLKIT_NEEDS_ALL}'
    )
  return ids


def write_dexycb(
    path: str,
    ids: Sequence[int],
    joints_m: np.ndarray,
    *,
    expected_count: int | None = None,
    num_samples: int | None = None,
    required_ids: Sequence[int] | None = None,
    decimals: int = 4,
) -> str:
  """DexYCB result txt: ids (M,) the toolkit's sample indices (the builder's `sample_id`), joints
  (M, 21, 3) in METRES (21-order, camera frame, absolute); written in millimetres, `id,x1,y1,z1,...`
  (64 fields a line). expected_count / num_samples / required_ids: see `validate_dexycb_ids`."""
  joints_mm = np.asarray(joints_m, np.float64) * 1000.0
  validate_points(path, joints_mm, None, unit='mm', frame='opencv', expected_count=None)
  checks = dict(expected_count=expected_count, num_samples=num_samples, required_ids=required_ids)
  ids = validate_dexycb_ids(path, ids, len(joints_mm), **checks)

  def write(tmp):
    with open(tmp, 'w') as f:
      for image_id, values in zip(ids, joints_mm.reshape(len(ids), -1)):
        f.write(f'{int(image_id)},' + ','.join(f'{v:.{decimals}f}' for v in values) + '\n')

  def check(tmp):
    read_ids, read_joints = read_dexycb(tmp, **checks)
    if not np.array_equal(read_ids, ids) or np.abs(read_joints - joints_mm).max() > 10.0**-decimals:
      raise SubmissionError(f'{path}: the written file does not read back as the predictions')

  return files.atomic_write(path, write, check)


def read_dexycb(
    path: str,
    *,
    expected_count: int | None = None,
    num_samples: int | None = None,
    required_ids: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Reads and validates a DexYCB result txt as the toolkit does: (ids (M,), joints (M, 21, 3) mm).
  expected_count / num_samples / required_ids: see `validate_dexycb_ids`."""
  if not os.path.exists(path):
    raise SubmissionError(f'{path} does not exist')
  ids, joints = [], []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      fields = line.strip().split(',')
      if len(fields) != 1 + NUM_JOINTS * 3:
        raise SubmissionError(
            f'{path}:{number}: {len(fields)} comma-separated fields, the toolkit '
            f'needs {1 + NUM_JOINTS * 3} (id, then 21 x 3 values)'
        )
      try:
        ids.append(int(fields[0]))
        joints.append(np.array(fields[1:], np.float64).reshape(NUM_JOINTS, 3))
      except ValueError:
        raise SubmissionError(f'{path}:{number}: not an integer id followed by numbers') from None
  if not joints:
    raise SubmissionError(f'{path}: no lines')
  joints = np.stack(joints)
  validate_points(path, joints, None, unit='mm', frame='opencv', expected_count=None)
  ids = validate_dexycb_ids(
      path,
      ids,
      len(joints),
      expected_count=expected_count,
      num_samples=num_samples,
      required_ids=required_ids,
  )
  return ids, joints


# ==================================================================================================
# From a checkpoint
# ==================================================================================================

# Where the builders may keep what a submission needs besides the common schema (docs/design.md §7).
ROOT_FEATURES = (
    'root_joint',
    'root_3d',
    'root_joint_3d',
    'hand_root_3d',
)  # datasets/ho3d emits root_joint
ID_FEATURES = ('image_id', 'sample_id', 'id')


def _load_features(dataset_config, split: str, names: Sequence[str], max_examples: int | None):
  """The named extra features of a split (images are not decoded); {} for names the builder lacks."""
  builder = splits.get_builder(dataset_config)
  present = [n for n in names if n in builder.info.features]
  if not present:
    return {}
  # load_split reads tfrecord and ArrayRecord-only data alike, and decodes only the features asked for.
  arrays = splits.load_split(dataset_config, split, max_examples, features=present)
  return {n: np.asarray(arrays[n]) for n in present}


def dexycb_toolkit_counts(dataset_config, split: str) -> dict[str, Any] | None:
  """What datasets/dex_ycb recorded about a split's toolkit numbering (its metadata's 'toolkit' entry):
  {'num_samples', 'num_evaluated', 'num_kept', 'evaluated_but_dropped', 'full_release'}, or None when the
  dataset has no such record (another builder, or one built before sample_id existed)."""
  metadata = splits.get_builder(dataset_config).info.metadata
  toolkit = dict(metadata.items()).get('toolkit') if metadata is not None else None
  if not isinstance(toolkit, dict) or split not in toolkit.get('splits', {}):
    return None
  return dict(toolkit['splits'][split], full_release=bool(toolkit.get('full_release')))


def _pick_feature(
    extras: dict, wanted: str | None, candidates: Sequence[str], what: str, split: str
):
  names = [wanted] if wanted else list(candidates)
  for name in names:
    if name in extras:
      return name, extras[name]
  raise SubmissionError(
      f'the {split!r} split has no {what} feature (looked for {", ".join(names)}); '
      f'name it with --{"root" if "root" in what else "id"}_feature'
  )


def _dexycb_toolkit(dataset_config, split: str, max_examples: int | None) -> dict[str, Any] | None:
  """`dexycb_toolkit_counts`, refusing (before any inference) a split the builder filtered more than
  the toolkit: it can never give a complete file (unless max_examples, a quick try)."""
  toolkit = dexycb_toolkit_counts(dataset_config, split)
  if toolkit and toolkit['evaluated_but_dropped'] and not max_examples:
    dropped = toolkit['evaluated_but_dropped']
    raise SubmissionError(
        f'dexycb {split!r}: the builder dropped {len(dropped)} sample(s) (sample_id {dropped[:5]}'
        f'{" ..." if len(dropped) > 5 else ""}) whose joint_3d is valid (an all-zero pose_m or an all -1 '
        f'joint_2d), so the file cannot have their lines; {_TOOLKIT_NEEDS_ALL}'
    )
  return toolkit


def _ids_and_root(
    benchmark: str,
    dataset_config,
    split: str,
    arrays: dict[str, np.ndarray],
    *,
    root_feature: str | None,
    id_feature: str | None,
    max_examples: int | None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
  """DexYCB's image ids and HO-3D's provided wrist (M, 3), each None for the other benchmarks."""
  wanted = {
      'ho3d': [root_feature] if root_feature else list(ROOT_FEATURES),
      'dexycb': [id_feature] if id_feature else list(ID_FEATURES),
  }.get(benchmark, [])
  extras = _load_features(dataset_config, split, wanted, max_examples) if wanted else {}
  if benchmark == 'dexycb':
    return _pick_feature(extras, id_feature, ID_FEATURES, 'image id', split)[1], None
  if benchmark != 'ho3d':
    return None, None
  try:
    _, root = _pick_feature(extras, root_feature, ROOT_FEATURES, 'root joint', split)
  except SubmissionError:
    # HO-3D's evaluation meta holds only the root: a builder may store it as joint 0.
    if root_feature or not np.all(np.abs(arrays['joints_3d'][:, 0]).sum(-1) > 0):
      raise
    print('ho3d: using joints_3d[:, 0] as the provided evaluation root', file=sys.stderr)
    root = arrays['joints_3d'][:, 0]
  return None, np.asarray(root, np.float64).reshape(len(arrays['image']), 3)


def _absolute_vertices(
    samplers: sampling.SamplerCache,
    options: pipeline.Options,
    arrays: dict[str, np.ndarray],
    provided_root: np.ndarray | None,
    *,
    chunk: int,
    progress: Callable[[int, int], None] | None,
) -> np.ndarray:
  """Camera-frame vertices (M, 778, 3) m of a split's examples, left hands un-mirrored: each mesh
  placed at the provided root, else at the wrist its weak-perspective camera and the crop's K give.
  """
  config = samplers.run.config
  vertex_scale = float(config.model.vertex_scale)
  sampler = options.sampler(samplers)
  key = jax.random.PRNGKey(options.seed)
  count = len(arrays['image'])
  vertices_out = []
  for start in range(0, count, chunk):
    raw = {k: v[start : start + chunk] for k, v in arrays.items()}
    batch = input_pipeline.prepare_batch(
        raw, vertex_scale=vertex_scale, image_size=config.model.img_size
    )
    out = sampler.predict(
        batch['image'],
        jax.random.fold_in(key, start),
        method=options.method,
        tta_config=options.tta,
    )
    relative = out['vertices']  # root-relative metres, mirrored for left hands
    is_left = batch['is_left']
    if provided_root is None:
      root = crops.root_from_weak_perspective(
          out['camera'], batch['K'], batch['image'].shape[1:3], vertex_scale
      )
      absolute = relative + root[:, None]  # in the mirrored frame, where K and the camera live
      absolute[is_left, :, 0] *= -1.0
    else:
      relative = relative.copy()
      relative[is_left, :, 0] *= -1.0
      absolute = relative + provided_root[start : start + chunk, None]
    vertices_out.append(absolute)
    if progress:
      progress(min(start + chunk, count), count)
  return np.concatenate(vertices_out)


# The sampler of a submission: the config's hypotheses and the eval batch size unless told otherwise.
SUBMISSION_DEFAULTS = pipeline.Options(num_hypotheses=None, batch_size=None)


def predict_absolute(
    workdir: str,
    benchmark: str,
    options: pipeline.Options = SUBMISSION_DEFAULTS,
    *,
    overrides: ml_collections.ConfigDict | dict | None = None,
    split: str | None = None,
    root_feature: str | None = None,
    id_feature: str | None = None,
    max_examples: int | None = None,
    chunk: int = 256,
    progress: bool = True,
) -> dict[str, Any]:
  """Runs a checkpoint over a benchmark's evaluation split and returns absolute camera-frame predictions
  in OUR convention: {'joints': (M, 21, 3) m, 'vertices': (M, 778, 3) m, 'ids': (M,) or None,
  'settings': {...}, 'count': M, 'toolkit': `dexycb_toolkit_counts` for dexycb, else None}. Left hands
  are un-mirrored. DexYCB: refuses, before any inference, a split whose builder dropped samples that the
  toolkit scores (unless max_examples, a quick try). options: the sampler's settings (the detector and
  crop fields do not apply: the dataset's crops are used). overrides: changes to the run's config
  (`overrides.apply_overrides`), e.g. the --config flag's value."""
  if benchmark not in BENCHMARKS:
    raise SubmissionError(f'benchmark must be one of {BENCHMARKS}, got {benchmark!r}')
  options.check()
  samplers = sampling.SamplerCache(loading.load_trained(workdir, overrides=overrides))
  config = samplers.run.config
  split = split or config.dataset.eval_split
  toolkit = _dexycb_toolkit(config.dataset, split, max_examples) if benchmark == 'dexycb' else None
  arrays = splits.load_split(config.dataset, split, max_examples)
  ids, provided_root = _ids_and_root(
      benchmark,
      config.dataset,
      split,
      arrays,
      root_feature=root_feature,
      id_feature=id_feature,
      max_examples=max_examples,
  )
  report = sampling.progress_printer(f'{benchmark} {split}') if progress else None
  vertices = _absolute_vertices(
      samplers, options, arrays, provided_root, chunk=chunk, progress=report
  )
  # The regressor's rows sum to 1, so the joints of the placed mesh are the placed joints.
  joints = conventions.regress_joints(vertices, samplers.run.topology.joint_regressor)
  settings = dict(
      options.settings(samplers),
      split=split,
      tta=None if options.tta is None else options.tta.settings(),
      root='provided' if provided_root is not None else 'weak_perspective',
  )
  return {
      'joints': joints,
      'vertices': vertices,
      'ids': ids,
      'settings': settings,
      'count': len(vertices),
      'toolkit': toolkit,
  }


def write_submission(
    workdir: str,
    benchmark: str,
    output: str,
    options: pipeline.Options = SUBMISSION_DEFAULTS,
    **kwargs: Any,
) -> dict[str, Any]:
  """`predict_absolute` (kwargs: its keyword arguments) then the benchmark's writer; returns the
  settings plus 'output' and 'count'."""
  result = predict_absolute(workdir, benchmark, options, **kwargs)
  if benchmark == 'freihand':
    write_freihand(output, result['joints'], result['vertices'], expected_count=result['count'])
  elif benchmark == 'ho3d':
    write_ho3d(output, result['joints'], result['vertices'], expected_count=result['count'])
  else:
    toolkit = result['toolkit']
    expected_count = result['count']
    if toolkit is None:
      print(
          "dexycb: the dataset records no toolkit counts, so the file is checked against the split's "
          'length only (rebuild datasets/dex_ycb to check it against what the toolkit scores)',
          file=sys.stderr,
      )
    elif kwargs.get('max_examples'):
      print(
          f'dexycb: --max_examples: the file covers {result["count"]} of the {toolkit["num_evaluated"]} '
          f'samples the toolkit scores; {_TOOLKIT_NEEDS_ALL}',
          file=sys.stderr,
      )
    else:
      expected_count = toolkit['num_evaluated']
    if toolkit is not None and not toolkit['full_release']:
      print(
          'dexycb: the dataset was built from a partial copy of DexYCB: its sample_ids are not the '
          "toolkit's indices of the full release",
          file=sys.stderr,
      )
    write_dexycb(
        output,
        result['ids'],
        result['joints'],
        expected_count=expected_count,
        num_samples=toolkit['num_samples'] if toolkit else None,
    )
  return dict(result['settings'], output=output, count=result['count'], benchmark=benchmark)
