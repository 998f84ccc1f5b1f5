"""`mano.fit`: MANO parameters from a mesh, checked on meshes of known, in-range parameters of the
procedural hand (right and left, both pose conventions, with and without noise), and `bench fit`.

The tests share batch shapes (32, and 1) so that the jitted solver compiles few times."""

import json
import warnings

import numpy as np
import pytest

from diffhand_jax import bench, mano
from diffhand_jax.geometry.mano import fitting as mano_fitting


@pytest.fixture(scope='module')
def right():
  return mano.load_procedural('right')


def _hands(model, count, seed):
  rng = np.random.default_rng(seed)
  pose = mano.sample_random_pose(rng, model, count, flat_hand_mean=False, random_global_orient=True)
  betas = np.clip(rng.normal(0.0, 1.0, (count, model.num_betas)), -2.5, 2.5).astype(np.float32)
  trans = (rng.uniform(-0.3, 0.3, (count, 3)) + [0.0, 0.0, 0.6]).astype(np.float32)
  vertices = np.asarray(mano.forward(model, pose, betas, trans=trans)[0], np.float64)
  return pose, betas, trans, vertices


def _mean_distance(a, b):
  return np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1).mean(-1)


def test_fit_recovers_in_range_hands(right):
  _, _, _, vertices = _hands(right, 32, seed=0)
  out = mano.fit(right, vertices)
  assert out['pose'].shape == (32, 48) and out['betas'].shape == (32, 10)
  assert out['trans'].shape == (32, 3) and out['vertices'].shape == (32, 778, 3)
  # The returned parameters, put through mano.forward, give back the input meshes.
  again = np.asarray(
      mano.forward(right, out['pose'], out['betas'], flat_hand_mean=False, trans=out['trans'])[0]
  )
  error = _mean_distance(again, vertices) * 1e3  # mm
  assert error.mean() <= 0.5 and np.percentile(error, 95) <= 2.0, (error.mean(), error.max())
  np.testing.assert_allclose(out['error'] * 1e3, error, atol=1e-3)
  np.testing.assert_allclose(out['vertices'], again, atol=1e-5)


def test_fit_left_hands_and_the_flat_hand_mean_convention():
  left = mano.load_procedural('left')
  _, _, _, vertices = _hands(left, 32, seed=1)
  out = mano.fit(left, vertices, flat_hand_mean=True)
  again = np.asarray(
      mano.forward(left, out['pose'], out['betas'], flat_hand_mean=True, trans=out['trans'])[0]
  )
  assert _mean_distance(again, vertices).max() < 1e-3  # metres


def test_fit_averages_noise_away(right):
  _, _, _, vertices = _hands(right, 32, seed=2)
  noisy = vertices + np.random.default_rng(3).normal(0.0, 1e-3, vertices.shape)  # 1 mm per axis
  out = mano.fit(right, noisy)
  # About 1.6 mm from the noisy points (the mean length of the noise), much closer to the clean mesh.
  assert 1.2e-3 < out['error'].mean() < 2.0e-3
  assert _mean_distance(out['vertices'], vertices).mean() < 0.5e-3


def test_fit_in_chunks(right, monkeypatch):
  _, _, _, vertices = _hands(right, 40, seed=4)
  # 40 hands: a chunk of 32 and one of 8, padded to 32.
  monkeypatch.setattr(mano_fitting, '_FIT_CHUNK', 32)
  # Spy on the per-chunk solver: record the meshes each call gets, then solve them as before.
  solve = mano_fitting._fit_parameters
  chunks = []

  def spy(model, x0, targets, *args, **kwargs):
    chunks.append((np.asarray(x0), np.asarray(targets)))
    return solve(model, x0, targets, *args, **kwargs)

  monkeypatch.setattr(mano_fitting, '_fit_parameters', spy)
  out = mano.fit(right, vertices)
  assert out['vertices'].shape == (40, 778, 3)
  assert _mean_distance(out['vertices'], vertices).max() < 2e-3
  # Two calls of one shape: hands 0-31, then hands 32-39 with the last hand repeated to fill 32 rows.
  # (The solver gets each mesh about its own centre.)
  centred = (vertices - vertices.mean(1, keepdims=True)).astype(np.float32)
  assert len(chunks) == 2, len(chunks)
  assert [x0.shape[0] for x0, _ in chunks] == [32, 32]
  np.testing.assert_allclose(chunks[0][1], centred[:32], atol=1e-6)
  np.testing.assert_allclose(chunks[1][1][:8], centred[32:], atol=1e-6)
  np.testing.assert_allclose(
      chunks[1][1][8:], np.broadcast_to(centred[39], (24, 778, 3)), atol=1e-6
  )
  np.testing.assert_array_equal(
      chunks[1][0][8:], np.broadcast_to(chunks[1][0][7], (24,) + chunks[1][0].shape[1:])
  )
  # Chunking changes nothing: hands 8-39 in one unchunked call (32 hands, the shape already compiled)
  # give what the two chunks gave for them.
  whole = mano.fit(right, vertices[8:])
  assert len(chunks) == 3 and chunks[2][0].shape[0] == 32
  for name in ('pose', 'betas', 'trans', 'vertices', 'error'):
    np.testing.assert_allclose(out[name][8:], whole[name], rtol=0, atol=1e-6, err_msg=name)


def test_fit_rejects_bad_meshes(right):
  with pytest.raises(ValueError, match='778, 3'):
    mano.fit(right, np.zeros((2, 700, 3)))
  bad = np.zeros((1, 778, 3))
  bad[0, 3, 1] = np.nan
  with pytest.raises(ValueError, match='NaN'):
    mano.fit(right, bad)


def test_bench_fit_reports_error_and_time(tmp_path, capsys):
  assert 'fit' in bench.available()
  output = tmp_path / 'fit.json'
  assert bench.main(['fit', '--batch_sizes=1', '--repeats=1', f'--output={output}']) == 0
  report = json.loads(output.read_text())
  assert [r['batch'] for r in report['results']] == [1]
  for row in report['results']:
    assert row['error_mean_mm'] < 0.5 and row['seconds'] > 0
  assert '| batch |' in capsys.readouterr().out
  assert bench.main(['fit', '--batch_sizes=0']) == 2
  # One mesh without a batch axis (the batch-1 program bench fit compiled): no batch axis out.
  _, _, _, vertices = _hands(right_model := mano.load_procedural('right'), 1, seed=5)
  single = mano.fit(right_model, vertices[0])
  assert single['pose'].shape == (48,) and single['error'].shape == () and single['error'] < 1e-3


def test_fit_refuses_arguments_it_cannot_use():
  """Before issue 36, num_iterations=-1 fitted an all-zero mesh without a word."""
  model = mano.load_procedural()
  vertices = np.asarray(mano.forward(model, np.zeros((1, 48), np.float32))[0], np.float64)
  for bad in (dict(num_iterations=-1), dict(num_iterations=0), dict(num_iterations=2.5)):
    with pytest.raises(ValueError, match='num_iterations must be an integer >= 1'):
      mano.fit(model, vertices, **bad)
  for name in ('pose_prior', 'shape_prior'):
    for value in (-1.0, float('nan')):
      with pytest.raises(ValueError, match=f'{name} must be finite and >= 0'):
        mano.fit(model, vertices, **{name: value})


def test_fit_warns_when_the_betas_leave_the_models_range():
  """A hand 1.6 times too large (centimetres read as ... a wrong scale) can only be fitted with betas
  far outside the shape space: the fit says so; a hand of the right size does not warn."""
  model = mano.load_procedural()
  vertices = np.asarray(mano.forward(model, np.zeros((1, 48), np.float32))[0], np.float64)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    mano.fit(model, vertices)
  with pytest.warns(UserWarning, match=r"beyond the model's range of ±5"):
    mano.fit(model, vertices * 1.6)
