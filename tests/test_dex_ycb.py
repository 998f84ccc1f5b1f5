"""datasets/dex_ycb: built from a generated DexYCB copy; S0 split, filtering, PCA pose, left hands."""

import os
import shutil

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from datasets import make_fixtures  # noqa: E402
from datasets.dex_ycb import dex_ycb_dataset_builder as dex_ycb  # noqa: E402
from diffhand_jax import input_pipeline, source_io  # noqa: E402


def _build(manual_dir, data_dir):
  builder = dex_ycb.Builder(data_dir=str(data_dir))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
  root = tmp_path_factory.mktemp('dex_ycb_fixture')
  mano_dir = make_fixtures.write_mano_standins(str(root / 'mano'))
  truth = make_fixtures.make_dex_ycb(str(root / 'dex_ycb'), mano_dir)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('DIFFHAND_MANO_DIR', mano_dir)
    builder = _build(root / 'dex_ycb', tmp_path_factory.mktemp('dex_ycb_data'))
    hands = source_io.ManoEvaluator(mano_dir)
  splits = {split: list(tfds.as_numpy(builder.as_dataset(split=split))) for split in dex_ycb.SPLITS}
  return {'root': root / 'dex_ycb', 'truth': truth, 'hands': hands, **splits}


def _key(example):
  return '/'.join([example['subject'].decode(), example['sequence'].decode(), example['serial'].decode(),
                   str(int(example['frame']))])


def test_s0_membership_and_filtering(fixture):
  truth = fixture['truth']
  for split in dex_ycb.SPLITS:
    expected = {key for key, entry in truth.items() if entry['split'] == split and not entry['invalid']}
    keys = [_key(example) for example in fixture[split]]
    assert len(keys) == len(set(keys)) == len(expected), split
    assert set(keys) == expected, split
  # The toolkit's S0 rule, restated: sequence i of subject s (both in sorted order).
  subjects = sorted(make_fixtures.DEXYCB_SUBJECTS)
  for split in dex_ycb.SPLITS:
    for example in fixture[split]:
      subject = example['subject'].decode()
      sequences = sorted(os.listdir(fixture['root'] / subject))
      i = sequences.index(example['sequence'].decode())
      want = 'train' if i % 5 != 4 else ('validation' if subjects.index(subject) < 2 else 'test')
      assert want == split
  invalid = {key for key, entry in truth.items() if entry['invalid']}
  assert len(invalid) == 3
  all_keys = {_key(e) for split in dex_ycb.SPLITS for e in fixture[split]}
  assert not invalid & all_keys
  # Examples run camera by camera, then frame by frame, within a sequence (the toolkit's order).
  keys = [_key(e) for e in fixture['train']]
  two_frames = [k for k in keys if '20200709_' in k and k.split('/')[1].endswith(f'{141754 + 97 * 3:06d}')]
  assert two_frames == sorted(two_frames, key=lambda k: (k.split('/')[2], int(k.split('/')[3])))


def test_joints_vertices_and_pca_pose(fixture):
  for split in dex_ycb.SPLITS:
    for example in fixture[split]:
      truth = fixture['truth'][_key(example)]
      np.testing.assert_allclose(example['joints_3d'], truth['joints'], atol=1e-6)
      # Vertices from the PCA coefficients equal the generating axis-angle mesh.
      np.testing.assert_allclose(example['vertices_3d'], truth['verts'], atol=2e-5)
      np.testing.assert_allclose(example['mano_pose'], truth['pose'], atol=2e-5)
      np.testing.assert_allclose(example['mano_shape'], truth['betas'], atol=1e-6)
      np.testing.assert_allclose(example['dexycb_pose_m'][3:48], truth['pca'], atol=1e-5)
      assert example['hand_side'].decode() == truth['side'] and example['has_3d']
      assert example['object_id'] == truth['object_id']


def test_projected_joints_match_the_2d_labels(fixture):
  for example in fixture['train'] + fixture['test']:
    uv = source_io.project(example['joints_3d'], example['K'])
    np.testing.assert_allclose(uv, example['joints_2d'], atol=1e-3)
    x0, y0, x1, y1 = example['bbox']
    assert np.all(uv >= [x0 - 1e-3, y0 - 1e-3]) and np.all(uv <= [x1 + 1e-3, y1 + 1e-3])
    cols = np.clip(np.round(uv).astype(int), 0, [63, 47])
    assert np.all(example['mask'][cols[:, 1], cols[:, 0], 0] == 255)


def test_left_hand_is_marked_and_mirrors_into_a_right_hand(fixture):
  left = [e for split in dex_ycb.SPLITS for e in fixture[split] if e['hand_side'] == b'left']
  assert len(left) == 2  # one left sequence, two cameras
  example = left[0]
  images, K, joints, verts = input_pipeline.mirror_left_hands(
      example['image'][None], example['K'][None], example['joints_3d'][None], example['vertices_3d'][None],
      np.array([True]))
  width = example['image'].shape[1]
  np.testing.assert_allclose(source_io.project(joints[0], K[0])[:, 0], width - 1 - example['joints_2d'][:, 0],
                             atol=1e-3)
  # The stand-in MANO_LEFT is the exact mirror of MANO_RIGHT: the mirrored left mesh is the right hand with
  # the mirrored pose (axis-angle y, z negated) and mirrored translation.
  flip = np.array([1.0, -1.0, -1.0])
  pose = (example['mano_pose'].reshape(16, 3) * flip).reshape(48)
  right_verts, _ = fixture['hands']('right', pose, example['mano_shape'],
                                    example['mano_trans'] * [-1.0, 1.0, 1.0], flat_hand_mean=False)
  np.testing.assert_allclose(verts[0], right_verts, atol=3e-5)


def test_missing_mano_is_a_clear_error(fixture, tmp_path, monkeypatch):
  monkeypatch.delenv('DIFFHAND_MANO_DIR', raising=False)
  with pytest.raises(source_io.SourceError, match='MANO model is needed.*DIFFHAND_MANO_DIR'):
    _build(fixture['root'], tmp_path / 'data')


def test_corrupt_files_name_the_file(fixture, tmp_path):
  copy = tmp_path / 'dex_ycb'
  shutil.copytree(fixture['root'], copy)
  subject = make_fixtures.DEXYCB_SUBJECTS[0]
  sequence = sorted(os.listdir(copy / subject))[0]
  serial = make_fixtures.DEXYCB_SERIALS[0]
  folder = copy / subject / sequence / serial
  image = folder / 'color_000000.jpg'
  image.write_bytes(image.read_bytes()[:200])
  examples = dex_ycb.sequence_examples(str(copy), f'{subject}/{sequence}', fixture['hands'],
                                       dex_ycb.collections.Counter(), False, {})
  with pytest.raises(source_io.SourceError, match=rf'{serial}/color_000000\.jpg: cannot decode'):
    list(examples)
  label = folder / 'labels_000000.npz'
  label.write_bytes(label.read_bytes()[:300])
  examples = dex_ycb.sequence_examples(str(copy), f'{subject}/{sequence}', fixture['hands'],
                                       dex_ycb.collections.Counter(), False, {})
  with pytest.raises(source_io.SourceError, match=rf'{serial}/labels_000000\.npz: not a readable npz'):
    list(examples)
  os.remove(copy / 'calibration' / 'intrinsics' / f'{serial}_640x480.yml')
  with pytest.raises(source_io.SourceError, match=rf'intrinsics/{serial}_640x480\.yml: yaml file is missing'):
    list(dex_ycb.sequence_examples(str(copy), f'{subject}/{sequence}', fixture['hands'],
                                   dex_ycb.collections.Counter(), False, {}))


def test_nan_label_names_the_file(fixture, tmp_path):
  copy = tmp_path / 'dex_ycb'
  shutil.copytree(fixture['root'], copy)
  subject = make_fixtures.DEXYCB_SUBJECTS[2]
  sequence = sorted(os.listdir(copy / subject))[1]
  path = copy / subject / sequence / make_fixtures.DEXYCB_SERIALS[1] / 'labels_000000.npz'
  with np.load(path) as data:
    label = dict(data)
  label['joint_3d'][0, 3, 1] = np.nan
  np.savez(path, **label)
  with pytest.raises(source_io.SourceError, match=r"labels_000000\.npz 'joint_3d': contains NaN"):
    list(dex_ycb.sequence_examples(str(copy), f'{subject}/{sequence}', fixture['hands'],
                                   dex_ycb.collections.Counter(), False, {}))
