"""datasets/ho3d: built from a generated HO-3D v2 copy (OpenGL frame, HO-3D joint order, Python 2 pickles)."""

import os
import shutil

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from diffhand_jax.data import fixtures  # noqa: E402
from diffhand_jax.data.builders.ho3d import ho3d_dataset_builder as ho3d  # noqa: E402
from diffhand_jax import mano  # noqa: E402
from diffhand_jax.data import sources  # noqa: E402


def _build(manual_dir, data_dir):
  builder = ho3d.Builder(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  )
  return builder


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
  root = tmp_path_factory.mktemp('ho3d_fixture')
  mano_dir = fixtures.write_mano_standins(str(root / 'mano'))
  truth = fixtures.make_ho3d(str(root / 'ho3d'), mano_dir)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('DIFFHAND_MANO_DIR', mano_dir)
    builder = _build(root / 'ho3d', tmp_path_factory.mktemp('ho3d_data'))
    hands = sources.ManoEvaluator(mano_dir)
  read = lambda split: list(tfds.as_numpy(builder.as_dataset(split=split)))  # noqa: E731
  return {
      'root': root / 'ho3d',
      'mano_dir': mano_dir,
      'truth': truth,
      'hands': hands,
      'train': read('train'),
      'evaluation': read('evaluation'),
  }


def _key(split, example):
  return (split, f"{example['sequence'].decode()}/{example['frame'].decode()}")


def test_counts_follow_the_split_lists(fixture):
  listed = fixture['truth']['listed']
  assert (
      len(fixture['train']) == len(listed['train']) == 4
  )  # the unlisted, unannotated frame is skipped
  assert len(fixture['evaluation']) == len(listed['evaluation']) == 2
  assert [
      f"{e['sequence'].decode()}/{e['frame'].decode()}" for e in fixture['evaluation']
  ] == listed['evaluation']


def test_train_targets_are_flipped_and_reordered(fixture):
  for example in fixture['train']:
    truth = fixture['truth'][_key('train', example)]
    np.testing.assert_allclose(example['joints_3d'], truth['joints'], atol=1e-6)
    np.testing.assert_allclose(example['vertices_3d'], truth['verts'], atol=2e-5)
    assert example['joints_3d'][0, 2] > 0 and example['has_3d']  # in front of an OpenCV camera
    np.testing.assert_allclose(example['root_joint'], truth['joints'][0], atol=1e-6)


def test_ho3d_joint_order_round_trip(fixture):
  # Back to HO-3D's order and OpenGL frame gives the file's handJoints3D exactly.
  inverse = np.argsort(ho3d.HO3D_TO_21)
  for example in fixture['train']:
    meta = fixture['truth'][_key('train', example)]['meta']
    back = example['joints_3d'][inverse] * np.array([1.0, -1.0, -1.0])
    np.testing.assert_allclose(back, meta['handJoints3D'], atol=1e-6)
    # HO-3D order: 16 MANO joints, then tips; our order starts thumb (MANO 13-15) after the wrist.
    np.testing.assert_allclose(
        example['joints_3d'][1], meta['handJoints3D'][13] * [1, -1, -1], atol=1e-6
    )
    np.testing.assert_allclose(
        example['joints_3d'][4], meta['handJoints3D'][16] * [1, -1, -1], atol=1e-6
    )


def test_projection_matches_the_toolkit_recipe(fixture):
  # The HO-3D toolkit projects OpenGL points with K @ (coord_change_mat @ X): the same pixels as ours.
  for example in fixture['train']:
    meta = fixture['truth'][_key('train', example)]['meta']
    gl = meta['handJoints3D'] @ np.diag([1.0, -1.0, -1.0]).T @ meta['camMat'].T
    toolkit_uv = gl[:, :2] / gl[:, 2:]
    ours = sources.project(example['joints_3d'], example['K'])
    # Joint by joint, in our order (sorting each column would accept any order, even mixed u and v).
    np.testing.assert_allclose(ours, toolkit_uv[list(ho3d.HO3D_TO_21)], atol=1e-3)
    x0, y0, x1, y1 = example['bbox']
    assert np.all(ours >= [x0 - 1e-3, y0 - 1e-3]) and np.all(ours <= [x1 + 1e-3, y1 + 1e-3])


def test_mano_parameters_in_our_convention(fixture):
  hands = fixture['hands']
  for example in fixture['train']:
    truth = fixture['truth'][_key('train', example)]
    np.testing.assert_allclose(example['mano_pose'][3:], truth['pose_cv'][3:], atol=1e-5)
    verts, _ = hands(
        'right',
        example['mano_pose'],
        example['mano_shape'],
        example['mano_trans'],
        flat_hand_mean=False,
    )
    np.testing.assert_allclose(verts, example['vertices_3d'], atol=2e-5)
    np.testing.assert_allclose(example['ho3d_hand_pose'], truth['meta']['handPose'], atol=1e-6)


def test_evaluation_has_root_and_box_only(fixture):
  for example in fixture['evaluation']:
    truth = fixture['truth'][_key('evaluation', example)]
    assert not example['has_3d']
    assert not np.any(example['joints_3d']) and not np.any(example['vertices_3d'])
    np.testing.assert_allclose(example['root_joint'], truth['root'], atol=1e-6)
    np.testing.assert_allclose(example['bbox'], truth['bbox'], atol=1e-4)


def test_depth_decoding(fixture):
  truth = fixture['truth'][('train', 'MC1/0001')]
  depth = ho3d.read_depth(str(fixture['root'] / 'train' / 'MC1' / 'depth' / '0001.png'))
  np.testing.assert_allclose(
      depth * ho3d.DEPTH_SCALE, truth['depth_m'], atol=ho3d.DEPTH_SCALE / 2 + 1e-9
  )


def test_missing_mano_is_a_clear_error(fixture, tmp_path, monkeypatch):
  monkeypatch.delenv('DIFFHAND_MANO_DIR', raising=False)
  with pytest.raises(sources.SourceError, match='DIFFHAND_MANO_DIR') as info:
    _build(fixture['root'], tmp_path / 'data')
  assert 'MANO_RIGHT.pkl' in str(info.value)
  monkeypatch.setenv('DIFFHAND_MANO_DIR', str(tmp_path / 'nowhere'))
  with pytest.raises(
      sources.SourceError, match=r'needs MANO_RIGHT\.pkl and MANO_LEFT\.pkl in \S*nowhere'
  ):
    _build(fixture['root'], tmp_path / 'data')


def test_listed_frame_holding_none_and_corrupt_files_name_the_file(fixture, tmp_path):
  copy = tmp_path / 'ho3d'
  shutil.copytree(fixture['root'], copy)
  hands = fixture['hands']
  with pytest.raises(sources.SourceError, match=r"ABF10/meta/0002\.pkl.*line 5.*'camMat'.*None"):
    ho3d.make_example(str(copy), 'train', 4, 'ABF10/0002', hands, False)
  meta = copy / 'train' / 'MC1' / 'meta' / '0000.pkl'
  meta.write_bytes(meta.read_bytes()[:100])
  with pytest.raises(sources.SourceError, match=r'MC1/meta/0000\.pkl: not a readable pickle'):
    ho3d.make_example(str(copy), 'train', 2, 'MC1/0000', hands, False)
  rgb = copy / 'train' / 'MC1' / 'rgb' / '0001.png'
  rgb.write_bytes(rgb.read_bytes()[:60])
  with pytest.raises(sources.SourceError, match=r'MC1/rgb/0001\.png: cannot decode'):
    ho3d.make_example(str(copy), 'train', 3, 'MC1/0001', hands, False)
  os.remove(copy / 'evaluation' / 'SM1' / 'rgb' / '0000.png')
  with pytest.raises(sources.SourceError, match=r'SM1/rgb/0000\.png: image is missing'):
    ho3d.make_example(str(copy), 'evaluation', 0, 'SM1/0000', hands, False)


def test_meta_pickles_need_latin1_like_the_release(fixture):
  import pickle

  raw = (fixture['root'] / 'train' / 'ABF10' / 'meta' / '0000.pkl').read_bytes()
  with pytest.raises(UnicodeDecodeError):
    pickle.loads(
        raw
    )  # Python 3's default ASCII decoding fails on Python 2 str data, as with HO-3D's files
  assert mano.TIP_IDS['ho3d'] == (728, 353, 442, 576, 694)
