"""Hand meshes for a video: each frame's sampler warm-started from the frame before.

  python -m diffhand_jax.predict --workdir=DIR --video=IN.mp4 --output=OUT_DIR [--warm_strength=0.3]

* Reading and writing the video: inference/io.py (`Frames`, a video file through PyAV or a folder of
  images; `OverlayWriter`, H.264 MP4). A video that breaks off raises `VideoError` naming the file,
  after what was decoded before the break has been processed and written.
* Tracking (`BoxTracker`, `Track`): a detector's boxes (anything with `detect(image)` returning objects
  with `.box` (x0, y0, x1, y1) pixels, `.side` and `.score`, such as inference/detection.py's) are joined
  to tracks frame to frame by box overlap (IoU, same side). Without a detector there is one hand, in a
  box given for the first frame (or the largest centred square), which stays, or with `follow` moves to
  the centre of the mesh predicted on the frame before (as good as the model's camera).
* Sampling (`WarmStartSampler`): a track's first frame runs DDIM from noise (`diffhand.reconstruct`);
  later frames start from the previous frame's mesh, noised part of the way, and run only the last
  k = int(S·strength) steps (`diffusion.ddim_sample_from`, docs/design.md §3). strength = 1 makes every
  frame independent. A new track, a track seen again after missed frames, or a large change of the crop
  (mean absolute difference above `reset_threshold` of the pixel range) starts from noise again.
  `step_track` runs one track's frame; `step_tracks` several tracks' in one call, padded to a fixed
  batch (the live camera's, inference/live.py).
* Crops, mirroring and the un-mirroring of left hands are the inference core's (inference/pipeline.py,
  inference/full_frame.py); the settings shared with photos are its `Options`.
* Writing: the overlay video and one NPZ per track (`track_arrays`; the layout is in docs/design.md
  §8, "Video results").
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax import diffusion
from diffhand_jax.data import input_pipeline
from diffhand_jax.geometry import conventions, hypotheses, render
from diffhand_jax.inference import crops, depth as depth_lib, detection, full_frame, io, loading
from diffhand_jax.inference import pipeline, sampling
from diffhand_jax.inference.io import InputError, VideoError
from diffhand_jax.models import diffhand

# The NPZ layout's version (docs/design.md §8): bump when a key changes meaning.
TRACK_FORMAT = 1


# ==================================================================================================
# Tracking
# ==================================================================================================


@dataclasses.dataclass
class Track:
  """One hand followed through the video, with its warm-start state and its per-frame results."""

  track_id: int
  box: np.ndarray | None  # (4,) x0, y0, x1, y1 pixels; None: the largest centred square
  side: str = 'right'
  score: float = 1.0
  missed: int = 0  # frames since it was last seen
  guess: np.ndarray | None = None  # (N, 3) model space: the last mesh, the next frame's start
  noise: jax.Array | None = None  # (K, 1, N, 3): the track's noise, when reused across frames
  last_crop: np.ndarray | None = None  # uint8 (S, S, 3): the last model input (change test)
  keypoints: np.ndarray | None = (
      None  # (21, 2) pixels: the detector's landmarks, when it gives them
  )
  records: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def reset(self) -> None:
    self.guess, self.noise, self.last_crop = None, None, None


class BoxTracker:
  """Joins each frame's detections to tracks by box overlap.

  Greedy: the pair (track, detection) of the same side with the largest IoU is joined first, while the
  IoU is at least `iou_threshold`. A detection left over starts a new track; a track left over counts a
  missed frame and ends after `max_missed` of them.
  """

  def __init__(self, iou_threshold: float = 0.3, max_missed: int = 5):
    self.iou_threshold = float(iou_threshold)
    self.max_missed = int(max_missed)
    self.tracks: list[Track] = []  # live
    self.ended: list[Track] = []  # missed for longer than max_missed
    self._next_id = 0

  def new_track(self, box, side: str = 'right', score: float = 1.0) -> Track:
    track = Track(self._next_id, None if box is None else np.asarray(box, np.float64), side, score)
    self._next_id += 1
    self.tracks.append(track)
    return track

  def update(self, detections: Sequence[Any]) -> list[tuple[Track, Any]]:
    """detections: objects with .box (4,), .side and .score. Returns (track, detection) for every track
    seen in this frame; a track that was missing before starts again from noise."""
    pairs = []
    if self.tracks and detections:
      boxes = np.array([[np.nan] * 4 if t.box is None else t.box for t in self.tracks])
      found = np.array([np.asarray(d.box, np.float64) for d in detections])
      iou = np.nan_to_num(detection.box_iou(boxes[:, None], found[None]))
      same_side = np.array([[t.side == d.side for d in detections] for t in self.tracks])
      iou = np.where(same_side, iou, 0.0)
      while iou.size and iou.max() >= self.iou_threshold and iou.max() > 0:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        pairs.append((self.tracks[i], detections[j]))
        iou[i, :], iou[:, j] = -1.0, -1.0
    matched_tracks = {id(t) for t, _ in pairs}
    matched_detections = {id(d) for _, d in pairs}
    for track in list(self.tracks):
      if id(track) not in matched_tracks:
        track.missed += 1
        if track.missed > self.max_missed:
          self.tracks.remove(track)
          self.ended.append(track)
    for track, hand in pairs:
      if track.missed:
        track.reset()  # its last mesh is stale
      track.missed = 0
      track.box = np.asarray(hand.box, np.float64)
      track.score = float(getattr(hand, 'score', 1.0))
    for hand in detections:
      if id(hand) not in matched_detections:
        track = self.new_track(hand.box, hand.side, float(getattr(hand, 'score', 1.0)))
        pairs.append((track, hand))
    return pairs


def mesh_box(
    vertices_model: np.ndarray, camera: np.ndarray, crop: np.ndarray, image_size: int
) -> np.ndarray | None:
  """The box (4,) in frame pixels of a mesh (N, 3) model space, placed by the weak-perspective camera
  (s, tx, ty) of the square `crop` (x0, y0, x1, y1) that the model saw at image_size pixels; None when
  it is degenerate (not finite, or under 2 model pixels)."""
  scale, tx, ty = (float(c) for c in camera)
  u = scale * vertices_model[:, 0] + tx
  v = scale * vertices_model[:, 1] + ty
  side = crop[2] - crop[0]
  x = crop[0] + (u + 1.0) / 2.0 * side
  y = crop[1] + (v + 1.0) / 2.0 * side
  box = np.array([x.min(), y.min(), x.max(), y.max()])
  if (
      not np.all(np.isfinite(box))
      or min(box[2] - box[0], box[3] - box[1]) < 2.0 * side / image_size
  ):
    return None
  return box


def follow_box(box: np.ndarray, found: np.ndarray | None) -> np.ndarray:
  """The hand box (4,) to crop the next frame around when a hand is followed without a detector: the
  box, moved to the centre of found, the box of the mesh just predicted (`mesh_box`). Its size stays:
  a model whose camera scale barely depends on the image (the CPU demo's) would otherwise make the crop
  grow or shrink without end, since the mesh box it predicts scales with the crop. When found is None,
  or its centre lies outside the box (one bad camera), the box stays."""
  box = np.asarray(box, np.float64)
  if found is None:
    return box
  centre = (found[:2] + found[2:]) / 2.0
  if np.any(centre < box[:2]) or np.any(centre > box[2:]):
    return box
  half = (box[2:] - box[:2]) / 2.0
  return np.concatenate([centre - half, centre + half])


# ==================================================================================================
# Warm-start sampling
# ==================================================================================================


def warm_reconstruct(
    model: diffhand.DiffHand,
    params: Any,
    images: jax.Array,
    x0_guess: jax.Array,
    noise: jax.Array,
    key: jax.Array,
    *,
    num_steps: int,
    strength: float,
    eta: float = 0.0,
    schedule: diffusion.Schedule | None = None,
    batch_stats: Any = None,
    depth: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """`diffhand.reconstruct` started from a guess: the image encoded once, then for each of the K
  noises the guess noised to τ_{S−k} and the last k = int(S·strength) DDIM steps
  (`diffusion.ddim_sample_from`).

  images float32 (B, H, W, 3), normalised; x0_guess (B, N, 3) model space; noise (K, B, N, 3); key for
  η > 0; batch_stats: the encoder's BatchNorm statistics, for a model that has them; depth (B, H, W)
  for a use_depth model. Returns vertices (B, K, N, 3) model space and camera (B, K, 3).
  """
  variables = diffhand.model_variables(params, batch_stats)
  cond = model.apply(variables, images, depth, method=diffhand.DiffHand.encode)
  camera = model.apply(variables, cond, method=diffhand.DiffHand.camera)
  schedule = diffusion.cosine_schedule() if schedule is None else schedule

  def denoise_fn(x_t, t):
    return model.apply(variables, cond, x_t, t, method=diffhand.DiffHand.denoise)[0]

  stochastic = not (isinstance(eta, (int, float)) and eta == 0.0)

  def sample_one(one_noise, sampler_key):
    return diffusion.ddim_sample_from(
        denoise_fn,
        x0_guess,
        schedule,
        strength=strength,
        noise=one_noise,
        num_steps=num_steps,
        eta=eta,
        key=sampler_key if stochastic else None,
    )

  num_hypotheses = noise.shape[0]
  vertices = jax.vmap(sample_one)(noise, jax.random.split(key, num_hypotheses))
  batch = images.shape[0]
  return {
      'vertices': jnp.swapaxes(vertices, 0, 1),
      'camera': jnp.broadcast_to(camera[:, None], (batch, num_hypotheses, 3)),
  }


@dataclasses.dataclass
class WarmStartSampler:
  """Frame-by-frame sampling of a trained DiffHand: cold (from noise, S decoder passes) without a guess,
  warm (`warm_reconstruct`, k = int(S·strength) passes) with one. strength = 1 is always cold.

  model, params, schedule: from `loading.load_trained`. Meshes stay in model space (× vertex_scale
  for metres), in the frame the model saw (mirrored for left hands).
  """

  model: diffhand.DiffHand
  params: Any
  schedule: Any
  num_steps: int = 10
  strength: float = 0.5
  num_hypotheses: int = 1
  method: str = 'mean'
  eta: float = 0.0
  batch_stats: Any = None  # the encoder's BatchNorm statistics, for a model that has them
  estimator: Any = (
      None  # a depth model's estimator (`depth.load_estimator`), run on each frame's crop
  )

  def __post_init__(self):
    diffusion.warm_start_steps(self.num_steps, self.strength)  # validates both
    if self.num_hypotheses < 1:
      raise ValueError('WarmStartSampler: num_hypotheses must be >= 1')
    if self.method not in hypotheses.METHODS:
      raise ValueError(f'WarmStartSampler: method must be one of {hypotheses.METHODS}')
    self._cold = depth_lib.make_reconstruct_fn(
        self.model,
        self.estimator,
        num_steps=int(self.num_steps),
        num_hypotheses=int(self.num_hypotheses),
        eta=float(self.eta),
        schedule=self.schedule,
    )
    warm = functools.partial(
        warm_reconstruct,
        self.model,
        num_steps=int(self.num_steps),
        strength=float(self.strength),
        eta=float(self.eta),
        schedule=self.schedule,
    )
    if not self.model.use_depth:
      self._warm = jax.jit(warm)
      return
    estimator = self.estimator
    if estimator is None:
      raise ValueError('WarmStartSampler: a depth-conditioned model needs its depth estimator')

    def warm_with_depth(params, images, guess, noise, key, batch_stats=None, estimator_params=None):
      # The estimator runs on the frame's crop inside the same compiled call.
      estimated = depth_lib.estimate(estimator, images, estimator_params)
      return warm(params, images, guess, noise, key, batch_stats=batch_stats, depth=estimated)

    jitted = jax.jit(warm_with_depth)
    self._warm = functools.partial(jitted, estimator_params=estimator.params)

  @property
  def independent(self) -> bool:
    """Every frame from noise: strength 1, or a model without diffusion (one pass, nothing to warm)."""
    return self.strength >= 1.0 or not self.model.diffusion

  def passes(self, warm: bool) -> int:
    """Decoder passes of one frame."""
    if not self.model.diffusion:
      return 1
    if warm and not self.independent:
      return diffusion.warm_start_steps(self.num_steps, self.strength)
    return int(self.num_steps)

  def noise(self, key: jax.Array, batch: int) -> jax.Array:
    """Starting noise (K, B, N, 3)."""
    shape = (self.num_hypotheses, batch, self.model.num_vertices, 3)
    return jax.random.normal(key, shape, jnp.float32)

  def __call__(
      self, images: np.ndarray, guess: np.ndarray | None, noise: jax.Array, key: jax.Array
  ) -> dict[str, Any]:
    """images float32 (B, H, W, 3) normalised; guess (B, N, 3) model space or None; noise (K, B, N, 3).

    Returns vertices (B, N, 3) (the `method` aggregate of the K hypotheses, float64, model space),
    hypotheses (B, K, N, 3), camera (B, 3), warm (bool) and passes (decoder passes per image).
    """
    warm = guess is not None and not self.independent
    images = jnp.asarray(images, jnp.float32)
    if warm:
      out = self._warm(
          self.params,
          images,
          jnp.asarray(guess, jnp.float32),
          noise,
          key,
          batch_stats=self.batch_stats,
      )
    else:
      out = self._cold(self.params, images, key, noise=noise, batch_stats=self.batch_stats)
    sampled = np.asarray(out['vertices'], np.float64)
    return {
        'vertices': hypotheses.aggregate(sampled, self.method),
        'hypotheses': sampled,
        'camera': np.asarray(out['camera'], np.float64)[:, 0],
        'warm': warm,
        'passes': self.passes(warm),
    }


def step_track(
    sampler: WarmStartSampler,
    track: Track,
    model_crop: np.ndarray,
    key: jax.Array,
    *,
    reuse_noise: bool = True,
    reset_threshold: float = 0.15,
) -> dict[str, Any]:
  """One frame of one track: `sampler` on model_crop (uint8 (S, S, 3), the model's input, already
  mirrored for a left hand), warm from the track's last mesh unless the crop changed by more than
  reset_threshold (`image_change`), in which case it starts from noise. Updates the track's guess, noise
  and last crop; returns the sampler's output for the one image."""
  return step_tracks(
      sampler,
      [track],
      model_crop[None],
      [key],
      jax.random.fold_in(key, 2),
      reuse_noise=reuse_noise,
      reset_threshold=reset_threshold,
  )


def step_tracks(
    sampler: WarmStartSampler,
    tracks: Sequence[Track],
    model_crops: np.ndarray,
    keys: Sequence[jax.Array],
    sampler_key: jax.Array,
    *,
    batch: int | None = None,
    reuse_noise: bool = True,
    reset_threshold: float = 0.15,
) -> dict[str, Any]:
  """One frame of several tracks in one sampler call: `step_track` for M tracks at once.

  model_crops uint8 (M, S, S, 3); keys: one per track (its noise comes from fold_in(key, 1));
  sampler_key: the call's. batch ≥ M pads the call to that many rows (zeros), so that a caller whose
  number of hands changes compiles once per batch size. A track whose crop changed by more than
  reset_threshold starts again from noise; the call is warm only when every track has a guess (a
  frame with a new track runs them all from noise: one call, not two). Returns the sampler's output
  for the M tracks.
  """
  count = len(tracks)
  batch = count if batch is None else int(batch)
  if not 0 < count <= batch or len(model_crops) != count or len(keys) != count:
    raise ValueError(
        f'step_tracks: {count} tracks, {len(model_crops)} crops, {len(keys)} keys, batch {batch}'
    )
  for track, crop, key in zip(tracks, model_crops, keys):
    if image_change(track.last_crop, crop) > reset_threshold:
      track.reset()
    if track.noise is None or not reuse_noise:
      track.noise = sampler.noise(jax.random.fold_in(key, 1), 1)
  pad = batch - count
  crops_in = np.asarray(model_crops, np.uint8)
  noise = jnp.concatenate([track.noise for track in tracks], axis=1)
  warm = all(track.guess is not None for track in tracks)
  guess = np.stack([track.guess for track in tracks]) if warm else None
  if pad:
    crops_in = np.concatenate([crops_in, np.zeros((pad,) + crops_in.shape[1:], np.uint8)])
    noise = jnp.concatenate([noise, jnp.zeros((noise.shape[0], pad) + noise.shape[2:])], axis=1)
    if guess is not None:
      guess = np.concatenate([guess, np.zeros((pad,) + guess.shape[1:])])
  out = sampler(input_pipeline.normalise_images(crops_in), guess, noise, sampler_key)
  for row, (track, crop) in enumerate(zip(tracks, model_crops)):
    track.guess, track.last_crop = out['vertices'][row], crop
  return dict(
      out,
      vertices=out['vertices'][:count],
      hypotheses=out['hypotheses'][:count],
      camera=out['camera'][:count],
  )


def image_change(a: np.ndarray | None, b: np.ndarray) -> float:
  """Mean absolute difference of two uint8 images of one shape, as a fraction of 255 (1 if a is None)."""
  if a is None or a.shape != b.shape:
    return 1.0
  return float(np.mean(np.abs(a.astype(np.float32) - b.astype(np.float32))) / 255.0)


# ==================================================================================================
# The tracks' files
# ==================================================================================================


def track_arrays(
    track: Track, faces: np.ndarray, settings: dict[str, Any]
) -> dict[str, np.ndarray]:
  """A track's records as the arrays of its NPZ (docs/design.md §8, "Video results")."""
  records = track.records
  return {
      'format': np.int32(TRACK_FORMAT),
      'track_id': np.int32(track.track_id),
      'frame_index': np.array([r['frame_index'] for r in records], np.int32),
      'box': np.array([r['box'] for r in records], np.float32).reshape(-1, 4),
      'crop_box': np.array([r['crop_box'] for r in records], np.float32).reshape(-1, 4),
      'hand_side': np.array([r['hand_side'] for r in records], '<U5'),
      'score': np.array([r['score'] for r in records], np.float32),
      'joints': np.array([r['joints'] for r in records], np.float32).reshape(-1, 21, 3),
      'vertices': np.array([r['vertices'] for r in records], np.float32),
      'camera': np.array([r['camera'] for r in records], np.float32).reshape(-1, 3),
      'warm': np.array([r['warm'] for r in records], bool),
      'decoder_passes': np.array([r['passes'] for r in records], np.int32),
      'faces': np.asarray(faces, np.int32),
      'fps': np.float32(settings['fps']),
      'settings': np.array(json.dumps(settings)),
  }


# ==================================================================================================
# A whole video
# ==================================================================================================

# The video path's defaults: one hand in a box or the centred square, one hypothesis a frame.
VIDEO_DEFAULTS = pipeline.Options(detector='none', num_hypotheses=1)


@dataclasses.dataclass(frozen=True)
class VideoOptions:
  """What only a video has (the rest is `pipeline.Options`).

  box: the hand's box (x0, y0, x1, y1) pixels in the first frame when there is no detector (None: the
  largest centred square); left: that hand is a left hand. warm_strength: the warm start's strength
  (1: every frame from noise). reset_threshold: a change of the crop (mean absolute difference,
  fraction of 255) above which a track starts from noise again. reuse_noise: one noise per track (else
  fresh noise every frame). follow: without a detector, move the box to the centre of each frame's
  predicted mesh (`follow_box`: only as good as the model's camera; the CPU demo's cannot follow).
  fps: the frame rate of a folder of frames (a file's own otherwise).
  """

  box: Sequence[float] | None = None
  left: bool = False
  warm_strength: float = 0.3
  reset_threshold: float = 0.15
  reuse_noise: bool = True
  follow: bool = False
  fps: float | None = None

  def check(self) -> None:
    """InputError naming the flag of a bad value."""
    if not 0.0 < self.warm_strength <= 1.0:
      raise InputError(f'--warm_strength must lie in (0, 1], got {self.warm_strength}')
    if not self.reset_threshold > 0:
      raise InputError(f'--video_reset must be > 0, got {self.reset_threshold}')
    if self.box is not None:
      box = np.asarray(self.box, np.float64)
      if box.shape != (4,) or not io.box_is_valid(box):
        raise InputError(
            f'--video_box must be x0,y0,x1,y1 with x1 > x0, y1 > y0 (finite, within '
            f'±{io.MAX_BOX_COORDINATE:g}): {box}'
        )


def draw_hand(
    frame: np.ndarray,
    vertices_model: np.ndarray,
    faces: np.ndarray,
    camera: np.ndarray,
    crop: np.ndarray,
) -> np.ndarray:
  """The shaded mesh (N, 3) model space over a whole frame, placed by the weak-perspective camera of
  the square `crop` (x0, y0, x1, y1) it was predicted in."""
  placed, K = full_frame.orthographic_setup(vertices_model, camera, float(crop[2] - crop[0]))
  K[:2, 2] += crop[:2]  # from the crop's pixels to the frame's
  return render.overlay(frame, placed, faces, K, alpha=0.6)


def warm_start_sampler(
    samplers: sampling.SamplerCache,
    *,
    num_steps: int,
    strength: float,
    num_hypotheses: int,
    method: str,
    eta: float,
) -> WarmStartSampler:
  """The `WarmStartSampler` of this setting for a run opened once, built and compiled on first use."""
  run = samplers.run
  key = (
      'warm_start',
      int(num_steps),
      float(strength),
      int(num_hypotheses),
      str(method),
      float(eta),
  )
  return samplers.cached(
      key,
      lambda: WarmStartSampler(
          run.model,
          run.params,
          run.schedule,
          num_steps=key[1],
          strength=key[2],
          num_hypotheses=key[3],
          method=key[4],
          eta=key[5],
          batch_stats=run.batch_stats,
          estimator=getattr(run, 'estimator', None),
      ),
  )


class VideoRun:
  """One video's reconstruction, frame by frame: its sampler, tracks and costs."""

  def __init__(
      self,
      samplers: sampling.SamplerCache,
      options: pipeline.Options,
      video_options: VideoOptions,
      detector: Any,
  ):
    config = samplers.run.config
    self.options, self.video_options, self.detector = options, video_options, detector
    self.sampler = warm_start_sampler(
        samplers,
        num_steps=int(options.steps if options.steps is not None else config.model.sampling_steps),
        strength=float(video_options.warm_strength),
        num_hypotheses=int(options.num_hypotheses or config.model.num_hypotheses),
        method=options.method,
        eta=float(options.eta if options.eta is not None else config.model.eta),
    )
    self.run = samplers.run
    self.image_size = int(config.model.img_size)
    self.vertex_scale = float(config.model.vertex_scale)
    self.faces = np.asarray(self.run.topology.faces)
    self.tracker = BoxTracker()
    if detector is None:
      self.tracker.new_track(video_options.box, 'left' if video_options.left else 'right')
    self.base_key = jax.random.PRNGKey(options.seed)
    self.passes = 0

  def settings(self, video: str, fps: float) -> dict[str, Any]:
    """What the tracks' NPZ files record of how they were made."""
    return {
        'workdir': os.path.abspath(self.run.workdir),
        'video': os.path.abspath(video),
        'fps': fps,
        'warm_strength': float(self.video_options.warm_strength),
        'steps': int(self.sampler.num_steps),
        'warm_steps': diffusion.warm_start_steps(
            self.sampler.num_steps, self.video_options.warm_strength
        ),
        'hypotheses': int(self.sampler.num_hypotheses),
        'method': self.options.method,
        'eta': float(self.sampler.eta),
        'reuse_noise': bool(self.video_options.reuse_noise),
        'reset_threshold': float(self.video_options.reset_threshold),
        'box_scale': float(self.options.box_scale),
        'img_size': self.image_size,
        'vertex_scale': self.vertex_scale,
        'seed': int(self.options.seed),
        'detector': None
        if self.detector is None
        else str(getattr(self.detector, 'name', type(self.detector).__name__)),
        'units': 'metres, root-relative (wrist at 0), camera axes x right, y down, z forward',
    }

  def frame(self, index: int, frame: np.ndarray) -> np.ndarray:
    """Every hand of one frame reconstructed and recorded in its track; returns the frame drawn over."""
    if self.detector is not None:
      found = [
          d for d in self.detector.detect(frame) if float(d.score) >= self.options.min_hand_score
      ]
      seen = [track for track, _ in self.tracker.update(found)]
    else:
      seen = self.tracker.tracks
    drawn = frame
    for track in seen:
      drawn = self._track_frame(track, index, frame, drawn)
    return drawn

  def _track_frame(
      self, track: Track, index: int, frame: np.ndarray, drawn: np.ndarray
  ) -> np.ndarray:
    height, width = frame.shape[:2]
    if track.box is not None and max(
        track.box[2] - track.box[0], track.box[3] - track.box[1]
    ) > pipeline.MAX_BOX_TO_PHOTO * max(height, width):
      raise InputError(  # its crop would take gigabytes and show no hand
          f'the box {[float(v) for v in track.box]} is more than {pipeline.MAX_BOX_TO_PHOTO:g} '
          f'times frame {index} ({width}×{height} pixels)'
      )
    crop = crops.square_box(track.box, frame.shape[:2], self.options.box_scale)
    is_left = track.side == 'left'
    key = jax.random.fold_in(jax.random.fold_in(self.base_key, track.track_id), index)
    out = step_track(
        self.sampler,
        track,
        pipeline.model_input(frame, crop, is_left, self.image_size),
        key,
        reuse_noise=self.video_options.reuse_noise,
        reset_threshold=self.video_options.reset_threshold,
    )
    vertices_model, camera = out['vertices'][0], out['camera'][0]
    self.passes += out['passes']
    if is_left:
      vertices_model, camera = full_frame.unmirror(vertices_model, camera, self.image_size)
    vertices = vertices_model * self.vertex_scale
    track.records.append(
        {
            'frame_index': index,
            'box': crop if track.box is None else track.box,
            'crop_box': crop,
            'hand_side': track.side,
            'score': track.score,
            'joints': conventions.regress_joints(vertices, self.run.topology.joint_regressor),
            'vertices': vertices,
            'camera': camera,
            'warm': out['warm'],
            'passes': out['passes'],
        }
    )
    faces = self.faces[:, ::-1] if is_left else self.faces
    if self.detector is None and self.video_options.follow:
      self._follow(track, vertices_model, camera, crop)
    return draw_hand(drawn, vertices_model, faces, camera, crop)

  def _follow(
      self, track: Track, vertices_model: np.ndarray, camera: np.ndarray, crop: np.ndarray
  ) -> None:
    found = mesh_box(vertices_model, camera, crop, self.image_size)
    if track.box is None:  # the hand box the centred square implies
      centre = (crop[:2] + crop[2:]) / 2.0
      half = (crop[2] - crop[0]) / (2.0 * self.options.box_scale)
      track.box = np.concatenate([centre - half, centre + half])
    track.box = follow_box(track.box, found)

  def write_tracks(self, output_dir: str, settings: dict[str, Any]) -> dict[int, str]:
    """One NPZ per track that saw a frame: {track id: path}."""
    written = {}
    for track in self.tracker.ended + self.tracker.tracks:
      if track.records:
        path = os.path.join(output_dir, f'track_{track.track_id}.npz')
        written[track.track_id] = io.write_npz(path, track_arrays(track, self.faces, settings))
    return written


def reconstruct_video(
    workdir: str | None,
    video: str,
    output_dir: str,
    options: pipeline.Options = VIDEO_DEFAULTS,
    video_options: VideoOptions = VideoOptions(),
    *,
    overrides: Any = None,
    progress: bool = True,
    samplers: sampling.SamplerCache | None = None,
) -> dict[str, Any]:
  """Runs a trained run over a video (a file or a folder of frames); writes OUTPUT/overlay.mp4 and
  OUTPUT/track_<id>.npz.

  options: the settings shared with photos (`pipeline.Options`: the detector, or 'none' for one hand in
  video_options.box; the sampler's steps, hypotheses, aggregate and η; box_scale; seed). overrides:
  changes to the run's config. samplers: a run already opened (the web app's); workdir is then unused.

  Returns {'tracks' ({id: path}), 'frames', 'overlay' (path), 'seconds', 'frames_per_second',
  'steady_frames_per_second' (without the first two frames, which compile), 'decoder_passes_per_frame'}.
  Raises InputError for bad arguments, an unreadable video or frames of differing sizes, an output_dir
  that is the input's folder or cannot be written (all before the run is opened, nothing written) or
  a write that fails (a full disk); VideoError when the video breaks off (the frames before the break
  are written first).
  """
  options.check()
  video_options.check()
  if samplers is not None and overrides:
    raise ValueError('reconstruct_video: give overrides when opening the run, not with samplers=')
  io.refuse_inputs_in_output(
      output_dir,
      folders={'the input frames (--video)': video},
      files={'the input video (--video)': video},
  )
  io.import_av()  # the overlay video needs it, even for a folder of frames
  detector = pipeline.resolve_detector(options.detector)
  frames = io.Frames(video, fps=video_options.fps)
  made = False
  try:
    made = io.prepare_output(output_dir)
    if samplers is None:
      samplers = sampling.SamplerCache(loading.load_trained(workdir, overrides=overrides))
    state = VideoRun(samplers, options, video_options, detector)
  except Exception:
    frames.close()
    io.remove_if_made_and_empty(output_dir, made)
    raise
  try:
    return _reconstruct_frames(state, frames, video, output_dir, progress)
  except OSError as error:  # a full disk, or the folder taken away
    raise InputError(
        f'cannot write the results of {video} to {output_dir}: {error.strerror or error} (the files '
        'written whole before it are kept)'
    ) from None


def _reconstruct_frames(
    state: VideoRun, frames: io.Frames, video: str, output_dir: str, progress: bool
) -> dict[str, Any]:
  """`reconstruct_video`'s loop over the frames, writing the overlay and then the tracks."""
  settings = state.settings(video, frames.fps)
  writer = io.OverlayWriter(os.path.join(output_dir, 'overlay.mp4'), frames.fps)
  report = sampling.progress_printer('video') if progress and frames.declared else None
  done, start, steady_start = 0, time.perf_counter(), None
  try:
    for index, frame in frames:
      if index == 2:
        steady_start = time.perf_counter()
      writer.write(state.frame(index, frame))
      done += 1
      if report is not None:
        report(done, frames.declared)
  except VideoError as error:
    raise VideoError(f'{error}; wrote the {done} frame(s) before it to {output_dir}') from None
  finally:
    frames.close()
    writer.close()
    tracks = state.write_tracks(output_dir, settings)
  seconds = time.perf_counter() - start
  steady = None
  if steady_start is not None and done > 2:
    steady = (done - 2) / (time.perf_counter() - steady_start)
  return {
      'tracks': tracks,
      'frames': done,
      'overlay': writer.path,
      'seconds': seconds,
      'frames_per_second': done / seconds if seconds > 0 else None,
      'steady_frames_per_second': steady,
      'decoder_passes_per_frame': state.passes / max(done, 1),
  }
