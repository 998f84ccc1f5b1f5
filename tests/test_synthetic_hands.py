"""Tests of the synthetic-hands generator and its TFDS builder (tiny sizes)."""

import jax
import numpy as np
import pytest

from diffhand_jax.data import synthetic_scene
from diffhand_jax import mano
from diffhand_jax.data.builders.synthetic_hands import synthetic_hands_dataset_builder
from diffhand_jax.geometry import render

# The synthetic builder's version, as its folders and messages spell it.
SYNTHETIC_VERSION = str(synthetic_hands_dataset_builder.Builder.VERSION)

SIZE = 64
CONFIG = synthetic_scene.SceneConfig(image_size=SIZE)


@pytest.fixture(scope='module')
def kit():
  return synthetic_scene.load_hand_kit()


@pytest.fixture(scope='module')
def examples(kit):
  return [synthetic_scene.generate_example(CONFIG, 'test', index, kit=kit) for index in range(4)]


def ray_visible(vertices, faces):
  """Independent visibility: no face other than the vertex's own crosses the segment camera -> vertex.

  Möller-Trumbore ray/triangle intersection against every face, per vertex.
  """
  corners = vertices[faces]
  edge1, edge2 = corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]
  visible = np.zeros(len(vertices), bool)
  for index, direction in enumerate(vertices):
    p = np.cross(direction, edge2)
    det = np.einsum('fc,fc->f', edge1, p)
    usable = np.abs(det) > 1e-15
    inv_det = 1.0 / np.where(usable, det, 1.0)
    s = -corners[:, 0]
    u = np.einsum('fc,fc->f', s, p) * inv_det
    q = np.cross(s, edge1)
    v = (q @ direction) * inv_det
    t = np.einsum('fc,fc->f', edge2, q) * inv_det
    hit = usable & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 1e-9) & (t < 1 - 1e-6)
    own = np.any(faces == index, axis=1)
    visible[index] = not np.any(hit & ~own)
  return visible


def test_schema_shapes_and_dtypes(examples):
  expected = {
      'image': ((SIZE, SIZE, 3), np.uint8),
      'mask': ((SIZE, SIZE, 1), np.uint8),
      'depth': ((SIZE, SIZE), np.float32),
      'K': ((3, 3), np.float32),
      'joints_3d': ((21, 3), np.float32),
      'vertices_3d': ((778, 3), np.float32),
      'mano_pose': ((48,), np.float32),
      'mano_shape': ((10,), np.float32),
      'mano_trans': ((3,), np.float32),
      'bbox': ((4,), np.float32),
  }
  for example in examples:
    for key, (shape, dtype) in expected.items():
      assert example[key].shape == shape and example[key].dtype == dtype, key
    assert example['has_3d'] is True and example['hand_side'] == 'right'
    assert set(np.unique(example['mask'])) <= {0, 255}
    assert np.all(example['vertices_3d'][:, 2] > 0.05)  # in front of the camera


def test_same_seed_same_example_and_different_otherwise(kit, examples):
  again = synthetic_scene.generate_example(CONFIG, 'test', 0, kit=kit)
  for key in examples[0]:
    np.testing.assert_array_equal(np.asarray(again[key]), np.asarray(examples[0][key]), err_msg=key)
  other_split = synthetic_scene.generate_example(CONFIG, 'train', 0, kit=kit)
  other_seed = synthetic_scene.generate_example(
      synthetic_scene.SceneConfig(image_size=SIZE, seed=1), 'test', 0, kit=kit
  )
  for other in (other_split, other_seed, examples[1]):
    assert not np.array_equal(other['image'], examples[0]['image'])
    assert not np.allclose(other['vertices_3d'], examples[0]['vertices_3d'])


def test_the_studio_look_changes_only_backdrop_and_light(kit, examples):
  # The same hand, view and camera (drawn before the look), on a plain backdrop: the background's
  # pixels vary far less than the cluttered ones (neighbouring-pixel differences, a measure of clutter).
  studio = synthetic_scene.SceneConfig(image_size=SIZE, look='studio')
  for index, example in enumerate(examples):
    plain = synthetic_scene.generate_example(studio, 'test', index, kit=kit)
    for key in ('vertices_3d', 'joints_3d', 'K', 'mask', 'bbox'):
      np.testing.assert_array_equal(plain[key], example[key], err_msg=key)
    background = plain['mask'][..., 0] == 0
    busy, calm = (
        np.abs(np.diff(image.astype(np.float64), axis=1))[background[:, 1:] & background[:, :-1]]
        for image in (example['image'], plain['image'])
    )
    assert calm.mean() < busy.mean()
  with pytest.raises(ValueError, match='stills'):
    synthetic_scene.SceneConfig(look='studio', clip_length=4)


def test_mano_parameters_reproduce_the_mesh_and_joints(kit, examples):
  forward = jax.jit(lambda pose, betas: mano.forward(kit.model, pose, betas, flat_hand_mean=False))
  for example in examples:
    vertices, joints16 = forward(example['mano_pose'][None], example['mano_shape'][None])
    vertices = np.asarray(vertices[0]) + example['mano_trans']
    np.testing.assert_allclose(vertices, example['vertices_3d'], atol=2e-6)
    joints = np.asarray(
        mano.joints21(vertices, np.asarray(joints16[0]) + example['mano_trans'], kit.tip_ids)
    )
    np.testing.assert_allclose(joints, example['joints_3d'], atol=2e-6)
    # Joints 4, 8, 12, 16, 20 are the tips (thumb, index, middle, ring, little): vertices of the mesh.
    np.testing.assert_allclose(
        example['joints_3d'][[4, 8, 12, 16, 20]],
        example['vertices_3d'][list(kit.tip_ids)],
        atol=1e-7,
    )


def test_poses_within_joint_limits(kit):
  rng = np.random.default_rng(0)
  limits = np.asarray(kit.model.pose_limits)
  for prior in ('synergy', 'uniform'):
    poses = np.stack([synthetic_scene.sample_finger_pose(rng, kit, prior) for _ in range(200)])
    full = np.concatenate([np.zeros((200, 3)), poses], axis=1)
    angles = mano.pose_to_angles(kit.model, full)  # (n, 15, 3) along each joint's limit axes
    assert np.all(angles >= limits[..., 0] - 1e-6) and np.all(
        angles <= limits[..., 1] + 1e-6
    ), prior


def test_synergy_prior_couples_the_fingers(kit):
  rng = np.random.default_rng(1)
  axes = np.asarray(kit.model.pose_axes, np.float64)

  def flexion(prior):  # (n, 15) angles along each joint's flexion axis
    poses = np.stack(
        [synthetic_scene.sample_finger_pose(rng, kit, prior) for _ in range(400)]
    ).reshape(-1, 15, 3)
    return np.einsum('njc,jc->nj', poses, axes[:, 0])

  synergy, uniform = flexion('synergy'), flexion('uniform')
  # Index PIP vs middle PIP, middle vs ring: coupled by the grasp level; mano's prior draws each
  # finger's curl independently.
  for a, b in ((1, 4), (4, 10)):
    assert np.corrcoef(synergy[:, a], synergy[:, b])[0, 1] > 0.3
    assert abs(np.corrcoef(uniform[:, a], uniform[:, b])[0, 1]) < 0.2
  # Within a finger, MCP and PIP move together.
  assert np.corrcoef(synergy[:, 3], synergy[:, 4])[0, 1] > 0.8
  # And the prior still spans open and closed hands.
  assert (
      synergy[:, 1].min() < 0.2 * kit.flex_high[1] and synergy[:, 1].max() > 0.8 * kit.flex_high[1]
  )


def test_mask_contains_projected_vertices(examples):
  for example in examples:
    uv = render.project(example['vertices_3d'], example['K'])
    cols, rows = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
    in_image = (cols >= 0) & (cols < SIZE) & (rows >= 0) & (rows < SIZE)
    assert in_image.mean() >= 0.98
    inside = example['mask'][rows[in_image], cols[in_image], 0] > 0
    assert inside.mean() >= 0.98
    # The mask is conservative: it holds the pixel-centre silhouette (depth > 0) and only a thin rim more.
    mask, centres = example['mask'][..., 0] > 0, example['depth'] > 0
    assert np.all(mask[centres])
    assert mask.sum() < 1.6 * centres.sum()


def test_bbox_is_the_projected_vertex_box(examples):
  for example in examples:
    uv = render.project(example['vertices_3d'], example['K'])
    np.testing.assert_allclose(example['bbox'][:2], np.clip(uv.min(axis=0), 0, SIZE - 1), atol=1e-3)
    np.testing.assert_allclose(example['bbox'][2:], np.clip(uv.max(axis=0), 0, SIZE - 1), atol=1e-3)
    width, height = example['bbox'][2:] - example['bbox'][:2]
    assert max(width, height) > 0.4 * SIZE  # the hand fills a good part of the crop


def test_depth_at_visible_vertices_equals_their_z(kit, examples):
  example = examples[0]
  vertices = example['vertices_3d'].astype(np.float64)
  K = example['K'].astype(np.float64)
  visible = ray_visible(vertices, kit.faces)
  assert 0.2 < visible.mean() < 0.8
  # Stored depth map: at a visible vertex's own pixel centre the surface is within about a pixel of the
  # vertex, so depths agree to a few mm wherever that centre is on the hand (silhouette pixels excepted).
  uv = render.project(vertices, K)
  cols, rows = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
  stored = example['depth'][rows, cols]
  on_hand = visible & (stored > 0)
  assert np.median(np.abs(stored[on_hand] - vertices[on_hand, 2])) < 2e-3
  # Exact check: move the principal point so a vertex projects exactly onto a pixel centre; then the
  # z-buffer there equals its z when it is visible and lies in front of it when it is occluded.
  rng = np.random.default_rng(0)
  for index in rng.choice(len(vertices), size=40, replace=False):
    shifted = K.copy()
    shifted[:2, 2] += np.round(uv[index]) - uv[index]
    depth = render.rasterize(vertices, kit.faces, shifted, (SIZE, SIZE))['depth']
    at_vertex = depth[rows[index], cols[index]]
    if visible[index]:
      assert at_vertex == pytest.approx(vertices[index, 2], abs=1e-5)
    else:
      assert 0 < at_vertex < vertices[index, 2] - 1e-5


def test_stored_depth_is_the_renderers(kit, examples):
  example = examples[1]
  raster = render.rasterize(example['vertices_3d'], kit.faces, example['K'], (SIZE, SIZE))
  np.testing.assert_allclose(example['depth'], raster['depth'], atol=1e-6)


def test_parallel_generation_matches_serial(kit):
  config = synthetic_scene.SceneConfig(image_size=32)
  serial = list(synthetic_scene.generate_split(config, 'validation', 4, num_workers=1, kit=kit))
  parallel = list(
      synthetic_scene.generate_split(config, 'validation', 4, num_workers=2, chunk_size=2)
  )
  assert [i for i, _ in parallel] == [0, 1, 2, 3]
  for (_, a), (_, b) in zip(serial, parallel):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['vertices_3d'], b['vertices_3d'])


def test_tfds_builder_tiny_round_trip(tmp_path, kit):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from diffhand_jax.data.builders.synthetic_hands import synthetic_hands_dataset_builder as builder_module  # pylint: disable=g-import-not-at-top

  builder = builder_module.build(str(tmp_path), 'tiny', num_workers=1)
  config = builder.builder_config
  assert builder.info.splits['train'].num_examples == config.num_train
  assert builder.info.splits['validation'].num_examples == config.num_validation
  assert builder.info.splits['test'].num_examples == config.num_test
  size = config.image_size
  records = list(tfds.as_numpy(builder.as_dataset(split='test')))
  assert len(records) == config.num_test
  for index, record in enumerate(records):
    assert record['image'].shape == (size, size, 3) and record['image'].dtype == np.uint8
    assert record['mask'].shape == (size, size, 1) and record['depth'].shape == (size, size)
    assert record['K'].dtype == np.float32 and record['vertices_3d'].shape == (778, 3)
    assert record['hand_side'] == b'right' and bool(record['has_3d'])
    # Stored in index order and losslessly: example i is generate_example(config, split, i).
    direct = synthetic_scene.generate_example(config, 'test', index, kit=kit)
    for key in ('image', 'mask', 'depth', 'K', 'joints_3d', 'vertices_3d', 'mano_pose', 'bbox'):
      np.testing.assert_array_equal(
          record[key].reshape(direct[key].shape), direct[key], err_msg=key
      )
  # A second call finds the prepared data and does not rebuild.
  again = builder_module.build(str(tmp_path), 'tiny', num_workers=1)
  assert again.is_prepared()


@pytest.mark.slow
def test_tfds_command_line_builds_tiny(tmp_path):
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  tfds_cli = os.path.join(os.path.dirname(sys.executable), 'tfds')
  result = subprocess.run(
      [tfds_cli, 'build', 'datasets/synthetic_hands', f'--data_dir={tmp_path}', '--config=tiny'],
      cwd=root,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / 'synthetic_hands' / 'tiny' / SYNTHETIC_VERSION / 'dataset_info.json').exists()
