"""Hand meshes from a live camera, frame by frame, with bounded latency: the web app's live tab and
`bench live` both run this module (docs/app.md, "Live camera"; docs/performance.md, "bench live").

One frame (`LiveSession.process`) goes through five stages, each timed:

  track        each live hand is looked for again by the detector's landmark model alone, in the ROI
               its landmarks of the frame before give (`MediaPipeHands.track`, as MediaPipe tracks
               hands); a hand it no longer finds ends its track.
  detect       the palm detector (`detect`, without tiles: a live frame is small) runs only when no hand
               is tracked, when a track was lost in this frame, or, while fewer than `max_hands` are
               tracked, every `redetect_every` processed frames (a new hand shows within about half a
               second at 10 frames/s). A hand it finds over a tracked one is that hand; any other
               starts a new track (new id, from noise): a hand that leaves and comes back is a new
               track. A detector without `track`
               (any `HandDetector`) runs every frame and its boxes join tracks by overlap
               (`video.BoxTracker`); without a detector, one hand fills the largest centred square.
  crop         each hand's square crop as the model sees it (mirrored for a left hand,
               `pipeline.model_input`), around its box (`crops.square_box`).
  reconstruct  every hand in one compiled call (`video.step_tracks`), padded to a fixed batch (1, 2,
               4, … up to max_hands: one compilation each, made by `warm_up`): warm from each track's
               last mesh (`diffusion.ddim_sample_from`, k = int(S·strength) decoder passes) or, when a
               hand is new or its crop changed a lot, every hand from noise (S passes).
  draw         each hand placed in the frame's camera on its landmarks (`full_frame.to_photo`, as a
               photo's) and drawn over the frame flat-shaded (`full_frame.draw_hands(flat=True)`).

`LiveStream` adds the drop policy: a frame that arrives while another is being processed is dropped,
not queued, so the latency from frame to mesh stays one frame's processing time. The app's browser
already holds back frames while a request is pending (Gradio's streaming webcam); `LiveStream` drops
on the server too, and `bench live` feeds a clip at a fixed rate through it on a clock of its own.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

from diffhand_jax.geometry import conventions, render
from diffhand_jax.inference import crops, detection, full_frame, pipeline, sampling, video

STAGES = ('detect', 'track', 'crop', 'reconstruct', 'draw')


@dataclasses.dataclass(frozen=True)
class LiveOptions:
  """How a live stream is tracked and sampled.

  steps: DDIM steps S of a cold start (None: the run's). warm_strength: the warm start's strength
  (k = int(S·strength) passes per tracked frame). eta: DDIM's η (None: the run's). max_hands: at most
  this many hands (and the largest compiled batch). min_hand_score: detections below it are ignored.
  box_scale: the crop's side over the hand box's longer side. redetect_every: while fewer than
  max_hands are tracked, the palm detector runs every this many frames. reset_threshold: a crop that
  changes by more than this (mean |difference| / 255) restarts its track from noise. draw_size: the
  overlay's longer side at most (pixels; 0: the frame's). seed: the sampler's.
  """

  steps: int | None = None
  warm_strength: float = 0.3
  eta: float | None = None
  max_hands: int = 2
  min_hand_score: float = 0.5
  box_scale: float = pipeline.DEFAULTS.box_scale
  redetect_every: int = 5
  reset_threshold: float = 0.15
  draw_size: int = 640
  seed: int = 0

  def check(self) -> None:
    """ValueError naming the field of a bad value."""
    if self.steps is not None and self.steps < 1:
      raise ValueError(f'LiveOptions.steps must be >= 1, got {self.steps}')
    if not 0.0 < self.warm_strength <= 1.0:
      raise ValueError(f'LiveOptions.warm_strength must lie in (0, 1], got {self.warm_strength}')
    if self.max_hands < 1 or self.redetect_every < 1:
      raise ValueError(
          f'LiveOptions.max_hands and redetect_every must be >= 1, got {self.max_hands} and '
          f'{self.redetect_every}'
      )
    if not self.box_scale > 0 or not self.reset_threshold > 0 or self.draw_size < 0:
      raise ValueError('LiveOptions.box_scale and reset_threshold must be > 0, draw_size >= 0')


# The live path's defaults (the app's live tab, `bench live`).
LIVE_DEFAULTS = LiveOptions()


def batch_sizes(max_hands: int) -> tuple[int, ...]:
  """The compiled batch sizes: powers of two below max_hands, and max_hands (1, 2, 4, …, max_hands)."""
  sizes, size = [], 1
  while size < max_hands:
    sizes.append(size)
    size *= 2
  return tuple(sizes) + (int(max_hands),)


def padded_batch(count: int, max_hands: int) -> int:
  """The smallest compiled batch size that holds `count` hands."""
  return next(size for size in batch_sizes(max_hands) if size >= count)


@dataclasses.dataclass
class LiveHand:
  """One hand in one processed frame: its track, side and score, its box and crop (x0, y0, x1, y1)
  frame pixels, its landmarks (21, 2) pixels or None, its mesh (N, 3) and joints (21, 3) metres in the
  frame's camera (K of `LiveFrame`), whether it was sampled warm and its decoder passes."""

  track_id: int
  side: str
  score: float
  box: np.ndarray | None
  crop_box: np.ndarray
  keypoints: np.ndarray | None
  vertices_camera: np.ndarray
  joints_camera: np.ndarray
  placement: str
  warm: bool
  passes: int


@dataclasses.dataclass
class LiveFrame:
  """A processed frame: the overlay uint8 (h, w, 3) (at most draw_size on its longer side), every
  hand, the frame's pinhole K (3, 3) (the default focal length: a live camera has no EXIF), whether
  the palm detector ran, and each stage's seconds (STAGES)."""

  overlay: np.ndarray
  hands: list[LiveHand]
  K: np.ndarray
  detected: bool
  seconds: dict[str, float]


class LiveSession:
  """One live stream's tracks over a run opened once (see the module docstring).

  samplers: the opened run (`sampling.SamplerCache`; the app's, shared by its tabs). detector: an
  object with `detect(image)` (and, for tracking by landmarks, `track(image, keypoints)`, as
  `detection.MediaPipeHands`), or None for one hand in the largest centred square.
  """

  def __init__(
      self,
      samplers: sampling.SamplerCache,
      detector: Any,
      options: LiveOptions = LIVE_DEFAULTS,
  ):
    options.check()
    config = samplers.run.config.model
    self.run, self.detector, self.options = samplers.run, detector, options
    self.sampler = video.warm_start_sampler(
        samplers,
        num_steps=int(options.steps or config.sampling_steps),
        strength=float(options.warm_strength),
        num_hypotheses=1,
        method='mean',
        eta=float(options.eta if options.eta is not None else config.eta),
    )
    self.image_size = int(config.img_size)
    self.vertex_scale = float(config.vertex_scale)
    self.faces = np.asarray(self.run.topology.faces)
    self.regressor = np.asarray(self.run.topology.joint_regressor)
    self.tracks_by_landmarks = detector is not None and hasattr(detector, 'track')
    self.base_key = jax.random.PRNGKey(options.seed)
    self.reset()

  def reset(self) -> None:
    """Forgets every track (a new stream)."""
    self.tracker = video.BoxTracker(max_missed=0)
    if self.detector is None:
      self.tracker.new_track(None)
    self.frame_index = 0
    self._last_detection = None

  @property
  def tracks(self) -> list[video.Track]:
    """The live tracks."""
    return self.tracker.tracks

  def warm_up(self) -> None:
    """Compiles every batch size's cold and warm call (before timing, or the first frame waits)."""
    size = self.image_size
    for batch in batch_sizes(self.options.max_hands):
      tracks = [video.Track(-1 - i, None) for i in range(batch)]
      blank = np.zeros((batch, size, size, 3), np.uint8)
      keys = [jax.random.PRNGKey(i) for i in range(batch)]
      for _ in range(2):  # cold, then warm
        video.step_tracks(self.sampler, tracks, blank, keys, keys[0], batch=batch)

  # ------------------------------------------------------------------------------------------------

  def process(self, frame: np.ndarray) -> LiveFrame:
    """One frame uint8 (H, W, 3) (or RGBA) → its overlay and hands (see the module docstring)."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] not in (3, 4) or min(frame.shape[:2]) < 2:
      raise ValueError(f'a live frame must be an image (H, W, 3), got {frame.dtype} {frame.shape}')
    frame = np.ascontiguousarray(frame[..., :3], np.uint8)
    seconds = dict.fromkeys(STAGES, 0.0)
    clock = time.perf_counter()

    def lap(stage: str) -> None:
      nonlocal clock
      now = time.perf_counter()
      seconds[stage] += now - clock
      clock = now

    detected = False
    if self.detector is not None:
      lost = self._track(frame) if self.tracks_by_landmarks else False
      lap('track')
      if self._should_detect(lost):
        self._detect(frame)
        detected = True
      lap('detect')
    self.tracker.ended.clear()  # a live stream keeps no records
    tracks = self.tracker.tracks[: self.options.max_hands]
    hands: list[LiveHand] = []
    K = render.intrinsics(render.default_focal(frame.shape[:2]), frame.shape[:2])
    if tracks:
      crop_boxes = [
          crops.square_box(t.box, frame.shape[:2], self.options.box_scale) for t in tracks
      ]
      inputs = np.stack(
          [
              pipeline.model_input(frame, box, t.side == 'left', self.image_size)
              for t, box in zip(tracks, crop_boxes)
          ]
      )
      lap('crop')
      key = jax.random.fold_in(self.base_key, self.frame_index)
      out = video.step_tracks(
          self.sampler,
          tracks,
          inputs,
          [jax.random.fold_in(key, t.track_id + 1) for t in tracks],
          key,
          batch=padded_batch(len(tracks), self.options.max_hands),
          reset_threshold=self.options.reset_threshold,
      )
      lap('reconstruct')
      hands = [
          self._place(t, box, out, row, K) for row, (t, box) in enumerate(zip(tracks, crop_boxes))
      ]
    meshes = [
        (h.vertices_camera, self.faces[:, ::-1] if h.side == 'left' else self.faces) for h in hands
    ]
    overlay = full_frame.draw_hands(frame, meshes, K, self.options.draw_size, flat=True)
    lap('draw')
    self.frame_index += 1
    return LiveFrame(overlay, hands, K, detected, seconds)

  def _track(self, frame: np.ndarray) -> bool:
    """Each track found again from its landmarks; returns whether one was lost (and ended)."""
    lost = False
    for track in list(self.tracker.tracks):
      found = None if track.keypoints is None else self.detector.track(frame, track.keypoints)
      if found is None or float(found.score) < self.options.min_hand_score:
        self.tracker.tracks.remove(track)
        lost = True
        continue
      track.box = np.asarray(found.box, np.float64)
      track.keypoints = _keypoints(found)
      track.score = float(found.score)
    return lost

  def _should_detect(self, lost: bool) -> bool:
    if not self.tracks_by_landmarks:
      return True  # boxes only: the detector is the tracker
    if lost or not self.tracker.tracks or self._last_detection is None:
      return True
    return (
        len(self.tracker.tracks) < self.options.max_hands
        and self.frame_index - self._last_detection >= self.options.redetect_every
    )

  def _detect(self, frame: np.ndarray) -> None:
    """The palm detector's hands: over a tracked hand it is that hand, any other a new track."""
    self._last_detection = self.frame_index
    found = [
        h for h in self.detector.detect(frame) if float(h.score) >= self.options.min_hand_score
    ]
    if not self.tracks_by_landmarks:
      for track, hand in self.tracker.update(found):
        track.keypoints = _keypoints(hand)
      return
    for hand in found:
      if len(self.tracker.tracks) >= self.options.max_hands:
        break
      box = np.asarray(hand.box, np.float64)
      if any(detection.box_iou(box, t.box) > 0.3 for t in self.tracker.tracks):
        continue  # a hand already tracked
      track = self.tracker.new_track(box, hand.side, float(hand.score))
      track.keypoints = _keypoints(hand)

  def _place(
      self, track: video.Track, crop_box: np.ndarray, out: dict[str, Any], row: int, K: np.ndarray
  ) -> LiveHand:
    vertices = out['vertices'][row] * self.vertex_scale
    placed = full_frame.to_photo(
        vertices,
        conventions.regress_joints(vertices, self.regressor),
        out['camera'][row],
        is_left=track.side == 'left',
        crop_box=crop_box,
        K=K,
        image_size=self.image_size,
        vertex_scale=self.vertex_scale,
        keypoints_2d=track.keypoints,
    )
    return LiveHand(
        track_id=track.track_id,
        side=track.side,
        score=float(track.score),
        box=None if track.box is None else np.asarray(track.box),
        crop_box=crop_box,
        keypoints=track.keypoints,
        vertices_camera=placed['vertices_camera'],
        joints_camera=placed['joints_camera'],
        placement=placed['placement'],
        warm=bool(out['warm']),
        passes=int(out['passes']),
    )


def _keypoints(hand: Any) -> np.ndarray | None:
  points = getattr(hand, 'keypoints', None)
  return None if points is None else np.asarray(points, np.float64)


class LiveStream:
  """A `LiveSession` behind the drop policy: `offer(frame)` processes the frame when nothing else is
  being processed, and otherwise drops it (returns None): frames are never queued.

  clock: seconds (time.perf_counter), for arrivals and processing times. A caller that feeds frames at known times (`bench live`) passes
  each frame's `arrival` on its own clock: a frame whose arrival falls before the end of the one in
  progress (its arrival plus its processing time) is dropped.
  """

  def __init__(self, session: LiveSession, clock: Callable[[], float] = time.perf_counter):
    self.session, self.clock = session, clock
    self._lock = threading.Lock()
    self._busy_until = -np.inf
    self.processed = 0
    self.dropped = 0

  def offer(self, frame: np.ndarray, arrival: float | None = None) -> LiveFrame | None:
    """The processed frame, or None when it was dropped. `latency` (seconds from arrival to overlay)
    is set on the returned frame's seconds dict."""
    arrival = self.clock() if arrival is None else float(arrival)
    if arrival < self._busy_until or not self._lock.acquire(blocking=False):
      self.dropped += 1
      return None
    try:
      start = self.clock()
      result = self.session.process(frame)
      elapsed = self.clock() - start
      self._busy_until = arrival + elapsed
      self.processed += 1
      result.seconds['latency'] = elapsed
      return result
    finally:
      self._lock.release()
