"""Hand meshes for a folder of photos: reads the photos and the --boxes / --left files (inference/io.py),
reconstructs every hand (inference/pipeline.py), and writes NAME.png, NAME.json and one NAME_handI.obj
per hand (inference/outputs.py).

`python -m diffhand_jax.predict` (diffhand_jax/predict.py) is the command; its docstring describes the
files.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import ml_collections

from diffhand_jax.inference import full_frame, io, loading, outputs, pipeline, sampling
from diffhand_jax.inference.io import InputError


def read_photos(
    images_dir: str,
    *,
    boxes: str | None = None,
    left: str | None = None,
    all_left: bool = False,
    focal: float | None = None,
) -> tuple[list[pipeline.Photo], dict[str, str]]:
  """The readable photos of a folder, each with its --boxes, --left and focal length (--focal, else
  EXIF); and {name: why} for the unreadable ones. Raises InputError for bad arguments."""
  if focal is not None and not focal > 0:
    raise InputError(f'--focal must be > 0 (pixels), got {focal}')
  names = io.list_images(images_dir)
  box_table = io.load_boxes(boxes, names)
  left_table = io.load_left(left, names, all_left) if (left or all_left) else {}
  photos, failed = [], {}
  for name in names:
    path = os.path.join(images_dir, name)
    try:
      image = io.read_image(path)
    except InputError as error:
      failed[name] = str(error)
      print(f'skipping {name}: {error}', file=sys.stderr)
      continue
    focal_px, source = full_frame.focal_length(path, image.shape[:2], focal)
    photos.append(
        pipeline.Photo(
            image,
            name=name,
            boxes=box_table.get(name),
            left=left_table.get(name),
            focal=focal_px,
            focal_source=source,
        )
    )
  return photos, failed


def write_photo(
    output_dir: str,
    result: pipeline.PhotoHands,
    settings: dict[str, Any],
    *,
    overlay_size: int = 1024,
    color_by_uncertainty: bool = False,
) -> dict[str, Any]:
  """A photo's files: STEM_handI.obj per hand, then STEM.png and STEM.json; returns the JSON record."""
  stem = os.path.splitext(result.photo.name)[0]
  for hand, obj_name in zip(result.hands, outputs.obj_names(result, stem)):
    io.write_obj(os.path.join(output_dir, obj_name), hand.vertices_camera, hand.faces)
  image = outputs.overlay(result, overlay_size, color_by_uncertainty)
  io.write_png(os.path.join(output_dir, f'{stem}.png'), image)
  record = outputs.photo_record(result, stem, settings)
  io.write_json(os.path.join(output_dir, f'{stem}.json'), record)
  return record


def predict_folder(
    workdir: str | None,
    images_dir: str,
    output_dir: str,
    options: pipeline.Options = pipeline.PHOTO_DEFAULTS,
    *,
    boxes: str | None = None,
    left: str | None = None,
    all_left: bool = False,
    focal: float | None = None,
    overlay_size: int = 1024,
    color_by_uncertainty: bool = False,
    overrides: ml_collections.ConfigDict | dict | None = None,
    progress: bool = True,
    samplers: sampling.SamplerCache | None = None,
) -> dict[str, Any]:
  """Runs the model over a folder of photos; returns {'written': [names], 'failed': {name: reason},
  'no_hands': [names]}.

  boxes, left, all_left, focal: as `read_photos`. overrides: changes to the run's config
  (`overrides.apply_overrides`). samplers: a run opened already; `workdir` is then not read.
  Raises InputError for bad arguments or input files, FileNotFoundError when `workdir` holds no run.
  """
  if overlay_size < 0:
    raise InputError(f'--overlay_size must be >= 0, got {overlay_size}')
  options.check()
  photos, failed = read_photos(images_dir, boxes=boxes, left=left, all_left=all_left, focal=focal)
  if samplers is None:
    samplers = sampling.SamplerCache(loading.load_trained(workdir, overrides=overrides))
  elif overrides is not None:
    raise ValueError('predict_folder: give overrides when opening the run, not with samplers=')
  os.makedirs(output_dir, exist_ok=True)
  report = sampling.progress_printer('predict') if progress else None
  results = pipeline.reconstruct_photos(samplers, photos, options, progress=report)
  settings = outputs.settings(samplers, options, color_by_uncertainty=color_by_uncertainty)
  written, no_hands = [], []
  for result in results:
    name = result.photo.name
    if result.error is not None:
      failed[name] = result.error
      print(f'skipping {name}: {result.error}', file=sys.stderr)
    elif not result.hands:
      no_hands.append(name)
      print(f'no hand found in {os.path.join(images_dir, name)}; skipped', file=sys.stderr)
    else:
      write_photo(
          output_dir,
          result,
          settings,
          overlay_size=overlay_size,
          color_by_uncertainty=color_by_uncertainty,
      )
      written.append(name)
      summary = outputs.landmark_summary([result]) if progress else None
      if summary:
        print(f'{name}: {summary}', file=sys.stderr)
  summary = outputs.landmark_summary(results) if progress and len(written) > 1 else None
  if summary:
    print(f'all photos: {summary}', file=sys.stderr)
  return {'written': written, 'failed': failed, 'no_hands': no_hands}
