"""Reading the inference commands' inputs and writing their files.

* `InputError`: a bad argument or input file, reported in one line without a traceback; `VideoError`: a
  video that broke off after some frames.
* Photos: `list_images`, `read_image` (EXIF rotation applied), and the --boxes / --left files
  (`load_boxes`, `load_left`), --video_box (`parse_box`).
* Video: `Frames` (a video file through PyAV, or a folder of frames) and `OverlayWriter` (H.264 MP4).
* Photos decoded when used (`ImageFile`), so a folder's photos are not all in memory at once.
* The output folder: `refuse_inputs_in_output` (never the folder of an input), `prepare_output` (made and
  checked writable before any compute).
* Files never seen half-written (runs/files.py's atomic write): `write_json`, `write_obj`, `write_png`,
  `write_npz`.
"""

from __future__ import annotations

import fractions
import json
import os
import sys
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from diffhand_jax.geometry import mesh_io
from diffhand_jax.runs import files

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
# Box coordinates (pixels) beyond this magnitude are refused: no photo is that large, and the arithmetic
# of a crop around such a box (1e308 × 1.3) overflows.
MAX_BOX_COORDINATE = 1e7
VIDEO_INSTALL = 'pip install -e ".[video]"'


class InputError(ValueError):
  """A bad argument or input file (reported without a traceback)."""


class VideoError(ValueError):
  """The video broke off (truncated or corrupt) after some frames; those frames were written."""


# ==================================================================================================
# Photos and the files that describe them
# ==================================================================================================


def list_images(folder: str) -> list[str]:
  """The names of the images in `folder`, sorted. Raises InputError when there are none."""
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
  """uint8 (H, W, 3), EXIF rotation applied (`to_rgb` for the modes). Raises InputError naming the
  file."""
  try:
    with Image.open(path) as image:
      return to_rgb(ImageOps.exif_transpose(image))
  except Exception as error:  # PIL raises many types for truncated or foreign files
    raise InputError(f'cannot read image {path}: {type(error).__name__}: {error}') from None


def to_rgb(image: Image.Image) -> np.ndarray:
  """uint8 (H, W, 3) of a PIL image of any mode, scaled, never clipped: 16-bit greys (I;16*, and I
  with values in 0..65535, as PNG's 16-bit grey reads) divided by 257; F (floats) and I beyond 16
  bits: values in [0, 1] (floats) times 255, in [0, 255] as they are, anything else stretched from its
  minimum to its maximum (NaN as the minimum). Every other mode through PIL's RGB conversion (16-bit
  RGB PNGs read as 8-bit RGB already)."""
  if not (image.mode.startswith('I') or image.mode == 'F'):
    return np.asarray(image.convert('RGB'), np.uint8)
  values = np.asarray(image, np.float64)
  finite = values[np.isfinite(values)]
  low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
  values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
  if image.mode.startswith('I') and low >= 0 and high <= 65535:
    values = values / 257.0
  elif image.mode == 'F' and low >= 0 and high <= 1:
    values = values * 255.0
  elif not (low >= 0 and high <= 255):
    values = (values - low) * (255.0 / max(high - low, 1e-12))
  grey = np.clip(np.round(values), 0, 255).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


def load_json(path: str, what: str) -> Any:
  """The JSON in `path`; InputError naming `what` (e.g. '--boxes') when it is missing or not JSON."""
  if not os.path.exists(path):
    raise InputError(f'{what} file {path} does not exist')
  if os.path.isdir(path):
    raise InputError(f'{what} file {path} is a folder, not a JSON file')
  try:
    with open(path) as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
    raise InputError(f'{what} file {path} is not valid JSON: {error}') from None
  except OSError as error:
    raise InputError(f'{what} file {path} cannot be read: {error.strerror or error}') from None


def _lookup(table: dict, name: str):
  if name in table:
    return table[name]
  return table.get(os.path.splitext(name)[0])


def box_is_valid(values: Sequence[float]) -> bool:
  """Whether `values` is a box [x0, y0, x1, y1] (pixels): four finite numbers within
  ±MAX_BOX_COORDINATE, x1 > x0 and y1 > y0."""
  return (
      len(values) == 4
      and bool(np.all(np.isfinite(values)))
      and bool(np.all(np.abs(values) <= MAX_BOX_COORDINATE))
      and values[2] > values[0]
      and values[3] > values[1]
  )


def _check_box(box: Any, name: str, path: str) -> list[float]:
  try:
    values = [float(v) for v in box]
  except (TypeError, ValueError, OverflowError):
    values = []
  if not box_is_valid(values):
    raise InputError(
        f'--boxes file {path}: the box of {name!r} must be [x0, y0, x1, y1] (finite pixels, within '
        f'±{MAX_BOX_COORDINATE:g}) with x1 > x0 and y1 > y0, got {box!r}'[:400]
    )
  return values


def load_boxes(path: str | None, names: Sequence[str]) -> dict[str, list[list[float]]]:
  """{name: [[x0, y0, x1, y1], ...]} from a JSON object keyed by file name (or stem) whose values are
  one box or a list of boxes (one per hand). Raises InputError."""
  if not path:
    return {}
  payload = load_json(path, '--boxes')
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
    payload = load_json(spec, '--left')
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


def parse_box(text: str | None) -> list[float] | None:
  """'x0,y0,x1,y1' (pixels) → four floats; None stays None. Raises InputError."""
  if not text:
    return None
  try:
    box = [float(v) for v in text.split(',')]
  except ValueError:
    box = []
  if not box_is_valid(box):
    raise InputError(
        f'--video_box must be x0,y0,x1,y1 in pixels (finite, within ±{MAX_BOX_COORDINATE:g}) with '
        f'x1 > x0 and y1 > y0, got {text!r}'
    )
  return box


# ==================================================================================================
# Video
# ==================================================================================================


def import_av():
  """PyAV (the `video` extra); InputError saying how to install it when it is missing."""
  try:
    import av  # pylint: disable=g-import-not-at-top  # optional extra
  except ImportError:
    raise InputError(f'video needs PyAV, which is not installed: {VIDEO_INSTALL}') from None
  return av


class Frames:
  """The frames of a video file or of a folder of images, in order.

  Iterating gives (index, uint8 (H, W, 3)). `fps` is the file's frame rate (or `fps` given, for a
  folder: default 30), `declared` the number of frames the file states (None when it does not).
  Raises InputError when the file cannot be opened, VideoError (naming the file) when it breaks off.
  """

  def __init__(self, path: str, *, fps: float | None = None):
    self.path = path
    self._container = None
    if os.path.isdir(path):
      self._names = list_images(path)
      _check_frame_sizes(path, self._names)
      self.fps = float(fps or 30.0)
      self.declared = len(self._names)
      return
    if not os.path.isfile(path):
      raise InputError(f'--video={path!r} is neither a video file nor a folder of frames')
    av = import_av()
    self._names = None
    try:
      self._container = av.open(path)
      stream = self._container.streams.video[0]
    except (av.error.FFmpegError, IndexError, UnicodeDecodeError) as error:
      self.close()
      raise InputError(
          f'cannot read video {path}: {type(error).__name__}: {error} (truncated, or not a video?)'
      ) from None
    stream.thread_type = 'AUTO'
    self._stream = stream
    rate = stream.average_rate or stream.guessed_rate
    self.fps = float(fps or (float(rate) if rate else 30.0))
    self.declared = int(stream.frames) or None

  def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
    if self._names is not None:
      for index, name in enumerate(self._names):
        try:
          yield index, read_image(os.path.join(self.path, name))
        except InputError as error:
          raise VideoError(f'{error}; stopped at frame {index} of {self.path}') from None
      return
    av = import_av()
    count, shape = 0, None
    try:
      for frame in self._container.decode(self._stream):
        image = frame.to_ndarray(format='rgb24')
        if shape is not None and image.shape != shape:
          raise VideoError(
              f'video {self.path} changes its frame size at frame {count} '
              f'({shape[1]}×{shape[0]} to {image.shape[1]}×{image.shape[0]} pixels)'
          )
        shape = image.shape
        yield count, image
        count += 1
    except av.error.FFmpegError as error:
      raise VideoError(
          f'video {self.path} is truncated or corrupt: decoding stopped after {count} frame(s) '
          f'({type(error).__name__}: {error})'
      ) from None
    if self.declared and count < self.declared:
      raise VideoError(
          f'video {self.path} is truncated: it states {self.declared} frames but holds {count}'
      )

  def close(self) -> None:
    if self._container is not None:
      self._container.close()
      self._container = None


def image_size(path: str) -> tuple[int, int] | None:
  """(width, height) of the image file at `path` once its EXIF rotation is applied, from its header
  (nothing decoded); None when PIL cannot open it."""
  try:
    with Image.open(path) as image:
      width, height = image.size
      orientation = image.getexif().get(0x0112, 1)
  except Exception:  # PIL raises many types for truncated or foreign files
    return None
  return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _check_frame_sizes(folder: str, names: Sequence[str]) -> None:
  """InputError naming the first frame whose size differs from the first frame's (headers only)."""
  first = None
  for name in names:
    size = image_size(os.path.join(folder, name))
    if size is None:
      continue  # unreadable: reported by name when the video reaches it
    if first is None:
      first = (name, size)
    elif size != first[1]:
      raise InputError(
          f'--video={folder}: frame {name} is {size[0]}×{size[1]} pixels, the first frame '
          f'{first[0]} {first[1][0]}×{first[1][1]}; every frame must have one size (resize them)'
      )


class OverlayWriter:
  """The overlay video: H.264 in MP4 (yuv420p, so odd sizes are padded by a pixel), opened on the first
  frame. `close` finishes the file, so what was written is playable even when the input broke off.
  """

  def __init__(self, path: str, fps: float):
    self.path = path
    self.fps = fps
    self.frames = 0
    self._container = None
    self._stream = None

  def write(self, image: np.ndarray) -> None:
    av = import_av()
    image = np.asarray(image, np.uint8)
    height, width = image.shape[:2]
    if self._container is None:
      self._container = av.open(self.path, 'w')
      self._stream = self._container.add_stream(
          'libx264', rate=fractions.Fraction(self.fps).limit_denominator(1001)
      )
      self._stream.width, self._stream.height = width + width % 2, height + height % 2
      self._stream.pix_fmt = 'yuv420p'
      self._stream.options = {'crf': '18'}
    padded = np.pad(
        image, ((0, self._stream.height - height), (0, self._stream.width - width), (0, 0))
    )
    for packet in self._stream.encode(av.VideoFrame.from_ndarray(padded, format='rgb24')):
      self._container.mux(packet)
    self.frames += 1

  def close(self) -> None:
    if self._container is None:
      return
    for packet in self._stream.encode():
      self._container.mux(packet)
    self._container.close()
    self._container = None


class ImageFile:
  """A photo on disk, decoded (`read_image`) each time it is used as an array (`np.asarray`), so that a
  folder's photos are not all in memory at once: `predict` holds these, and at most one photo is
  decoded at a time. `shape` (H, W, 3) comes from the header, EXIF rotation applied. Raises InputError
  (as `read_image` would) when the file cannot be opened."""

  def __init__(self, path: str):
    size = image_size(path)
    if size is None:
      read_image(path)  # raises the InputError that says why
      raise InputError(f'cannot read image {path}')
    self.path = path
    self.shape = (size[1], size[0], 3)
    self.dtype = np.dtype(np.uint8)
    self.ndim = 3

  def __array__(self, dtype=None, copy=None):
    image = read_image(self.path)
    if image.shape != self.shape:
      raise InputError(
          f'cannot read image {self.path}: it decodes to {image.shape[1]}×{image.shape[0]} pixels, '
          f'its header says {self.shape[1]}×{self.shape[0]}'
      )
    return image if dtype is None else image.astype(dtype)


# ==================================================================================================
# The output folder, and writing files whole
# ==================================================================================================


def _same_folder(a: str, b: str) -> bool:
  return os.path.realpath(a) == os.path.realpath(b)


def refuse_inputs_in_output(
    output: str, *, folders: dict[str, str | None], files: dict[str, str | None]
) -> None:
  """InputError when --output is the folder of an input, so nothing written there can replace one:
  folders {what: folder} (the --images or --video folder), files {what: path} (--boxes, --left, a
  --video file: their folder). Checked before anything is read or computed."""
  for what, folder in folders.items():
    if folder and os.path.isdir(folder) and _same_folder(output, folder):
      raise InputError(f'--output={output} holds {what}; give another folder for the results')
  for what, path in files.items():
    if path and os.path.isfile(path) and _same_folder(output, os.path.dirname(path) or '.'):
      raise InputError(
          f'--output={output} holds {what} ({path}); give another folder for the results'
      )


def prepare_output(output: str) -> bool:
  """Makes the folder `output` (and its parents) and checks that a file can be made in it; InputError
  saying why not (a file in the way, read-only, full), with nothing left behind. Returns whether it
  made the folder (see `remove_if_made_and_empty`)."""
  made = not os.path.isdir(output)
  probe = os.path.join(output, f'.diffhand_write_check.{os.getpid()}')
  try:
    os.makedirs(output, exist_ok=True)
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    os.remove(probe)
  except OSError as error:
    if made and os.path.isdir(output) and not os.listdir(output):
      os.rmdir(output)
    raise InputError(f'cannot write to --output={output}: {error.strerror or error}') from None
  return made


def remove_if_made_and_empty(output: str, made: bool) -> None:
  """Removes the folder `prepare_output` made when nothing was written to it (a run that failed before
  writing leaves no trace)."""
  if made and os.path.isdir(output) and not os.listdir(output):
    os.rmdir(output)


def remove_quietly(paths: Sequence[str]) -> None:
  """Removes what exists of `paths` (the pieces of a result that could not be finished)."""
  for path in paths:
    try:
      os.remove(path)
    except OSError:
      pass


def write_json(path: str, payload: Any) -> str:
  """`payload` as compact JSON at `path`, atomically."""

  def write(tmp: str) -> None:
    with open(tmp, 'w') as f:
      json.dump(payload, f)

  return files.atomic_write(path, write)


def write_obj(path: str, vertices: np.ndarray, faces: np.ndarray) -> str:
  """A mesh (N, 3), (F, 3) as OBJ at `path`, atomically."""
  return files.atomic_write(path, lambda tmp: mesh_io.write_obj(tmp, vertices, faces))


def write_png(path: str, image: np.ndarray) -> str:
  """uint8 (H, W, 3) as PNG at `path`, atomically."""
  return files.atomic_write(path, lambda tmp: mesh_io.write_image(tmp, image, 'PNG'))


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> str:
  """Arrays as an NPZ at `path`, atomically."""

  def write(tmp: str) -> None:
    with open(tmp, 'wb') as f:
      np.savez(f, **arrays)

  return files.atomic_write(path, write)
