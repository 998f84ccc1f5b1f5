"""The inference core: every hand in a photo, from an image array in memory.

    run = sampling.SamplerCache(loading.load_trained(workdir))   # opened once
    hands = pipeline.reconstruct(run, image, pipeline.Options(num_hypotheses=5, fit_mano=True))
    for hand in hands:
      hand.side, hand.crop.box, hand.vertices_camera, hand.uncertainty, hand.mano

`reconstruct` takes one image (uint8 (H, W, 3)) with optional boxes, sides and focal length;
`reconstruct_photos` takes several and samples all their hands in shared batches (what `predict` does
for a folder). Each photo's hands come from its boxes, else the detector (score ≥ min_hand_score), else
(detector 'none') one hand in the largest centred square. A left hand is mirrored before the model
(docs/design.md §2) and mirrored back; every hand is placed in the photo's camera
(`full_frame.to_photo`) and, with `fit_mano`, gets MANO parameters (`mano.fit`).

Nothing here reads or writes a file: `predict`, the app and the video path read their inputs
(inference/io.py), call this, and write what it returns (inference/outputs.py for the JSON and the
overlay).
The run's `SamplerCache` also keeps what is built once per run and setting: each sampler, the detector
and the hand models of the fit.

`reconstruct_photos(..., timings={})` adds the seconds spent in each of `STAGES` to the dict (what
`bench photo` reports per stage).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from typing import Any, Callable, Sequence

import jax
import numpy as np

from diffhand_jax.data import input_pipeline
from diffhand_jax import metrics
from diffhand_jax.geometry import conventions, hand_model, hypotheses, mano, render
from diffhand_jax.inference import crops, detection, full_frame, sampling, tta
from diffhand_jax.inference.io import InputError

# Images with a shorter side than this are refused: they cannot show a hand the model can read.
MIN_IMAGE_SIDE = 16
# Boxes whose longer side exceeds this many times the photo's longer side are refused: their crop
# (an image of the box's size, mostly padding) would take gigabytes and show no hand.
MAX_BOX_TO_PHOTO = 4.0


class HandModelUnavailable(InputError):
  """`fit_mano` needs hand model files (MANO_RIGHT.pkl, MANO_LEFT.pkl) that are not here."""


@dataclasses.dataclass(frozen=True)
class Options:
  """How hands are found and sampled. Every command builds one from its flags
  (`command_line.inference_options`); None takes the run's config value.

  detector: 'mediapipe', 'none' (one hand: the largest centred square) or any object with
  `detect(image)` (inference/detection.py's HandDetector). batch_size None: config.eval.batch_size.
  placement: where a hand with detector landmarks goes in the camera: 'landmarks' (the translation
  that puts its joints on them, `crops.root_from_keypoints`) or 'network' (the model's own
  weak-perspective camera, `crops.root_from_projection`; always so for hands without landmarks).
  refine: 'landmarks' fits the run's hand model to each hand with landmarks, its joints onto them and
  its shape near the network's (`mano.fit` with keypoints_2d); 'none' keeps the network's mesh.
  """

  detector: Any = 'mediapipe'
  min_hand_score: float = 0.5
  box_scale: float = 1.3
  num_hypotheses: int | None = 5
  steps: int | None = None
  eta: float | None = None
  method: str = 'mean'
  tta: tta.TTAConfig | None = None
  batch_size: int | None = 8
  seed: int = 0
  fit_mano: bool = False
  placement: str = 'landmarks'
  refine: str = 'none'

  def check(self) -> None:
    """InputError naming the flag of a value no run could use."""
    if not self.box_scale > 0:
      raise InputError(f'--box_scale must be > 0, got {self.box_scale}')
    for name in ('num_hypotheses', 'steps', 'batch_size'):
      value = getattr(self, name)
      if value is not None and value < 1:
        raise InputError(f'--{name} must be >= 1, got {value}')
    if self.eta is not None and not 0.0 <= self.eta <= 1.0:
      raise InputError(f'--eta must lie in [0, 1], got {self.eta}')
    if self.method not in hypotheses.METHODS:
      raise InputError(f'--method must be one of {hypotheses.METHODS}, got {self.method!r}')
    if self.placement not in PLACEMENTS:
      raise InputError(f'--placement must be one of {PLACEMENTS}, got {self.placement!r}')
    if self.refine not in REFINEMENTS:
      raise InputError(f'--refine must be one of {REFINEMENTS}, got {self.refine!r}')

  def sampler(self, samplers: sampling.SamplerCache) -> sampling.Sampler:
    """The run's compiled sampler for these options (built on first use)."""
    model = samplers.run.config.model
    return samplers.get(
        num_steps=int(self.steps if self.steps is not None else model.sampling_steps),
        num_hypotheses=int(self.num_hypotheses or model.num_hypotheses),
        eta=float(self.eta if self.eta is not None else model.eta),
        batch_size=int(self.batch_size or samplers.run.config.eval.batch_size),
    )

  def settings(self, samplers: sampling.SamplerCache) -> dict[str, Any]:
    """The sampler's settings with the aggregate and the seed, as the commands record them."""
    return dict(self.sampler(samplers).settings(), method=self.method, seed=self.seed)

  def detector_name(self) -> str:
    if isinstance(self.detector, str):
      return self.detector
    return str(getattr(self.detector, 'name', type(self.detector).__name__))


PLACEMENTS = ('landmarks', 'network')
# What `reconstruct_photos` times when given a `timings` dict: finding the hands (the detector), cutting
# their crops, sampling them (the model, the aggregate and the hypotheses' spread), placing them in the
# camera, and fitting the hand model (refine and fit_mano).
STAGES = ('detect', 'crop', 'sample', 'place', 'fit')
REFINEMENTS = ('landmarks', 'none')
# The library's options: detected hands placed on their landmarks, five hypotheses, the run's sampler,
# the network's own meshes.
DEFAULTS = Options()
# `predict` on photos and the app: the same, each hand with landmarks then fitted to them.
PHOTO_DEFAULTS = Options(refine='landmarks')


@dataclasses.dataclass(frozen=True)
class Photo:
  """One photo to reconstruct. image: uint8 (H, W, 3), or anything `np.asarray` makes one of, with a
  `shape` (predict's `io.ImageFile`, decoded when used, so a folder is not all in memory at once).
  boxes: the hands' boxes [x0, y0, x1, y1] in its pixels (None: detect);
  left: whether its hands are left (one bool, or one per hand; None: the detector's sides, else
  right); focal: the focal length in pixels (None: `render.default_focal`), from `focal_source`."""

  image: np.ndarray
  name: str = 'photo'
  boxes: Sequence[Sequence[float]] | None = None
  left: bool | list[bool] | None = None
  focal: float | None = None
  focal_source: str = 'given'


@dataclasses.dataclass(frozen=True)
class HandCrop:
  """A hand found in a photo, and the crop the model sees of it."""

  index: int
  box: np.ndarray | None  # full-image pixels; None: the largest centred square
  crop_box: np.ndarray  # the square crop (x0, y0, x1, y1), pixels
  is_left: bool
  box_source: str  # 'detector', 'boxes' or 'whole image'
  side_source: str  # 'detector', 'left flag' or 'default'
  score: float | None = None
  side_score: float | None = None
  keypoints_2d: np.ndarray | None = None  # (21, 2) the detector's landmarks, pixels
  keypoints_3d: np.ndarray | None = None  # (21, 3) its 3D landmarks, metres (`DetectedHand`)


@dataclasses.dataclass(frozen=True)
class Hand:
  """One reconstructed hand, in metres, in the photo's orientation (a left hand un-mirrored).

  vertices (N, 3) and joints (21, 3) root-relative; root (3,) the wrist in the photo's camera frame;
  vertices_camera, joints_camera: + root; camera (3,): the weak-perspective camera of the crop;
  faces (F, 3): the mesh's triangles, wound for its side; uncertainty (m) and vertex_uncertainty (N,)
  (`hand_uncertainty`); mano: `mano.fit`'s parameters of the camera-frame mesh, when asked for (or
  refined). placement: 'landmarks' or 'network' (Options.placement); reprojection_error_px: the mean
  pixel distance of the projected joints to the detector's landmarks (None without landmarks);
  landmarks_3d_pa_mpjpe_mm: PA-MPJPE of the joints against the detector's own 3D landmarks (None
  without them). mesh: 'network', or 'refined' when `Options.refine` fitted it; the network's own
  placed mesh is then kept in `network` (vertices, joints, root, vertices_camera, joints_camera,
  reprojection_error_px).
  """

  crop: HandCrop
  vertices: np.ndarray
  joints: np.ndarray
  root: np.ndarray
  vertices_camera: np.ndarray
  joints_camera: np.ndarray
  camera: np.ndarray
  faces: np.ndarray
  uncertainty: float
  vertex_uncertainty: np.ndarray
  orientation_uncertainty_deg: float
  mano: dict[str, Any] | None = None
  placement: str = 'network'
  reprojection_error_px: float | None = None
  landmarks_3d_pa_mpjpe_mm: float | None = None
  mesh: str = 'network'
  network: dict[str, Any] | None = None

  @property
  def side(self) -> str:
    return 'left' if self.crop.is_left else 'right'


@dataclasses.dataclass(frozen=True)
class PhotoHands:
  """A photo's hands, its intrinsics K (3, 3) and focal length; `error` says why it was not processed
  (its hands are then empty, as they are when none was found)."""

  photo: Photo
  hands: list[Hand]
  K: np.ndarray | None = None
  focal: float | None = None
  focal_source: str | None = None
  error: str | None = None


@contextlib.contextmanager
def _stage(timings: dict[str, float] | None, name: str):
  """Adds the seconds the block takes to timings[name] (nothing without a dict)."""
  start = time.perf_counter()
  try:
    yield
  finally:
    if timings is not None:
      timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


# ==================================================================================================
# Finding the hands
# ==================================================================================================


def resolve_detector(detector: Any, samplers: sampling.SamplerCache | None = None) -> Any:
  """A detector object for `detector` ('none' or None: no detector); a name is built once per opened
  run when `samplers` is given. InputError when it cannot run here."""
  if detector is None or detector == 'none':
    return None
  if not isinstance(detector, str):
    return detector

  def build():
    try:
      return detection.make_detector(detector)
    except detection.DetectorUnavailable as error:
      raise InputError(
          f"hand detection is unavailable: {error}; give the hands' boxes (--boxes, --video_box) "
          'or --detector=none'
      ) from None
    except ValueError as error:
      raise InputError(str(error)) from None

  return build() if samplers is None else samplers.cached(('detector', detector), build)


def find_hands(image: np.ndarray, photo: Photo, options: Options, detector: Any) -> list[HandCrop]:
  """The hands of one photo: its boxes, else the detector's (score ≥ min_hand_score), else (no
  detector) one hand in the largest centred square. `photo.left`, when given, sets the sides."""
  height, width = image.shape[:2]
  found = []
  if photo.boxes is not None:
    for box in photo.boxes:
      x0, y0, x1, y1 = (float(v) for v in box)
      # A box with no pixel inside the image would give a mesh of an empty crop: refuse it.
      if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise InputError(
            f'{photo.name}: the box {[x0, y0, x1, y1]} lies outside the image ({width}×{height} '
            'pixels)'
        )
      if max(x1 - x0, y1 - y0) > MAX_BOX_TO_PHOTO * max(width, height):
        raise InputError(
            f'{photo.name}: the box {[x0, y0, x1, y1]} is more than {MAX_BOX_TO_PHOTO:g} times the '
            f'image ({width}×{height} pixels)'
        )
      found.append(dict(box=np.asarray(box, np.float64), box_source='boxes'))
  elif detector is None:
    found.append(dict(box=None, box_source='whole image'))
  else:
    for hand in detector.detect(image):
      if hand.score >= options.min_hand_score:
        found.append(
            dict(
                box=np.asarray(hand.box, np.float64),
                box_source='detector',
                side=hand.side,
                score=float(hand.score),
                side_score=float(hand.side_score),
                keypoints_2d=None if hand.keypoints is None else np.asarray(hand.keypoints),
                keypoints_3d=_optional_array(getattr(hand, 'keypoints_3d', None)),
            )
        )
  return [
      _hand_crop(index, item, photo.left, image.shape[:2], options)
      for index, item in enumerate(found)
  ]


def _optional_array(value: Any) -> np.ndarray | None:
  return None if value is None else np.asarray(value, np.float64)


def _hand_crop(
    index: int, item: dict, left: Any, shape: Sequence[int], options: Options
) -> HandCrop:
  flagged = _is_left(left, index)
  side = item.pop('side', None)
  if flagged is not None:
    is_left, side_source = flagged, 'left flag'
  elif side is not None:
    is_left, side_source = side == 'left', 'detector'
  else:
    is_left, side_source = False, 'default'
  return HandCrop(
      index=index,
      crop_box=crops.square_box(item['box'], shape, options.box_scale),
      is_left=is_left,
      side_source=side_source,
      **item,
  )


def _is_left(left: bool | list[bool] | None, index: int) -> bool | None:
  if left is None:
    return None
  if isinstance(left, (list, tuple)):
    return bool(left[index]) if index < len(left) else False
  return bool(left)


def model_input(
    image: np.ndarray, crop_box: np.ndarray, is_left: bool, image_size: int
) -> np.ndarray:
  """uint8 (S, S, 3): the square crop_box of the image as the model sees it (mirrored for a left
  hand, docs/design.md §2)."""
  pixels = crops.crop_box(image, crop_box, image_size)
  return pixels[:, ::-1] if is_left else pixels


def _prepare(
    samplers: sampling.SamplerCache,
    photo: Photo,
    options: Options,
    detector: Any,
    timings: dict[str, float] | None = None,
) -> tuple[PhotoHands, list[HandCrop], list[np.ndarray]]:
  """A photo's hands found and cropped, with its K; InputError when it cannot be used."""
  image = np.asarray(photo.image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise InputError(
        f'{photo.name}: an image must be uint8 (H, W, 3), got {image.dtype} {image.shape}'
    )
  if min(image.shape[:2]) < MIN_IMAGE_SIDE:
    raise InputError(
        f'{photo.name}: {image.shape[1]}×{image.shape[0]} pixels is too small to show a hand '
        f'(at least {MIN_IMAGE_SIDE} on each side)'
    )
  with _stage(timings, 'detect'):
    found = find_hands(image, photo, options, None if photo.boxes is not None else detector)
  image_size = int(samplers.run.config.model.img_size)
  with _stage(timings, 'crop'):
    inputs = [model_input(image, c.crop_box, c.is_left, image_size) for c in found]
  if photo.focal is None:
    focal, source = render.default_focal(image.shape[:2]), 'default'
  else:
    focal, source = float(photo.focal), photo.focal_source
  K = render.intrinsics(focal, image.shape[:2])
  return PhotoHands(photo, [], K=K, focal=focal, focal_source=source), found, inputs


# ==================================================================================================
# Uncertainty and MANO parameters
# ==================================================================================================


def hand_uncertainty(vertices: np.ndarray) -> dict[str, Any]:
  """The uncertainty of each hand from its K hypotheses (M, K, N, 3) in metres (mirroring a left hand
  changes none of it):

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


def hand_models(
    samplers: sampling.SamplerCache, sides: Sequence[str]
) -> dict[str, tuple[Any, str]]:
  """{side: (the run's hand model of that side, its name)} for `mano.fit`, loaded once per opened run;
  HandModelUnavailable when the MANO files a side needs are missing."""
  models = {}
  for side in sorted(set(sides)):

    def load(side=side):
      try:
        return hand_model.load_side_model(samplers.run.config.dataset, side)
      except FileNotFoundError as error:
        raise HandModelUnavailable(
            f'--fit_mano and --refine=landmarks need the hand model: {error}'
        ) from None

    models[side] = samplers.cached(('hand_model', side), load)
  return models


def fit_mano(
    models: dict[str, tuple[Any, str]],
    vertices: np.ndarray,
    is_left: np.ndarray,
    keypoints: dict[str, np.ndarray] | None = None,
) -> tuple[list[dict[str, Any]], np.ndarray]:
  """`mano.fit` of camera-frame meshes (M, N, 3), each with the model of its side (`hand_models`).

  keypoints: optional {'keypoints_2d': (M, 21, 2), 'K': (M, 3, 3), 'joint_regressor': (21, N)}: the
  fit then also puts each hand's joints on its keypoints (`mano.fit`'s keypoint stage).
  Returns (one dict per mesh: pose (48,), betas (10,), trans (3,), flat_hand_mean (False), error (m),
  hand_model (which model the parameters belong to), and with keypoints reprojection_error_px;
  the fitted meshes (M, N, 3)).
  """
  results: list[dict[str, Any]] = [{} for _ in range(len(vertices))]
  fitted_vertices = np.zeros_like(np.asarray(vertices, np.float64))
  for side in ('right', 'left'):
    rows = np.nonzero(is_left == (side == 'left'))[0]
    if not len(rows):
      continue
    model, name = models[side]
    extra = {}
    if keypoints is not None:
      extra = dict(
          keypoints_2d=keypoints['keypoints_2d'][rows],
          K=keypoints['K'][rows],
          joint_regressor=keypoints['joint_regressor'],
      )
    with warnings.catch_warnings():
      # A model's meshes of a photo unlike its training data often need betas beyond mano.fit's
      # range; the JSON carries them, so the warning meant for mis-scaled input would only repeat.
      warnings.filterwarnings('ignore', message='mano.fit: the betas')
      fitted = mano.fit(model, vertices[rows], flat_hand_mean=False, **extra)
    fitted_vertices[rows] = fitted['vertices']
    for k, row in enumerate(rows):
      results[row] = {
          'pose': fitted['pose'][k],
          'betas': fitted['betas'][k],
          'trans': fitted['trans'][k],
          'flat_hand_mean': False,
          'error': float(fitted['error'][k]),
          'hand_model': name,
      }
      if 'reprojection_error_px' in fitted:
        results[row]['reprojection_error_px'] = float(fitted['reprojection_error_px'][k])
  return results, fitted_vertices


def landmarks_3d_error(joints: np.ndarray, keypoints_3d: np.ndarray | None) -> float | None:
  """PA-MPJPE (mm) of a hand's joints (21, 3) against the detector's 3D landmarks (21, 3), or None."""
  if keypoints_3d is None:
    return None
  return round(float(metrics.pa_mpjpe(joints[None], np.asarray(keypoints_3d)[None])[0]), 3)


# ==================================================================================================
# The core
# ==================================================================================================


def reconstruct(
    samplers: sampling.SamplerCache,
    image: np.ndarray,
    options: Options = DEFAULTS,
    *,
    boxes: Sequence[Sequence[float]] | None = None,
    left: bool | list[bool] | None = None,
    focal: float | None = None,
) -> list[Hand]:
  """Every hand in `image` (uint8 (H, W, 3)); see the module docstring. Raises InputError when the
  image cannot be used (too small, a box outside it, no detector), HandModelUnavailable for `fit_mano`
  without the hand model files."""
  (result,) = reconstruct_photos(
      samplers, [Photo(image, boxes=boxes, left=left, focal=focal)], options
  )
  if result.error is not None:
    raise InputError(result.error)
  return result.hands


def reconstruct_photos(
    samplers: sampling.SamplerCache,
    photos: Sequence[Photo],
    options: Options = DEFAULTS,
    progress: Callable[[int, int], None] | None = None,
    timings: dict[str, float] | None = None,
) -> list[PhotoHands]:
  """The hands of every photo, sampled in shared batches of `options.batch_size` crops (batch i with the
  key fold_in(PRNGKey(seed), i)). A photo that cannot be used gets its `error` and no hands; the others
  go on. Raises InputError for bad options or an unavailable detector, HandModelUnavailable for
  `fit_mano` without the hand model files (both before any sampling). timings: a dict to which the
  seconds of each of `STAGES` are added."""
  options.check()
  detector = None
  if any(photo.boxes is None for photo in photos):
    detector = resolve_detector(options.detector, samplers)
  results, owners, found, inputs = [], [], [], []
  for number, photo in enumerate(photos):
    try:
      result, photo_crops, photo_inputs = _prepare(samplers, photo, options, detector, timings)
    except ValueError as error:  # InputError, or an empty crop
      results.append(PhotoHands(photo, [], error=str(error)))
      continue
    results.append(result)
    owners += [number] * len(photo_crops)
    found += photo_crops
    inputs += photo_inputs
  if not found:
    return results
  models = None
  refines = options.refine == 'landmarks' and any(c.keypoints_2d is not None for c in found)
  if options.fit_mano or refines:
    models = hand_models(samplers, ['left' if crop.is_left else 'right' for crop in found])
  Ks = [results[owner].K for owner in owners]
  hands = _sample_hands(samplers, options, found, np.stack(inputs), Ks, models, progress, timings)
  for number, result in enumerate(results):
    mine = [hand for owner, hand in zip(owners, hands) if owner == number]
    results[number] = dataclasses.replace(result, hands=mine)
  return results


def _sample_hands(
    samplers: sampling.SamplerCache,
    options: Options,
    found: Sequence[HandCrop],
    inputs: np.ndarray,
    Ks: Sequence[np.ndarray],
    models: dict[str, tuple[Any, str]] | None,
    progress: Callable[[int, int], None] | None,
    timings: dict[str, float] | None = None,
) -> list[Hand]:
  """Samples the crops (M, S, S, 3) uint8 of `found`, places each hand in its photo's camera K, and
  fits the hand model where asked (`_with_hand_model`)."""
  run = samplers.run
  with _stage(timings, 'sample'):
    out = options.sampler(samplers).predict(
        input_pipeline.normalise_images(inputs),
        jax.random.PRNGKey(options.seed),
        method=options.method,
        tta_config=options.tta,
        progress=progress,
    )
    joints = conventions.regress_joints(out['vertices'], run.topology.joint_regressor)
    uncertainty = hand_uncertainty(out['hypotheses'])
  faces = np.asarray(run.topology.faces)
  with _stage(timings, 'place'):
    hands = _placed_hands(run, options, found, Ks, out, joints, uncertainty, faces)
  if models is None:
    return hands
  with _stage(timings, 'fit'):
    return _with_hand_model(samplers, options, hands, Ks, models)


def _placed_hands(run, options, found, Ks, out, joints, uncertainty, faces) -> list[Hand]:
  """Each sampled hand (`_sample_hands`'s arrays, row i for found[i]) placed in its photo's camera."""
  hands = []
  for i, (crop, K) in enumerate(zip(found, Ks)):
    placed = full_frame.to_photo(
        out['vertices'][i],
        joints[i],
        out['camera'][i],
        is_left=crop.is_left,
        crop_box=crop.crop_box,
        K=K,
        image_size=int(run.config.model.img_size),
        vertex_scale=float(run.config.model.vertex_scale),
        keypoints_2d=crop.keypoints_2d,
        use_keypoints=options.placement == 'landmarks',
    )
    hands.append(
        Hand(
            crop=crop,
            faces=faces[:, ::-1] if crop.is_left else faces,  # mirroring flips the winding
            uncertainty=uncertainty['uncertainty'][i],
            vertex_uncertainty=uncertainty['vertex_uncertainty'][i],
            orientation_uncertainty_deg=uncertainty['orientation_uncertainty_deg'][i],
            landmarks_3d_pa_mpjpe_mm=landmarks_3d_error(placed['joints'], crop.keypoints_3d),
            **placed,
        )
    )
  return hands


def _with_hand_model(
    samplers: sampling.SamplerCache,
    options: Options,
    hands: list[Hand],
    Ks: Sequence[np.ndarray],
    models: dict[str, tuple[Any, str]],
) -> list[Hand]:
  """The hands with landmarks refined onto them (Options.refine), and MANO parameters for the others
  (Options.fit_mano)."""
  refine = [
      i
      for i, hand in enumerate(hands)
      if options.refine == 'landmarks' and hand.crop.keypoints_2d is not None
  ]
  plain = [i for i in range(len(hands)) if options.fit_mano and i not in refine]
  hands = list(hands)
  is_left = np.array([hand.crop.is_left for hand in hands])
  camera_meshes = np.stack([hand.vertices_camera for hand in hands])
  if plain:
    parameters, _ = fit_mano(models, camera_meshes[plain], is_left[plain])
    for row, fitted in zip(plain, parameters):
      hands[row] = dataclasses.replace(hands[row], mano=fitted)
  if refine:
    keypoints = {
        'keypoints_2d': np.stack([hands[i].crop.keypoints_2d for i in refine]),
        'K': np.stack([Ks[i] for i in refine]),
        'joint_regressor': np.asarray(samplers.run.topology.joint_regressor),
    }
    parameters, meshes = fit_mano(models, camera_meshes[refine], is_left[refine], keypoints)
    for row, fitted, mesh in zip(refine, parameters, meshes):
      hands[row] = _refined(hands[row], fitted, mesh, samplers.run.topology.joint_regressor)
  return hands


def _refined(hand: Hand, fitted: dict[str, Any], vertices_camera: np.ndarray, regressor) -> Hand:
  """The hand with its refined camera-frame mesh (N, 3); the network's own kept in `network`."""
  joints_camera = conventions.regress_joints(vertices_camera, regressor)
  root = joints_camera[0]
  return dataclasses.replace(
      hand,
      vertices=vertices_camera - root,
      joints=joints_camera - root,
      root=root,
      vertices_camera=vertices_camera,
      joints_camera=joints_camera,
      mano=fitted,
      mesh='refined',
      reprojection_error_px=fitted['reprojection_error_px'],
      landmarks_3d_pa_mpjpe_mm=landmarks_3d_error(joints_camera, hand.crop.keypoints_3d),
      network={
          key: getattr(hand, key)
          for key in (
              'vertices',
              'joints',
              'root',
              'vertices_camera',
              'joints_camera',
              'reprojection_error_px',
              'landmarks_3d_pa_mpjpe_mm',
          )
      },
  )
