"""Tests of diffhand_jax.metrics against ports of the official evaluation code and hand-worked cases.

The references below are line-by-line ports, built here from scipy, of FreiHAND's `align_w_scale`,
`calculate_fscore` (Open3D's point-cloud distance replaced by scipy's k-d tree) and `EvalUtil`
(lmb-freiburg/freihand), and of HandOccNet's `rigid_transform_3D` / `rigid_align`.
"""

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from diffhand_jax import metrics

# ---------------------------------------------------------------------------------------------------
# Reference ports (one sample at a time, Python loops, as the official scripts run)
# ---------------------------------------------------------------------------------------------------


def official_align_w_scale(mtx1, mtx2):
  t1 = mtx1.mean(0)
  t2 = mtx2.mean(0)
  mtx1_t = mtx1 - t1
  mtx2_t = mtx2 - t2
  s1 = np.linalg.norm(mtx1_t) + 1e-8
  mtx1_t /= s1
  s2 = np.linalg.norm(mtx2_t) + 1e-8
  mtx2_t /= s2
  R, s = scipy.linalg.orthogonal_procrustes(mtx1_t, mtx2_t)
  mtx2_t = np.dot(mtx2_t, R.T) * s
  return mtx2_t * s1 + t1


def official_calculate_fscore(gt, pr, th):
  d1, _ = cKDTree(pr).query(gt)  # closest distance for each gt point
  d2, _ = cKDTree(gt).query(pr)  # closest distance for each predicted point
  recall = float(sum(d < th for d in d2)) / float(len(d2))
  precision = float(sum(d < th for d in d1)) / float(len(d1))
  if recall + precision > 0:
    return 2 * recall * precision / (recall + precision)
  return 0.0


class OfficialEvalUtil:
  """Port of FreiHAND's utils/eval_util.py EvalUtil (all keypoints visible)."""

  def __init__(self, num_kp=21):
    self.data = [list() for _ in range(num_kp)]
    self.num_kp = num_kp

  def feed(self, keypoint_gt, keypoint_pred):
    euclidean_dist = np.sqrt(np.sum(np.square(keypoint_gt - keypoint_pred), axis=1))
    for i in range(keypoint_gt.shape[0]):
      self.data[i].append(euclidean_dist[i])

  def get_measures(self, val_min, val_max, steps):
    thresholds = np.linspace(val_min, val_max, steps)
    norm_factor = np.trapezoid(np.ones_like(thresholds), thresholds)
    epe_mean_all, auc_all = [], []
    for part_id in range(self.num_kp):
      data = np.array(self.data[part_id])
      epe_mean_all.append(np.mean(data))
      pck_curve = np.array([np.mean((data <= t).astype('float')) for t in thresholds])
      auc_all.append(np.trapezoid(pck_curve, thresholds) / norm_factor)
    return np.mean(epe_mean_all), np.mean(auc_all)


def handoccnet_rigid_align(A, B):
  n, _ = A.shape
  centroid_A = np.mean(A, axis=0)
  centroid_B = np.mean(B, axis=0)
  H = np.dot(np.transpose(A - centroid_A), B - centroid_B) / n
  U, s, V = np.linalg.svd(H)
  R = np.dot(np.transpose(V), np.transpose(U))
  if np.linalg.det(R) < 0:
    s[-1] = -s[-1]
    V[2] = -V[2]
    R = np.dot(np.transpose(V), np.transpose(U))
  varP = np.var(A, axis=0).sum()
  c = 1 / varP * np.sum(s)
  t = -np.dot(c * R, np.transpose(centroid_A)) + np.transpose(centroid_B)
  return np.transpose(np.dot(c * R, np.transpose(A))) + t


def reference_evaluate(pred_joints, gt_joints, pred_verts, gt_verts):
  """The FreiHAND eval loop, with the wrist subtracted for the unaligned errors (docs/design.md §6)."""
  joints_err, joints_al, verts_err, verts_al = (
      OfficialEvalUtil(21),
      OfficialEvalUtil(21),
      OfficialEvalUtil(gt_verts.shape[1]),
      OfficialEvalUtil(gt_verts.shape[1]),
  )
  f5, f15 = [], []
  for pj, gj, pv, gv in zip(pred_joints, gt_joints, pred_verts, gt_verts):
    joints_err.feed(gj - gj[0], pj - pj[0])
    verts_err.feed(gv - gj[0], pv - pj[0])
    joints_al.feed(gj, official_align_w_scale(gj, pj))
    aligned_verts = official_align_w_scale(gv, pv)
    verts_al.feed(gv, aligned_verts)
    f5.append(official_calculate_fscore(gv, aligned_verts, 0.005))
    f15.append(official_calculate_fscore(gv, aligned_verts, 0.015))
  mpjpe, _ = joints_err.get_measures(0.0, 0.05, 100)
  pa_mpjpe, pa_auc_j = joints_al.get_measures(0.0, 0.05, 100)
  mpvpe, _ = verts_err.get_measures(0.0, 0.05, 100)
  pa_mpvpe, pa_auc_v = verts_al.get_measures(0.0, 0.05, 100)
  return {
      'mpjpe': mpjpe * 1000,
      'pa_mpjpe': pa_mpjpe * 1000,
      'mpvpe': mpvpe * 1000,
      'pa_mpvpe': pa_mpvpe * 1000,
      'pa_auc_j': pa_auc_j,
      'pa_auc_v': pa_auc_v,
      'pa_f5': np.mean(f5),
      'pa_f15': np.mean(f15),
  }


# ---------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------


def random_hands(rng, batch, num_points, noise_m=0.006):
  """GT clouds about 0.5 m in front of the camera, and predictions = similarity transform + noise."""
  gt = rng.normal(size=(batch, num_points, 3)) * 0.04 + np.array([0.0, 0.0, 0.5])
  rotations = Rotation.random(batch, random_state=rng.integers(1 << 31)).as_matrix()
  scales = rng.uniform(0.7, 1.4, size=(batch, 1, 1))
  shifts = rng.normal(size=(batch, 1, 3)) * 0.05
  pred = np.einsum('bij,bkj->bki', rotations, gt) * scales + shifts
  pred = pred + rng.normal(size=pred.shape) * noise_m
  return gt, pred


def random_eval_batch(rng, batch, num_verts):
  gt_joints, pred_joints = random_hands(rng, batch, 21)
  gt_verts, pred_verts = random_hands(rng, batch, num_verts)
  return pred_joints, gt_joints, pred_verts, gt_verts


# ---------------------------------------------------------------------------------------------------
# align_w_scale
# ---------------------------------------------------------------------------------------------------


def adversarial_pairs(rng):
  gt = rng.normal(size=(21, 3)) * 0.04 + np.array([0.0, 0.0, 0.5])
  return {
      'random': rng.normal(size=(21, 3)),
      'reflected': gt * np.array([-1.0, 1.0, 1.0]),
      'collapsed': np.tile(rng.normal(size=(1, 3)), (21, 1)),
      'identical': gt.copy(),
      'huge_scale': gt * 1e6 + 3.0,
      'tiny_scale': gt * 1e-6,
      'float32': (gt + rng.normal(size=gt.shape) * 0.01).astype(np.float32),
  }, gt


def test_align_w_scale_matches_official_port_on_random_and_adversarial_cases():
  rng = np.random.default_rng(0)
  preds, gt = adversarial_pairs(rng)
  for name, pred in preds.items():
    expected = official_align_w_scale(gt.copy(), pred.astype(np.float64))
    np.testing.assert_allclose(metrics.align_w_scale(gt, pred), expected, atol=1e-6, err_msg=name)
    batched = metrics.align_w_scale_batch(gt[None], pred[None])[0]
    np.testing.assert_allclose(batched, expected, atol=1e-6, err_msg=name)


def test_align_w_scale_batch_equals_per_sample_scipy():
  rng = np.random.default_rng(1)
  gt, pred = random_hands(rng, 64, 21, noise_m=0.02)
  expected = np.stack([official_align_w_scale(g.copy(), p.copy()) for g, p in zip(gt, pred)])
  np.testing.assert_allclose(metrics.align_w_scale_batch(gt, pred), expected, atol=1e-6)


def test_similarity_transformed_copy_aligns_to_zero_error():
  rng = np.random.default_rng(2)
  gt = rng.normal(size=(30, 3)) * 0.05
  rotation = Rotation.random(random_state=3).as_matrix()
  pred = 2.5 * gt @ rotation.T + np.array([0.3, -0.2, 1.0])
  # align_w_scale adds 1e-8 to the norms, which leaves a ~1e-8 relative scale error.
  np.testing.assert_allclose(metrics.align_w_scale(gt, pred), gt, atol=1e-7)
  np.testing.assert_allclose(metrics.align_umeyama(gt, pred), gt, atol=1e-12)


def test_reflection_is_aligned_by_freihand_but_not_by_dexycb_umeyama():
  rng = np.random.default_rng(4)
  gt = rng.normal(size=(21, 3)) * np.array([0.05, 0.03, 0.02])  # clearly non-planar
  mirrored = gt * np.array([1.0, 1.0, -1.0])
  # orthogonal_procrustes may return a reflection, so the mirror image is undone (up to the effect
  # of the 1e-8 added to the norms).
  np.testing.assert_allclose(metrics.align_w_scale(gt, mirrored), gt, atol=1e-7)
  # Umeyama with the reflection fix only rotates: the mirror image stays wrong.
  aligned = metrics.align_umeyama(gt, mirrored)
  assert np.linalg.norm(aligned - gt, axis=1).mean() > 1e-3
  np.testing.assert_allclose(aligned, handoccnet_rigid_align(mirrored, gt), atol=1e-9)
  # The result is a proper rotation (+ scale, translation) of the prediction: same handedness.
  centred_pred, centred_aligned = mirrored - mirrored.mean(0), aligned - aligned.mean(0)
  transform, *_ = np.linalg.lstsq(centred_pred, centred_aligned, rcond=None)
  assert np.linalg.det(transform) > 0


def test_umeyama_matches_handoccnet_port():
  rng = np.random.default_rng(5)
  gt, pred = random_hands(rng, 16, 21, noise_m=0.02)
  pred[3] *= np.array([-1.0, 1.0, 1.0])  # one reflected sample exercises the fix
  expected = np.stack([handoccnet_rigid_align(p.copy(), g.copy()) for g, p in zip(gt, pred)])
  np.testing.assert_allclose(metrics.align_umeyama_batch(gt, pred), expected, atol=1e-9)


def test_umeyama_collapsed_prediction_goes_to_gt_centroid():
  gt = np.random.default_rng(6).normal(size=(1, 21, 3))
  collapsed = np.ones((1, 21, 3))
  np.testing.assert_allclose(
      metrics.align_umeyama_batch(gt, collapsed),
      np.broadcast_to(gt.mean(1, keepdims=True), gt.shape),
      atol=1e-12,
  )


# ---------------------------------------------------------------------------------------------------
# F-score and AUC, hand-worked
# ---------------------------------------------------------------------------------------------------


def test_fscore_hand_worked_with_strict_threshold():
  th = 0.005
  # GT: 4 points. Pred: 3 points. Nearest distances chosen by hand; 0.005 is exactly representable as
  # a difference of 0.005 and 0, and sqrt(x*x) == x in IEEE arithmetic.
  gt = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
  pred = np.array(
      [
          [0.0, 0.001, 0.0],  # 1 mm from gt0
          [1.0, 0.0, 0.005],  # exactly th from gt1: NOT counted (strict <)
          [3.0, 0.0, 0.02],
      ]
  )  # 20 mm from gt3
  # d1 (gt -> pred): 0.001, 0.005, ~1.0, 0.02 -> precision = 1/4
  # d2 (pred -> gt): 0.001, 0.005, 0.02        -> recall = 1/3
  precision, recall = 1 / 4, 1 / 3
  expected_f5 = 2 * precision * recall / (precision + recall)
  # At 15 mm nothing changes except that the 5 mm pair now counts: precision 2/4, recall 2/3.
  expected_f15 = 2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3)
  got = metrics.fscore(gt[None], pred[None], thresholds=(th, 0.015))
  np.testing.assert_allclose(got, [[expected_f5, expected_f15]], atol=1e-12)
  # Just above the threshold, the 5 mm pair counts.
  got_above = metrics.fscore(gt[None], pred[None], thresholds=(np.nextafter(th, 1.0),))
  np.testing.assert_allclose(got_above, [[2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3)]], atol=1e-12)


def test_fscore_is_zero_when_nothing_matches_and_one_when_identical():
  gt = np.zeros((1, 5, 3)) + np.arange(5.0)[None, :, None]
  assert metrics.fscore(gt, gt + 0.5, (0.005,))[0, 0] == 0.0
  assert metrics.fscore(gt, gt, (0.005,))[0, 0] == 1.0


def test_fscore_matches_official_port_on_random_batches():
  rng = np.random.default_rng(7)
  gt, pred = random_hands(rng, 12, 778)
  aligned = metrics.align_w_scale_batch(gt, pred)
  got = metrics.fscore(gt, aligned, (0.005, 0.015))
  expected = [
      [official_calculate_fscore(g, a, t) for t in (0.005, 0.015)] for g, a in zip(gt, aligned)
  ]
  np.testing.assert_allclose(got, expected, atol=1e-12)
  assert 0.05 < got[:, 0].mean() < 0.95  # the data exercises both sides of the threshold


def test_nearest_distances_never_cross_samples():
  # Sample 1 sits where sample 0's nearest neighbours would be if samples were merged naively.
  a = np.array([[[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]]])
  b = np.array([[[1.0, 0.0, 0.0]], [[0.0, 0.0, 0.001]]])
  np.testing.assert_allclose(metrics.nearest_distances(a, b), [[1.0], [0.001]], atol=1e-15)


def trapezoid_auc_of_constant_error(error_m):
  """Closed form: PCK is 1 for thresholds t_i = 0.05 i / 99 >= e, 0 below; step h = 0.05 / 99.

  With i0 the first counted index, the trapezoid integral is h * ((99 - i0) + 1/2) for 0 < i0 <= 99
  (full intervals after i0 plus half of the interval that ends at i0), h * 99 for i0 = 0; the normaliser
  is 99 h.
  """
  i0 = int(np.ceil(error_m / (0.05 / 99) - 1e-9))
  if i0 <= 0:
    return 1.0
  if i0 > 99:
    return 0.0
  return ((99 - i0) + 0.5) / 99


@pytest.mark.parametrize(
    'error_mm, expected', [(0.0, 1.0), (25.0, 0.5), (10.0, 79.5 / 99), (60.0, 0.0)]
)
def test_auc_hand_worked(error_mm, expected):
  assert trapezoid_auc_of_constant_error(error_mm / 1000) == pytest.approx(expected)
  distances = np.full((3, 21), error_mm / 1000)
  np.testing.assert_allclose(metrics.auc_per_sample(distances), expected, atol=1e-12)


def test_auc_counts_a_distance_equal_to_a_threshold():
  thresholds = metrics.auc_thresholds()
  distances = np.full((1, 1), thresholds[50])  # PCK uses <=, so threshold 50 counts
  np.testing.assert_allclose(metrics.auc_per_sample(distances), (99 - 50 + 0.5) / 99, atol=1e-12)


def test_auc_matches_eval_util_port_on_random_errors():
  rng = np.random.default_rng(8)
  distances = np.abs(rng.normal(size=(40, 21)) * 0.02)
  util = OfficialEvalUtil(21)
  for row in distances:  # feed distances as points on the x axis
    util.feed(np.stack([row, 0 * row, 0 * row], 1), np.zeros((21, 3)))
  _, expected_auc = util.get_measures(0.0, 0.05, 100)
  assert metrics.auc_per_sample(distances).mean() == pytest.approx(expected_auc, abs=1e-9)


# ---------------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------------


def test_evaluate_matches_reference_loop():
  rng = np.random.default_rng(9)
  batch = random_eval_batch(rng, 6, 778)
  got = metrics.evaluate(*batch)
  expected = reference_evaluate(*batch)
  assert set(got) == set(metrics.METRIC_KEYS)
  for key in metrics.METRIC_KEYS:
    assert isinstance(got[key], float)
    assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def test_evaluate_is_mean_of_per_sample_and_batched_equals_loop():
  rng = np.random.default_rng(10)
  batch = random_eval_batch(rng, 5, 100)
  per_sample = metrics.evaluate_per_sample(*batch)
  means = metrics.evaluate(*batch)
  for key in metrics.METRIC_KEYS:
    assert per_sample[key].shape == (5,)
    assert means[key] == pytest.approx(per_sample[key].mean(), abs=1e-12)
    one_at_a_time = [metrics.evaluate(*(x[i : i + 1] for x in batch))[key] for i in range(5)]
    np.testing.assert_allclose(per_sample[key], one_at_a_time, atol=1e-9, err_msg=key)


def test_evaluate_hand_worked_errors():
  rng = np.random.default_rng(11)
  gt_joints = rng.normal(size=(2, 21, 3)) * 0.04 + 0.5
  gt_verts = rng.normal(size=(2, 50, 3)) * 0.04 + 0.5
  shift = np.array([0.1, -0.3, 0.2])  # a global translation: root-relative errors are zero
  pred_joints, pred_verts = gt_joints + shift, gt_verts + shift
  pred_joints[:, 5] += np.array([0.021, 0.0, 0.0])  # one non-root joint off by 21 mm -> 1 mm mean
  pred_verts[:, 7] += np.array([0.0, 0.05, 0.0])  # one vertex of 50 off by 50 mm -> 1 mm mean
  got = metrics.evaluate(pred_joints, gt_joints, pred_verts, gt_verts)
  assert got['mpjpe'] == pytest.approx(1.0, abs=1e-9)
  assert got['mpvpe'] == pytest.approx(1.0, abs=1e-9)
  perfect = metrics.evaluate(gt_joints * 2 + 1, gt_joints, gt_verts * 2 + 1, gt_verts)
  # Not exactly 0: align_w_scale's 1e-8 on the norms leaves a ~1e-8 relative scale error.
  assert perfect['pa_mpjpe'] == pytest.approx(0.0, abs=1e-4)
  assert perfect['pa_mpvpe'] == pytest.approx(0.0, abs=1e-4)
  # Errors of ~1e-9 m miss only the threshold t = 0 (PCK uses <=): AUC is at least (99 - 0.5) / 99.
  for key in ('pa_auc_j', 'pa_auc_v'):
    assert 98.5 / 99 - 1e-12 <= perfect[key] <= 1.0, key
  for key in ('pa_f5', 'pa_f15'):
    assert perfect[key] == 1.0, key


def test_evaluate_dexycb_matches_handoccnet_loop():
  rng = np.random.default_rng(12)
  pred_joints, gt_joints, pred_verts, gt_verts = random_eval_batch(rng, 8, 60)
  pred_joints[2] *= np.array([-1.0, 1.0, 1.0])
  got = metrics.evaluate_dexycb(pred_joints, gt_joints)
  mpjpe, pa_mpjpe = [], []
  for pj, gj in zip(pred_joints, gt_joints):  # HandOccNet's DEX_YCB.evaluate, in metres -> mm
    out = pj - pj[0] + gj[0]
    mpjpe.append(np.sqrt(np.sum((out - gj) ** 2, 1)).mean() * 1000)
    pa_mpjpe.append(np.sqrt(np.sum((handoccnet_rigid_align(out, gj) - gj) ** 2, 1)).mean() * 1000)
  assert got['mpjpe'] == pytest.approx(np.mean(mpjpe), abs=1e-6)
  assert got['pa_mpjpe'] == pytest.approx(np.mean(pa_mpjpe), abs=1e-6)
  with_verts = metrics.evaluate_dexycb(pred_joints, gt_joints, pred_verts, gt_verts)
  assert set(with_verts) == set(metrics.METRIC_KEYS)


def test_thousand_samples_score_without_python_loop_per_sample():
  rng = np.random.default_rng(13)
  batch = random_eval_batch(rng, 1000, 778)
  got = metrics.evaluate(*batch)
  assert all(np.isfinite(v) for v in got.values())
  assert 0.0 < got['pa_f5'] < got['pa_f15'] <= 1.0


# ---------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'bad_index, bad_value, match',
    [
        (
            0,
            np.zeros((2, 21, 2)),
            r'metrics.evaluate: pred_joints must have shape \(B, 21, 3\), got \(2, 21, 2\)',
        ),
        (1, np.zeros((2, 20, 3)), r'gt_joints must have shape \(B, 21, 3\), got \(2, 20, 3\)'),
        (2, np.zeros((2, 777, 3)), r'pred_verts and gt_verts must have the same shape'),
        (1, np.zeros((3, 21, 3)), r'evaluate: all inputs need the same batch size'),
        (2, np.zeros((778, 3)), r'pred_verts must have shape \(B, K, 3\)'),
    ],
)
def test_evaluate_rejects_wrong_shapes(bad_index, bad_value, match):
  inputs = [
      np.zeros((2, 21, 3)),
      np.zeros((2, 21, 3)),
      np.zeros((2, 778, 3)),
      np.zeros((2, 778, 3)),
  ]
  inputs[bad_index] = bad_value
  with pytest.raises(ValueError, match=match):
    metrics.evaluate(*inputs)


def test_rejects_nan_inputs_with_a_clear_message():
  gt = np.zeros((2, 21, 3))
  pred = np.zeros((2, 21, 3))
  pred[1, 4, 2] = np.nan
  verts = np.zeros((2, 30, 3))
  with pytest.raises(
      ValueError, match=r'pred_joints holds 1 NaN/inf value\(s\), in sample\(s\) \[1\]'
  ):
    metrics.evaluate(pred, gt, verts, verts)
  with pytest.raises(ValueError, match=r'align_w_scale: pred holds'):
    metrics.align_w_scale(gt[0], pred[1])
  with pytest.raises(ValueError, match=r'align_w_scale: gt and pred must have the same shape'):
    metrics.align_w_scale(gt[0], gt[0, :20])


def test_acceleration_error_and_jitter_hand_worked():
  rng = np.random.default_rng(0)
  frames = np.arange(6, dtype=np.float64)
  gt = rng.normal(size=(1, 4, 3)) * 0.05 + np.zeros((6, 1, 1))  # a still hand
  # Constant velocity adds no acceleration: an offset moving 2 mm per frame along y.
  drift = gt + np.array([0.0, 0.002, 0.0]) * frames[:, None, None]
  np.testing.assert_allclose(metrics.acceleration_error(drift, gt), 0.0, atol=1e-9)
  np.testing.assert_allclose(metrics.jitter(drift), 0.0, atol=1e-9)
  # x_f = c·f² has the second difference 2c in every frame: 2 · 1.5 mm = 3 mm/frame².
  parabola = gt + np.array([0.0015, 0.0, 0.0]) * frames[:, None, None] ** 2
  np.testing.assert_allclose(metrics.acceleration_error(parabola, gt), 3.0, rtol=1e-9)
  np.testing.assert_allclose(metrics.jitter(parabola), 3.0, rtol=1e-9)
  # Flicker ±ε: (−1)^{f+1} − 2(−1)^f + (−1)^{f−1} = −4(−1)^f, so 4ε = 4 mm/frame² (ε = 1 mm along z).
  flicker = gt + np.array([0.0, 0.0, 0.001]) * ((-1.0) ** frames)[:, None, None]
  errors = metrics.acceleration_error(flicker, gt)
  assert errors.shape == (4,)
  np.testing.assert_allclose(errors, 4.0, rtol=1e-9)
  # Jitter ignores the truth; the acceleration error subtracts it: the parabola followed exactly.
  np.testing.assert_allclose(metrics.acceleration_error(parabola, parabola), 0.0, atol=1e-12)
  with pytest.raises(ValueError, match='at least 3 frames'):
    metrics.jitter(gt[:2])
  with pytest.raises(ValueError, match='same shape'):
    metrics.acceleration_error(gt, gt[:5])


def _facing_hand(palm_to_camera: bool) -> np.ndarray:
  """Joints (21, 3) of a flat right hand, fingers up (-y), in the canonical view the synthetic data
  uses: palm to the camera means the index side on the image right (+x); turned about the finger axis
  to show the back, the index side goes to the left and the palm faces +z."""
  joints = np.zeros((21, 3))
  for finger, x in zip(range(5), (0.05, 0.03, 0.01, -0.01, -0.03)):  # thumb ... little
    for k in range(4):
      joints[1 + 4 * finger + k] = (x, -0.03 - 0.02 * k, 0.0)
  # The palm bulges towards the side it faces: the wrist sits a little behind the knuckles' plane.
  joints[0] = (0.0, 0.0, 0.01)
  if not palm_to_camera:
    joints = joints * np.array([-1.0, 1.0, -1.0])  # a half turn about the y (finger) axis
  return joints


def test_palm_normal_points_out_of_the_palm_of_a_right_hand():
  # Worked by hand: index MCP (0.03, -0.03, 0), little MCP (-0.03, -0.03, 0), wrist (0, 0, 0.01):
  # (0.03, -0.03, -0.01) x (-0.03, -0.03, -0.01) = (0, 0.0006, -0.0018) -> z < 0, towards the camera.
  normal = metrics.palm_normal(_facing_hand(True))
  np.testing.assert_allclose(normal, np.array([0.0, 0.0006, -0.0018]) / np.hypot(0.0006, 0.0018))
  assert metrics.palm_normal(_facing_hand(False))[2] > 0


def test_palm_facing_agreement_counts_matching_sides_and_ignores_in_plane_roll():
  palm, back = _facing_hand(True), _facing_hand(False)
  roll = Rotation.from_rotvec([0.0, 0.0, 2.0]).as_matrix()  # in-plane: keeps the side
  predicted = np.stack([palm @ roll.T, back, palm, back @ roll.T])
  truth = np.stack([palm, back, back, palm])
  np.testing.assert_array_equal(
      metrics.palm_facing_per_sample(predicted, truth), [True, True, False, False]
  )
  with pytest.raises(ValueError, match='same shape'):
    metrics.palm_facing_per_sample(predicted, truth[:2])
  with pytest.raises(ValueError, match=r'\(\.\.\., 21, 3\)'):
    metrics.palm_normal(np.zeros((4, 20, 3)))
