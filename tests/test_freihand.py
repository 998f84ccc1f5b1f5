"""datasets/freihand: built from a generated copy in the official layout, checked against its ground truth."""

import json
import os
import shutil

import numpy as np
import pytest

tfds = pytest.importorskip('tensorflow_datasets')

from diffhand_jax.data import fixtures  # noqa: E402
from diffhand_jax.data.builders.freihand import freihand_dataset_builder as freihand  # noqa: E402
from diffhand_jax.data import sources  # noqa: E402


def _build(manual_dir, data_dir):
  builder = freihand.Builder(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  )
  return builder


def _read(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split)))


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
  root = tmp_path_factory.mktemp('freihand_fixture')
  mano_dir = fixtures.write_mano_standins(str(root / 'mano'))
  truth = fixtures.make_freihand(str(root / 'freihand'), mano_dir, num_train=3, num_eval=2)
  builder = _build(root / 'freihand', tmp_path_factory.mktemp('freihand_data'))
  return {
      'root': root / 'freihand',
      'truth': truth,
      'train': _read(builder, 'train'),
      'evaluation': _read(builder, 'evaluation'),
  }


def test_counts_match_the_files(fixture):
  assert len(fixture['train']) == 3 * 4  # 3 annotations x 4 colour versions
  assert len(fixture['evaluation']) == 2


def test_four_versions_map_onto_their_annotations(fixture):
  truth = fixture['truth']
  seen = set()
  for example in fixture['train']:
    image_id = int(example['image_id'])
    seen.add(image_id)
    index = image_id % 3
    assert example['annotation_id'] == index
    assert example['colour_version'].decode() == fixtures.FREIHAND_VERSIONS[image_id // 3]
    np.testing.assert_allclose(example['joints_3d'], truth['train']['xyz'][index], atol=1e-6)
    np.testing.assert_allclose(example['vertices_3d'], truth['train']['verts'][index], atol=1e-6)
    np.testing.assert_allclose(example['K'], truth['train']['K'][index], rtol=1e-6)
    np.testing.assert_allclose(
        example['mano_raw'], truth['train']['mano'][index], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        example['mano_pose'], truth['train']['mano'][index][:48], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        example['mano_shape'], truth['train']['mano'][index][48:58], rtol=1e-5, atol=1e-6
    )
    # The pixels are those of file %08d.jpg of this id (each file has its own mean colour).
    colour = truth['image_colour'][('training', image_id)]
    assert example['image'].shape == (224, 224, 3)
    np.testing.assert_allclose(example['image'].reshape(-1, 3).mean(0), colour, atol=3.0)
    assert example['has_3d'] and example['has_mask'] and example['hand_side'] == b'right'
  assert seen == set(range(12))


def test_projected_joints_lie_in_the_box_and_mask(fixture):
  for example in fixture['train']:
    uv = sources.project(example['vertices_3d'], example['K'])
    x0, y0, x1, y1 = example['bbox']
    assert np.all(uv >= [x0 - 1e-3, y0 - 1e-3]) and np.all(uv <= [x1 + 1e-3, y1 + 1e-3])
    # The fixture's mask marks the projected vertices.
    cols = np.clip(np.round(uv).astype(int), 0, 223)
    assert np.mean(example['mask'][cols[:, 1], cols[:, 0], 0] == 255) > 0.9
    assert set(np.unique(example['mask'])) <= {0, 255}


def test_evaluation_release_ground_truth(fixture):
  truth = fixture['truth']['evaluation']
  for example in fixture['evaluation']:
    index = int(example['image_id'])
    assert example['has_3d'] and not example['has_mask']
    np.testing.assert_allclose(example['joints_3d'], truth['xyz'][index], atol=1e-6)
    np.testing.assert_allclose(example['vertices_3d'], truth['verts'][index], atol=1e-6)


def test_evaluation_without_the_release_has_no_3d(fixture, tmp_path):
  copy = tmp_path / 'freihand'
  shutil.copytree(fixture['root'], copy)
  for key in ('xyz', 'verts', 'mano'):
    os.remove(copy / f'evaluation_{key}.json')
  examples = _read(_build(copy, tmp_path / 'data'), 'evaluation')
  assert len(examples) == 2
  for example in examples:
    assert not example['has_3d']
    assert not np.any(example['joints_3d']) and not np.any(example['vertices_3d'])
    np.testing.assert_allclose(example['bbox'], [-0.5, -0.5, 223.5, 223.5])


def test_truncated_jpeg_names_the_file(fixture, tmp_path):
  copy = tmp_path / 'freihand'
  shutil.copytree(fixture['root'], copy)
  bad = copy / 'training' / 'rgb' / '00000007.jpg'
  data = bad.read_bytes()
  bad.write_bytes(data[: len(data) // 3])
  annotations = freihand.read_annotations(str(copy), 'training')
  with pytest.raises(sources.SourceError, match=r'00000007\.jpg: cannot decode'):
    freihand.make_example(str(copy), 'training', 7, annotations)
  # And through `tfds build` too: the same error, not one TFDS raises about something else.
  with pytest.raises(sources.SourceError, match=r'00000007\.jpg: cannot decode'):
    _build(copy, tmp_path / 'data')


def test_json_length_mismatch_and_nan_name_the_file(fixture, tmp_path):
  copy = tmp_path / 'freihand'
  shutil.copytree(fixture['root'], copy)
  xyz_path = copy / 'training_xyz.json'
  xyz = json.loads(xyz_path.read_text())
  xyz_path.write_text(json.dumps(xyz[:-1]))
  with pytest.raises(sources.SourceError, match=r'training_xyz\.json: has 2 items .* has 3'):
    freihand.read_annotations(str(copy), 'training')
  xyz[1][4][2] = float('nan')
  xyz_path.write_text(json.dumps(xyz))
  annotations = freihand.read_annotations(str(copy), 'training')
  with pytest.raises(sources.SourceError, match=r'training_xyz\.json \[index 1\].*NaN'):
    freihand.make_example(
        str(copy), 'training', 1 + 3, annotations
    )  # the 'hom' version of sample 1
  os.remove(copy / 'training' / 'rgb' / '00000002.jpg')
  with pytest.raises(sources.SourceError, match=r'00000002\.jpg: image is missing'):
    freihand.make_example(str(copy), 'training', 2, annotations)
