"""Hand meshes for a folder of photos: reading the images and the box / left-hand files, finding the
hands (inference/detection.py) unless boxes are given, cropping, sampling a trained run, placing every
hand in the photo's camera (inference/full_frame.py), optionally fitting MANO parameters
(`mano.fit`), and writing NAME.png, NAME.json and one NAME_handI.obj per hand.

`python -m diffhand_jax.predict` (diffhand_jax/predict.py) is the command; its docstring describes the
files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Sequence

import ml_collections
import numpy as np

from diffhand_jax.geometry import conventions, hypotheses, mesh_io, render
from diffhand_jax.runs import files

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
# The model's weak-perspective camera is orthographic; rendering it through render.py's pinhole with
# the mesh this far away (in model units, hand ~ ±2) keeps the perspective error below 1e-3 pixel-fractions.
_ORTHO_DISTANCE = 1.0e4


# Images with a shorter side than this are skipped: they cannot show a hand the model can read.
MIN_IMAGE_SIDE = 16


class InputError(ValueError):
  """A bad argument or input file (reported without a traceback)."""


# ==================================================================================================
# Inputs
# ==================================================================================================


def list_images(folder: str) -> list[str]:
  if not os.path.isdir(folder):
    raise InputError(f'--images={folder!r} is not a folder')
  names = sorted(
      n
      for n in os.listdir(folder)
      if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n))
  )
  if not names:
    raise InputError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {folder!r}')
  return names


def read_image(path: str) -> np.ndarray:
  """uint8 (H, W, 3), EXIF rotation applied. Raises InputError naming the file."""
  from PIL import Image, ImageOps

  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)
      return np.asarray(image.convert('RGB'), np.uint8)
  except Exception as error:  # PIL raises many types for truncated or foreign files
    raise InputError(f'cannot read image {path}: {type(error).__name__}: {error}') from None


def _load_json(path: str, what: str) -> Any:
  if not os.path.exists(path):
    raise InputError(f'{what} file {path} does not exist')
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise InputError(f'{what} file {path} is not valid JSON: {error}') from None


def _lookup(table: dict, name: str):
  if name in table:
    return table[name]
  return table.get(os.path.splitext(name)[0])


def _check_box(box: Any, name: str, path: str) -> list[float]:
  try:
    values = [float(v) for v in box]
  except (TypeError, ValueError):
    values = []
  if (
      len(values) != 4
      or not np.all(np.isfinite(values))
      or values[2] <= values[0]
      or values[3] <= values[1]
  ):
    raise InputError(
        f'--boxes file {path}: the box of {name!r} must be [x0, y0, x1, y1] with '
        f'x1 > x0 and y1 > y0, got {box!r}'
    )
  return values


def load_boxes(path: str | None, names: Sequence[str]) -> dict[str, list[list[float]]]:
  """{name: [[x0, y0, x1, y1], ...]} from a JSON object keyed by file name (or stem) whose values are
  one box or a list of boxes (one per hand). Raises InputError."""
  if not path:
    return {}
  payload = _load_json(path, '--boxes')
  if not isinstance(payload, dict):
    raise InputError(
        f'--boxes file {path} must hold a JSON object {{"image.jpg": [x0, y0, x1, y1]}}'
    )
  boxes = {}
  for name in names:
    box = _lookup(payload, name)
    if box is None:
      continue
    many = isinstance(box, list) and bool(box) and all(isinstance(b, (list, tuple)) for b in box)
    boxes[name] = (
        [_check_box(b, name, path) for b in box] if many else [_check_box(box, name, path)]
    )
  known = set(names) | {os.path.splitext(n)[0] for n in names}
  unknown = sorted(k for k in payload if k not in known)
  if unknown:
    print(
        f'note: --boxes names {len(unknown)} image(s) not in the folder: {", ".join(unknown[:5])}',
        file=sys.stderr,
    )
  return boxes


def load_left(
    spec: str | None, names: Sequence[str], all_left: bool = False
) -> dict[str, bool | list[bool]]:
  """{name: is_left} from --left (a JSON list or object file, or a comma-separated list of names). A
  JSON object's value may also be a list of booleans, one per hand (in the order of --boxes)."""
  if all_left:
    return {name: True for name in names}
  if not spec:
    return {name: False for name in names}
  if spec.lower().endswith('.json'):
    payload = _load_json(spec, '--left')
    if isinstance(payload, list):
      chosen = {str(n): True for n in payload}
    elif isinstance(payload, dict):
      chosen = {
          str(k): [bool(x) for x in v] if isinstance(v, list) else bool(v)
          for k, v in payload.items()
      }
    else:
      raise InputError(
          f'--left file {spec} must hold a JSON list of names or an object {{name: bool}}'
      )
  else:
    chosen = {item.strip(): True for item in spec.split(',') if item.strip()}
  table = {}
  for name in names:
    value = _lookup(chosen, name)
    table[name] = value if isinstance(value, list) else bool(value)
  return table


def _is_left(table: dict[str, bool | list[bool]] | None, name: str, index: int) -> bool | None:
  """Whether hand `index` of image `name` is left by --left / --all_left, or None when neither was
  given."""
  if table is None:
    return None
  value = table[name]
  if isinstance(value, list):
    return bool(value[index]) if index < len(value) else False
  return bool(value)


# ==================================================================================================
# Outputs
# ==================================================================================================


def orthographic_setup(
    vertices_model: np.ndarray, camera: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
  """Vertices and a pinhole K that `render.py` draws as the weak-perspective projection
  u = s·X + tx, v = s·Y + ty (normalised; pixel = (u + 1)·size/2) of model-space vertices (N, 3)."""
  scale, tx, ty = (float(c) for c in camera)
  if scale <= 0:
    scale = 1e-3  # a degenerate camera: draw a dot rather than fail
  distance = _ORTHO_DISTANCE
  focal = scale * size / 2.0 * distance
  K = np.array(
      [
          [focal, 0.0, (tx + 1.0) * size / 2.0],
          [0.0, focal, (ty + 1.0) * size / 2.0],
          [0.0, 0.0, 1.0],
      ]
  )
  placed = np.asarray(vertices_model, np.float64) + np.array([0.0, 0.0, distance])
  return placed, K


# ==================================================================================================
# A folder of photos
# ==================================================================================================


@dataclasses.dataclass
class _Hand:
  """One hand to reconstruct: where it is, which side, what the model sees."""

  image: str
  index: int
  box: np.ndarray | None  # full-image pixels; None: the largest centred square (--detector=none)
  crop_box: np.ndarray
  is_left: bool
  source: str  # 'detector', 'boxes' or 'whole image'
  side_source: str  # 'detector', 'left flag' or 'default'
  score: float | None = None
  side_score: float | None = None
  keypoints: np.ndarray | None = None


def _write_json(path: str, payload: Any) -> None:
  def write(tmp: str) -> None:
    with open(tmp, 'w') as f:
      json.dump(payload, f)

  files.atomic_write(path, write)


def _rounded(array: Any) -> Any:
  return np.round(np.asarray(array, np.float64), 6).tolist()


def hand_uncertainty(vertices: np.ndarray) -> dict[str, Any]:
  """The uncertainty `predict` writes per hand, from its K hypotheses (M, K, N, 3) in metres (mirroring
  a left hand changes none of it):

    uncertainty                  [M] floats, metres: `hypotheses.spread`'s `UNCERTAINTY_SCORE`, the
                                 mean distance left after rigidly aligning each hypothesis to their
                                 aligned mean (articulation, not orientation)
    vertex_uncertainty           (M, N) metres, its per-vertex form (`articulation_per_vertex`)
    orientation_uncertainty_deg  [M] floats, degrees: the mean angle of those rigid alignments

  All 0 for K = 1.
  """
  scores = hypotheses.spread(vertices)
  # Rounded like the JSON's arrays: K = 1 (or identical hypotheses) leaves ~1e-16 m of float noise,
  # and ~1e-6 degrees from arccos near 1; rounding makes those the 0 they are.
  return {
      'uncertainty': [round(float(u), 6) for u in scores[hypotheses.UNCERTAINTY_SCORE]],
      'vertex_uncertainty': scores['articulation_per_vertex'],
      'orientation_uncertainty_deg': [
          round(float(np.degrees(a)), 3) for a in scores['orientation']
      ],
  }


def find_hands(
    image: np.ndarray,
    name: str,
    *,
    boxes: list[list[float]] | None,
    detector: Any,
    left_table: dict[str, bool | list[bool]] | None,
    box_scale: float,
    min_score: float,
) -> list[_Hand]:
  """The hands of one photo: the --boxes ones, else the detector's (score ≥ min_score), else (no
  detector) one hand in the largest centred square. --left / --all_left, when given, set the sides.
  """
  from diffhand_jax.inference import crops

  shape = image.shape[:2]
  found = []
  if boxes is not None:
    height, width = shape
    for box in boxes:
      x0, y0, x1, y1 = (float(v) for v in box)
      # A box with no pixel inside the image would give a mesh of an empty crop: refuse it.
      if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise InputError(
            f'{name}: the box {[x0, y0, x1, y1]} lies outside the image ({width}×{height} pixels)'
        )
      found.append(dict(box=np.asarray(box, np.float64), source='boxes'))
  elif detector is None:
    found.append(dict(box=None, source='whole image'))
  else:
    for hand in detector.detect(image):
      if hand.score < min_score:
        continue
      found.append(
          dict(
              box=np.asarray(hand.box, np.float64),
              source='detector',
              side=hand.side,
              score=float(hand.score),
              side_score=float(hand.side_score),
              keypoints=None if hand.keypoints is None else np.asarray(hand.keypoints),
          )
      )
  hands = []
  for index, item in enumerate(found):
    flagged = _is_left(left_table, name, index)
    if flagged is not None:
      is_left, side_source = flagged, 'left flag'
    elif 'side' in item:
      is_left, side_source = item['side'] == 'left', 'detector'
    else:
      is_left, side_source = False, 'default'
    hands.append(
        _Hand(
            image=name,
            index=index,
            box=item['box'],
            crop_box=crops.square_box(item['box'], shape, box_scale),
            is_left=is_left,
            source=item['source'],
            side_source=side_source,
            score=item.get('score'),
            side_score=item.get('side_score'),
            keypoints=item.get('keypoints'),
        )
    )
  return hands


def fit_models(dataset_config: Any, sides: Sequence[str]) -> dict[str, tuple[Any, str]]:
  """{side: (the run's hand model of that side, its name)} for `mano.fit`; InputError when the MANO
  files a side needs are missing."""
  from diffhand_jax.geometry import hand_model

  models = {}
  for side in sorted(set(sides)):
    try:
      models[side] = hand_model.load_side_model(dataset_config, side)
    except FileNotFoundError as error:
      raise InputError(f'--fit_mano: {error}') from None
  return models


def fit_mano_parameters(
    models: dict[str, tuple[Any, str]], vertices: np.ndarray, is_left: np.ndarray
) -> list[dict[str, Any]]:
  """`mano.fit` of camera-frame meshes (M, N, 3), each with the model of its side (`fit_models`).

  Returns one dict per mesh: pose (48,), betas, trans (3,), flat_hand_mean (False), error (m) and
  hand_model (which model the parameters belong to).
  """
  from diffhand_jax import mano

  results: list[dict[str, Any]] = [{} for _ in range(len(vertices))]
  for side in ('right', 'left'):
    rows = np.nonzero(is_left == (side == 'left'))[0]
    if not len(rows):
      continue
    model, name = models[side]
    fitted = mano.fit(model, vertices[rows], flat_hand_mean=False)
    for k, row in enumerate(rows):
      results[row] = {
          'pose': _rounded(fitted['pose'][k]),
          'betas': _rounded(fitted['betas'][k]),
          'trans': _rounded(fitted['trans'][k]),
          'flat_hand_mean': False,
          'error': float(fitted['error'][k]),
          'hand_model': name,
      }
  return results


def predict_folder(
    workdir: str,
    images_dir: str,
    output_dir: str,
    *,
    boxes: str | None = None,
    left: str | None = None,
    all_left: bool = False,
    box_scale: float = 1.3,
    num_hypotheses: int = 5,
    steps: int | None = None,
    eta: float | None = None,
    method: str = 'mean',
    tta_config=None,
    batch_size: int = 8,
    seed: int = 0,
    overlay_size: int = 1024,
    overrides: ml_collections.ConfigDict | dict | None = None,
    progress: bool = True,
    detector: Any = 'mediapipe',
    focal: float | None = None,
    fit_mano: bool = False,
    min_hand_score: float = 0.5,
    color_by_uncertainty: bool = False,
    samplers: Any = None,
) -> dict[str, Any]:
  """Runs the model over a folder of photos; returns {'written': [names], 'failed': {name: reason},
  'no_hands': [names]}.

  detector: 'mediapipe', 'none' (one hand per photo, in the largest centred square) or any object with
  `detect(image)` (inference/detection.py's HandDetector). Photos named in `boxes` are not searched.
  focal: the focal length in pixels for every photo (else EXIF, else render.default_focal).
  overrides: changes to the run's config (`overrides.apply_overrides`), e.g. the --config flag's value.
  steps / eta, when not None, take precedence over config.model.sampling_steps / eta.
  color_by_uncertainty: colour each hand in NAME.png by its `vertex_uncertainty` (`hand_uncertainty`),
  one scale per photo, instead of the flat mesh colour. samplers: a `sampling.SamplerCache` of a run
  opened already (the web app's); `workdir` is then not read, and `overrides` must be None.
  Raises InputError for bad arguments or input files, FileNotFoundError when `workdir` holds no trained
  run.
  """
  import jax
  from diffhand_jax.data import input_pipeline
  from diffhand_jax.inference import crops, detection, full_frame, loading, sampling

  names = list_images(images_dir)
  box_table = load_boxes(boxes, names)
  left_table = load_left(left, names, all_left) if (left or all_left) else None
  if not box_scale > 0 or overlay_size < 0 or batch_size < 1 or num_hypotheses < 1:
    raise InputError(
        '--box_scale must be > 0, --overlay_size >= 0, --batch_size and --num_hypotheses >= 1'
    )
  if focal is not None and not focal > 0:
    raise InputError(f'--focal must be > 0 (pixels), got {focal}')
  if isinstance(detector, str):
    if detector == 'none':
      detector = None
    elif any(name not in box_table for name in names):
      try:
        detector = detection.make_detector(detector)
      except detection.DetectorUnavailable as error:
        raise InputError(
            f'hand detection is unavailable: {error}; or give --boxes, or --detector=none'
        ) from None
      except ValueError as error:
        raise InputError(str(error)) from None
  if samplers is None:
    samplers = sampling.SamplerCache(loading.load_trained(workdir, overrides=overrides))
  elif overrides is not None:
    raise ValueError('predict_folder: give overrides when opening the run, not with samplers=')
  run = samplers.run
  config = run.config
  vertex_scale = float(config.model.vertex_scale)
  image_size = int(config.model.img_size)
  sampler = samplers.get(
      num_steps=int(steps if steps is not None else config.model.sampling_steps),
      num_hypotheses=int(num_hypotheses),
      eta=float(eta if eta is not None else config.model.eta),
      batch_size=batch_size,
  )
  faces = np.asarray(run.topology.faces)
  os.makedirs(output_dir, exist_ok=True)

  # Read, find and crop everything first: a bad file or a photo without hands is reported and dropped
  # before any batching.
  failed: dict[str, str] = {}
  no_hands: list[str] = []
  photos: dict[str, dict[str, Any]] = {}
  hands: list[_Hand] = []
  model_crops = []
  for name in names:
    path = os.path.join(images_dir, name)
    try:
      image = read_image(path)
      if min(image.shape[:2]) < MIN_IMAGE_SIDE:
        raise InputError(
            f'{path}: {image.shape[1]}×{image.shape[0]} pixels is too small to show a hand '
            f'(at least {MIN_IMAGE_SIDE} on each side)'
        )
      found = find_hands(
          image,
          name,
          boxes=box_table.get(name),
          detector=detector,
          left_table=left_table,
          box_scale=box_scale,
          min_score=min_hand_score,
      )
      if not found:
        no_hands.append(name)
        print(f'no hand found in {path}; skipped', file=sys.stderr)
        continue
      photo_crops = []
      for hand in found:
        crop = crops.crop_box(image, hand.crop_box, image_size)
        photo_crops.append(crop[:, ::-1] if hand.is_left else crop)  # docs/design.md §2
    except (InputError, ValueError) as error:
      failed[name] = str(error)
      print(f'skipping {name}: {error}', file=sys.stderr)
      continue
    focal_px, focal_source = full_frame.focal_length(path, image.shape[:2], focal)
    photos[name] = {
        'image': image,
        'K': render.intrinsics(focal_px, image.shape[:2]),
        'focal': focal_px,
        'focal_source': focal_source,
    }
    hands.extend(found)
    model_crops.extend(photo_crops)
  if not hands:
    return {'written': [], 'failed': failed, 'no_hands': no_hands}
  models = (
      fit_models(config.dataset, ['left' if hand.is_left else 'right' for hand in hands])
      if fit_mano
      else None
  )

  images = input_pipeline.normalise_images(np.stack(model_crops))
  report = sampling.progress_printer('predict') if progress else None
  out = sampler.predict(
      images, jax.random.PRNGKey(seed), method=method, tta_config=tta_config, progress=report
  )
  joints = conventions.regress_joints(out['vertices'], run.topology.joint_regressor)
  uncertainty = hand_uncertainty(out['hypotheses'])
  placed = [
      full_frame.to_photo(
          out['vertices'][i],
          joints[i],
          out['camera'][i],
          is_left=hand.is_left,
          crop_box=hand.crop_box,
          K=photos[hand.image]['K'],
          image_size=image_size,
          vertex_scale=vertex_scale,
      )
      for i, hand in enumerate(hands)
  ]
  parameters = None
  if models is not None:
    parameters = fit_mano_parameters(
        models,
        np.stack([p['vertices_camera'] for p in placed]),
        np.array([hand.is_left for hand in hands]),
    )
  settings = dict(
      sampler.settings(),
      method=method,
      seed=seed,
      img_size=image_size,
      vertex_scale=vertex_scale,
      box_scale=box_scale,
      detector=getattr(detector, 'name', type(detector).__name__) if detector else 'none',
      min_hand_score=min_hand_score,
      color_by_uncertainty=bool(color_by_uncertainty),
      workdir=os.path.abspath(run.workdir),
      tta=None
      if tta_config is None
      else {
          'angles_deg': list(tta_config.angles_deg),
          'scales': list(tta_config.scales),
          'align': tta_config.align,
      },
  )

  written = []
  for name, photo in photos.items():
    stem = os.path.splitext(name)[0]
    rows = [i for i, hand in enumerate(hands) if hand.image == name]
    records, meshes = [], []
    for number, i in enumerate(rows):
      hand, where = hands[i], placed[i]
      mesh_faces = faces[:, ::-1] if hand.is_left else faces  # mirroring flips the winding
      obj_name = f'{stem}_hand{number}.obj'
      files.atomic_write(
          os.path.join(output_dir, obj_name),
          lambda tmp, v=where['vertices_camera'], f=mesh_faces: mesh_io.write_obj(tmp, v, f),
      )
      meshes.append((where['vertices_camera'], mesh_faces))
      record = {
          'box': None if hand.box is None else _rounded(hand.box),
          'box_source': hand.source,
          'hand_side': 'left' if hand.is_left else 'right',
          'side_source': hand.side_source,
          'score': hand.score,
          'side_score': hand.side_score,
          'keypoints_2d': None if hand.keypoints is None else _rounded(hand.keypoints),
          'crop_box': _rounded(hand.crop_box),
          'joints': _rounded(where['joints']),
          'vertices': _rounded(where['vertices']),
          'root': _rounded(where['root']),
          'joints_camera': _rounded(where['joints'] + where['root']),
          'vertices_camera': _rounded(where['vertices_camera']),
          'uncertainty': uncertainty['uncertainty'][i],
          'vertex_uncertainty': _rounded(uncertainty['vertex_uncertainty'][i]),
          'orientation_uncertainty_deg': uncertainty['orientation_uncertainty_deg'][i],
          'camera': [float(c) for c in where['camera']],
          'obj': obj_name,
      }
      if parameters is not None:
        record['mano'] = parameters[i]
      records.append(record)
    colors = None
    if color_by_uncertainty:
      per_vertex = [uncertainty['vertex_uncertainty'][i] for i in rows]
      # One scale per photo, so that its hands can be compared by colour.
      scale = max(max(float(v.max()) for v in per_vertex), 1e-3)
      colors = [render.uncertainty_colors(v, scale)[:, :3] / 255.0 for v in per_vertex]
    overlay = full_frame.draw_hands(photo['image'], meshes, photo['K'], overlay_size, colors=colors)
    files.atomic_write(
        os.path.join(output_dir, f'{stem}.png'),
        lambda tmp, image=overlay: mesh_io.write_image(tmp, image, 'PNG'),
    )
    height, width = photo['image'].shape[:2]
    _write_json(
        os.path.join(output_dir, f'{stem}.json'),
        {
            'image': name,
            'image_size': [height, width],
            'focal_length': float(photo['focal']),
            'focal_source': photo['focal_source'],
            'K': _rounded(photo['K']),
            'units': 'metres; camera frame x right, y down, z forward (OpenCV); joints and '
            'vertices root-relative (wrist at 0), joints_camera and vertices_camera in the '
            "photo's camera frame; box, crop_box and keypoints_2d in photo pixels",
            'camera_convention': 'weak perspective of model-space X = metres / vertex_scale: '
            'u = s*X + tx, v = s*Y + ty, u = 2x/W - 1 over the crop',
            'hands': records,
            'settings': settings,
        },
    )
    written.append(name)
  return {'written': written, 'failed': failed, 'no_hands': no_hands}
