"""Hand meshes for a folder of images: reading the images and the box / left-hand files, cropping,
sampling a trained run, and writing NAME.obj, NAME.png and NAME.json per image.

`python -m diffhand_jax.predict` (diffhand_jax/predict.py) is the command; its docstring describes the
files.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Sequence

import ml_collections
import numpy as np

from diffhand_jax.geometry import conventions, mesh_io

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
# The model's weak-perspective camera is orthographic; rendering it through render.py's pinhole with
# the mesh this far away (in model units, hand ~ ±2) keeps the perspective error below 1e-3 pixel-fractions.
_ORTHO_DISTANCE = 1.0e4


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


def load_boxes(path: str | None, names: Sequence[str]) -> dict[str, list[float]]:
  """{name: [x0, y0, x1, y1]} from a JSON object keyed by file name (or stem). Raises InputError."""
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
    boxes[name] = values
  known = set(names) | {os.path.splitext(n)[0] for n in names}
  unknown = sorted(k for k in payload if k not in known)
  if unknown:
    print(
        f'note: --boxes names {len(unknown)} image(s) not in the folder: {", ".join(unknown[:5])}',
        file=sys.stderr,
    )
  return boxes


def load_left(spec: str | None, names: Sequence[str], all_left: bool = False) -> dict[str, bool]:
  """{name: is_left} from --left (a JSON list or object file, or a comma-separated list of names)."""
  if all_left:
    return {name: True for name in names}
  if not spec:
    return {name: False for name in names}
  if spec.lower().endswith('.json'):
    payload = _load_json(spec, '--left')
    if isinstance(payload, list):
      chosen = {str(n): True for n in payload}
    elif isinstance(payload, dict):
      chosen = {str(k): bool(v) for k, v in payload.items()}
    else:
      raise InputError(
          f'--left file {spec} must hold a JSON list of names or an object {{name: bool}}'
      )
  else:
    chosen = {item.strip(): True for item in spec.split(',') if item.strip()}
  return {name: bool(_lookup(chosen, name)) for name in names}


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


def draw_overlay(
    crop: np.ndarray, vertices_model: np.ndarray, faces: np.ndarray, camera: np.ndarray
) -> np.ndarray:
  """The shaded mesh over a square crop (S, S, 3) uint8, placed by the weak-perspective camera."""
  from diffhand_jax.geometry import render

  placed, K = orthographic_setup(vertices_model, camera, crop.shape[0])
  return render.overlay(crop, placed, faces, K, alpha=0.6)


# ==================================================================================================
# A folder of images
# ==================================================================================================


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
    overlay_size: int = 256,
    overrides: ml_collections.ConfigDict | dict | None = None,
    progress: bool = True,
) -> dict[str, Any]:
  """Runs the model over a folder; returns {'written': [names], 'failed': {name: reason}}.

  overrides: changes to the run's config (`overrides.apply_overrides`), e.g. the --config flag's value.
  steps / eta, when not None, take precedence over config.model.sampling_steps / eta. Raises InputError
  for bad arguments or input files, FileNotFoundError when `workdir` holds no trained run.
  """
  import jax
  from diffhand_jax.data import input_pipeline
  from diffhand_jax.inference import crops, loading, overrides as overrides_lib, sampling

  names = list_images(images_dir)
  box_table = load_boxes(boxes, names)
  left_table = load_left(left, names, all_left)
  if not box_scale > 0 or overlay_size < 8 or batch_size < 1 or num_hypotheses < 1:
    raise InputError(
        '--box_scale must be > 0, --overlay_size >= 8, --batch_size and ' '--num_hypotheses >= 1'
    )
  config, model, params, topology, schedule = loading.load_for_inference(workdir)
  config = overrides_lib.apply_overrides(config, overrides)
  vertex_scale = float(config.model.vertex_scale)
  image_size = int(config.model.img_size)
  sampler = sampling.Sampler(
      model,
      params,
      schedule,
      vertex_scale,
      num_steps=int(steps if steps is not None else config.model.sampling_steps),
      num_hypotheses=int(num_hypotheses),
      eta=float(eta if eta is not None else config.model.eta),
      batch_size=batch_size,
  )
  faces = np.asarray(topology.faces)
  os.makedirs(output_dir, exist_ok=True)

  # Read and crop everything first: a bad file is reported and dropped before any batching.
  failed: dict[str, str] = {}
  model_crops, overlays, kept, crop_boxes = [], [], [], []
  for name in names:
    try:
      image = read_image(os.path.join(images_dir, name))
      crop = crops.square_box(box_table.get(name), image.shape[:2], box_scale)
      model_crop = crops.crop_box(image, crop, image_size)
      overlay_crop = crops.crop_box(image, crop, overlay_size)
    except (InputError, ValueError) as error:
      failed[name] = str(error)
      print(f'skipping {name}: {error}', file=sys.stderr)
      continue
    if left_table[name]:  # the model sees right hands (docs/design.md §2)
      model_crop, overlay_crop = model_crop[:, ::-1], overlay_crop[:, ::-1]
    model_crops.append(model_crop)
    overlays.append(overlay_crop)
    crop_boxes.append(crop)
    kept.append(name)
  if not kept:
    return {'written': [], 'failed': failed}

  images = input_pipeline.normalise_images(np.stack(model_crops))
  report = sampling.progress_printer('predict') if progress else None
  out = sampler.predict(
      images, jax.random.PRNGKey(seed), method=method, tta_config=tta_config, progress=report
  )
  joints = conventions.regress_joints(out['vertices'], topology.joint_regressor)
  settings = dict(
      sampler.settings(),
      method=method,
      seed=seed,
      img_size=image_size,
      vertex_scale=vertex_scale,
      box_scale=box_scale,
      workdir=os.path.abspath(workdir),
      tta=None
      if tta_config is None
      else {
          'angles_deg': list(tta_config.angles_deg),
          'scales': list(tta_config.scales),
          'align': tta_config.align,
      },
  )
  written = []
  mirror = np.array([-1.0, 1.0, 1.0])
  for i, name in enumerate(kept):
    stem = os.path.splitext(name)[0]
    is_left = left_table[name]
    vertices, hand_joints, camera = out['vertices'][i], joints[i], out['camera'][i]
    # The overlay is drawn on the crop the model saw, then flipped back for left hands.
    overlay = draw_overlay(overlays[i], vertices / vertex_scale, faces, camera)
    if is_left:
      overlay = overlay[:, ::-1]
      vertices, hand_joints = vertices * mirror, hand_joints * mirror
      # u' = -u - 2/S under the pixel flip x' = S - 1 - x: the camera of the un-mirrored crop.
      camera = np.array([camera[0], -camera[1] - 2.0 / image_size, camera[2]])
    mesh_faces = (
        faces[:, ::-1] if is_left else faces
    )  # mirroring flips the winding; keep it outward
    mesh_io.write_obj(os.path.join(output_dir, f'{stem}.obj'), vertices, mesh_faces)
    mesh_io.write_image(os.path.join(output_dir, f'{stem}.png'), overlay)
    record = {
        'image': name,
        'hand_side': 'left' if is_left else 'right',
        'units': 'metres, root-relative (wrist at 0), camera axes x right, y down, z forward',
        'joints': np.round(hand_joints, 6).tolist(),
        'vertices': np.round(vertices, 6).tolist(),
        'uncertainty': np.round(out['vertex_std'][i], 6).tolist(),
        'uncertainty_mean': float(out['vertex_std'][i].mean()),
        'camera': [float(c) for c in camera],
        'camera_convention': 'weak perspective of model-space X = metres / vertex_scale: '
        'u = s*X + tx, v = s*Y + ty, u = 2x/W - 1 over the crop',
        'crop_box': [float(v) for v in crop_boxes[i]],
        'settings': settings,
    }
    with open(os.path.join(output_dir, f'{stem}.json'), 'w') as f:
      json.dump(record, f)
    written.append(name)
  return {'written': written, 'failed': failed}
