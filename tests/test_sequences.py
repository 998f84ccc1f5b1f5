"""The synthetic clips (the `sequences` config): smooth trajectories between key states, each frame a
function of (seed, split, clip, frame), and their TFDS features; cutting a split into clips."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from diffhand_jax import mano
from diffhand_jax.data import sequences, synthetic_scene

CLIP = synthetic_scene.SceneConfig(image_size=32, clip_length=8, keyframe_spacing=(2.0, 4.0))


@pytest.fixture(scope='module')
def kit():
  return synthetic_scene.load_hand_kit()


def test_clip_frames_carry_their_clip_and_depend_only_on_it(kit):
  frames = [synthetic_scene.generate_example(CLIP, 'test', i, kit=kit) for i in range(16)]
  assert [int(f['clip_id']) for f in frames] == [0] * 8 + [1] * 8
  assert [int(f['frame_index']) for f in frames] == list(range(8)) * 2
  assert frames[0]['clip_id'].dtype == np.int32 and frames[0]['frame_index'].dtype == np.int32
  # Made alone, with no plan cached, frame 5 of clip 1 is the same example.
  synthetic_scene._LAST_PLAN.clear()
  alone = synthetic_scene.generate_clip_frame(CLIP, 'test', 1, 5, kit=kit)
  for key, value in frames[13].items():
    np.testing.assert_array_equal(np.asarray(alone[key]), np.asarray(value), err_msg=key)
  # Within a clip the shape and camera stay; across clips they change.
  np.testing.assert_array_equal(frames[0]['mano_shape'], frames[7]['mano_shape'])
  np.testing.assert_array_equal(frames[0]['K'], frames[7]['K'])
  assert not np.array_equal(frames[0]['mano_shape'], frames[8]['mano_shape'])
  with pytest.raises(ValueError, match='outside a clip'):
    synthetic_scene.generate_clip_frame(CLIP, 'test', 0, 8, kit=kit)


def test_clip_state_eases_between_key_states(kit):
  plan = synthetic_scene.plan_clip(CLIP, 'test', 0, kit=kit)
  keys = plan.key_frames
  assert keys[0] == 0 and keys[-1] >= CLIP.clip_length - 1 and np.all(np.diff(keys) >= 2.0)
  for j in range(len(keys) - 1):
    at_key = synthetic_scene.clip_state(plan, keys[j])
    np.testing.assert_allclose(at_key['finger_pose'], plan.finger_poses[j], atol=1e-12)
    np.testing.assert_allclose(at_key['translation'], plan.translations[j], atol=1e-12)
    np.testing.assert_allclose(at_key['view'], plan.views[j], atol=1e-12)
    # Smoothstep 3u² − 2u³: halfway at u = 1/2, 5/32 of the way at u = 1/4.
    middle = synthetic_scene.clip_state(plan, (keys[j] + keys[j + 1]) / 2)
    np.testing.assert_allclose(
        middle['finger_pose'], (plan.finger_poses[j] + plan.finger_poses[j + 1]) / 2, atol=1e-12
    )
    quarter = synthetic_scene.clip_state(plan, keys[j] + (keys[j + 1] - keys[j]) / 4)
    np.testing.assert_allclose(
        quarter['translation'],
        plan.translations[j] + 5 / 32 * (plan.translations[j + 1] - plan.translations[j]),
        atol=1e-12,
    )
    # The rotation halfway lies halfway along the geodesic between the two key views.
    first = Rotation.from_matrix(middle['view'] @ plan.views[j].T).magnitude()
    second = Rotation.from_matrix(plan.views[j + 1] @ middle['view'].T).magnitude()
    np.testing.assert_allclose(first, second, atol=1e-9)


def test_clip_poses_stay_within_the_joint_limits(kit):
  plan = synthetic_scene.plan_clip(CLIP, 'validation', 3, kit=kit)
  poses = np.stack(
      [
          synthetic_scene.clip_state(plan, f)['finger_pose']
          for f in np.linspace(0, CLIP.clip_length - 1, 29)
      ]
  )
  angles = mano.pose_to_angles(kit.model, np.concatenate([np.zeros((len(poses), 3)), poses], 1))
  limits = np.asarray(kit.model.pose_limits)
  assert np.all(angles >= limits[..., 0] - 1e-6) and np.all(angles <= limits[..., 1] + 1e-6)


def test_clips_move_far_less_between_frames_than_independent_stills(kit):
  config = synthetic_scene.SceneConfig(image_size=32, clip_length=12)
  stills = synthetic_scene.SceneConfig(image_size=32)

  def relative(examples):
    return np.stack([e['vertices_3d'] - e['joints_3d'][:1] for e in examples]).astype(np.float64)

  clip = relative(
      [synthetic_scene.generate_clip_frame(config, 'test', 2, f, kit=kit) for f in range(12)]
  )
  independent = relative(
      [synthetic_scene.generate_example(stills, 'test', i, kit=kit) for i in range(12)]
  )
  step = lambda v: np.linalg.norm(np.diff(v, axis=0), axis=-1).mean()
  assert step(clip) > 0  # it moves
  assert step(clip) < 0.2 * step(independent)


def test_group_clips_orders_frames_and_refuses_gaps():
  rng = np.random.default_rng(0)
  clip_id = np.repeat([4, 1], 3)
  frame_index = np.tile([0, 1, 2], 2)
  order = rng.permutation(6)
  arrays = {
      'clip_id': clip_id[order],
      'frame_index': frame_index[order],
      'value': (10 * clip_id + frame_index)[order],
  }
  clips = sequences.group_clips(arrays)
  assert [c['value'].tolist() for c in clips] == [[10, 11, 12], [40, 41, 42]]
  arrays['frame_index'] = np.where(arrays['value'] == 41, 7, arrays['frame_index'])
  with pytest.raises(ValueError, match='clip 4'):
    sequences.group_clips(arrays)
  with pytest.raises(ValueError, match='clip dataset'):
    sequences.group_clips({'value': np.zeros(3)})


def test_tfds_sequences_config_round_trip(tmp_path, kit):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from diffhand_jax.data.builders.synthetic_hands import synthetic_hands_dataset_builder as builder_module  # pylint: disable=g-import-not-at-top

  builder = builder_module.build(
      str(tmp_path),
      'sequences',
      num_workers=1,
      image_size=32,
      num_test=8,
      clip_length=4,
      keyframe_spacing=(2.0, 3.0),
  )
  assert {'clip_id', 'frame_index'} <= set(builder.info.features)
  assert 'train' not in builder.info.splits
  records = list(tfds.as_numpy(builder.as_dataset(split='test')))
  arrays = {key: np.stack([r[key] for r in records]) for key in ('clip_id', 'frame_index', 'image')}
  clips = sequences.group_clips(arrays)
  assert [len(c['image']) for c in clips] == [4, 4]
  scene = builder.builder_config.scene()
  for clip in clips:
    direct = synthetic_scene.generate_clip_frame(scene, 'test', int(clip['clip_id'][3]), 3, kit=kit)
    np.testing.assert_array_equal(clip['image'][3], direct['image'])
  # The stills' configs keep their features; a split of broken clips is refused.
  tiny = builder_module.Builder(config='tiny', data_dir=str(tmp_path))
  assert 'clip_id' not in tiny.info.features
  with pytest.raises(ValueError, match='whole clips'):
    builder_module.build(
        str(tmp_path), 'sequences', num_workers=1, image_size=32, num_test=6, clip_length=4
    )
