"""Several hypotheses: aggregation, uncertainty, the best-of-K oracle, the rank correlation, and the
vmapped sampler against one-at-a-time sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffhand_jax import diffusion, metrics
from diffhand_jax.geometry import hypotheses


def _as_hypotheses(points_per_hypothesis):
  """[(N, 3) per hypothesis] → (1, K, N, 3)."""
  return np.asarray(points_per_hypothesis, np.float64)[None]


def test_medoid_of_points_on_a_line():
  # One vertex, K = 3 at x = 0, 1, 10: summed distances 11, 10, 19 → hypothesis 1.
  verts = _as_hypotheses([[[0, 0, 0]], [[1, 0, 0]], [[10, 0, 0]]])
  assert hypotheses.medoid_index(verts).tolist() == [1]
  np.testing.assert_array_equal(hypotheses.aggregate(verts, 'medoid'), [[[1, 0, 0]]])
  np.testing.assert_allclose(hypotheses.aggregate(verts, 'mean'), [[[11 / 3, 0, 0]]])


def test_medoid_uses_mean_per_vertex_distance_and_breaks_ties_low():
  # Two vertices. Distances between hypotheses (mean over the 2 vertices of the L2 distance):
  #   A=(0,0),(0,0); B=(2,0),(0,0): |AB| = (2 + 0)/2 = 1
  #   C=(0,0),(0,4): |AC| = 2, |BC| = (2 + 4)/2 = 3
  # sums: A 3, B 4, C 5 → A.
  a = [[0, 0, 0], [0, 0, 0]]
  b = [[2, 0, 0], [0, 0, 0]]
  c = [[0, 0, 0], [0, 4, 0]]
  assert hypotheses.medoid_index(_as_hypotheses([b, a, c])).tolist() == [1]
  # Points 0, 1, 2, 3 on a line: sums 6, 4, 4, 6 → the tie goes to the lower index.
  line = [[[x, 0, 0]] for x in (0, 1, 2, 3)]
  assert hypotheses.medoid_index(_as_hypotheses(line)).tolist() == [1]
  # Distances, not squared distances: x = 0, 1, 2, 20 gives summed distances 23, 21, 21, 57 → index 1,
  # while summed squared distances 405, 363, 329, ... would pick index 2.
  pts = [[[x, 0, 0]] for x in (0, 1, 2, 20)]
  assert hypotheses.medoid_index(_as_hypotheses(pts)).tolist() == [1]


def test_medoid_is_one_of_the_hypotheses():
  # Seed 1: medoids 2, 0, 4, 1, 3, and the last differs from the medoid of squared distances (0).
  rng = np.random.default_rng(1)
  verts = rng.normal(size=(5, 6, 40, 3))
  medoid = hypotheses.aggregate(verts, 'medoid')
  for b in range(5):
    assert any(np.array_equal(medoid[b], verts[b, k]) for k in range(6))
  # And the right one: the medoid worked out by hand, loop by loop, with no help from the module: for
  # each hypothesis k, the sum over the others j of the mean over vertices of |v_k - v_j|; the smallest
  # sum wins, a tie going to the lower index (strict < while scanning k upwards).
  expected = []
  for b in range(5):
    best, best_sum = None, None
    for k in range(6):
      total = 0.0
      for j in range(6):
        if j != k:
          total += float(np.mean(np.linalg.norm(verts[b, k] - verts[b, j], axis=-1)))
      if best_sum is None or total < best_sum:
        best, best_sum = k, total
    expected.append(best)
  # The batch must tell "the medoid" from "always hypothesis 0" (or any other fixed index).
  assert len(set(expected)) > 1 and any(k != 0 for k in expected), expected
  assert hypotheses.medoid_index(verts).tolist() == expected
  for b, k in enumerate(expected):
    np.testing.assert_array_equal(medoid[b], verts[b, k])


def test_per_vertex_std_hand_worked_and_against_numpy():
  # K = 2 hypotheses that differ by d along x at vertex 0 only: std_x = d/2, RMS over xyz = d/(2·√3).
  d = 0.6
  verts = np.zeros((1, 2, 3, 3))
  verts[0, 1, 0, 0] = d
  np.testing.assert_allclose(hypotheses.per_vertex_std(verts), [[d / (2 * np.sqrt(3)), 0, 0]])
  rng = np.random.default_rng(1)
  verts = rng.normal(size=(3, 5, 7, 3))
  expected = np.sqrt(
      (
          np.std(verts[:, :, :, 0], axis=1) ** 2
          + np.std(verts[:, :, :, 1], axis=1) ** 2
          + np.std(verts[:, :, :, 2], axis=1) ** 2
      )
      / 3
  )
  np.testing.assert_allclose(hypotheses.per_vertex_std(verts), expected)
  np.testing.assert_array_equal(hypotheses.per_vertex_std(verts[:, :1]), np.zeros((3, 7)))


def _hand_like(rng, count, num_vertices=778):
  verts = rng.normal(0, 0.03, (count, num_vertices, 3))
  regressor = np.abs(rng.normal(size=(21, num_vertices)))
  regressor /= regressor.sum(1, keepdims=True)
  return verts, np.einsum('jn,bnc->bjc', regressor, verts), regressor


def test_oracle_picks_the_best_hypothesis_by_the_official_metric():
  rng = np.random.default_rng(2)
  gt_verts, gt_joints, regressor = _hand_like(rng, 4)
  noise_levels = np.array([0.01, 0.002, 0.02])  # metres
  hyps = gt_verts[:, None] + noise_levels[None, :, None, None] * rng.normal(size=(4, 3, 778, 3))
  oracle = metrics.oracle_best(hyps, gt_verts, gt_joints, regressor)
  for k in range(
      3
  ):  # each hypothesis scored on its own, straight through metrics.evaluate_per_sample
    joints = np.einsum('jn,bnc->bjc', regressor, hyps[:, k])
    alone = metrics.evaluate_per_sample(joints, gt_joints, hyps[:, k], gt_verts)['pa_mpvpe']
    np.testing.assert_allclose(oracle['errors'][:, k], alone)
  assert oracle['index'].tolist() == [1, 1, 1, 1]
  assert np.all(oracle['best'] <= oracle['errors'].mean(1))
  # F-scores are better when larger: the oracle by pa_f5 maximises.
  by_f = metrics.oracle_best(hyps, gt_verts, gt_joints, regressor, metric='pa_f5')
  assert np.all(by_f['best'] >= by_f['errors'].max(1) - 1e-12)


def test_mean_of_symmetric_hypotheses_can_beat_the_oracle():
  # GT ± the same offset field: each hypothesis is off, their mean is exact. The oracle bounds the
  # best single hypothesis, not the aggregate.
  rng = np.random.default_rng(3)
  gt_verts, gt_joints, regressor = _hand_like(rng, 2)
  offset = rng.normal(0, 0.005, gt_verts.shape)
  hyps = np.stack([gt_verts + offset, gt_verts - offset], 1)
  summary = metrics.summarize_hypotheses(hyps, gt_verts, gt_joints, regressor)
  assert summary['aggregated']['pa_mpvpe'] < 1e-6
  assert summary['oracle']['pa_mpvpe'] > 1.0
  assert summary['oracle']['pa_mpvpe'] <= summary['first']['pa_mpvpe'] + 1e-12


def test_spearman_against_the_rank_formula():
  u = np.array([0.1, 0.5, 0.2, 0.9, 0.4])
  e = np.array([1.0, 3.0, 5.0, 4.0, 2.0])
  # ranks: u → 1, 4, 2, 5, 3; e → 1, 3, 5, 4, 2; d = 0, 1, -3, 1, 1; Σd² = 12
  expected = 1 - 6 * 12 / (5 * (25 - 1))
  assert hypotheses.uncertainty_error_correlation(u, e) == pytest.approx(expected)
  assert hypotheses.uncertainty_error_correlation(u, np.exp(u)) == pytest.approx(1.0)
  assert hypotheses.uncertainty_error_correlation(u, -(u**3)) == pytest.approx(-1.0)
  assert np.isnan(hypotheses.uncertainty_error_correlation(np.zeros(5), e))
  with pytest.raises(ValueError, match='M >= 2'):
    hypotheses.uncertainty_error_correlation(u, e[:4])


def _random_rotations(rng, count):
  from scipy.spatial.transform import Rotation

  return Rotation.random(count, random_state=rng).as_matrix()


def test_rigid_align_matches_scipy_align_vectors():
  from scipy.spatial.transform import Rotation

  rng = np.random.default_rng(5)
  source = rng.normal(size=(30, 3))
  target = (
      source @ _random_rotations(rng, 1)[0].T + rng.normal(size=3) + rng.normal(0, 0.1, (30, 3))
  )
  # scipy: the rotation R minimising Σ|R·(s_i - s̄) - (t_i - t̄)|², then moved onto the target's centroid.
  rotation, _ = Rotation.align_vectors(target - target.mean(0), source - source.mean(0))
  expected = rotation.apply(source - source.mean(0)) + target.mean(0)
  np.testing.assert_allclose(hypotheses.rigid_align(source, target), expected, atol=1e-10)
  # An exact rigid motion is undone exactly; a mirror image is rotated, never reflected.
  moved = source @ _random_rotations(rng, 1)[0].T + 2.0
  np.testing.assert_allclose(hypotheses.rigid_align(moved, source), source, atol=1e-10)
  mirrored = source * np.array([-1.0, 1.0, 1.0])
  aligned = hypotheses.rigid_align(mirrored, source)
  centred = mirrored - mirrored.mean(0)
  implied, *_ = np.linalg.lstsq(centred, aligned - aligned.mean(0), rcond=None)
  assert np.linalg.det(implied) == pytest.approx(1.0)


def test_aligned_mean_undoes_disagreement_in_orientation():
  # K rigid motions of one shape: the raw mean is no hand, the aligned mean is the shape itself, in the
  # medoid's pose.
  rng = np.random.default_rng(6)
  gt_verts, gt_joints, regressor = _hand_like(rng, 1)
  rotations = _random_rotations(rng, 5)
  hyps = np.einsum('kij,bnj->bkni', rotations, gt_verts) + rng.normal(0, 0.01, (1, 5, 1, 3))
  mesh = hypotheses.aggregate(hyps, 'aligned_mean')
  medoid = hypotheses.aggregate(hyps, 'medoid')
  np.testing.assert_allclose(mesh, medoid, atol=1e-10)
  aligned_error = metrics.evaluate(
      np.einsum('jn,bnc->bjc', regressor, mesh), gt_joints, mesh, gt_verts
  )
  raw = hypotheses.aggregate(hyps, 'mean')
  raw_error = metrics.evaluate(np.einsum('jn,bnc->bjc', regressor, raw), gt_joints, raw, gt_verts)
  assert aligned_error['pa_mpvpe'] < 1e-6
  assert raw_error['pa_mpvpe'] > 10.0


def test_aligned_mean_averages_articulation_and_is_equivariant():
  # Rotated copies of GT ± an offset field: every hypothesis is off by the offset, the aligned mean
  # nearly cancels it (exactly to first order in the offset).
  rng = np.random.default_rng(7)
  gt_verts, gt_joints, regressor = _hand_like(rng, 3)
  offset = rng.normal(0, 0.002, gt_verts.shape)
  rotations = _random_rotations(rng, 2)
  hyps = np.stack([(gt_verts + offset) @ rotations[0].T, (gt_verts - offset) @ rotations[1].T], 1)
  summary = metrics.summarize_hypotheses(
      hyps, gt_verts, gt_joints, regressor, method='aligned_mean'
  )
  assert summary['aggregated']['pa_mpvpe'] < 0.1 * summary['oracle']['pa_mpvpe']
  # Moving every hypothesis of an image by one rigid motion moves the aggregate by that motion.
  turn = _random_rotations(rng, 1)[0]
  moved = hypotheses.aggregate(hyps @ turn.T + 0.3, 'aligned_mean')
  np.testing.assert_allclose(
      moved, hypotheses.aggregate(hyps, 'aligned_mean') @ turn.T + 0.3, atol=1e-9
  )
  # One hypothesis is its own aggregate.
  np.testing.assert_allclose(
      hypotheses.aggregate(hyps[:, :1], 'aligned_mean'), hyps[:, 0], atol=1e-12
  )
  with pytest.raises(ValueError, match='iterations'):
    hypotheses.aligned_mean(hyps, iterations=0)


def test_summarize_with_the_callers_aggregate_equals_its_own():
  # Evaluation hands summarize the aggregate and its metrics it has already computed.
  rng = np.random.default_rng(3)
  gt_verts, gt_joints, regressor = _hand_like(rng, 4)
  hyps = gt_verts[:, None] + rng.normal(0, 0.004, (4, 3) + gt_verts.shape[1:])
  own = metrics.summarize_hypotheses(hyps, gt_verts, gt_joints, regressor, method='aligned_mean')
  mesh = hypotheses.aggregate(hyps, 'aligned_mean')
  mesh_metrics = metrics.evaluate_per_sample(
      np.einsum('jn,bnc->bjc', regressor, mesh), gt_joints, mesh, gt_verts
  )
  given = metrics.summarize_hypotheses(
      hyps,
      gt_verts,
      gt_joints,
      regressor,
      method='aligned_mean',
      mesh=mesh,
      mesh_metrics=mesh_metrics,
  )
  own_per_sample, given_per_sample = own.pop('per_sample'), given.pop('per_sample')
  assert given == own
  for name, value in own_per_sample['scores'].items():
    np.testing.assert_array_equal(given_per_sample['scores'][name], value)
  with pytest.raises(ValueError, match='one aggregate'):
    metrics.summarize_hypotheses(hyps, gt_verts, gt_joints, regressor, mesh=mesh[:2])
  with pytest.raises(ValueError, match='without the mesh'):
    metrics.summarize_hypotheses(hyps, gt_verts, gt_joints, regressor, mesh_metrics=mesh_metrics)


def test_aggregate_rejects_bad_input():
  with pytest.raises(ValueError, match=r'\(B, K, N, 3\)'):
    hypotheses.aggregate(np.zeros((2, 5, 3)))
  with pytest.raises(ValueError, match='method'):
    hypotheses.aggregate(np.zeros((1, 2, 5, 3)), 'median')


# ------------------------------------------------------------------------------------------------
# The vmapped sampler of models/diffhand.reconstruct: K hypotheses = K one-at-a-time samples.
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_model():
  from diffhand_jax.inference import loading
  from _inference_workdir import tiny_workdir

  workdir, _ = tiny_workdir()
  run = loading.load_trained(workdir)
  return run.model, run.params, run.schedule


def test_k_hypotheses_equal_plain_sampler_runs(tiny_model):
  from diffhand_jax.models import diffhand

  model, params, schedule = tiny_model
  num_hyp, batch, steps = 3, 2, 2
  images = jax.random.normal(jax.random.PRNGKey(0), (batch, 32, 32, 3))
  noise = jax.random.normal(jax.random.PRNGKey(1), (num_hyp, batch, model.num_vertices, 3))
  reconstruct = jax.jit(
      lambda p, x, n: diffhand.reconstruct(
          model,
          p,
          x,
          jax.random.PRNGKey(2),
          num_steps=steps,
          num_hypotheses=num_hyp,
          schedule=schedule,
          noise=n,
      )
  )
  out = reconstruct(params, images, noise)
  # The plain sampler, one hypothesis at a time, with the same starting noise.
  cond = model.apply({'params': params}, images, method=model.encode)

  def denoise_fn(x_t, t):
    return model.apply({'params': params}, cond, x_t, t, method=model.denoise)[0]

  plain = jax.jit(lambda x: diffusion.ddim_sample(denoise_fn, x, schedule, num_steps=steps))
  for k in range(num_hyp):
    np.testing.assert_allclose(
        np.asarray(out['vertices'][:, k]), np.asarray(plain(noise[k])), atol=2e-5, rtol=1e-4
    )
  # Different noise gives different hypotheses, so the spread is real, and the summaries agree.
  assert float(jnp.abs(out['vertices'][:, 0] - out['vertices'][:, 1]).max()) > 1e-4
  np.testing.assert_allclose(
      np.asarray(out['vertices_std']),
      hypotheses.per_vertex_std(np.asarray(out['vertices'])),
      atol=1e-5,
  )
  np.testing.assert_allclose(
      np.asarray(out['vertices_mean']),
      hypotheses.aggregate(np.asarray(out['vertices']), 'mean'),
      atol=1e-5,
  )


def _rotation_about(axis, angle):
  from scipy.spatial.transform import Rotation

  return Rotation.from_rotvec(
      np.asarray(axis, np.float64) / np.linalg.norm(axis) * angle
  ).as_matrix()


def test_spread_of_identical_hypotheses_is_zero():
  rng = np.random.default_rng(8)
  mesh = rng.normal(0, 0.03, (2, 1, 778, 3))
  for hyps in (mesh, np.repeat(mesh, 4, axis=1)):  # K = 1, and K = 4 copies
    scores = hypotheses.spread(hyps)
    for name in ('total', 'articulation', 'articulation_per_vertex'):
      np.testing.assert_allclose(scores[name], 0.0, atol=1e-12)
    np.testing.assert_allclose(scores['orientation'], 0.0, atol=1e-6)  # arccos near 1: ~1e-8 rad
    np.testing.assert_allclose(scores['aligned_mean'], mesh[:, 0], atol=1e-12)


def test_spread_of_rotated_copies_is_orientation_only():
  # K = 3 copies of one mesh turned by -θ, 0 and +θ about one axis through the origin. The unturned copy
  # is the medoid, every copy aligns onto it exactly, so the aligned mean is that copy and the alignment
  # angles are θ, 0, θ: orientation 2θ/3, articulation 0, while the raw spread is large.
  rng = np.random.default_rng(9)
  mesh = rng.normal(0, 0.03, (778, 3))
  theta = np.radians(40.0)
  turns = [_rotation_about([1.0, 2.0, 0.5], angle) for angle in (-theta, 0.0, theta)]
  hyps = np.stack([mesh @ turn.T for turn in turns])[None]
  scores = hypotheses.spread(hyps)
  assert scores['orientation'][0] == pytest.approx(2 * theta / 3, abs=1e-9)
  np.testing.assert_allclose(scores['articulation'], 0.0, atol=1e-12)
  np.testing.assert_allclose(scores['articulation_per_vertex'], 0.0, atol=1e-12)
  assert scores['total'][0] > 0.005  # metres: the raw per-vertex spread sees the turns
  np.testing.assert_allclose(scores['aligned_mean'][0], hyps[0, 1], atol=1e-12)
  # Moving all of them together changes no score.
  moved = hypotheses.spread(hyps + rng.normal(size=3))
  for name in ('orientation', 'articulation', 'total'):
    np.testing.assert_allclose(moved[name], scores[name], atol=1e-9)


def test_spread_of_a_stretch_is_articulation_only_and_rotation_invariant():
  # An octahedron (±a on each axis) stretched by +δ and by -δ along x: the best rigid alignment of either
  # onto the other, and onto the unstretched mean, is the identity (a diagonal, positive cross-
  # covariance). So 2 of the 6 vertices are off by δ in both hypotheses: articulation = 2δ / 6 per
  # hypothesis, per-vertex δ at the x tips and 0 elsewhere, orientation 0.
  a, delta = 0.05, 0.004
  octahedron = np.concatenate([np.eye(3), -np.eye(3)]) * a
  stretch = np.zeros((6, 3))
  stretch[[0, 3], 0] = [delta, -delta]
  hyps = np.stack([octahedron + stretch, octahedron - stretch])[None]
  scores = hypotheses.spread(hyps)
  assert scores['articulation'][0] == pytest.approx(delta / 3, rel=1e-9)
  np.testing.assert_allclose(
      scores['articulation_per_vertex'][0], [delta, 0, 0, delta, 0, 0], atol=1e-12
  )
  assert scores['orientation'][0] == pytest.approx(0.0, abs=1e-6)
  # Turn each hypothesis by its own rotation: articulation stays, orientation becomes half the angle
  # between the two turns (hypothesis 0 is the medoid by the tie rule, so the mean keeps its pose).
  turn_0 = _rotation_about([0.0, 0.0, 1.0], 0.3)
  turn_1 = _rotation_about([1.0, 1.0, 0.0], -0.5)
  turned = np.stack([hyps[0, 0] @ turn_0.T, hyps[0, 1] @ turn_1.T])[None]
  relative = np.arccos((np.trace(turn_0 @ turn_1.T) - 1) / 2)
  scores = hypotheses.spread(turned)
  assert scores['articulation'][0] == pytest.approx(delta / 3, rel=1e-9)
  assert scores['orientation'][0] == pytest.approx(relative / 2, abs=1e-9)
  assert hypotheses.UNCERTAINTY_SCORE in hypotheses.UNCERTAINTY_SCORES


def test_spread_with_the_callers_aligned_mean_equals_spread_alone():
  rng = np.random.default_rng(7)
  vertices = rng.normal(size=(3, 4, 30, 3))
  alone = hypotheses.spread(vertices)
  given = hypotheses.spread(vertices, mean=hypotheses.aligned_mean(vertices))
  for key in alone:
    np.testing.assert_array_equal(alone[key], given[key], err_msg=key)
  with pytest.raises(ValueError, match='mean must be'):
    hypotheses.spread(vertices, mean=np.zeros((3, 29, 3)))
