"""Hand meshes for a folder of photos: reads the photos and the --boxes / --left files (inference/io.py),
reconstructs every hand (inference/pipeline.py), and writes NAME.png, NAME.json and one NAME_handI.obj
per hand (inference/outputs.py).

It never writes over an input (--output may not be the --images folder nor hold the --boxes or --left
file), gives photos that share a stem distinct names (`output_stems`), checks that --output can be
written before opening the run, holds the photos as files (`io.ImageFile`: one decoded at a time), and
writes each photo's JSON last, so a JSON means its result is whole; a write that fails (a full disk)
stops with InputError naming the photo, the photos before it kept.

`python -m diffhand_jax.predict` (diffhand_jax/predict.py) is the command; its docstring describes the
files.
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Any, Sequence

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
  EXIF); and {name: why} for the unreadable ones. Raises InputError for bad arguments. Each photo's
  image is an `io.ImageFile` (its header read here, its pixels decoded when used)."""
  if focal is not None and not focal > 0:
    raise InputError(f'--focal must be > 0 (pixels), got {focal}')
  names = io.list_images(images_dir)
  box_table = io.load_boxes(boxes, names)
  left_table = io.load_left(left, names, all_left) if (left or all_left) else {}
  photos, failed = [], {}
  for name in names:
    path = os.path.join(images_dir, name)
    try:
      image = io.ImageFile(path)
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


def output_stems(names: Sequence[str]) -> dict[str, str]:
  """{photo name: the stem of its result files}. The name without its extension (a.jpg → a), unless
  another photo has that stem too (compared case-insensitively): then the name with its extension's dot
  made '_' (a.jpg → a_jpg, a.png → a_png). A stem still taken (a_jpg.png beside a.jpg and a.png) gets
  _2, _3, … (in name order); the photos with a stem of their own keep it."""
  bases = {name: os.path.splitext(name)[0] for name in names}
  count = collections.Counter(base.casefold() for base in bases.values())
  stems = {name: base for name, base in bases.items() if count[base.casefold()] == 1}
  taken = {stem.casefold() for stem in stems.values()}
  for name in sorted(n for n in names if n not in stems):
    base, extension = os.path.splitext(name)
    stem = f'{base}_{extension[1:]}'
    number = 2
    while stem.casefold() in taken:
      stem, number = f'{base}_{extension[1:]}_{number}', number + 1
    stems[name] = stem
    taken.add(stem.casefold())
  return stems


def write_photo(
    output_dir: str,
    result: pipeline.PhotoHands,
    settings: dict[str, Any],
    *,
    overlay_size: int = 1024,
    color_by_uncertainty: bool = False,
    stem: str | None = None,
) -> dict[str, Any]:
  """A photo's files: STEM_handI.obj per hand, then STEM.png and STEM.json (last: a JSON means the rest
  is whole; an older STEM.json is removed first); returns the JSON record. stem: default the name
  without its extension (`output_stems`). An OSError (a full disk) removes what this call wrote."""
  stem = stem or os.path.splitext(result.photo.name)[0]
  json_path = os.path.join(output_dir, f'{stem}.json')
  written = [json_path]
  try:
    io.remove_quietly([json_path])
    for hand, obj_name in zip(result.hands, outputs.obj_names(result, stem)):
      written.append(
          io.write_obj(os.path.join(output_dir, obj_name), hand.vertices_camera, hand.faces)
      )
    image = outputs.overlay(result, overlay_size, color_by_uncertainty)
    written.append(io.write_png(os.path.join(output_dir, f'{stem}.png'), image))
    record = outputs.photo_record(result, stem, settings)
    io.write_json(json_path, record)
  except OSError:
    io.remove_quietly(written)
    raise
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
  Raises InputError for bad arguments or input files, an --output that holds an input or cannot be
  written (both before the run is opened), or a write that fails (naming the photo; the results
  before it are kept whole); FileNotFoundError when `workdir` holds no run.
  """
  if overlay_size < 0:
    raise InputError(f'--overlay_size must be >= 0, got {overlay_size}')
  options.check()
  io.refuse_inputs_in_output(
      output_dir,
      folders={'the input photos (--images)': images_dir},
      files={'the --boxes file': boxes, 'the --left file': left},
  )
  photos, failed = read_photos(images_dir, boxes=boxes, left=left, all_left=all_left, focal=focal)
  made = io.prepare_output(output_dir)
  try:
    if samplers is None:
      samplers = sampling.SamplerCache(loading.load_trained(workdir, overrides=overrides))
    elif overrides is not None:
      raise ValueError('predict_folder: give overrides when opening the run, not with samplers=')
    report = sampling.progress_printer('predict') if progress else None
    results = pipeline.reconstruct_photos(samplers, photos, options, progress=report)
  except BaseException:
    io.remove_if_made_and_empty(output_dir, made)
    raise
  settings = outputs.settings(samplers, options, color_by_uncertainty=color_by_uncertainty)
  stems = output_stems([photo.name for photo in photos])
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
      _write_or_stop(
          output_dir, result, settings, stems[name], written, overlay_size, color_by_uncertainty
      )
      written.append(name)
      summary = outputs.landmark_summary([result]) if progress else None
      if summary:
        print(f'{name}: {summary}', file=sys.stderr)
  summary = outputs.landmark_summary(results) if progress and len(written) > 1 else None
  if summary:
    print(f'all photos: {summary}', file=sys.stderr)
  return {'written': written, 'failed': failed, 'no_hands': no_hands}


def _write_or_stop(
    output_dir: str,
    result: pipeline.PhotoHands,
    settings: dict[str, Any],
    stem: str,
    written: Sequence[str],
    overlay_size: int,
    color_by_uncertainty: bool,
) -> None:
  """`write_photo`; InputError naming the photo and the photos written before it when a write fails."""
  try:
    write_photo(
        output_dir,
        result,
        settings,
        overlay_size=overlay_size,
        color_by_uncertainty=color_by_uncertainty,
        stem=stem,
    )
  except OSError as error:
    done = f' ({", ".join(written[:5])}{", …" if len(written) > 5 else ""})' if written else ''
    raise InputError(
        f'cannot write the results of {result.photo.name} to {output_dir}: '
        f'{error.strerror or error}; the {len(written)} photo(s) before it are whole there{done}'
    ) from None
