"""Input pipeline: TFDS examples → model-ready batches, deterministic per (seed, step) and per process.

The batch for global step s is a pure function of (seed, s): an epoch's order is a permutation drawn
from (seed, epoch), and step s takes the slice [s·B, (s+1)·B) of the concatenated epochs. Resuming at
step s therefore needs nothing but s, and each JAX process takes its own contiguous part of the global
batch (process p of P gets rows [p·B/P, (p+1)·B/P)).

A split comes in one of two forms (`splits.py`: the in-memory dict of `splits.load_split`, or a
`splits.SplitSource` that reads only the rows a batch needs), and both give the same batches for the
same data. :func:`train_batches` and :func:`eval_batches` prepare the next batches on a grain pipeline
while the current step runs: in worker processes (``config.dataset.num_workers``, grain's ``mp_prefetch``) or on the main process's
threads. Each batch is still a pure function of its step, made by whichever worker, so the number of
workers and their timing never change what comes out, or in what order (:func:`map_in_order`).

A training run asks for its batches with :func:`train_batches_from_config`, which reads the input
settings from the run's ``config.dataset``; :func:`train_batches` is the keyword form beneath it.

Model-space targets (docs/design.md §2): x = (V − wrist)/vertex_scale, joints likewise; 2D joints in normalised
crop coordinates u = 2x/W − 1, v = 2y/H − 1 (``losses.project_weak_perspective``'s convention).
Images are normalised with the ImageNet mean and standard deviation, as timm's DeiT weights expect.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import flags
import grain
import grain.python
import numpy as np
from PIL import Image

from diffhand_jax.data import augment as augment_lib, depth as depth_lib, splits

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

# Batches prepared ahead of the one the training step consumes (train_batches / eval_batches).
DEFAULT_PREFETCH = 4


# --------------------------------------------------------------------------------------------------
# Per-example conventions
# --------------------------------------------------------------------------------------------------


def project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
  """Pinhole projection of camera-frame points (B, P, 3) with K (B, 3, 3) → pixels (B, P, 2)."""
  homogeneous = np.einsum('bij,bpj->bpi', K, points)
  return homogeneous[..., :2] / homogeneous[..., 2:3]


def mirror_left_hands(
    images: np.ndarray, K: np.ndarray, joints: np.ndarray, vertices: np.ndarray, is_left: np.ndarray
):
  """Mirrors left hands into right hands (docs/design.md §2): flip the image, negate x, and move the principal
  point so that projection commutes with the flip (c_x' = W − 1 − c_x, pixel centres at integers).

  Args: images (B, H, W, 3); K (B, 3, 3); joints (B, 21, 3); vertices (B, 778, 3); is_left bool (B,).
  Returns the four arrays with the left rows mirrored (new arrays; inputs untouched).
  """
  images, K, joints, vertices = (np.array(a, copy=True) for a in (images, K, joints, vertices))
  if not np.any(is_left):
    return images, K, joints, vertices
  width = images.shape[2]
  images[is_left] = images[is_left][:, :, ::-1]
  joints[is_left, :, 0] *= -1
  vertices[is_left, :, 0] *= -1
  K[is_left, 0, 2] = width - 1 - K[is_left, 0, 2]
  # A negated x with an unchanged f_x keeps K a proper intrinsic matrix (skew stays 0).
  return images, K, joints, vertices


def resize_frames(images: np.ndarray, K: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Resizes whole frames (B, H, W, 3) uint8 to (B, size, size, 3) and adjusts K (B, 3, 3) to match
  (pixel centres at integers: x' = (x + 0.5)·s − 0.5)."""
  height, width = images.shape[1:3]
  if (height, width) == (size, size):
    return images, K
  resized = np.stack(
      [np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images]
  )
  scale_x, scale_y = size / width, size / height
  K = np.array(K, copy=True)
  K[:, 0, :] *= scale_x
  K[:, 1, :] *= scale_y
  K[:, 0, 2] += 0.5 * scale_x - 0.5
  K[:, 1, 2] += 0.5 * scale_y - 0.5
  return resized, K


# Set in input worker processes (map_in_order's worker_init_fn): there the batch's large arrays are
# made in shared memory, which grain hands to the main process without copying them.
_IN_INPUT_WORKER = False


def _start_input_worker(index: int, count: int) -> None:
  del index, count
  global _IN_INPUT_WORKER
  _IN_INPUT_WORKER = True


def new_array(shape: Sequence[int], dtype) -> np.ndarray:
  """np.empty(shape, dtype); in an input worker process, an uninitialised array in shared memory."""
  if _IN_INPUT_WORKER:
    return grain.python.SharedMemoryArray(tuple(shape), dtype)
  return np.empty(shape, dtype)


# (x / 255 − mean) / std for each level x and channel, (256, 3) float32, by the float32 operations of
# that expression: looking a pixel up gives exactly what computing it gives.
_NORMALISED_LEVELS = (
    np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0) - IMAGENET_MEAN
) / IMAGENET_STD


def normalise_images(images_uint8: np.ndarray) -> np.ndarray:
  """uint8 (B, H, W, 3) → float32, ImageNet-normalised: (x / 255 − mean) / std.

  uint8 images are looked up in a table per image and channel: the same values as the arithmetic, in
  one pass over the output instead of four batch-sized ones (about 2x faster)."""
  images_uint8 = np.asarray(images_uint8)
  if images_uint8.dtype != np.uint8 or images_uint8.ndim < 3:  # other pixel types: the arithmetic
    return (images_uint8.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  out = new_array(images_uint8.shape, np.float32)
  for index in np.ndindex(images_uint8.shape[:-3]):  # one image at a time: cache-sized gathers
    for channel in range(3):
      out[index + (..., channel)] = _NORMALISED_LEVELS[:, channel][
          images_uint8[index + (..., channel)]
      ]
  return out


def crop_around_hands(
    images: np.ndarray,
    K: np.ndarray,
    joints: np.ndarray,
    vertices: np.ndarray,
    bbox: np.ndarray,
    *,
    image_size: int,
    margin: float,
    rngs: Sequence[np.random.Generator] | None = None,
    augment: Mapping[str, Any] | None = None,
    depth: np.ndarray | None = None,
):
  """Crops a square box around each hand (its bbox widened by ``margin``) and resizes it to
  ``image_size``, with optional scale / rotation / shift jitter drawn from ``rngs`` (one per example).

  A rotation of the crop is a rotation of the camera about its optical axis, so the 3D targets are
  rotated with it and image, K, 2D and 3D stay consistent (``augment.crop_and_resize``).

  Args: images (B, H, W, 3) uint8; K (B, 3, 3); joints (B, 21, 3); vertices (B, N, 3); bbox (B, 4);
  depth: optional (B, H, W) float32 maps aligned with the images, warped by the same affine (bilinear,
  0 outside the frame).
  Returns (images (B, S, S, 3), K, joints, vertices), new arrays, and the depth (B, S, S) float32 after
  them when ``depth`` is given.
  """
  out_images, out_K, out_joints, out_vertices, out_depth = [], [], [], [], []
  for i in range(len(images)):
    box = augment_lib.box_from_bbox(bbox[i], margin)
    params = {'scale': 1.0, 'rotation': 0.0, 'translation': (0.0, 0.0)}
    if augment is not None and rngs is not None:
      params = augment_lib.sample_params(rngs[i], **augment)
    image, new_K, affine = augment_lib.crop_and_resize(images[i], K[i], box, image_size, **params)
    if depth is not None:  # the same pixel map as the image: depth and RGB stay aligned
      out_depth.append(augment_lib.warp_affine(depth[i].astype(np.float32), affine, image_size))
    out_images.append(image)
    out_K.append(new_K)
    out_joints.append(augment_lib.rotate_points(joints[i], params['rotation']))
    out_vertices.append(augment_lib.rotate_points(vertices[i], params['rotation']))
  out = (
      np.stack(out_images),
      np.stack(out_K).astype(np.float32),
      np.stack(out_joints).astype(np.float32),
      np.stack(out_vertices).astype(np.float32),
  )
  return out if depth is None else out + (np.stack(out_depth).astype(np.float32),)


def resize_depth(depth: np.ndarray, size: int) -> np.ndarray:
  """(B, H, W) float maps → (B, size, size) float32, resized as `resize_frames` resizes the images
  (PIL bilinear, the same pixel-centre convention)."""
  if depth.shape[1:3] == (size, size):
    return depth.astype(np.float32)
  return np.stack(
      [
          np.asarray(
              Image.fromarray(np.ascontiguousarray(d, np.float32), mode='F').resize(
                  (size, size), Image.BILINEAR
              )
          )
          for d in depth
      ]
  ).astype(np.float32)


def _mirror_boxes(bbox: np.ndarray, width: int, is_left: np.ndarray) -> np.ndarray:
  bbox = np.array(bbox, np.float32, copy=True)
  flipped = np.stack([width - 1 - bbox[:, 2], bbox[:, 1], width - 1 - bbox[:, 0], bbox[:, 3]], -1)
  bbox[is_left] = flipped[is_left]
  return bbox


def prepare_batch(
    raw: Mapping[str, np.ndarray],
    *,
    vertex_scale: float,
    image_size: int | None = None,
    crop_margin: float | None = None,
    rngs: Sequence[np.random.Generator] | None = None,
    augment: Mapping[str, Any] | None = None,
    depth_source: str | None = None,
) -> dict[str, np.ndarray]:
  """Turns raw examples (a dict of (B, ...) arrays in the common schema) into model inputs.

  Left hands are mirrored first. Then, with ``crop_margin`` set, a square crop around each ``bbox``
  widened by that margin is resized to ``image_size``; with ``crop_margin=None`` the frame is already a
  crop (FreiHAND, synthetic) and is resized whole. ``augment`` (keys of ``augment.sample_params``) jitters
  the crop's scale, rotation and position with ``rngs`` (one generator per example).

  ``depth_source`` ('dataset' | 'estimator', config.depth.source; None = no depth): raw['depth'] (B, H, W)
  is normalised per frame (`depth.normalise`), then mirrored, cropped, rotated, scaled and resized by
  exactly the image's pixel map, and returned as 'depth' (B, S, S) float32 in [0, 1].

  Returns:
    image float32 (B, H, W, 3); vertices, joints float32 (B, 778, 3), (B, 21, 3) in model space;
    joints_2d float32 (B, 21, 2) in normalised crop coordinates; has_3d float32 (B,);
    wrist float32 (B, 3) metres (camera frame, after mirroring); K float32 (B, 3, 3); is_left bool (B,).
  """
  is_left = np.asarray(raw['hand_side']) == 'left'
  images, K, joints, vertices = mirror_left_hands(
      raw['image'],
      raw['K'].astype(np.float32),
      raw['joints_3d'].astype(np.float32),
      raw['vertices_3d'].astype(np.float32),
      is_left,
  )
  depth = None
  if depth_source is not None:
    if 'depth' not in raw:
      raise KeyError(
          f"prepare_batch: config.depth.source={depth_source!r} but the examples have no 'depth'"
      )
    depth = depth_lib.normalise(np.asarray(raw['depth']).reshape(images.shape[:3]), depth_source)
    depth[is_left] = depth[is_left][:, :, ::-1]  # mirrored with the image
  if crop_margin is not None or augment is not None:
    if image_size is None:
      raise ValueError('prepare_batch: cropping needs image_size')
    if crop_margin is None:  # the frame is the crop; jitter it as a whole
      height, width = images.shape[1:3]
      bbox = np.tile(
          np.array([[-0.5, -0.5, width - 0.5, height - 0.5]], np.float32), (len(images), 1)
      )
      margin = 0.0
    else:
      bbox = _mirror_boxes(raw['bbox'], images.shape[2], is_left)
      margin = crop_margin
    cropped = crop_around_hands(
        images,
        K,
        joints,
        vertices,
        bbox,
        image_size=image_size,
        margin=margin,
        rngs=rngs,
        augment=augment,
        depth=depth,
    )
    images, K, joints, vertices = cropped[:4]
    depth = cropped[4] if depth is not None else None
  elif image_size is not None:
    images, K = resize_frames(images, K, image_size)
    depth = None if depth is None else resize_depth(depth, image_size)
  height, width = images.shape[1:3]
  pixels = project(joints, K)
  joints_2d = np.stack(
      [2.0 * pixels[..., 0] / width - 1.0, 2.0 * pixels[..., 1] / height - 1.0], -1
  )
  wrist = joints[:, :1]
  extra = {} if depth is None else {'depth': depth.astype(np.float32)}
  return {
      **extra,
      'image': normalise_images(images),
      'vertices': ((vertices - wrist) / vertex_scale).astype(np.float32),
      'joints': ((joints - wrist) / vertex_scale).astype(np.float32),
      'joints_2d': joints_2d.astype(np.float32),
      'has_3d': np.asarray(raw['has_3d'], np.float32),
      'wrist': wrist[:, 0].astype(np.float32),
      'K': K,
      'is_left': is_left,
  }


# --------------------------------------------------------------------------------------------------
# Deterministic, resumable batching
# --------------------------------------------------------------------------------------------------


def global_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Example indices of global step ``step``: (batch_size,) int64, a pure function of its arguments."""
  if num_examples <= 0:
    raise ValueError('cannot batch an empty split')
  first = step * batch_size
  positions = np.arange(first, first + batch_size)
  epochs = positions // num_examples
  out = np.empty(batch_size, np.int64)
  for epoch in np.unique(epochs):
    order = np.random.default_rng([seed, int(epoch)]).permutation(num_examples)
    rows = epochs == epoch
    out[rows] = order[positions[rows] % num_examples]
  return out


def colour_jitter(
    images_uint8: np.ndarray, rngs: Sequence[np.random.Generator], strength: float
) -> np.ndarray:
  """Random brightness, contrast and per-channel gain, (B, H, W, 3) uint8 → uint8; example i draws
  from rngs[i].

  Per image, with m its mean grey level (float32) and draws b, c, g_k:
  out = clip(((x − m)·c + m + b)·g_k, 0, 255), truncated to uint8. That is a function of the level x
  of each channel, so it is applied as a 256-entry table per channel, computed with the formula's
  own float32/float64 operations: exactly what the formula gives pixel by pixel, about 5x faster.
  """
  if strength <= 0:
    return images_uint8
  draws = np.array([rng.uniform(-1.0, 1.0, 5) for rng in rngs])  # (B, 5) float64
  brightness = 40.0 * strength * draws[:, 0]
  contrast = 1.0 + 0.3 * strength * draws[:, 1]
  gain = 1.0 + 0.1 * strength * draws[:, 2:5]
  levels = np.arange(256, dtype=np.float32)
  out = np.empty_like(images_uint8)
  for i, image in enumerate(images_uint8):
    mean = image.astype(np.float32).mean()  # float32, as the batch's mean over (H, W, 3) is
    centred = (levels - mean).astype(np.float64)  # float32 subtraction, then float64 as the formula
    table = (centred * contrast[i] + np.float64(mean) + brightness[i])[:, None] * gain[
        i
    ]  # (256, 3)
    table = np.clip(table, 0, 255).astype(np.uint8)
    for channel in range(images_uint8.shape[-1]):
      out[i, ..., channel] = table[:, channel][image[..., channel]]
  return out


def local_indices(
    num_examples: int,
    batch_size: int,
    seed: int,
    step: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
  """This process's example indices of global step ``step``: its contiguous part,
  [p·B/P, (p+1)·B/P), of :func:`global_indices`."""
  if batch_size % process_count:
    raise ValueError(
        f'global batch_size={batch_size} does not split over {process_count} processes'
    )
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, {process_count})')
  local = batch_size // process_count
  indices = global_indices(num_examples, batch_size, seed, step)
  return indices[process_index * local : (process_index + 1) * local]


def train_batch(
    arrays,
    step: int,
    *,
    batch_size: int,
    seed: int,
    vertex_scale: float,
    image_size: int | None = None,
    colour_strength: float = 0.0,
    crop_margin: float | None = None,
    augment: Mapping[str, Any] | None = None,
    process_index: int = 0,
    process_count: int = 1,
    depth_source: str | None = None,
) -> dict[str, np.ndarray]:
  """This process's part of the global batch of step ``step``: a pure function of its arguments.

  ``arrays`` is an in-memory dict or a :class:`splits.SplitSource` (the same data gives the same batch).
  ``batch_size`` is the global batch; it must divide evenly among processes. Returns
  :func:`prepare_batch`'s dict with batch_size / process_count rows.
  """
  indices = local_indices(
      splits.num_rows(arrays), batch_size, seed, step, process_index, process_count
  )
  local = len(indices)
  positions = range(process_index * local, (process_index + 1) * local)
  raw = splits.gather_rows(arrays, indices)
  # One generator per row of the global batch: augmentation does not depend on how it is split.
  rngs = [np.random.default_rng([seed, step, 1, position]) for position in positions]
  raw['image'] = colour_jitter(raw['image'], rngs, colour_strength)
  return prepare_batch(
      raw,
      vertex_scale=vertex_scale,
      image_size=image_size,
      crop_margin=crop_margin,
      rngs=rngs,
      augment=augment,
      depth_source=depth_source,
  )


def prefetch_settings(arrays, prefetch: int | None, num_threads: int | None) -> tuple[int, int]:
  """(batches ahead, threads) of the main-process pipeline: the arguments, else the source's, else the
  module defaults."""
  if prefetch is None:
    prefetch = getattr(arrays, 'prefetch', None)
  if prefetch is None:
    prefetch = DEFAULT_PREFETCH
  if num_threads is None:
    num_threads = getattr(arrays, 'num_threads', None)
  if num_threads is None:  # leave a core to the training step
    num_threads = min(max(int(prefetch), 1), max(1, available_cpus() - 1))
  if prefetch < 0 or num_threads < 1:
    raise ValueError(f'prefetch must be >= 0 and num_threads >= 1; got {prefetch}, {num_threads}')
  return int(prefetch), int(num_threads)


# Input worker processes by default: one per CPU that the training process leaves free, at most this.
MAX_DEFAULT_WORKERS = 8


def available_cpus() -> int:
  """The CPUs this process may run on (its affinity mask: what taskset or SLURM's --cpus-per-task
  give it), else os.cpu_count()."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):  # not Linux
    return os.cpu_count() or 1


def default_num_workers(arrays) -> int:
  """Input worker processes when none are asked for: 0 for an in-memory split (the main process's
  threads are faster there than shipping the split to workers); for a streamed :class:`splits.SplitSource`
  one per CPU that JAX's process leaves free, min(8, available CPUs − 1)."""
  if not isinstance(arrays, splits.SplitSource):
    return 0
  return min(MAX_DEFAULT_WORKERS, max(available_cpus() - 1, 0))


def _mark_absl_flags_parsed() -> None:
  """Grain reads absl flags of its own; a program that parses its flags into its own FlagValues
  (diffhand_jax.command_line) leaves absl's global FLAGS unparsed, which grain would refuse, so they are
  marked parsed, at their defaults, before a pipeline starts."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


# The step range of an endless training pipeline (grain datasets have a length).
ENDLESS_STEPS = 2**40


class BatchIterator(Iterator[Any]):
  """The iterator :func:`train_batches` and :func:`eval_batches` return: yields what ``make(item)``
  gives for each item, in order, from a grain pipeline (in the main process, or in worker processes).

  ``close()`` (or leaving a ``with`` block) stops its threads and worker processes; dropping it does too,
  less promptly. An error while preparing an item surfaces at that item, as in a plain loop. A worker
  process that dies (killed, out of memory) stops iteration with a RuntimeError that names the items it
  had not delivered (``describe(items)``): the one it was preparing is among them, and the others are
  those it had ready but which died with it. It does not wait for them.
  """

  def __init__(
      self,
      iterator,
      items: Sequence[Any],
      describe: Callable[[Sequence[Any]], str],
      workers: int,
      per_worker_buffer: int,
  ):
    self._iterator = iterator
    self._items = items
    self._describe = describe
    self._position = 0
    self.num_workers = workers
    self._per_worker_buffer = per_worker_buffer

  def __iter__(self) -> BatchIterator:
    return self

  def __next__(self) -> Any:
    if self._position >= len(self._items):
      raise StopIteration
    try:
      out = next(self._iterator)
    except StopIteration:
      raise
    except RuntimeError as error:
      if 'terminated unexpectedly' not in str(error):  # grain's words for a dead worker process
        raise
      code = re.search(r'exit code (-?\d+)', str(error))
      code = code.group(1) if code else '?'
      # The worker of this item also held the next ones of its share (every num_workers-th), up to
      # its buffer plus the one it was making.
      pending = self._items[
          self._position : self._position
          + self.num_workers * (self._per_worker_buffer + 1) : max(self.num_workers, 1)
      ]
      raise RuntimeError(
          f'an input worker process died (exit code {code}) while preparing '
          f'{self._describe(pending)}. Exit code -9 is usually the system killing it for memory, '
          f'-7 (SIGBUS) a full /dev/shm, where the batches travel: lower '
          f'config.dataset.num_workers or prefetch_batches, or enlarge /dev/shm'
      ) from error
    self._position += 1
    # Plain numpy arrays (views of the shared-memory ones, which they keep alive) for the caller.
    return _plain_arrays(out)

  def close(self) -> None:
    """Stops the pipeline's threads and worker processes."""
    iterator, self._iterator = self._iterator, None
    if iterator is not None:
      iterator.close()

  def __enter__(self) -> BatchIterator:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def __del__(self) -> None:
    if getattr(self, '_iterator', None) is not None and not sys.is_finalizing():
      self.close()


def _plain_arrays(tree: Any) -> Any:
  if isinstance(tree, dict):
    return {key: _plain_arrays(value) for key, value in tree.items()}
  if isinstance(tree, tuple):
    return tuple(_plain_arrays(value) for value in tree)
  if isinstance(tree, np.ndarray) and type(tree) is not np.ndarray:
    return tree.view(np.ndarray)
  return tree


def map_in_order(
    make: Callable[[Any], Any],
    items: Sequence[Any],
    *,
    num_workers: int = 0,
    prefetch: int = DEFAULT_PREFETCH,
    num_threads: int = 1,
    describe: Callable[[Sequence[Any]], str] = repr,
) -> BatchIterator:
  """``make(item)`` for each of ``items`` (a sequence, e.g. a range), in order, on a grain pipeline.

  num_workers = 0: in this process, ``prefetch`` results ahead on ``num_threads`` threads (prefetch
  0: each when asked for, in the caller's thread). num_workers = N > 0: in N worker processes
  (``grain``'s ``mp_prefetch``): worker w makes items w, w + N, w + 2N, ... one after another, holds
  up to ceil(prefetch / N) of them ready, and the results are taken from the workers in turn, so
  they come out in the order of ``items`` whatever the workers' timing. ``make`` and what it refers
  to are pickled into each worker (it must be a module-level function or a partial of one).

  A pure ``make`` therefore gives exactly what ``[make(i) for i in items]`` gives, for any number of
  workers or threads. Returns a :class:`BatchIterator`.
  """
  if num_workers < 0 or prefetch < 0 or num_threads < 1:
    raise ValueError(
        f'num_workers and prefetch must be >= 0 and num_threads >= 1; '
        f'got {num_workers}, {prefetch}, {num_threads}'
    )
  _mark_absl_flags_parsed()
  dataset = grain.MapDataset.source(items).map(make)
  per_worker_buffer = max(1, -(-prefetch // max(num_workers, 1)))
  if num_workers == 0:
    pipeline = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    )
  else:
    # Each worker makes its items one at a time (no threads of its own: the workers are the
    # parallelism). Every array travels through shared memory (/dev/shm), so the messages on the
    # workers' queues hold only names and shapes: a few hundred bytes, which a pipe writes atomically.
    # A worker killed mid-message could otherwise leave half a message that the main process would
    # wait on for ever.
    pipeline = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    ).mp_prefetch(
        grain.MultiprocessingOptions(
            num_workers=num_workers,
            per_worker_buffer_size=per_worker_buffer,
        ),
        worker_init_fn=_start_input_worker,
    )
  return BatchIterator(iter(pipeline), items, describe, num_workers, per_worker_buffer)


def _describe_steps(arrays, batch_size, seed, process_index, process_count, steps) -> str:
  """'the batch(es) of step(s) s, ... (examples [...] of NAME (in FILE))', for a dead worker's message."""
  steps = list(steps)
  text = f'the batch{"es" if len(steps) > 1 else ""} of step{"s" if len(steps) > 1 else ""} '
  text += ', '.join(str(step) for step in steps)
  if isinstance(arrays, splits.SplitSource) and steps:
    rows = np.concatenate(
        [
            local_indices(arrays.num_examples, batch_size, seed, step, process_index, process_count)
            for step in steps
        ]
    )
    text += f' ({arrays.describe_rows(rows)})'
  return text


def train_batches(
    arrays,
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    vertex_scale: float,
    image_size: int | None = None,
    colour_strength: float = 0.0,
    crop_margin: float | None = None,
    augment: Mapping[str, Any] | None = None,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int | None = None,
    num_threads: int | None = None,
    num_workers: int | None = None,
    depth_source: str | None = None,
) -> BatchIterator:
  """Yields this process's part of the global batch for steps start_step, start_step + 1, ...
  (:func:`train_batch` of each step), endlessly.

  ``arrays`` is an in-memory dict or a :class:`splits.SplitSource`. ``batch_size`` is the global batch; it must
  divide evenly among processes. ``num_workers`` input worker processes prepare the batches (None:
  :func:`default_num_workers`; 0: this process, with ``prefetch`` batches prepared ahead on
  ``num_threads`` threads: None takes the source's settings, else ``DEFAULT_PREFETCH`` on up to
  cpu_count − 1 threads; prefetch 0: no background work). See :func:`map_in_order`.

  Each batch is a pure function of (seed, step), made by whichever worker: the batches are identical,
  bit for bit, for any number of workers or threads, and starting at step s yields exactly the batches
  that an iterator started earlier yields from s on.
  """
  if batch_size % process_count:
    raise ValueError(
        f'global batch_size={batch_size} does not split over {process_count} processes'
    )
  make = functools.partial(
      train_batch,
      arrays,
      batch_size=batch_size,
      seed=seed,
      vertex_scale=vertex_scale,
      image_size=image_size,
      colour_strength=colour_strength,
      crop_margin=crop_margin,
      augment=augment,
      process_index=process_index,
      process_count=process_count,
      depth_source=depth_source,
  )
  prefetch, num_threads = prefetch_settings(arrays, prefetch, num_threads)
  return map_in_order(
      make,
      range(start_step, start_step + ENDLESS_STEPS),
      num_workers=default_num_workers(arrays) if num_workers is None else int(num_workers),
      prefetch=prefetch,
      num_threads=num_threads,
      describe=functools.partial(
          _describe_steps, arrays, batch_size, seed, process_index, process_count
      ),
  )


def train_batches_from_config(
    arrays,
    dataset_config,
    *,
    batch_size: int,
    seed: int,
    start_step: int,
    vertex_scale: float,
    image_size: int | None,
    process_index: int = 0,
    process_count: int = 1,
    depth_source: str | None = None,
) -> BatchIterator:
  """:func:`train_batches` of a run: the input settings come from its ``config.dataset``
  (``dataset_config``: colour_jitter, crop_margin, the crop jitter of :func:`augment_options`,
  num_workers, prefetch_batches, num_threads); what is not the dataset's comes as arguments: the global
  batch, the seed, the first step, the model's vertex_scale and img_size, and this process's place
  among the JAX processes.

  Yields exactly the batches of the keyword form with those values (the batches never depend on the
  workers, threads or prefetch).
  """
  return train_batches(
      arrays,
      batch_size=batch_size,
      seed=seed,
      start_step=start_step,
      vertex_scale=vertex_scale,
      image_size=image_size,
      colour_strength=dataset_config.get('colour_jitter', 0.0),
      crop_margin=dataset_config.get('crop_margin'),
      augment=augment_options(dataset_config),
      process_index=process_index,
      process_count=process_count,
      prefetch=dataset_config.get('prefetch_batches'),
      num_threads=dataset_config.get('num_threads'),
      num_workers=dataset_config.get('num_workers'),
      depth_source=depth_source,
  )


def eval_batch(
    arrays,
    start: int,
    *,
    batch_size: int,
    vertex_scale: float,
    image_size: int | None = None,
    crop_margin: float | None = None,
    depth_source: str | None = None,
) -> tuple[dict[str, np.ndarray], int]:
  """(batch, num_valid) of the evaluation batch starting at row ``start``: rows start, start + 1, ...,
  the last row repeated past the end of the split, and how many rows are real."""
  num_examples = splits.num_rows(arrays)
  indices = np.minimum(np.arange(start, start + batch_size), num_examples - 1)
  valid = int(min(batch_size, num_examples - start))
  batch = prepare_batch(
      splits.gather_rows(arrays, indices),
      vertex_scale=vertex_scale,
      image_size=image_size,
      crop_margin=crop_margin,
      depth_source=depth_source,
  )
  return batch, valid


def _describe_eval_batches(arrays, batch_size, starts) -> str:
  starts = list(starts)
  text = 'the evaluation batch(es) of rows ' + ', '.join(
      f'[{start}, {start + batch_size})' for start in starts
  )
  if isinstance(arrays, splits.SplitSource) and starts:
    rows = np.minimum(
        np.concatenate([np.arange(start, start + batch_size) for start in starts]),
        arrays.num_examples - 1,
    )
    text += f' ({arrays.describe_rows(rows)})'
  return text


def eval_batches(
    arrays,
    *,
    batch_size: int,
    vertex_scale: float,
    image_size: int | None = None,
    crop_margin: float | None = None,
    prefetch: int | None = None,
    num_threads: int | None = None,
    num_workers: int = 0,
    depth_source: str | None = None,
) -> BatchIterator:
  """Yields (batch, num_valid) over a whole split in order; the last batch is padded by repetition so
  every batch has the same shape (one compilation), and ``num_valid`` says how many rows are real.

  ``arrays`` is an in-memory dict or a :class:`splits.SplitSource`; ``prefetch`` / ``num_threads`` as in
  :func:`train_batches`. ``num_workers`` defaults to 0 (this process): evaluation during training
  then starts no second set of worker processes beside the training ones.
  """
  prefetch, num_threads = prefetch_settings(arrays, prefetch, num_threads)
  return map_in_order(
      functools.partial(
          eval_batch,
          arrays,
          batch_size=batch_size,
          vertex_scale=vertex_scale,
          image_size=image_size,
          crop_margin=crop_margin,
          depth_source=depth_source,
      ),
      range(0, splits.num_rows(arrays), batch_size),
      num_workers=num_workers,
      prefetch=prefetch,
      num_threads=num_threads,
      describe=functools.partial(_describe_eval_batches, arrays, batch_size),
  )


def augment_options(dataset_config) -> dict[str, Any] | None:
  """The crop jitter of a dataset config, as `augment.sample_params` keywords; None = no jitter."""
  if dataset_config.get('max_rotation_deg') is None:
    return None
  return {
      'scale_range': tuple(dataset_config.get('scale_range', (1.0, 1.0))),
      'max_rotation': float(np.deg2rad(dataset_config.max_rotation_deg)),
      'max_translation': float(dataset_config.get('max_translation', 0.0)),
  }
