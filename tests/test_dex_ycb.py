"""datasets/dex_ycb: built from a generated DexYCB copy; S0 split, filtering, PCA pose, left hands."""

import atexit
import functools
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest
import yaml

tfds = pytest.importorskip('tensorflow_datasets')

from diffhand_jax.data import fixtures  # noqa: E402
from diffhand_jax.data.builders.dex_ycb import dex_ycb_dataset_builder as dex_ycb  # noqa: E402
from diffhand_jax.data import input_pipeline, sources  # noqa: E402


def _build(manual_dir, data_dir):
  builder = dex_ycb.Builder(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  )
  return builder


@functools.cache
def built_fixture() -> dict:
  """The DexYCB fixture written and built once per pytest process (test_submission uses it too):
  {'root': the copy, 'data_dir': the TFDS data dir, 'truth', 'mano_dir'}; removed when the process exits.
  Tests must not modify it (copy it first)."""
  base = pathlib.Path(tempfile.mkdtemp(prefix='diffhand_dex_ycb_tests_'))
  atexit.register(shutil.rmtree, base, True)
  mano_dir = fixtures.write_mano_standins(str(base / 'mano'))
  truth = fixtures.make_dex_ycb(str(base / 'dex_ycb'), mano_dir)
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv('DIFFHAND_MANO_DIR', mano_dir)
    _build(base / 'dex_ycb', base / 'tfds')
  return {
      'root': base / 'dex_ycb',
      'data_dir': str(base / 'tfds'),
      'truth': truth,
      'mano_dir': mano_dir,
  }


# The toolkit's S0 subject indices per split (dex_ycb_toolkit/dex_ycb.py, DexYCBDataset.__init__, 's0').
TOOLKIT_S0_SUBJECTS = {'train': range(10), 'validation': (0, 1), 'test': range(2, 10)}


def toolkit_samples(root, split):
  """DexYCBDataset('s0', split)._mapping restated from the folders, for a copy whose subjects are the
  toolkit's first ones and whose cameras are fixtures.DEXYCB_SERIALS (the copy's `_SERIALS`):
  [(index, 'subject/sequence/serial/frame', label path)] in the toolkit's order, filtered or not."""
  subjects = [s for i, s in enumerate(fixtures.DEXYCB_SUBJECTS) if i in TOOLKIT_S0_SUBJECTS[split]]
  serials = list(fixtures.DEXYCB_SERIALS)
  wanted = (lambda i: i % 5 != 4) if split == 'train' else (lambda i: i % 5 == 4)
  sequences = []
  for subject in subjects:
    names = sorted(os.listdir(os.path.join(root, subject)))
    sequences += [os.path.join(subject, name) for i, name in enumerate(names) if wanted(i)]
  mapping = []
  for s, sequence in enumerate(sequences):
    with open(os.path.join(root, sequence, 'meta.yml')) as f:
      num_frames = yaml.safe_load(f)['num_frames']
    f, c = np.meshgrid(np.arange(num_frames), np.arange(len(serials)))
    mapping.append(np.stack([np.full(c.size, s), c.ravel(), f.ravel()], axis=1))
  mapping = np.concatenate(mapping)
  return [
      (
          index,
          f'{sequences[s]}/{serials[c]}/{f}',
          os.path.join(root, sequences[s], serials[c], f'labels_{f:06d}.npz'),
      )
      for index, (s, c, f) in enumerate(mapping)
  ]


def toolkit_evaluated_ids(root, split):
  """The ids hpe_eval.py scores (and requires in a result file): those whose joint_3d is not all -1."""
  out = []
  for index, _, label_path in toolkit_samples(root, split):
    with np.load(label_path) as label:
      if not np.all(label['joint_3d'].reshape(21, 3) == -1):
        out.append(index)
  return out


@pytest.fixture(scope='module')
def fixture():
  built = built_fixture()
  builder = dex_ycb.Builder(data_dir=built['data_dir'])
  hands = sources.ManoEvaluator(built['mano_dir'])
  splits = {split: list(tfds.as_numpy(builder.as_dataset(split=split))) for split in dex_ycb.SPLITS}
  return {**built, 'hands': hands, **splits}


def _key(example):
  return '/'.join(
      [
          example['subject'].decode(),
          example['sequence'].decode(),
          example['serial'].decode(),
          str(int(example['frame'])),
      ]
  )


def test_s0_membership_and_filtering(fixture):
  truth = fixture['truth']
  for split in dex_ycb.SPLITS:
    expected = {
        key for key, entry in truth.items() if entry['split'] == split and not entry['invalid']
    }
    keys = [_key(example) for example in fixture[split]]
    assert len(keys) == len(set(keys)) == len(expected), split
    assert set(keys) == expected, split
  # The toolkit's S0 rule, restated: sequence i of subject s (both in sorted order).
  subjects = sorted(fixtures.DEXYCB_SUBJECTS)
  for split in dex_ycb.SPLITS:
    for example in fixture[split]:
      subject = example['subject'].decode()
      sequences = sorted(os.listdir(fixture['root'] / subject))
      i = sequences.index(example['sequence'].decode())
      want = 'train' if i % 5 != 4 else ('validation' if subjects.index(subject) < 2 else 'test')
      assert want == split
  invalid = {key for key, entry in truth.items() if entry['invalid']}
  assert len(invalid) == 4
  all_keys = {_key(e) for split in dex_ycb.SPLITS for e in fixture[split]}
  assert not invalid & all_keys
  # Examples run camera by camera, then frame by frame, within a sequence (the toolkit's order).
  keys = [_key(e) for e in fixture['train']]
  two_frames = [
      k for k in keys if '20200709_' in k and k.split('/')[1].endswith(f'{141754 + 97 * 3:06d}')
  ]
  assert two_frames == sorted(two_frames, key=lambda k: (k.split('/')[2], int(k.split('/')[3])))


def test_sample_id_is_the_toolkit_index_with_gaps(fixture):
  for split in dex_ycb.SPLITS:
    index_of = {key: index for index, key, _ in toolkit_samples(str(fixture['root']), split)}
    keys = [_key(example) for example in fixture[split]]
    ids = [int(example['sample_id']) for example in fixture[split]]
    assert ids == [index_of[key] for key in keys], split
    assert ids == sorted(ids), split  # the builder runs in the toolkit's order
    dropped = {index for key, index in index_of.items() if fixture['truth'][key]['invalid']}
    assert set(ids) == set(index_of.values()) - dropped, split
  # The test split: camera 0 frames 0-1, then camera 1 frames 0-1; camera 0 frame 1 is dropped.
  assert [int(e['sample_id']) for e in fixture['test']] == [0, 2, 3]


def test_toolkit_counts_in_metadata(fixture):
  root = str(fixture['root'])
  reloaded = dex_ycb.Builder(
      data_dir=fixture['data_dir']
  )  # reads what the build wrote to metadata.json
  toolkit = reloaded.info.metadata['toolkit']
  assert toolkit['full_release'] is False  # 3 subjects, 5 sequences each
  for split in dex_ycb.SPLITS:
    evaluated = toolkit_evaluated_ids(root, split)
    kept = [int(e['sample_id']) for e in fixture[split]]
    info = toolkit['splits'][split]
    assert info['num_samples'] == len(toolkit_samples(root, split)), split
    assert info['num_evaluated'] == len(evaluated) and info['num_kept'] == len(kept), split
    assert info['evaluated_but_dropped'] == sorted(set(evaluated) - set(kept)), split
  # The fixture's pose_m-only and joint_2d-only drops are train samples the toolkit still scores.
  assert len(toolkit['splits']['train']['evaluated_but_dropped']) == 2
  assert toolkit['splits']['test']['evaluated_but_dropped'] == []


def test_release_check_names_what_differs(fixture, monkeypatch):
  # toolkit_samples() takes the fixture's subjects and cameras for the toolkit's first ones.
  assert fixtures.DEXYCB_SUBJECTS == dex_ycb.TOOLKIT_SUBJECTS[:3]
  assert fixtures.DEXYCB_SERIALS == dex_ycb.TOOLKIT_SERIALS[:2]
  root = str(fixture['root'])
  differences = dex_ycb.differences_from_release(root)
  assert len(differences) == 5 and '3 subject folder(s)' in differences[0]
  assert all('has 5 sequences, not 100' in d for d in differences[1:4])
  assert "15 sequence(s) list other cameras than the toolkit's 8" in differences[4]
  monkeypatch.setattr(dex_ycb, 'TOOLKIT_SUBJECTS', fixtures.DEXYCB_SUBJECTS)
  monkeypatch.setattr(dex_ycb, 'TOOLKIT_SEQUENCES_PER_SUBJECT', 5)
  monkeypatch.setattr(dex_ycb, 'TOOLKIT_SERIALS', fixtures.DEXYCB_SERIALS)
  assert dex_ycb.differences_from_release(root) == []


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
    uv = sources.project(example['joints_3d'], example['K'])
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
      example['image'][None],
      example['K'][None],
      example['joints_3d'][None],
      example['vertices_3d'][None],
      np.array([True]),
  )
  width = example['image'].shape[1]
  np.testing.assert_allclose(
      sources.project(joints[0], K[0])[:, 0], width - 1 - example['joints_2d'][:, 0], atol=1e-3
  )
  # The stand-in MANO_LEFT is the exact mirror of MANO_RIGHT: the mirrored left mesh is the right hand with
  # the mirrored pose (axis-angle y, z negated) and mirrored translation.
  flip = np.array([1.0, -1.0, -1.0])
  pose = (example['mano_pose'].reshape(16, 3) * flip).reshape(48)
  right_verts, _ = fixture['hands'](
      'right',
      pose,
      example['mano_shape'],
      example['mano_trans'] * [-1.0, 1.0, 1.0],
      flat_hand_mean=False,
  )
  np.testing.assert_allclose(verts[0], right_verts, atol=3e-5)


def test_missing_mano_is_a_clear_error(fixture, tmp_path, monkeypatch):
  monkeypatch.delenv('DIFFHAND_MANO_DIR', raising=False)
  with pytest.raises(sources.SourceError, match='needs the MANO model.*DIFFHAND_MANO_DIR'):
    _build(fixture['root'], tmp_path / 'data')


def test_corrupt_files_name_the_file(fixture, tmp_path):
  copy = tmp_path / 'dex_ycb'
  shutil.copytree(fixture['root'], copy)
  subject = fixtures.DEXYCB_SUBJECTS[0]
  sequence = sorted(os.listdir(copy / subject))[0]
  serial = fixtures.DEXYCB_SERIALS[0]
  folder = copy / subject / sequence / serial
  image = folder / 'color_000000.jpg'
  image.write_bytes(image.read_bytes()[:200])
  examples = dex_ycb.sequence_examples(
      str(copy), f'{subject}/{sequence}', fixture['hands'], dex_ycb.collections.Counter(), False, {}
  )
  with pytest.raises(sources.SourceError, match=rf'{serial}/color_000000\.jpg: cannot decode'):
    list(examples)
  label = folder / 'labels_000000.npz'
  label.write_bytes(label.read_bytes()[:300])
  examples = dex_ycb.sequence_examples(
      str(copy), f'{subject}/{sequence}', fixture['hands'], dex_ycb.collections.Counter(), False, {}
  )
  with pytest.raises(
      sources.SourceError, match=rf'{serial}/labels_000000\.npz: not a readable npz'
  ):
    list(examples)
  os.remove(copy / 'calibration' / 'intrinsics' / f'{serial}_640x480.yml')
  with pytest.raises(
      sources.SourceError, match=rf'intrinsics/{serial}_640x480\.yml: yaml file is missing'
  ):
    list(
        dex_ycb.sequence_examples(
            str(copy),
            f'{subject}/{sequence}',
            fixture['hands'],
            dex_ycb.collections.Counter(),
            False,
            {},
        )
    )


def test_nan_label_names_the_file(fixture, tmp_path):
  copy = tmp_path / 'dex_ycb'
  shutil.copytree(fixture['root'], copy)
  subject = fixtures.DEXYCB_SUBJECTS[2]
  sequence = sorted(os.listdir(copy / subject))[1]
  path = copy / subject / sequence / fixtures.DEXYCB_SERIALS[1] / 'labels_000000.npz'
  with np.load(path) as data:
    label = dict(data)
  label['joint_3d'][0, 3, 1] = np.nan
  np.savez(path, **label)
  with pytest.raises(sources.SourceError, match=r"labels_000000\.npz 'joint_3d': contains NaN"):
    list(
        dex_ycb.sequence_examples(
            str(copy),
            f'{subject}/{sequence}',
            fixture['hands'],
            dex_ycb.collections.Counter(),
            False,
            {},
        )
    )
