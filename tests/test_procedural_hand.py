"""Tests for the procedural hand: a closed, oriented, well-proportioned MANO-format model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from diffhand_jax import mano
from diffhand_jax.geometry import procedural_hand, topology

# MANO joint ids per finger (base -> tip joint) and tip order (thumb, index, middle, ring, little).
FINGER_JOINTS = {
    'thumb': (13, 14, 15),
    'index': (1, 2, 3),
    'middle': (4, 5, 6),
    'ring': (10, 11, 12),
    'little': (7, 8, 9),
}
TIP_ORDER = ('thumb', 'index', 'middle', 'ring', 'little')


@pytest.fixture(scope='module')
def model() -> mano.ManoModel:
  return mano.load_procedural()


@pytest.fixture(scope='module')
def arrays(model) -> dict:
  return {key: np.asarray(value, np.float64) for key, value in mano.model_to_arrays(model).items()}


def winding_number(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """Generalised winding number (solid angle / 4 pi) of a closed mesh at each point: 1 inside, 0 out."""
  a = vertices[faces[:, 0]][None] - points[:, None]
  b = vertices[faces[:, 1]][None] - points[:, None]
  c = vertices[faces[:, 2]][None] - points[:, None]
  la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
  numerator = np.einsum('pfi,pfi->pf', a, np.cross(b, c))
  denominator = (
      la * lb * lc
      + np.einsum('pfi,pfi->pf', a, b) * lc
      + np.einsum('pfi,pfi->pf', b, c) * la
      + np.einsum('pfi,pfi->pf', c, a) * lb
  )
  return np.sum(2 * np.arctan2(numerator, denominator), axis=1) / (4 * np.pi)


def test_counts_and_kinematic_tree(model):
  assert model.v_template.shape == (778, 3)
  assert model.faces.shape == (1552, 3)
  assert model.shapedirs.shape == (778, 3, 10) and model.posedirs.shape == (778, 3, 135)
  assert model.parents == (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
  assert model.tip_ids == mano.TIP_IDS['freihand']
  assert len(np.unique(np.asarray(model.faces))) == 778  # every vertex is used


def test_surface_is_closed_oriented_and_not_degenerate(arrays):
  faces = arrays['f'].astype(np.int64)
  vertices = arrays['v_template']
  half_edges = Counter((int(a), int(b)) for face in faces for a, b in zip(face, np.roll(face, -1)))
  # Closed and consistently oriented: each directed edge once, and its reverse once.
  assert all(count == 1 for count in half_edges.values())
  assert all((b, a) in half_edges for a, b in half_edges)
  assert np.all(
      (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
  )
  cross = np.cross(
      vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]]
  )
  areas = 0.5 * np.linalg.norm(cross, axis=1)
  assert areas.min() > 1e-7  # 0.1 mm^2
  edge_lengths = np.linalg.norm(vertices[faces] - vertices[np.roll(faces, -1, axis=1)], axis=-1)
  assert edge_lengths.min() > 5e-4
  # Outward normals: positive enclosed volume, and points just outside each face are outside.
  volume = (
      np.sum(
          np.einsum(
              'fi,fi->f',
              vertices[faces[:, 0]],
              np.cross(vertices[faces[:, 1]], vertices[faces[:, 2]]),
          )
      )
      / 6
  )
  assert 2e-4 < volume < 6e-4  # 200-600 cm^3, a hand's volume
  rng = np.random.default_rng(0)
  sample = rng.choice(len(faces), 40, replace=False)
  centres = vertices[faces[sample]].mean(axis=1)
  normals = np.asarray(topology.face_normals(vertices, faces))[sample]
  outside = winding_number(centres + 1e-3 * normals, vertices, faces)
  inside = winding_number(centres - 1e-3 * normals, vertices, faces)
  assert np.mean(np.abs(outside) < 0.5) > 0.9 and np.mean(inside > 0.5) > 0.9


def test_proportions_and_layout(model):
  vertices = np.asarray(model.v_template, np.float64)
  joints = np.asarray(model.J_regressor, np.float64) @ vertices
  tips = {name: vertices[tip] for name, tip in zip(TIP_ORDER, model.tip_ids)}
  wrist = joints[0]
  assert 0.18 <= np.linalg.norm(tips['middle'] - wrist) <= 0.19
  # Fingers point along -x; the thumb is on +z; the back of the hand faces +y (palm towards -y).
  for name in ('index', 'middle', 'ring', 'little'):
    assert tips[name][0] < wrist[0] - 0.12
  assert tips['thumb'][2] > joints[1][2] > joints[4][2] > joints[10][2] > joints[7][2]
  lengths = {
      name: np.linalg.norm(tips[name] - joints[FINGER_JOINTS[name][0]]) for name in TIP_ORDER
  }
  assert lengths['middle'] == max(lengths[n] for n in ('index', 'middle', 'ring', 'little'))
  assert lengths['little'] == min(lengths[n] for n in ('index', 'middle', 'ring', 'little'))
  assert 0.07 <= lengths['middle'] <= 0.11
  palm_breadth = np.linalg.norm(joints[1] - joints[7])
  assert 0.05 <= palm_breadth <= 0.07  # index MCP to little MCP, centre to centre
  extent = vertices.max(axis=0) - vertices.min(axis=0)
  assert extent[1] < 0.09  # a flat hand is thin along y
  # Tips are the extremities of their fingers: the farthest vertex of the mesh from the wrist is a tip.
  assert np.argmax(np.linalg.norm(vertices - wrist, axis=1)) == model.tip_ids[2]


def test_joint_regressor_rows_are_convex_and_inside(model, arrays):
  regressor = arrays['J_regressor']
  assert np.all(regressor >= 0)
  np.testing.assert_allclose(regressor.sum(axis=1), 1.0, atol=1e-5)
  joints = regressor @ arrays['v_template']
  np.testing.assert_allclose(joints, np.load(mano.PROCEDURAL_PATH)['joints_rest'], atol=3e-5)
  assert np.all(winding_number(joints, arrays['v_template'], arrays['f'].astype(np.int64)) > 0.9)
  # Each row only uses vertices near its joint (within 3 cm).
  for j in range(16):
    used = regressor[j] > 0
    assert np.linalg.norm(arrays['v_template'][used] - joints[j], axis=1).max() < 0.03


def test_skinning_weights_are_smooth_and_sensible(model, arrays):
  weights = arrays['weights']
  assert np.all(weights >= 0)
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
  pairs = topology.edges(arrays['f'])
  assert np.abs(weights[pairs[:, 0]] - weights[pairs[:, 1]]).max() < 0.35
  # Fingertips follow their distal joint.
  for name, tip in zip(TIP_ORDER, model.tip_ids):
    assert np.argmax(weights[tip]) == FINGER_JOINTS[name][2]


def _finger_radius(
    vertices: np.ndarray, joints: np.ndarray, weights: np.ndarray, joint: int
) -> float:
  """Mean distance from the finger's axis (along x) of the vertices that mostly follow `joint`."""
  near = np.argmax(weights, axis=1) == joint
  offsets = vertices[near] - joints[joint]
  return float(np.mean(np.linalg.norm(offsets[:, 1:], axis=1)))


def test_shape_directions_are_meaningful(model):
  weights = np.asarray(model.weights)
  regressor = np.asarray(model.J_regressor, np.float64)
  betas = np.concatenate([np.eye(10)[:4], -np.eye(10)[:4]])  # +1 and -1 on each of the first four
  posed = np.asarray(
      mano.forward(model, np.zeros((8, 48)), betas, flat_hand_mean=True)[0], np.float64
  )

  def measure(vertices: np.ndarray) -> dict:
    joints = regressor @ vertices
    middle_tip = vertices[model.tip_ids[2]]
    return {
        'size': np.linalg.norm(middle_tip - joints[0]),
        'finger': np.linalg.norm(middle_tip - joints[4]),
        'palm_length': np.linalg.norm(joints[4] - joints[0]),
        'palm_width': np.linalg.norm(joints[1] - joints[7]),
        'thickness': _finger_radius(vertices, joints, weights, 5),
    }

  def change(index):
    plus, minus = measure(posed[index]), measure(posed[index + 4])
    return {key: plus[key] / minus[key] - 1 for key in plus}

  size, finger, width, thickness = change(0), change(1), change(2), change(3)
  assert size['size'] > 0.08 and size['palm_width'] > 0.08  # overall scale: everything grows
  assert finger['finger'] > 0.08 and abs(finger['palm_length']) < 0.02
  assert width['palm_width'] > 0.08 and abs(width['finger']) < 0.02
  assert thickness['thickness'] > 0.12 and abs(thickness['finger']) < 0.03
  for k in range(10):  # no direction is empty
    assert np.abs(np.asarray(model.shapedirs)[:, :, k]).max() > 5e-4  # at least 0.5 mm per std


def test_fist_moves_fingertips_towards_the_palm(model):
  flat, flat_joints = mano.forward(model, mano.named_pose(model, 'flat')[None], flat_hand_mean=True)
  fist, _ = mano.forward(model, mano.named_pose(model, 'fist')[None], flat_hand_mean=True)
  flat, fist, joints = np.asarray(flat[0]), np.asarray(fist[0]), np.asarray(flat_joints[0])
  palm_centre = joints[[0, 1, 4, 7, 10]].mean(axis=0)
  for name, tip in zip(TIP_ORDER, model.tip_ids):
    before = np.linalg.norm(flat[tip] - palm_centre)
    after = np.linalg.norm(fist[tip] - palm_centre)
    assert after < (0.6 if name != 'thumb' else 0.9) * before, name
  # The curled fingertips end up on the palm side (-y) of the knuckles.
  for name, tip in zip(TIP_ORDER[1:], model.tip_ids[1:]):
    assert fist[tip][1] < joints[FINGER_JOINTS[name][0]][1]


def test_joint_limits_flex_forward_and_thumb_opposes(model):
  # Flexing any finger joint by its upper limit moves the fingertip towards the palm side (-y).
  limits = np.asarray(model.pose_limits)
  axes = np.asarray(model.pose_axes)
  rest = np.asarray(model.v_template)
  for name, tip in zip(TIP_ORDER[1:], model.tip_ids[1:]):
    for joint in FINGER_JOINTS[name]:
      pose = np.zeros(48)
      pose[3 * joint : 3 * joint + 3] = axes[joint - 1, 0] * limits[joint - 1, 0, 1] * 0.5
      moved = np.asarray(mano.forward(model, pose, flat_hand_mean=True)[0])
      assert moved[tip][1] < rest[tip][1] - 0.005, (name, joint)
  assert np.all(limits[:12, 0, 0] >= 0)  # the four fingers cannot flex backwards
  # Opposition (CMC abduction + flexion + pronation at their upper limits) brings the thumb tip
  # towards the little finger's base and to the palm side.
  pose = np.zeros(48)
  pose[39:42] = axes[12].T @ np.array([limits[12, 0, 1], limits[12, 1, 1], limits[12, 2, 1]]) * 0.8
  opposed = np.asarray(mano.forward(model, pose, flat_hand_mean=True)[0])
  thumb, little_base = model.tip_ids[0], 7
  joints = np.asarray(model.J_regressor) @ rest
  assert (
      np.linalg.norm(opposed[thumb] - joints[little_base])
      < np.linalg.norm(rest[thumb] - joints[little_base]) - 0.02
  )
  assert opposed[thumb][1] < rest[thumb][1]


def test_pose_statistics(model):
  components = np.asarray(model.hands_components, np.float64)
  np.testing.assert_allclose(components @ components.T, np.eye(45), atol=1e-5)
  mean_angles = mano.pose_to_angles(
      model, np.concatenate([np.zeros(3), np.asarray(model.hands_mean)])
  )[0]
  assert np.all(mean_angles[:12, 0] > 0.05) and np.all(mean_angles[:12, 0] < 0.5)  # slightly curled


def test_generator_is_deterministic_and_matches_the_shipped_file():
  generated = procedural_hand.generate()
  shipped = np.load(mano.PROCEDURAL_PATH)
  assert set(generated) == set(shipped.files)
  for key in generated:
    np.testing.assert_allclose(generated[key], shipped[key], atol=2e-5, err_msg=key)


def test_skin_regions_sit_on_the_parts_they_name(model):
  regions = procedural_hand.skin_regions()
  vertices = np.asarray(model.v_template, np.float64)
  faces = np.asarray(model.faces)
  tips = vertices[list(model.tip_ids)]  # thumb, index, middle, ring, little
  from diffhand_jax.geometry import render

  normals = render.vertex_normals(vertices, faces)
  # The back of the hand faces +y in the rest pose (the module's layout), the palm -y. (The thumb is
  # turned: a few of its vertices face -y from its side, which its own frame does not call palmar.)
  palm_top = normals[:, 1] > 0.9
  palm_bottom = normals[:, 1] < -0.9
  assert palm_top.sum() > 30 and palm_bottom.sum() > 30
  assert np.all(regions['dorsal'][palm_top] > 0.8)
  assert np.mean(regions['dorsal'][palm_bottom] < -0.8) > 0.95
  # Nails: on the back of the last bone of every digit, each within 2.5 cm of its own fingertip.
  nail = regions['nail'] > 0.5
  nearest_tip = np.argmin(np.linalg.norm(vertices[:, None] - tips[None], axis=-1), axis=1)
  tip_distance = np.linalg.norm(vertices - tips[nearest_tip], axis=-1)
  assert np.all(tip_distance[nail] < 0.025)
  assert set(nearest_tip[nail]) == {0, 1, 2, 3, 4}
  assert np.all(regions['dorsal'][nail] > 0.5)
  # Knuckles on the back, creases on the palm side, never both.
  assert np.all(regions['dorsal'][regions['knuckle'] > 0] > 0.2)
  assert np.all(regions['dorsal'][regions['crease'] > 0] < -0.2)
  assert not np.any((regions['knuckle'] > 0) & (regions['crease'] > 0))


def test_skin_albedo_makes_the_palm_lighter_than_the_back_at_every_tone():
  regions = procedural_hand.skin_regions()
  luminance = np.array([0.2126, 0.7152, 0.0722])
  palm = regions['dorsal'] < -0.8
  back = (regions['dorsal'] > 0.8) & (regions['nail'] == 0) & (regions['knuckle'] == 0)
  for tone in ([0.96, 0.80, 0.70], [0.60, 0.41, 0.29], [0.28, 0.18, 0.13]):
    albedo = procedural_hand.skin_albedo(np.array(tone), regions)
    assert albedo.shape == (778, 3) and albedo.min() >= 0 and albedo.max() <= 1
    assert albedo[palm].mean(0) @ luminance > 1.1 * (albedo[back].mean(0) @ luminance)
    nails = albedo[regions['nail'] > 0.9]
    np.testing.assert_allclose(
        nails, np.broadcast_to(procedural_hand.NAIL_COLOUR, nails.shape), atol=0.1
    )
