"""Whole synthetic photos with several hands: the procedural hand, right or left, placed anywhere in a
larger frame with a known pinhole camera. For testing the hand detector and full-frame predictions, and
for the example picture of docs/photos.md.

`render_frame(hands, size)` renders each `FrameHand` (a side, where its box's centre lands, how tall it
looks, a pose, an in-plane roll, palm or back to the camera, a skin tone) into one image with a z-buffer
(hands may overlap), over a plain or gradient background, and returns every hand's ground truth: the
camera-frame vertices and joints, the 2D joints and the box of the projected vertices.

A left hand is the mirror image of a right one (docs/design.md §2): the right hand is posed and placed
at the mirrored image position, then x is negated in the camera frame (K's principal point sits at the
image centre, so the two projections mirror each other exactly about it).

The synthetic-hands dataset (`synthetic_scene.py`) is unchanged by this module; it borrows that module's
hand kit (canonical view, limits) and skin palette.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from diffhand_jax.data import backgrounds, synthetic_scene
from diffhand_jax.geometry import mano, render

SIDES = ('right', 'left')


@dataclasses.dataclass(frozen=True)
class FrameHand:
  """One hand of a synthetic frame.

  side: 'right' or 'left'. centre: where the centre of its box lands, as fractions (x, y) of the image
  width and height. height: the box's larger side as a fraction of the image height. pose: a named pose
  of `mano.named_pose` ('flat', 'relaxed', 'point', 'fist') or 'random' (the synthetic dataset's synergy
  prior). roll_deg: in-plane rotation (positive turns the fingers towards the image's right, clockwise
  on screen). back: show the back of the hand instead of the palm. tilt_deg: rotation about the image's
  x axis (positive tips the fingers away from the camera). skin: a tone in [0, 5] along
  `synthetic_scene.SKIN_PALETTE` (light to dark).
  """

  side: str = 'right'
  centre: tuple[float, float] = (0.5, 0.5)
  height: float = 0.4
  pose: str = 'relaxed'
  roll_deg: float = 0.0
  back: bool = False
  tilt_deg: float = 0.0
  skin: float = 1.0

  def __post_init__(self):
    if self.side not in SIDES:
      raise ValueError(f'FrameHand: side must be one of {SIDES}, got {self.side!r}')


def _posed_right_hand(kit, hand: FrameHand, rng: np.random.Generator):
  """(vertices (778, 3), joints16 (16, 3), pose (48,), betas (10,)) of the right hand, rotated into the
  camera's axes, root at the origin."""
  if hand.pose == 'random':
    finger = synthetic_scene.sample_finger_pose(rng, kit, 'synergy')
  else:
    finger = mano.named_pose(kit.model, hand.pose, flat_hand_mean=True)[3:]
  view = Rotation.identity()
  if hand.back:
    view = Rotation.from_rotvec([0.0, np.pi, 0.0]) * view
  view = (
      Rotation.from_rotvec([0.0, 0.0, np.deg2rad(hand.roll_deg)])
      * Rotation.from_rotvec([np.deg2rad(hand.tilt_deg), 0.0, 0.0])
      * view
  )
  rotation = view.as_matrix() @ kit.canonical
  pose = np.concatenate([Rotation.from_matrix(rotation).as_rotvec(), finger]).astype(np.float32)
  betas = np.clip(rng.normal(0.0, 0.7, size=kit.model.num_betas), -2.0, 2.0).astype(np.float32)
  vertices, joints16 = kit.forward(pose[None], betas[None])
  return np.asarray(vertices[0], np.float64), np.asarray(joints16[0], np.float64), pose, betas


def _hand_albedo(kit, base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Per-vertex albedo (778, 3) in [0, 1]: the skin tone `base`, a lighter, pinker palm side, and
  fingernails on the back of the five fingertips (cues that real palms and backs differ by, and that a
  detector's handedness may use)."""
  rest_vertices, rest_joints = (
      np.asarray(a, np.float64)[0]
      for a in kit.forward(
          np.zeros((1, 48), np.float32), np.zeros((1, kit.model.num_betas), np.float32)
      )
  )
  normals = render.vertex_normals(rest_vertices, np.asarray(kit.faces))
  weights = np.asarray(kit.model.weights, np.float64)
  axes = np.asarray(kit.model.pose_axes, np.float64)
  # The palmar direction of every joint's segment: where flexion moves it (the palm's normal for the
  # wrist); each vertex takes that of the joint it follows most.
  wrist, index_mcp, middle_mcp, little_mcp = rest_joints[[0, 1, 4, 7]]
  palm_normal = np.cross(index_mcp - little_mcp, middle_mcp - wrist)
  palmar = np.zeros((16, 3))
  palmar[0] = palm_normal / np.linalg.norm(palm_normal)
  children = {1: 2, 2: 3, 4: 5, 5: 6, 7: 8, 8: 9, 10: 11, 11: 12, 13: 14, 14: 15}
  tip_of = dict(zip((3, 6, 9, 12, 15), np.asarray(kit.tip_ids)[[1, 2, 4, 3, 0]]))
  for joint in range(1, 16):
    end = rest_joints[children[joint]] if joint in children else rest_vertices[tip_of[joint]]
    bone = end - rest_joints[joint]
    direction = np.cross(axes[joint - 1, 0], bone / np.linalg.norm(bone))
    palmar[joint] = direction / np.linalg.norm(direction)
  owner = weights.argmax(1)
  facing = np.einsum('vc,vc->v', normals, palmar[owner])
  albedo = np.broadcast_to(base, rest_vertices.shape).copy()
  palm_side = np.clip(facing, 0.0, 1.0)[:, None]
  albedo = albedo * (1 - 0.35 * palm_side) + 0.35 * palm_side * np.array([0.95, 0.72, 0.66])
  nails = np.zeros(len(rest_vertices), bool)
  for joint, tip in tip_of.items():
    near_tip = np.linalg.norm(rest_vertices - rest_vertices[tip], axis=1) < 0.011
    nails |= (owner == joint) & near_tip & (facing < -0.45)
  albedo[nails] = np.array([0.93, 0.8, 0.78])
  return np.clip(albedo * (1.0 + rng.normal(0.0, 0.03, size=(len(albedo), 1))), 0, 1)


def _background(kind: Any, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  if isinstance(kind, np.ndarray):
    if kind.shape != (height, width, 3):
      raise ValueError(f'render_frame: background must be ({height}, {width}, 3), got {kind.shape}')
    return kind.astype(np.uint8)
  if kind == 'plain':
    colour = rng.uniform(0.25, 0.75, size=3)
    rows = np.linspace(0.85, 1.1, height)[:, None, None]
    return np.clip(np.round(colour * rows * 255.0) + np.zeros((1, width, 3)), 0, 255).astype(
        np.uint8
    )
  if kind == 'gradient':
    return np.clip(np.round(backgrounds.gradient(rng, height, width) * 255.0), 0, 255).astype(
        np.uint8
    )
  raise ValueError(
      f"render_frame: background must be 'plain', 'gradient' or an image, got {kind!r}"
  )


def render_frame(
    hands: Sequence[FrameHand],
    image_size: Sequence[int] = (480, 640),
    *,
    seed: int = 0,
    focal: float | None = None,
    background: Any = 'plain',
    supersample: int = 2,
    kit: Any = None,
) -> dict[str, Any]:
  """Renders the hands into one frame, seen by the pinhole `render.intrinsics(focal, image_size)`
  (focal: pixels; default `render.default_focal`, the image diagonal), lit from the camera's side.

  Returns {'image': uint8 (H, W, 3), 'K': (3, 3), 'hands': [one dict per FrameHand, in order: 'side',
  'vertices' (778, 3) and 'joints' (21, 3) metres in the camera frame, 'joints_2d' (21, 2) pixels,
  'box' (4,) x0, y0, x1, y1 of the projected vertices (pixels, pixel centres at integers),
  'pose' (48,) and 'betas' (10,) of the right hand it mirrors (flat_hand_mean=True)]}.
  """
  height, width = (int(s) for s in image_size)
  kit = synthetic_scene.load_hand_kit() if kit is None else kit
  rng = np.random.default_rng(seed)
  focal = render.default_focal((height, width)) if focal is None else float(focal)
  K = render.intrinsics(focal, (height, width))
  principal = K[:2, 2]
  faces = np.asarray(kit.faces, np.int64)

  all_vertices, all_faces, all_colours, truths = [], [], [], []
  for hand in hands:
    vertices, joints16, pose, betas = _posed_right_hand(kit, hand, rng)
    target = np.array([hand.centre[0] * (width - 1), hand.centre[1] * (height - 1)])
    if hand.side == 'left':  # place the right hand at the mirrored spot, then mirror it
      target[0] = 2.0 * principal[0] - target[0]
    low, high = vertices.min(0), vertices.max(0)
    extent = float(np.max(high[:2] - low[:2]))
    depth = focal * extent / (hand.height * height)
    centre = (low + high) / 2.0
    translation = np.array(
        [
            (target[0] - principal[0]) * depth / focal,
            (target[1] - principal[1]) * depth / focal,
            depth,
        ]
    ) - np.array([centre[0], centre[1], 0.0])
    # Perspective makes the projected box differ a little from `target`: move the hand so that the
    # projected box's centre lands on it (a few fixed-point steps).
    for _ in range(5):
      uv = render.project(vertices + translation, K)
      box_centre = (uv.min(0) + uv.max(0)) / 2.0
      translation[:2] += (target - box_centre) * translation[2] / focal
    vertices = vertices + translation
    joints16 = joints16 + translation
    joints = np.asarray(kit.joints21(vertices, joints16), np.float64)
    hand_faces = faces
    if hand.side == 'left':
      vertices = vertices * np.array([-1.0, 1.0, 1.0])
      joints = joints * np.array([-1.0, 1.0, 1.0])
      hand_faces = faces[:, ::-1]
    tone = float(np.clip(hand.skin, 0, len(synthetic_scene.SKIN_PALETTE) - 1))
    low_tone = int(np.floor(tone))
    high_tone = min(low_tone + 1, len(synthetic_scene.SKIN_PALETTE) - 1)
    palette = synthetic_scene.SKIN_PALETTE
    base = palette[low_tone] + (tone - low_tone) * (palette[high_tone] - palette[low_tone])
    colours = _hand_albedo(kit, base, rng)
    all_faces.append(hand_faces + sum(len(v) for v in all_vertices))
    all_vertices.append(vertices)
    all_colours.append(colours)
    uv = render.project(vertices, K)
    truths.append(
        {
            'side': hand.side,
            'vertices': vertices,
            'joints': joints,
            'joints_2d': render.project(joints, K),
            'box': np.concatenate([uv.min(0), uv.max(0)]),
            'pose': pose,
            'betas': betas,
        }
    )

  back = _background(background, rng, height, width)
  if not hands:
    return {'image': back, 'K': K, 'hands': []}
  vertices = np.concatenate(all_vertices)
  faces_all = np.concatenate(all_faces)
  colours = np.concatenate(all_colours)
  light = (0.3, -0.4, -1.0)  # from the camera's side, a little from the upper left
  if supersample == 1:
    drawn = render.render(
        vertices,
        faces_all,
        K,
        (height, width),
        vertex_colors=colours,
        light_dir=light,
        ambient=0.45,
        background=back,
    )['rgb']
  else:
    big_K = K.copy()
    big_K[:2, :2] *= supersample
    big_K[:2, 2] = supersample * (K[:2, 2] + 0.5) - 0.5
    big_back = np.repeat(np.repeat(back, supersample, axis=0), supersample, axis=1)
    big = render.render(
        vertices,
        faces_all,
        big_K,
        (height * supersample, width * supersample),
        vertex_colors=colours,
        light_dir=light,
        ambient=0.45,
        background=big_back,
    )['rgb']
    drawn = render.downsample(big.astype(np.float64), supersample)
  image = np.clip(np.round(drawn), 0, 255).astype(np.uint8)
  return {'image': image, 'K': K, 'hands': truths}


# The frame of docs/photos.md's example: three hands (two right, one left; backs to the camera, where
# the shipped detector reads sides right on these renders) on a 640 × 480 gradient.
EXAMPLE_HANDS = (
    FrameHand('right', (0.22, 0.55), 0.42, 'flat', back=True, roll_deg=-20, skin=0.6),
    FrameHand('left', (0.52, 0.38), 0.36, 'relaxed', back=True, roll_deg=10, skin=3.2),
    FrameHand('right', (0.8, 0.6), 0.4, 'random', back=True, roll_deg=25, skin=1.8),
)


def example_frame(kit: Any = None) -> dict[str, Any]:
  """`render_frame` of EXAMPLE_HANDS: the example photo of docs/photos.md."""
  return render_frame(EXAMPLE_HANDS, (480, 640), seed=7, background='gradient', kit=kit)


def clip_hands(index: int, num_frames: int, fps: float = 30.0, two_hands: bool = True) -> list:
  """The hands of frame `index` of `render_clip`'s clip: a right hand (its back to the camera) that
  circles the frame's centre-right once every 4 s while turning by ±15°, and, when two_hands, a left
  hand at the upper left during the middle third of the clip only (it enters and leaves)."""
  phase = 2.0 * np.pi * index / (4.0 * fps)
  hands = [
      FrameHand(
          'right',
          (0.6 + 0.15 * np.cos(phase), 0.55 + 0.12 * np.sin(phase)),
          0.45,
          'relaxed',
          roll_deg=15.0 * np.sin(2.0 * phase),
          back=True,
          skin=1.0,
      )
  ]
  if two_hands and num_frames // 3 <= index < 2 * num_frames // 3:
    hands.append(FrameHand('left', (0.22, 0.35), 0.35, 'flat', back=True, skin=2.5))
  return hands


def render_clip(
    num_frames: int,
    image_size: Sequence[int] = (480, 640),
    *,
    fps: float = 30.0,
    two_hands: bool = True,
    seed: int = 0,
    kit: Any = None,
) -> dict[str, Any]:
  """A clip of `clip_hands`'s moving hands over one plain background (one seed, so each hand keeps
  its shape and skin from frame to frame), rendered without supersampling (a live camera's frames).

  Returns {'frames': uint8 (F, H, W, 3), 'hands': per frame, the list of `render_frame`'s hand truths,
  'K': (3, 3), 'fps'}."""
  kit = synthetic_scene.load_hand_kit() if kit is None else kit
  height, width = (int(s) for s in image_size)
  # One background for every frame (render_frame's own would change with the number of hands).
  back = _background('plain', np.random.default_rng(seed), height, width)
  frames, truths, K = [], [], None
  for index in range(int(num_frames)):
    rendered = render_frame(
        clip_hands(index, num_frames, fps, two_hands),
        (height, width),
        seed=seed,
        background=back,
        supersample=1,
        kit=kit,
    )
    frames.append(rendered['image'])
    truths.append(rendered['hands'])
    K = rendered['K']
  return {'frames': np.stack(frames), 'hands': truths, 'K': K, 'fps': float(fps)}
