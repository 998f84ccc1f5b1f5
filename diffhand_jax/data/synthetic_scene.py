"""Synthetic hand scenes without TFDS: sample a pose, a shape, a view and a look; render; return features.

`generate_example(config, split, index)` is the whole recipe for one example; the TFDS builder is a thin
wrapper over it. An example depends only on (config.seed, split, index) (its own numpy Generator), never on
the order in which examples are made.

Recipe (all choices are fields of `SceneConfig`):

1. Shape: betas ~ N(0, shape_std²), clipped to ±2.5.
2. Finger pose from a low-dimensional prior (`pose_prior`):
   * 'synergy' (default): a grasp level drives the curl of all fingers (with per-finger jitter), or,
     less often, fingers curl independently or take a gesture (each finger either straight or curled).
     Within a finger the three joints flex together (MCP slightly less, DIP a little less than PIP).
     Spread opens the fingers like a fan (index and little most) and shrinks as they curl. The thumb has
     its own curl and an opposition level correlated with the grasp. Small abduction/twist jitter.
     Everything is clipped to the procedural hand's joint limits.
   * 'uniform': `mano.sample_random_pose` (independent per-finger curls, uniform spread and twist).
3. Global orientation: a canonical view (palm to the camera, fingers up) composed with the back side
   (probability `back_fraction`), tilts about x and y (N(0, tilt_std)) and an in-plane roll
   (N(0, roll_std)); stored as `mano_pose[:3]`, so `mano.forward(pose, betas, flat_hand_mean=False)
   + mano_trans` gives the camera-frame mesh (the finger pose is stored relative to `hands_mean`, as
   FreiHAND stores it).
4. Camera: FreiHAND-like crop intrinsics, focal = U(focal_range) × image width, principal point near the
   centre; the hand is placed so its projected extent is U(fill_range) of the crop, centred with jitter,
   and pushed back if it would leave the frame.
5. Look: skin albedo from a light-to-dark palette with per-vertex mottling, a random light direction
   (from the camera's hemisphere), random ambient and exposure, a random background (noise, gradient,
   shapes), optional sensor noise. The RGB is rendered at `supersample`× and box-filtered (anti-aliasing).
   Depth is sampled at the native pixel centres (exact there, 0 where a centre misses the hand). The mask
   is conservative: a pixel is on if the hand's projection touches any part of it, so every projected
   vertex falls inside it; `depth > 0` is the pixel-centre mask, a rim of up to one pixel smaller.

Clips (`clip_length` > 0, the `sequences` config): example i is frame i % L of clip i // L, and a clip
depends only on (seed, split, clip). It draws one shape, side (palm or back), camera K, skin, background
and noise level, and key states at irregular spacings (`keyframe_spacing`, so the speed varies): a finger
pose from the prior, a view, a placement, a light. Between keys every quantity eases along a smoothstep
(rotations by slerp), so poses stay within the joint limits and the motion is smooth; each frame adds
its own sensor noise. Such examples also carry `clip_id` and `frame_index`.

Every hand is a right hand (`hand_side` = 'right'); mirroring into left hands is left to the input
pipeline, which does it for real data anyway (docs/design.md §2).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import os
import pathlib
import sys
import warnings
from typing import Any, Iterator, NamedTuple

import jax
import numpy as np
from scipy.spatial.transform import Rotation

from diffhand_jax.geometry import mano, procedural_hand, render

from diffhand_jax.data import backgrounds

SPLIT_IDS = {'train': 0, 'validation': 1, 'test': 2}
POSE_PRIORS = ('synergy', 'uniform')
# Backgrounds and lighting (SceneConfig.look).
LOOKS = ('random', 'studio')

# Skin albedos from light to dark (linear RGB-ish, in [0, 1]); tones are interpolated between them.
SKIN_PALETTE = np.array(
    [
        [0.96, 0.80, 0.70],
        [0.90, 0.68, 0.56],
        [0.78, 0.56, 0.42],
        [0.60, 0.41, 0.29],
        [0.42, 0.27, 0.19],
        [0.28, 0.18, 0.13],
    ]
)

# MANO finger joints (1..15) as rows of the (15, 3) angle table, per finger: index, middle, little, ring,
# thumb. Column 0 is flexion, 1 abduction, 2 twist, along the model's `pose_axes`.
FINGER_ROWS = ((0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11), (12, 13, 14))
# Fan-out of each finger's MCP for spread = 1: +1 towards the index side, -1 towards the little side.
SPREAD_FAN = (1.0, 0.15, -1.0, -0.5)  # index, middle, little, ring


@dataclasses.dataclass(frozen=True)
class SceneConfig:
  """Everything that decides what the examples look like (splits and sizes live in the builder)."""

  image_size: int = 64
  seed: int = 0
  pose_prior: str = 'synergy'
  supersample: int = 2
  shape_std: float = 1.0
  back_fraction: float = 0.5
  tilt_std_deg: float = 25.0
  roll_std_deg: float = 35.0
  focal_range: tuple[float, float] = (
      2.0,
      2.8,
  )  # focal length in image widths (FreiHAND: about 2.2-2.6)
  fill_range: tuple[float, float] = (0.6, 0.9)  # projected hand extent as a fraction of the crop
  center_jitter: float = 0.06  # of the crop size
  noise_std_max: float = 6.0  # sensor noise, grey levels
  # Clips (the `sequences` config): 0 makes independent stills; L > 0 makes example i frame i % L of
  # clip i // L. A clip moves between key states whose spacing is drawn from keyframe_spacing (frames).
  clip_length: int = 0
  keyframe_spacing: tuple[float, float] = (6.0, 18.0)
  # Backgrounds and lighting: 'random' (noise, gradients, shapes; a light from anywhere in the camera's
  # hemisphere) or 'studio' (a plain backdrop, soft light from above: the `studio` builder config, a
  # second "dataset" for mixture experiments). Stills only.
  look: str = 'random'

  def __post_init__(self):
    if self.look not in LOOKS:
      raise ValueError(f'synthetic_hands: look must be one of {LOOKS}, got {self.look!r}')
    if self.look != 'random' and self.clip_length:
      raise ValueError(f'synthetic_hands: look={self.look!r} is for stills (clip_length 0)')
    if self.pose_prior not in POSE_PRIORS:
      raise ValueError(
          f'synthetic_hands: pose_prior must be one of {POSE_PRIORS}, got {self.pose_prior!r}'
      )
    if self.clip_length < 0 or not 1.0 <= self.keyframe_spacing[0] <= self.keyframe_spacing[1]:
      raise ValueError(
          f'synthetic_hands: need clip_length >= 0 and 1 <= keyframe_spacing[0] <= keyframe_spacing[1],'
          f' got {self.clip_length}, {self.keyframe_spacing}'
      )
    if self.image_size < 8 or self.supersample < 1:
      raise ValueError(
          f'synthetic_hands: need image_size >= 8 and supersample >= 1, got '
          f'{self.image_size}, {self.supersample}'
      )


def scene_config(config: Any) -> SceneConfig:
  """A `SceneConfig` from any object with (some of) its field names, e.g. the TFDS builder config."""
  if isinstance(config, SceneConfig):
    return config
  values = {
      f.name: getattr(config, f.name)
      for f in dataclasses.fields(SceneConfig)
      if hasattr(config, f.name)
  }
  return SceneConfig(**values)


class HandKit(NamedTuple):
  """The procedural hand and what the generator derives from it once."""

  model: Any  # mano.ManoModel
  forward: (
      Any  # jitted (pose (1, 48), betas (1, 10)) -> (vertices (1, 778, 3), joints16 (1, 16, 3))
  )
  joints21: (
      Any  # jitted (vertices (778, 3), joints16 (16, 3)) -> (21, 3) with the procedural tip ids
  )
  hands_mean: np.ndarray  # (45,)
  faces: np.ndarray  # (F, 3) int32
  tip_ids: tuple[int, ...]
  canonical: np.ndarray  # (3, 3) rotation: rest hand frame -> palm to camera, fingers up
  flex_high: np.ndarray  # (15,) flexion limit towards the palm
  flex_low: np.ndarray  # (15,) hyper-extension limit
  spread_sign: np.ndarray  # (4,) sign of MCP abduction that moves a finger towards the index side
  limits: np.ndarray  # (15, 3, 2)
  skin_regions: dict  # procedural_hand.skin_regions(): dorsal, nail, knuckle, crease, each (778,)


def load_hand_kit() -> HandKit:
  """Loads the procedural right hand and precomputes its canonical frame and joint directions."""
  model = mano.load_procedural('right')
  if model.pose_axes is None or model.pose_limits is None or model.tip_ids is None:
    raise ValueError(
        'synthetic_hands: the procedural hand file lacks pose_axes, pose_limits or tip_ids'
    )

  def forward(pose, betas):
    return mano.forward(model, pose, betas, flat_hand_mean=True)

  forward = jax.jit(forward)
  joints21 = jax.jit(lambda vertices, joints16: mano.joints21(vertices, joints16, model.tip_ids))
  rest_vertices, rest_joints = (
      np.asarray(a, np.float64)[0]
      for a in forward(np.zeros((1, 48), np.float32), np.zeros((1, model.num_betas), np.float32))
  )
  wrist, index_mcp, middle_mcp, little_mcp = rest_joints[[0, 1, 4, 7]]
  finger_dir = _unit(middle_mcp - wrist)
  lateral = _unit(index_mcp - little_mcp)  # towards the thumb/index side
  lateral = _unit(lateral - finger_dir * (lateral @ finger_dir))
  palm_normal = np.cross(lateral, finger_dir)  # out of the palm for a right hand
  # Palm to the camera (-z), fingers up (-y), index side to the image right (+x) for a right hand.
  hand_frame = np.stack([lateral, finger_dir, palm_normal], axis=1)
  camera_frame = np.array([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]]).T
  canonical = camera_frame @ hand_frame.T

  axes = np.asarray(model.pose_axes, np.float64)  # (15, 3, 3): flex, abduction, twist unit axes
  limits = np.asarray(model.pose_limits, np.float64)  # (15, 3, 2)
  # Flexion: the side of the range whose rotation moves the bone towards the palm.
  children = {
      1: 2,
      2: 3,
      3: None,
      4: 5,
      5: 6,
      6: None,
      7: 8,
      8: 9,
      9: None,
      10: 11,
      11: 12,
      12: None,
      13: 14,
      14: 15,
      15: None,
  }
  tips = dict(
      zip(
          (3, 6, 9, 12, 15),
          (
              model.tip_ids[1],
              model.tip_ids[2],
              model.tip_ids[4],
              model.tip_ids[3],
              model.tip_ids[0],
          ),
      )
  )
  flex_high, flex_low = np.zeros(15), np.zeros(15)
  for row in range(15):
    joint = row + 1
    end = (
        rest_joints[children[joint]] if children[joint] is not None else rest_vertices[tips[joint]]
    )
    bone = _unit(end - rest_joints[joint])
    towards_palm = np.cross(axes[row, 0], bone) @ palm_normal
    low, high = limits[row, 0]
    flex_high[row], flex_low[row] = (high, low) if towards_palm >= 0 else (low, high)
  spread_sign = np.zeros(4)
  for finger in range(4):
    row = FINGER_ROWS[finger][0]
    bone = _unit(rest_joints[row + 2] - rest_joints[row + 1])
    spread_sign[finger] = np.sign(np.cross(axes[row, 1], bone) @ lateral) or 1.0
  return HandKit(
      model=model,
      forward=forward,
      joints21=joints21,
      hands_mean=np.asarray(model.hands_mean, np.float64),
      faces=np.asarray(model.faces, np.int32),
      tip_ids=tuple(int(t) for t in model.tip_ids),
      canonical=canonical,
      flex_high=flex_high,
      flex_low=flex_low,
      spread_sign=spread_sign,
      limits=limits,
      skin_regions=procedural_hand.skin_regions(),
  )


def _unit(vector: np.ndarray) -> np.ndarray:
  return vector / np.linalg.norm(vector)


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The generator of one example: a function of (seed, split, index) only."""
  if split not in SPLIT_IDS:
    raise ValueError(f'synthetic_hands: unknown split {split!r}; choose one of {sorted(SPLIT_IDS)}')
  return np.random.default_rng([int(seed), SPLIT_IDS[split], int(index)])


# ------------------------------------------------------------------------------------------------
# Pose prior
# ------------------------------------------------------------------------------------------------


def _flex_angle(kit: HandKit, rows, curl: np.ndarray) -> np.ndarray:
  """Curl in [-1, 1] (negative = hyper-extension) -> flexion angle along each row's flex axis."""
  rows = np.asarray(rows)
  return np.where(curl >= 0, curl * kit.flex_high[rows], -curl * kit.flex_low[rows])


def sample_synergy_angles(rng: np.random.Generator, kit: HandKit) -> np.ndarray:
  """A (15, 3) table of (flex, abduction, twist) angles from the low-dimensional synergy prior."""
  angles = np.zeros((15, 3))
  grasp = rng.uniform(0.0, 1.0)
  mode = rng.choice(3, p=(0.7, 0.15, 0.15))
  if mode == 0:  # one grasp level for all fingers
    finger_curl = np.clip(grasp + rng.normal(0.0, 0.12, size=4), -0.1, 1.0)
  elif mode == 1:  # independent fingers
    finger_curl = rng.uniform(-0.1, 1.0, size=4)
  else:  # a gesture: each finger straight or curled
    curled = rng.uniform(size=4) < 0.5
    finger_curl = np.where(curled, rng.uniform(0.75, 1.0, size=4), rng.uniform(-0.1, 0.15, size=4))
  joint_weight = np.array([0.85, 1.0, 0.85])  # MCP, PIP, DIP move together (PIP most)
  spread = rng.uniform(-0.3, 1.0)
  for finger in range(4):
    rows = np.array(FINGER_ROWS[finger])
    curl = np.clip(finger_curl[finger] * joint_weight + rng.normal(0.0, 0.05, size=3), -0.15, 1.0)
    angles[rows, 0] = _flex_angle(kit, rows, curl)
    # Spread fans the MCPs out; curled fingers close up.
    amount = (
        spread
        * SPREAD_FAN[finger]
        * kit.spread_sign[finger]
        * (1.0 - 0.8 * max(finger_curl[finger], 0))
    )
    mcp = rows[0]
    low, high = kit.limits[mcp, 1]
    angles[mcp, 1] = amount * (high if amount >= 0 else -low)
    angles[rows, 1] += rng.normal(0.0, 0.03, size=3)
    angles[rows, 2] = rng.normal(0.0, 0.04, size=3)
  # Thumb: its own curl, and an opposition level that follows the grasp.
  rows = np.array(FINGER_ROWS[4])
  thumb_curl = (
      np.clip(0.8 * grasp + rng.normal(0.0, 0.25), -0.1, 1.0)
      if mode == 0
      else rng.uniform(-0.1, 1.0)
  )
  opposition = np.clip(0.7 * grasp + rng.normal(0.15, 0.2), 0.0, 1.0)
  angles[rows, 0] = _flex_angle(
      kit,
      rows,
      np.clip(thumb_curl * np.array([0.5, 0.9, 1.0]) + rng.normal(0.0, 0.05, size=3), -0.1, 1.0),
  )
  low, high = kit.limits[rows[0], 1:, 0], kit.limits[rows[0], 1:, 1]
  # CMC abduction and pronation move from their low ends (thumb alongside the palm) towards opposition.
  angles[rows[0], 1:] = low + (high - low) * np.clip(
      np.array([0.25, 0.35]) + opposition * np.array([0.45, 0.5]) + rng.normal(0.0, 0.05, size=2),
      0,
      1,
  )
  angles[rows[1:], 1:] = rng.normal(0.0, 0.03, size=(2, 2))
  return np.clip(angles, kit.limits[..., 0], kit.limits[..., 1])


def sample_finger_pose(rng: np.random.Generator, kit: HandKit, prior: str) -> np.ndarray:
  """(45,) absolute finger axis-angle pose (flat_hand_mean=True semantics)."""
  if prior == 'uniform':
    return np.asarray(
        mano.sample_random_pose(rng, kit.model, 1, flat_hand_mean=True)[0, 3:], np.float64
    )
  angles = sample_synergy_angles(rng, kit)
  return np.einsum('jk,jkc->jc', angles, np.asarray(kit.model.pose_axes, np.float64)).reshape(45)


def sample_view_rotation(rng: np.random.Generator, kit: HandKit, config: SceneConfig) -> np.ndarray:
  """(3, 3) rotation from the model frame to the camera frame."""
  return sample_view_for_side(rng, kit, config, back=rng.uniform() < config.back_fraction)


def sample_view_for_side(
    rng: np.random.Generator, kit: HandKit, config: SceneConfig, *, back: bool
) -> np.ndarray:
  """(3, 3) rotation from the model frame to the camera frame, palm or (``back``) back to the camera."""
  view = Rotation.identity()
  if back:
    view = (
        Rotation.from_rotvec([0.0, np.pi, 0.0]) * view
    )  # show the back: turn about the finger axis
  tilt = np.deg2rad(config.tilt_std_deg) * rng.normal(size=2)
  roll = np.deg2rad(config.roll_std_deg) * rng.normal()
  view = (
      Rotation.from_rotvec([0.0, 0.0, roll])
      * Rotation.from_rotvec([tilt[0], 0.0, 0.0])
      * Rotation.from_rotvec([0.0, tilt[1], 0.0])
      * view
  )
  return view.as_matrix() @ kit.canonical


# ------------------------------------------------------------------------------------------------
# Camera and placement
# ------------------------------------------------------------------------------------------------


def place_in_camera(rng: np.random.Generator, vertices: np.ndarray, config: SceneConfig):
  """Chooses K and a translation that frame the hand like a FreiHAND crop.

  Args:
    vertices: (778, 3) posed, rotated vertices in metres (any origin).

  Returns:
    K (3, 3) and translation (3,) so that `vertices + translation` is in the camera frame.
  """
  K = sample_intrinsics(rng, config)
  return K, place_with_intrinsics(rng, vertices, K, config)


def sample_intrinsics(rng: np.random.Generator, config: SceneConfig) -> np.ndarray:
  """FreiHAND-like crop intrinsics K (3, 3): focal U(focal_range) image widths, centre jittered."""
  size = config.image_size
  focal = rng.uniform(*config.focal_range) * size
  principal = (size - 1) / 2.0 + rng.uniform(-0.03, 0.03, size=2) * size
  return np.array([[focal, 0.0, principal[0]], [0.0, focal, principal[1]], [0.0, 0.0, 1.0]])


def place_with_intrinsics(
    rng: np.random.Generator, vertices: np.ndarray, K: np.ndarray, config: SceneConfig
) -> np.ndarray:
  """The translation (3,) that frames ``vertices`` (778, 3) in the crop of K, as `place_in_camera`."""
  size = config.image_size
  focal, principal = K[0, 0], K[:2, 2]
  low, high = vertices.min(axis=0), vertices.max(axis=0)
  centre = (low + high) / 2.0
  extent = float(np.max(high[:2] - low[:2]))
  fill = rng.uniform(*config.fill_range)
  depth = focal * extent / (fill * size) + (high[2] - low[2]) / 2.0
  target = principal + rng.uniform(-1.0, 1.0, size=2) * config.center_jitter * size
  translation = (
      np.array(
          [
              (target[0] - principal[0]) * depth / focal,
              (target[1] - principal[1]) * depth / focal,
              depth,
          ]
      )
      - centre
  )
  # Perspective enlarges the near side: push back until the projection fits with a half-pixel margin.
  for _ in range(20):
    uv = render.project(vertices + translation, K)
    overflow = max(0.5 - uv.min(), uv.max() - (size - 1.5))
    if overflow <= 0:
      break
    translation[2] *= 1.08
  return translation


# ------------------------------------------------------------------------------------------------
# One example
# ------------------------------------------------------------------------------------------------


def _skin_colors(rng: np.random.Generator, kit: HandKit) -> np.ndarray:
  """Per-vertex albedo (778, 3): a tone from the palette, with a lighter palm, nails, knuckles and
  creases of random strength (procedural_hand.skin_albedo), and mottling."""
  tone = rng.uniform(0, len(SKIN_PALETTE) - 1)
  low = int(np.floor(tone))
  high = min(low + 1, len(SKIN_PALETTE) - 1)
  base = SKIN_PALETTE[low] + (tone - low) * (SKIN_PALETTE[high] - SKIN_PALETTE[low])
  base = base * rng.uniform(0.9, 1.1, size=3)  # slight hue variation
  mottle = 1.0 + rng.normal(0.0, 0.04, size=(len(kit.skin_regions['dorsal']), 1))
  albedo = procedural_hand.skin_albedo(
      np.clip(base * mottle, 0.0, 1.0),
      kit.skin_regions,
      palm_lighten=rng.uniform(0.55, 0.8),
      back_darken=rng.uniform(0.25, 0.4),
      nail=rng.uniform(0.6, 1.0),
      knuckle=rng.uniform(0.15, 0.35),
      crease=rng.uniform(0.15, 0.4),
  )
  return albedo


def generate_example(config: Any, split: str, index: int, *, kit: HandKit | None = None) -> dict:
  """One synthetic example in the common feature schema (docs/design.md §7) plus `mask`, `depth`, `mano_trans`.

  Args:
    config: a `SceneConfig` or any object with its field names (e.g. the TFDS builder config).
    split: 'train', 'validation' or 'test'.
    index: example number within the split.
    kit: the loaded procedural hand (`load_hand_kit()`); loaded on demand if None (slow: pass it in loops).

  Returns:
    dict of numpy values: image uint8 (H, W, 3), mask uint8 (H, W, 1) in {0, 255} (conservative coverage),
    depth float32 (H, W) metres at pixel centres (0 = background), K float32 (3, 3), joints_3d float32 (21, 3), vertices_3d float32 (778, 3),
    mano_pose float32 (48,) (flat_hand_mean=False, as FreiHAND), mano_shape float32 (10,), mano_trans float32 (3,),
    has_3d bool, hand_side str, bbox float32 (4,) x0, y0, x1, y1 of the projected vertices.
  """
  config = scene_config(config)
  kit = load_hand_kit() if kit is None else kit
  if config.clip_length:
    clip, frame = divmod(int(index), config.clip_length)
    return generate_clip_frame(config, split, clip, frame, kit=kit)
  rng = example_rng(config.seed, split, index)
  size = config.image_size

  num_betas = kit.model.num_betas
  betas = np.clip(rng.normal(0.0, config.shape_std, size=num_betas), -2.5, 2.5)
  finger_pose = sample_finger_pose(rng, kit, config.pose_prior)
  rotation = sample_view_rotation(rng, kit, config)
  pose = np.concatenate([Rotation.from_matrix(rotation).as_rotvec(), finger_pose]).astype(
      np.float32
  )
  betas = betas.astype(np.float32)
  vertices, joints16 = kit.forward(pose[None], betas[None])
  vertices = np.asarray(vertices[0], np.float64)
  joints16 = np.asarray(joints16[0], np.float64)

  K, translation = place_in_camera(rng, vertices, config)
  vertices = vertices + translation
  joints16 = joints16 + translation
  joints = np.asarray(kit.joints21(vertices, joints16), np.float64)

  if config.look == 'studio':
    background = backgrounds.studio_backdrop(rng, size, size)
    colors = _skin_colors(rng, kit)
    # From above the camera (−y in the OpenCV frame) and in front, with much fill light.
    light = np.array([rng.uniform(-0.3, 0.3), -1.0, -rng.uniform(0.5, 0.9)])
    ambient = rng.uniform(0.5, 0.7)
    exposure = rng.uniform(0.9, 1.05)
  else:
    background = backgrounds.sample_background(rng, size, size)
    colors = _skin_colors(rng, kit)
    light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(0.3, 1.2)])
    ambient = rng.uniform(0.25, 0.55)
    exposure = rng.uniform(0.75, 1.15)
  shaded, depth = _shade(kit, config, vertices, K, background, colors, light, ambient, exposure)
  noise_std = rng.uniform(0.0, config.noise_std_max)
  image = np.clip(np.round(shaded + rng.normal(0.0, noise_std, size=shaded.shape)), 0, 255).astype(
      np.uint8
  )
  return _features(kit, config, image, depth, K, vertices, joints, pose, betas, translation)


def _shade(kit, config, vertices, K, background, colors, light, ambient, exposure):
  """The lit, anti-aliased render (H, W, 3) float64 in [0, 255] and the depth map (H, W) at pixel
  centres of camera-frame ``vertices`` (778, 3)."""
  size = config.image_size
  factor = config.supersample
  albedo = np.clip(colors * exposure, 0, 1)
  if factor == 1:
    drawn = render.render(
        vertices,
        kit.faces,
        K,
        (size, size),
        vertex_colors=albedo,
        light_dir=light,
        ambient=ambient,
        background=background,
    )
    return drawn['rgb'].astype(np.float64), drawn['depth']
  big_background = np.repeat(np.repeat(background, factor, axis=0), factor, axis=1)
  # The hand is closed and wound outwards, so culling back faces only drops hidden work (the RGB may
  # differ at a few pixels where skinning folds the skin over; depth and mask below do not cull).
  big = render.render(
      vertices,
      kit.faces,
      render.upscaled_intrinsics(K, factor),  # pixel centres at integers
      (size * factor, size * factor),
      vertex_colors=albedo,
      light_dir=light,
      ambient=ambient,
      background=big_background,
      cull_back_faces=True,
  )
  shaded = render.downsample(big['rgb'].astype(np.float64), factor)
  depth = render.rasterize(vertices, kit.faces, K, (size, size))['depth']
  return shaded, depth


def _features(kit, config, image, depth, K, vertices, joints, pose, betas, translation) -> dict:
  """The example's features (see `generate_example`) from its render and its 3D state."""
  size = config.image_size
  uv = render.project(vertices, K)
  bbox = np.concatenate(
      [np.clip(uv.min(axis=0), 0, size - 1), np.clip(uv.max(axis=0), 0, size - 1)]
  )
  return dict(
      image=image,
      mask=(render.coverage_mask(vertices, kit.faces, K, (size, size))[..., None] * np.uint8(255)),
      depth=depth.astype(np.float32),
      K=K.astype(np.float32),
      joints_3d=joints.astype(np.float32),
      vertices_3d=vertices.astype(np.float32),
      # FreiHAND's convention (docs/design.md §2): the finger pose is relative to hands_mean (flat_hand_mean=False).
      mano_pose=np.concatenate([pose[:3], pose[3:] - kit.hands_mean]).astype(np.float32),
      mano_shape=_pad_betas(betas),
      mano_trans=translation.astype(np.float32),
      has_3d=True,
      hand_side='right',
      bbox=bbox.astype(np.float32),
  )


# ------------------------------------------------------------------------------------------------
# Clips: smooth trajectories between key states
# ------------------------------------------------------------------------------------------------

# The last entry of a clip's seed, after (seed, split, clip): keeps clip streams apart from the stills'.
_CLIP_STREAM = 1


class ClipPlan(NamedTuple):
  """What stays fixed in a clip, and its M key states (at frames key_frames, increasing from 0)."""

  key_frames: np.ndarray  # (M,) float, the first 0 and the last >= clip_length - 1
  finger_poses: np.ndarray  # (M, 45) absolute axis-angle (flat_hand_mean=True semantics)
  views: np.ndarray  # (M, 3, 3) rotations from the model frame to the camera frame
  translations: np.ndarray  # (M, 3) metres
  lights: np.ndarray  # (M, 3) light directions
  ambients: np.ndarray  # (M,)
  exposures: np.ndarray  # (M,)
  betas: np.ndarray  # (num_betas,) float32
  K: np.ndarray  # (3, 3)
  background: np.ndarray  # (H, W, 3) uint8
  colors: np.ndarray  # (778, 3) skin albedo
  noise_std: float


def clip_rng(seed: int, split: str, clip: int, frame: int | None = None) -> np.random.Generator:
  """The generator of a clip's plan (frame None) or of one frame's sensor noise."""
  if split not in SPLIT_IDS:
    raise ValueError(f'synthetic_hands: unknown split {split!r}; choose one of {sorted(SPLIT_IDS)}')
  entropy = [int(seed), SPLIT_IDS[split], int(clip), _CLIP_STREAM]
  return np.random.default_rng(entropy if frame is None else entropy + [int(frame)])


def plan_clip(config: Any, split: str, clip: int, *, kit: HandKit) -> ClipPlan:
  """The key states and fixed look of clip ``clip``: a function of (config.seed, split, clip) only."""
  config = scene_config(config)
  if config.clip_length < 1:
    raise ValueError('synthetic_hands: plan_clip needs config.clip_length >= 1')
  rng = clip_rng(config.seed, split, clip)
  size = config.image_size
  key_frames = [0.0]
  while key_frames[-1] < config.clip_length - 1:
    key_frames.append(key_frames[-1] + rng.uniform(*config.keyframe_spacing))
  count = len(key_frames)
  betas = np.clip(rng.normal(0.0, config.shape_std, size=kit.model.num_betas), -2.5, 2.5)
  betas = betas.astype(np.float32)
  back = rng.uniform() < config.back_fraction
  K = sample_intrinsics(rng, config)
  finger_poses, views, translations = [], [], []
  for _ in range(count):
    finger_pose = sample_finger_pose(rng, kit, config.pose_prior)
    view = sample_view_for_side(rng, kit, config, back=back)
    pose = np.concatenate([Rotation.from_matrix(view).as_rotvec(), finger_pose]).astype(np.float32)
    vertices = np.asarray(kit.forward(pose[None], betas[None])[0][0], np.float64)
    finger_poses.append(finger_pose)
    views.append(view)
    translations.append(place_with_intrinsics(rng, vertices, K, config))
  lights = np.stack(
      [[rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(0.3, 1.2)] for _ in range(count)]
  )
  return ClipPlan(
      key_frames=np.asarray(key_frames),
      finger_poses=np.stack(finger_poses),
      views=np.stack(views),
      translations=np.stack(translations),
      lights=lights,
      ambients=rng.uniform(0.25, 0.55, size=count),
      exposures=rng.uniform(0.75, 1.15, size=count),
      betas=betas,
      K=K,
      background=backgrounds.sample_background(rng, size, size),
      colors=_skin_colors(rng, kit),
      noise_std=float(rng.uniform(0.0, config.noise_std_max)),
  )


def clip_state(plan: ClipPlan, frame: float) -> dict[str, np.ndarray]:
  """The clip's state at ``frame``: between keys j and j + 1 every quantity moves by the smoothstep
  w = 3u² − 2u³ of u, the fraction of the way (rotations by slerp), so it stays between the two keys
  and its velocity is continuous. Returns finger_pose (45,), view (3, 3), translation (3,), light (3,),
  ambient and exposure (floats)."""
  keys = plan.key_frames
  j = int(np.clip(np.searchsorted(keys, frame, side='right') - 1, 0, len(keys) - 2))
  u = float(np.clip((frame - keys[j]) / (keys[j + 1] - keys[j]), 0.0, 1.0))
  w = 3.0 * u * u - 2.0 * u * u * u
  mix = lambda values: (1.0 - w) * values[j] + w * values[j + 1]
  relative = Rotation.from_matrix(plan.views[j + 1] @ plan.views[j].T).as_rotvec()
  view = Rotation.from_rotvec(w * relative).as_matrix() @ plan.views[j]
  return {
      'finger_pose': mix(plan.finger_poses),
      'view': view,
      'translation': mix(plan.translations),
      'light': mix(plan.lights),
      'ambient': float(mix(plan.ambients)),
      'exposure': float(mix(plan.exposures)),
  }


# The plan of the clip made last, (config, split, clip) -> ClipPlan: a clip's frames come in order.
_LAST_PLAN: dict = {}


def generate_clip_frame(
    config: Any, split: str, clip: int, frame: int, *, kit: HandKit | None = None
) -> dict:
  """Frame ``frame`` of clip ``clip``: `generate_example`'s features plus clip_id and frame_index
  (int32). It depends only on (config.seed, split, clip, frame)."""
  config = scene_config(config)
  kit = load_hand_kit() if kit is None else kit
  if not 0 <= frame < config.clip_length:
    raise ValueError(f'synthetic_hands: frame {frame} outside a clip of {config.clip_length}')
  cache_key = (config, split, int(clip))
  plan = _LAST_PLAN.get(cache_key)
  if plan is None:
    plan = plan_clip(config, split, clip, kit=kit)
    _LAST_PLAN.clear()
    _LAST_PLAN[cache_key] = plan
  state = clip_state(plan, float(frame))
  pose = np.concatenate([Rotation.from_matrix(state['view']).as_rotvec(), state['finger_pose']])
  pose = pose.astype(np.float32)
  vertices, joints16 = kit.forward(pose[None], plan.betas[None])
  vertices = np.asarray(vertices[0], np.float64) + state['translation']
  joints16 = np.asarray(joints16[0], np.float64) + state['translation']
  joints = np.asarray(kit.joints21(vertices, joints16), np.float64)
  shaded, depth = _shade(
      kit,
      config,
      vertices,
      plan.K,
      plan.background,
      plan.colors,
      state['light'],
      state['ambient'],
      state['exposure'],
  )
  rng = clip_rng(config.seed, split, clip, frame)
  noisy = shaded + rng.normal(0.0, plan.noise_std, size=shaded.shape)
  image = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
  features = _features(
      kit, config, image, depth, plan.K, vertices, joints, pose, plan.betas, state['translation']
  )
  features['clip_id'] = np.int32(clip)
  features['frame_index'] = np.int32(frame)
  return features


def _pad_betas(betas: np.ndarray) -> np.ndarray:
  padded = np.zeros(10, np.float32)
  padded[: min(10, len(betas))] = betas[:10]
  return padded


# ------------------------------------------------------------------------------------------------
# A whole split, optionally over worker processes
# ------------------------------------------------------------------------------------------------

# Per-worker-process hand kit, set once by the pool initialiser (worker processes only).
_WORKER_KIT: HandKit | None = None


def _init_worker() -> None:
  global _WORKER_KIT
  _WORKER_KIT = load_hand_kit()


def _generate_range(job: tuple) -> list:
  config, split, start, stop = job
  return [generate_example(config, split, index, kit=_WORKER_KIT) for index in range(start, stop)]


def generate_split(
    config: Any,
    split: str,
    count: int,
    *,
    num_workers: int | None = None,
    chunk_size: int = 50,
    kit: HandKit | None = None,
) -> Iterator[tuple[int, dict]]:
  """Yields (index, example) for index = 0 .. count - 1, in order.

  With `num_workers` > 1 the examples are made in that many 'spawn' worker processes (safe when the caller
  already runs JAX or TensorFlow threads) in chunks of `chunk_size`; each worker loads the hand once. The
  examples are the same as serial ones, since each depends only on (seed, split, index). `num_workers=None`
  uses every CPU core for large splits. As always with 'spawn', a script that calls this at import time
  needs an `if __name__ == '__main__':` guard; without one the workers fail and generation falls back to
  this process, with a warning.
  """
  config = scene_config(config)
  if num_workers is None:
    num_workers = (os.cpu_count() or 1) if count >= 8 * chunk_size else 1
  if num_workers <= 1:
    kit = load_hand_kit() if kit is None else kit
    for index in range(count):
      yield index, generate_example(config, split, index, kit=kit)
    return
  # Spawned workers import this module by its name; make sure its root stays on their path (`tfds build`
  # puts it there only while it imports the builder).
  root = str(pathlib.Path(__file__).resolve().parents[__name__.count('.')])
  if root not in sys.path:
    sys.path.append(root)
  jobs = [
      (config, split, start, min(start + chunk_size, count))
      for start in range(0, count, chunk_size)
  ]
  done = 0
  try:
    with concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context('spawn'), initializer=_init_worker
    ) as pool:
      # A sliding window of chunks in flight bounds the memory held by finished, unconsumed examples.
      in_flight = collections.deque()
      next_job = 0
      while done < count:
        while next_job < len(jobs) and len(in_flight) < 2 * num_workers + 1:
          in_flight.append(pool.submit(_generate_range, jobs[next_job]))
          next_job += 1
        for example in in_flight.popleft().result():
          yield done, example
          done += 1
  except concurrent.futures.process.BrokenProcessPool:
    # Workers die at start-up when the calling script re-runs this on import (no `__main__` guard).
    warnings.warn(
        'synthetic_hands: worker processes failed to start (does the calling script lack an '
        "`if __name__ == '__main__':` guard?); generating the rest in this process."
    )
    kit = load_hand_kit() if kit is None else kit
    for index in range(done, count):
      yield index, generate_example(config, split, index, kit=kit)
