"""Submission files: official layouts, frame and joint-order round trips, validators, the root estimate,
and the command on a tiny trained workdir."""

import json
import os
import zipfile

import numpy as np
import pytest

from diffhand_jax import submission as submission_command
from diffhand_jax.geometry import conventions
from diffhand_jax.inference import submission

# HO-3D's joint order written out from its description (docs/design.md §2): wrist, index1-3, middle1-3,
# little1-3, ring1-3, thumb1-3, then the tips thumb, index, middle, ring, little, as indices of our
# 21-order (0 wrist, 1-4 thumb, 5-8 index, 9-12 middle, 13-16 ring, 17-20 little; tips 4, 8, 12, 16, 20).
HO3D_ORDER_AS_OURS = [0, 5, 6, 7, 9, 10, 11, 17, 18, 19, 13, 14, 15, 1, 2, 3, 4, 8, 12, 16, 20]


def _hands(count, seed=0, depth=0.6):
  """Plausible absolute hands in the OpenCV frame: (count, 21, 3) and (count, 778, 3) metres."""
  rng = np.random.default_rng(seed)
  root = np.array([0.03, -0.02, depth]) + rng.normal(0, 0.02, (count, 1, 3))
  joints = root + rng.normal(0, 0.04, (count, 21, 3))
  vertices = root + rng.normal(0, 0.04, (count, 778, 3))
  return joints, vertices


def _left_behind(directory):
  return sorted(n for n in os.listdir(directory) if 'tmp' in n)


def test_ho3d_joint_order_matches_its_description():
  np.testing.assert_array_equal(conventions.TO_HO3D, HO3D_ORDER_AS_OURS)
  ours = np.arange(21)
  np.testing.assert_array_equal(ours[conventions.TO_HO3D][conventions.HO3D_TO_21], ours)


def test_freihand_round_trip_and_flat_zip(tmp_path):
  joints, vertices = _hands(5)
  path = str(tmp_path / 'pred.zip')
  submission.write_freihand(path, joints, vertices, expected_count=5)
  with zipfile.ZipFile(path) as archive:
    assert archive.namelist() == ['pred.json']
    payload = json.loads(archive.read('pred.json'))
  assert len(payload) == 2 and len(payload[0]) == 5 and len(payload[1]) == 5
  assert np.asarray(payload[0][0]).shape == (21, 3) and np.asarray(payload[1][0]).shape == (778, 3)
  np.testing.assert_allclose(np.asarray(payload[0]), joints, atol=1e-6)
  read_joints, read_vertices = submission.read_pred_zip(path, expected_count=5)
  np.testing.assert_allclose(read_joints, joints, atol=1e-6)
  np.testing.assert_allclose(read_vertices, vertices, atol=1e-6)
  assert _left_behind(tmp_path) == []


def test_ho3d_file_is_opengl_in_ho3d_order(tmp_path):
  joints, vertices = _hands(4, seed=1)
  path = str(tmp_path / 'pred.zip')
  submission.write_ho3d(path, joints, vertices, expected_count=4)
  with zipfile.ZipFile(path) as archive:
    raw_joints, raw_vertices = (np.asarray(a) for a in json.loads(archive.read('pred.json')))
  flip = np.array([1.0, -1.0, -1.0])
  np.testing.assert_allclose(raw_joints, joints[:, HO3D_ORDER_AS_OURS] * flip, atol=1e-6)
  np.testing.assert_allclose(raw_vertices, vertices * flip, atol=1e-6)
  assert np.all(raw_joints[..., 2] < 0)  # in front of an OpenGL camera
  back_joints, back_vertices = submission.read_ho3d(path, expected_count=4)
  np.testing.assert_allclose(back_joints, joints, atol=1e-6)
  np.testing.assert_allclose(back_vertices, vertices, atol=1e-6)


def test_dexycb_lines_are_id_then_63_millimetre_values(tmp_path):
  joints, _ = _hands(3, seed=2)
  ids = [17, 3, 250]
  path = str(tmp_path / 'results.txt')
  submission.write_dexycb(path, ids, joints, expected_count=3)
  lines = open(path).read().splitlines()
  assert len(lines) == 3
  for line, image_id, hand in zip(lines, ids, joints):
    fields = line.split(',')
    assert len(fields) == 64 and int(fields[0]) == image_id
    np.testing.assert_allclose(np.array(fields[1:], float).reshape(21, 3), hand * 1000.0, atol=1e-3)
  read_ids, read_mm = submission.read_dexycb(path)
  assert read_ids.tolist() == ids
  np.testing.assert_allclose(read_mm, joints * 1000.0, atol=1e-3)


@pytest.mark.parametrize(
    'case, message',
    [
        ('count', 'evaluation set has 6'),
        ('joints_shape', r'\(M, 21, 3\)'),
        ('verts_shape', '778'),
        ('nan', 'not finite'),
        ('millimetres', 'units'),
        ('model_space', 'extent'),
        ('root_relative', 'behind the camera'),
    ],
)
def test_freihand_validator_rejects_and_leaves_nothing(tmp_path, case, message):
  joints, vertices = _hands(5, seed=3)
  expected = 5
  if case == 'count':
    expected = 6
  elif case == 'joints_shape':
    joints = joints[:, :20]
  elif case == 'verts_shape':
    vertices = vertices[:, :777]
  elif case == 'nan':
    vertices[2, 10, 1] = np.nan
  elif case == 'millimetres':
    joints, vertices = joints * 1000, vertices * 1000
  elif case == 'model_space':  # root-relative / 0.1 m, then placed: a hand 10x too big
    joints = (joints - joints[:, :1]) * 10 + joints[:, :1]
  elif case == 'root_relative':  # the root was never added: wrists at 0 or behind
    vertices, joints = vertices - joints[:, :1] - [0, 0, 0.01], joints - joints[:, :1] - [
        0,
        0,
        0.01,
    ]
  path = tmp_path / 'pred.zip'
  with pytest.raises(submission.SubmissionError, match=message):
    submission.write_freihand(str(path), joints, vertices, expected_count=expected)
  assert not path.exists() and _left_behind(tmp_path) == []


def test_ho3d_and_dexycb_validators_check_frame_and_units(tmp_path):
  joints, vertices = _hands(3, seed=4)
  flip = np.array([1.0, -1.0, -1.0])
  # Already-OpenGL input would be flipped twice, ending up in front of the wrong camera.
  with pytest.raises(submission.SubmissionError, match='behind the camera'):
    submission.write_ho3d(str(tmp_path / 'a.zip'), joints * flip, vertices * flip)
  # A file in the OpenCV frame is refused by the HO-3D reader, as HO-3D's pred.py refuses it.
  submission.write_freihand(str(tmp_path / 'opencv.zip'), joints, vertices)
  with pytest.raises(submission.SubmissionError, match='OpenGL|behind the camera'):
    submission.read_ho3d(str(tmp_path / 'opencv.zip'))
  with pytest.raises(submission.SubmissionError, match='units'):  # millimetres given as metres
    submission.write_dexycb(str(tmp_path / 'r.txt'), [0, 1, 2], joints * 1000)
  with pytest.raises(submission.SubmissionError, match='repeat'):
    submission.write_dexycb(str(tmp_path / 'r.txt'), [0, 1, 1], joints)
  (tmp_path / 'short.txt').write_text('5,' + ','.join(['1.0'] * 62) + '\n')
  with pytest.raises(submission.SubmissionError, match='64'):
    submission.read_dexycb(str(tmp_path / 'short.txt'))
  assert not (tmp_path / 'a.zip').exists() and not (tmp_path / 'r.txt').exists()


def test_dexycb_validator_says_the_toolkit_needs_every_scored_sample(tmp_path):
  joints, _ = _hands(3, seed=6)
  path = tmp_path / 'r.txt'
  with pytest.raises(
      submission.SubmissionError, match=r'no line for 1 of the 4 .*ids \[7\].*missing image id'
  ):
    submission.write_dexycb(str(path), [0, 2, 3], joints, required_ids=[0, 2, 3, 7])
  with pytest.raises(
      submission.SubmissionError, match='3 lines, but the toolkit scores 4 .*missing image id'
  ):
    submission.write_dexycb(str(path), [0, 2, 3], joints, expected_count=4)
  with pytest.raises(submission.SubmissionError, match='image id 9 is past the split.*0..8'):
    submission.write_dexycb(str(path), [0, 2, 9], joints, num_samples=9)
  assert not path.exists() and _left_behind(tmp_path) == []
  # Lines for ids the toolkit does not score are harmless (it iterates over its ground truth).
  submission.write_dexycb(
      str(path), [0, 2, 3], joints, expected_count=3, num_samples=4, required_ids=[0, 3]
  )
  with pytest.raises(submission.SubmissionError, match='missing image id'):
    submission.read_dexycb(str(path), required_ids=[0, 1, 2, 3])


def test_root_from_weak_perspective_recovers_the_camera_frame_wrist():
  from diffhand_jax.inference import crops

  rng = np.random.default_rng(5)
  size, focal, vertex_scale = 224, 480.0, 0.1
  K = np.array([[focal, 0, 110.0], [0, focal * 1.02, 114.0], [0, 0, 1]])
  for root in (np.array([0.04, -0.03, 0.7]), np.array([-0.08, 0.05, 0.45])):
    shape = rng.normal(0, 0.03, (100, 3))
    shape[:, 2] *= 0.3  # hands are flattish along the view direction, where weak perspective holds
    shape -= shape[:1]  # wrist = point 0 at the origin
    projected = (shape + root) @ K.T
    pixels = projected[:, :2] / projected[:, 2:]
    normalised = 2 * pixels / size - 1
    # Fit u = s·X + tx, v = s·Y + ty to the model-space points by least squares (one shared s).
    model_space = shape / vertex_scale
    rows = np.concatenate(
        [
            np.stack([model_space[:, 0], np.ones(100), np.zeros(100)], 1),
            np.stack([model_space[:, 1], np.zeros(100), np.ones(100)], 1),
        ]
    )
    camera, *_ = np.linalg.lstsq(
        rows, np.concatenate([normalised[:, 0], normalised[:, 1]]), rcond=None
    )
    estimate = crops.root_from_weak_perspective(camera[None], K[None], (size, size), vertex_scale)[
        0
    ]
    np.testing.assert_allclose(estimate, root, atol=0.03 * root[2])


# ------------------------------------------------------------------------------------------------
# The command, on a tiny trained workdir
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def workdir():
  from _inference_workdir import tiny_workdir

  return tiny_workdir()


def test_command_writes_a_valid_freihand_file(workdir, tmp_path, capsys):
  run, data_dir = workdir
  output = str(tmp_path / 'pred.zip')
  status = submission_command.main(
      [
          f'--workdir={run}',
          '--benchmark=freihand',
          f'--output={output}',
          f'--config.dataset.data_dir={data_dir}',
          '--num_hypotheses=2',
      ]
  )
  assert status == 0, capsys.readouterr().err
  joints, vertices = submission.read_pred_zip(output, expected_count=3)  # the tiny test split
  assert joints.shape == (3, 21, 3) and vertices.shape == (3, 778, 3)
  assert 'wrote' in capsys.readouterr().out


def test_command_names_what_is_missing(workdir, tmp_path, capsys):
  run, data_dir = workdir
  output = tmp_path / 'results.txt'
  status = submission_command.main(
      [
          f'--workdir={run}',
          '--benchmark=dexycb',
          f'--output={output}',
          f'--config.dataset.data_dir={data_dir}',
      ]
  )
  assert status == 1 and 'image id' in capsys.readouterr().err and not output.exists()
  # The network is fixed by the checkpoint: of config.model only the sampler's fields are flags.
  status = submission_command.main(
      [f'--workdir={run}', '--benchmark=freihand', f'--output={output}', '--config.model.width=999']
  )
  err = capsys.readouterr().err
  assert (
      status == 2
      and 'unknown flag --config.model.width' in err
      and 'fixed by the checkpoint' in err
  )
  assert 'Traceback' not in err and not output.exists()


# ------------------------------------------------------------------------------------------------
# DexYCB, from the generated DexYCB copy built by datasets/dex_ycb
# ------------------------------------------------------------------------------------------------


def _toolkit_hpe_check(result_path, scored_ids):
  """dex-ycb-toolkit hpe_eval.py's reading of a result file (HPEEvaluator._load_results) and its
  completeness assert (evaluate), restated; returns {id: (21, 3) mm}."""
  results = {}
  with open(result_path) as f:
    for line in f:
      elems = line.split(',')
      if len(elems) != 64:
        raise ValueError(f'a line does not have 64 comma-seperated elements: {line}')
      results[int(elems[0])] = np.array(elems[1:], dtype=np.float64).reshape(21, 3)
  for i in scored_ids:
    assert i in results, f'missing image id in result file: {i}'
  return results


@pytest.fixture(scope='module')
def dexycb_data():
  pytest.importorskip('tensorflow_datasets')
  import test_dex_ycb  # the built fixture (shared within the process) and the toolkit's numbering

  built = test_dex_ycb.built_fixture()
  return {
      'root': str(built['root']),
      'data_dir': built['data_dir'],
      'truth': built['truth'],
      'helpers': test_dex_ycb,
  }


def _dexycb_args(run, data, output, *extra):
  return [
      f'--workdir={run}',
      '--benchmark=dexycb',
      f'--output={output}',
      '--config.dataset.name=dex_ycb',
      '--config.dataset.config_name=default',
      f'--config.dataset.data_dir={data["data_dir"]}',
      *extra,
  ]


def test_dexycb_submission_from_the_fixture_has_the_toolkit_ids(
    workdir, dexycb_data, tmp_path, capsys
):
  run, _ = workdir
  helpers = dexycb_data['helpers']
  output = tmp_path / 'results.txt'
  status = submission_command.main(_dexycb_args(run, dexycb_data, output, '--split=test'))
  assert status == 0, capsys.readouterr().err
  assert (
      'partial copy' in capsys.readouterr().err
  )  # 3 subjects of 5 sequences: not the full release
  scored = helpers.toolkit_evaluated_ids(dexycb_data['root'], 'test')
  assert scored == [0, 2, 3]  # camera 0 frame 1 (toolkit index 1) has an all -1 joint_3d: a gap
  lines = output.read_text().splitlines()
  assert [int(line.split(',')[0]) for line in lines] == scored
  results = _toolkit_hpe_check(output, scored)  # the toolkit's reader accepts it and finds every id
  ids, joints_mm = submission.read_dexycb(str(output), required_ids=scored)
  for image_id, hand in zip(ids, joints_mm):
    np.testing.assert_array_equal(results[image_id], hand)
  assert (
      100 < np.median(joints_mm[:, 0, 2]) < 5000
  )  # wrists some decimetres in front, in millimetres
  # Without one line the toolkit's assert fires, and our reader says why.
  short = tmp_path / 'short.txt'
  short.write_text('\n'.join(lines[:1] + lines[2:]) + '\n')
  with pytest.raises(AssertionError, match='missing image id in result file: 2'):
    _toolkit_hpe_check(short, scored)
  with pytest.raises(submission.SubmissionError, match=r'ids \[2\].*missing image id'):
    submission.read_dexycb(str(short), required_ids=scored)


def test_dexycb_submission_refuses_a_split_the_builder_filtered_more_than_the_toolkit(
    workdir, dexycb_data, tmp_path, capsys
):
  run, _ = workdir
  helpers = dexycb_data['helpers']
  index_of = {key: index for index, key, _ in helpers.toolkit_samples(dexycb_data['root'], 'train')}
  # The fixture's all-zero pose_m and all -1 joint_2d samples: dropped, yet scored by the toolkit.
  scored_but_dropped = sorted(
      index_of[key]
      for key, entry in dexycb_data['truth'].items()
      if entry['invalid'] in ('pose_m', 'joint_2d')
  )
  assert len(scored_but_dropped) == 2
  output = tmp_path / 'results.txt'
  status = submission_command.main(_dexycb_args(run, dexycb_data, output, '--split=train'))
  error = capsys.readouterr().err
  assert status == 1 and not output.exists()
  assert f'sample_id {scored_but_dropped}' in error and 'missing image id' in error
