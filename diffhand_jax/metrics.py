"""Hand mesh metrics, computed as the benchmarks' official evaluation code computes them.

Inputs are numpy-convertible arrays in **metres**; reported errors are in **millimetres**; AUC and
F-scores lie in [0, 1]. Everything runs in float64 (the official scripts read JSON into float64) and is
vectorised over the batch, so a whole evaluation split scores in seconds.

FreiHAND / HO-3D (``evaluate``), following ``eval.py`` and ``utils/eval_util.py`` of lmb-freiburg/freihand:

* ``align_w_scale``: centre both point sets by their means, divide each by its Frobenius norm + 1e-8,
  ``R, s = scipy.linalg.orthogonal_procrustes(gt_n, pred_n)``, aligned = (pred_n @ R.T) * s * ||gt_c|| +
  mean(gt). No reflection fix: R may be a reflection. Joints and vertices are aligned separately.
* PCK counts a distance ``<=`` the threshold; AUC integrates PCK over ``linspace(0, 50 mm, 100)`` with the
  trapezoid rule, normalised by the same integral of ones, per keypoint, then averaged over keypoints.
* F@5 mm / F@15 mm on aligned vertices: d1 = for each GT vertex the distance to the nearest predicted
  vertex, d2 = the other way round; P = mean(d1 < th), R = mean(d2 < th) (strictly less);
  F = 2PR / (P + R), or 0 when P + R = 0; averaged over samples.

Where this differs from the FreiHAND script (docs/design.md §6): MPJPE / MPVPE subtract each mesh's own wrist
(joint 0 of its 21-order joints; vertices use the joints' wrist) rather than comparing absolute camera-frame
positions, because the model predicts root-relative meshes.

DexYCB (``evaluate_dexycb``), following HandOccNet's ``DEX_YCB.evaluate`` and ``rigid_align``: root-relative
MPJPE, and PA-MPJPE after Umeyama similarity alignment *with* the reflection fix (det R = +1).

Because every per-sample quantity here is a mean over keypoints and the dataset AUC is linear in the
per-sample PCK curves, the dataset score equals the mean of the per-sample scores; ``evaluate`` is
literally the mean of ``evaluate_per_sample``.

The alignments live in ``geometry/alignment.py`` (with the input checks these metrics share) and are
re-exported here. K hypotheses per image are scored against the ground truth by ``score_hypotheses``,
``oracle_best`` (best-of-K) and ``summarize_hypotheses``; ``geometry/hypotheses.py`` aggregates them.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from diffhand_jax.geometry import alignment, conventions, hypotheses

NUM_JOINTS = 21
ROOT_JOINT = 0  # the wrist in FreiHAND/OpenPose 21-order
AUC_MIN_M, AUC_MAX_M, AUC_STEPS = (
    0.0,
    0.05,
    100,
)  # 0-50 mm in 100 thresholds, as EvalUtil.get_measures
F_THRESHOLDS_M = (0.005, 0.015)  # F@5 mm and F@15 mm
METRIC_KEYS = ('mpjpe', 'pa_mpjpe', 'mpvpe', 'pa_mpvpe', 'pa_auc_j', 'pa_auc_v', 'pa_f5', 'pa_f15')
_MM_PER_M = 1000.0
_NN_CHUNK = 256  # samples per k-d tree in the F-score search (bounds memory, keeps trees small)


# ---------------------------------------------------------------------------------------------------
# Input checks (the per-array ones are alignment.as_points and alignment.check_same_shape)
# ---------------------------------------------------------------------------------------------------


def _check_same_batch(func: str, named: dict[str, np.ndarray]) -> None:
  sizes = {name: array.shape[0] for name, array in named.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f'metrics.{func}: all inputs need the same batch size, got {sizes}')


# ---------------------------------------------------------------------------------------------------
# Alignment (geometry/alignment.py; these names are public here since the first release)
# ---------------------------------------------------------------------------------------------------

align_w_scale = alignment.align_w_scale
align_w_scale_batch = alignment.align_w_scale_batch
align_umeyama = alignment.align_umeyama
align_umeyama_batch = alignment.align_umeyama_batch
rigid_transform_batch = alignment.rigid_transform_batch
align_rigid_batch = alignment.align_rigid_batch


# ---------------------------------------------------------------------------------------------------
# Distances, PCK / AUC, F-score
# ---------------------------------------------------------------------------------------------------


def point_distances(gt, pred) -> np.ndarray:
  """Euclidean distance of corresponding points, (B, K, 3) each -> (B, K), in the inputs' units."""
  return np.sqrt(np.sum(np.square(np.asarray(gt, np.float64) - np.asarray(pred, np.float64)), -1))


def pa_mpjpe(pred_joints, gt_joints) -> np.ndarray:
  """PA-MPJPE per sample (B,) in mm: the mean joint distance after aligning each prediction (B, J, 3)
  to its ground truth (B, J, 3) by scale, rotation and translation (`alignment.align_w_scale_batch`),
  as in `evaluate_per_sample`. Both in metres."""
  gt = np.asarray(gt_joints, np.float64)
  aligned = alignment.align_w_scale_batch(gt, np.asarray(pred_joints, np.float64))
  return point_distances(gt, aligned).mean(-1) * _MM_PER_M


def auc_thresholds(
    val_min: float = AUC_MIN_M, val_max: float = AUC_MAX_M, steps: int = AUC_STEPS
) -> np.ndarray:
  """The PCK thresholds of EvalUtil.get_measures: linspace(val_min, val_max, steps), metres."""
  return np.linspace(val_min, val_max, steps)


def pck_curve(distances, thresholds=None) -> np.ndarray:
  """PCK (fraction of distances <= t) per threshold, over all samples, per keypoint: (K, T).

  `distances` (B, K) in metres. Mirrors EvalUtil._get_pck; for plots and small sets (it is (B, K, T)
  in memory).
  """
  thresholds = auc_thresholds() if thresholds is None else np.asarray(thresholds, np.float64)
  distances = np.asarray(distances, np.float64)
  return np.mean(distances[..., None] <= thresholds, axis=0)


def auc_per_sample(
    distances, val_min: float = AUC_MIN_M, val_max: float = AUC_MAX_M, steps: int = AUC_STEPS
) -> np.ndarray:
  """Per-sample PCK AUC: (B, K) distances in metres -> (B,), each the mean over keypoints.

  For one distance e, PCK(t) = [e <= t] is a step in t, so its trapezoid integral over the thresholds is
  the sum of the trapezoid weights of the thresholds t >= e. The mean of these over samples equals
  EvalUtil's AUC (trapz per keypoint, normalised, then averaged over keypoints), because it is linear in
  the PCK curve. Memory stays (B, K).
  """
  thresholds = auc_thresholds(val_min, val_max, steps)
  distances = np.asarray(distances, np.float64)
  # np.trapezoid(y, x) == sum_i y_i * weight_i with these weights.
  spacing = np.diff(thresholds)
  weights = np.zeros_like(thresholds)
  weights[:-1] += spacing / 2
  weights[1:] += spacing / 2
  norm_factor = weights.sum()  # == np.trapezoid(ones, thresholds)
  weights_from = np.concatenate([np.cumsum(weights[::-1])[::-1], [0.0]])  # sum of weights[i:]
  first_counted = np.searchsorted(thresholds, distances, side='left')  # first i with t_i >= e
  return np.mean(weights_from[first_counted] / norm_factor, axis=-1)


def nearest_distances(points_from, points_to) -> np.ndarray:
  """For each point of `points_from` (B, N, 3), the distance to the nearest of `points_to` (B, M, 3).

  Returns (B, N), float64, in the inputs' units. Vectorised over the batch: each chunk of samples is laid
  out on a 3D grid of cells far enough apart that a point's nearest neighbour is always in its own sample,
  and one k-d tree answers the whole chunk. The distance is then recomputed from the original coordinates
  (sqrt of the summed squared differences, as Open3D's KD-tree search returns it).
  """
  points_from = np.asarray(points_from, np.float64)
  points_to = np.asarray(points_to, np.float64)
  out = np.empty(points_from.shape[:2], np.float64)
  for start in range(0, points_from.shape[0], _NN_CHUNK):
    chunk = slice(start, start + _NN_CHUNK)
    out[chunk] = _nearest_distances_chunk(points_from[chunk], points_to[chunk])
  return out


def _nearest_distances_chunk(points_from: np.ndarray, points_to: np.ndarray) -> np.ndarray:
  batch, num_from, _ = points_from.shape
  centre = points_to.mean(1, keepdims=True)
  from_c, to_c = points_from - centre, points_to - centre
  radius = max(np.abs(from_c).max(), np.abs(to_c).max())
  # Within a sample every distance is <= 2*sqrt(3)*radius; across cells it is >= spacing - 2*radius.
  spacing = 8.0 * radius + 1.0
  side = int(np.ceil(batch ** (1.0 / 3.0)))
  index = np.arange(batch)
  cells = np.stack([index % side, (index // side) % side, index // (side * side)], 1)
  offsets = (cells * spacing)[:, None, :]
  tree = cKDTree((to_c + offsets).reshape(-1, 3))
  _, nearest = tree.query((from_c + offsets).reshape(-1, 3), k=1, workers=-1)
  nearest_points = points_to.reshape(-1, 3)[nearest].reshape(batch, num_from, 3)
  return np.sqrt(np.sum(np.square(points_from - nearest_points), -1))


def fscore(gt, pred, thresholds: Sequence[float] = F_THRESHOLDS_M) -> np.ndarray:
  """Per-sample F-scores as FreiHAND's `calculate_fscore`: gt (B, N, 3), pred (B, M, 3) -> (B, T).

  Thresholds in the inputs' units (metres by default: 5 mm and 15 mm). A point counts when its
  nearest-neighbour distance is strictly below the threshold.
  """
  gt = alignment.as_points('fscore', 'gt', gt, batched=True)
  pred = alignment.as_points('fscore', 'pred', pred, batched=True)
  _check_same_batch('fscore', {'gt': gt, 'pred': pred})
  return _fscore(gt, pred, thresholds)


def _fscore(gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
  gt_to_pred = nearest_distances(gt, pred)  # d1 in the official script
  pred_to_gt = nearest_distances(pred, gt)  # d2
  thresholds = np.asarray(thresholds, np.float64)
  precision = np.mean(gt_to_pred[..., None] < thresholds, axis=1)
  recall = np.mean(pred_to_gt[..., None] < thresholds, axis=1)
  total = precision + recall
  return np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------


def _check_eval_inputs(func: str, pred_joints, gt_joints, pred_verts, gt_verts):
  pred_joints = alignment.as_points(
      func, 'pred_joints', pred_joints, batched=True, num_points=NUM_JOINTS
  )
  gt_joints = alignment.as_points(func, 'gt_joints', gt_joints, batched=True, num_points=NUM_JOINTS)
  named = {'pred_joints': pred_joints, 'gt_joints': gt_joints}
  if pred_verts is not None or gt_verts is not None:
    if pred_verts is None or gt_verts is None:
      raise ValueError(f'metrics.{func}: give both pred_verts and gt_verts, or neither')
    pred_verts = alignment.as_points(func, 'pred_verts', pred_verts, batched=True)
    gt_verts = alignment.as_points(func, 'gt_verts', gt_verts, batched=True)
    alignment.check_same_shape(func, ('pred_verts', 'gt_verts'), (pred_verts, gt_verts))
    named.update(pred_verts=pred_verts, gt_verts=gt_verts)
  _check_same_batch(func, named)
  return pred_joints, gt_joints, pred_verts, gt_verts


def _root_relative(points: np.ndarray, joints: np.ndarray) -> np.ndarray:
  return points - joints[:, ROOT_JOINT : ROOT_JOINT + 1]


def evaluate_per_sample(pred_joints, gt_joints, pred_verts, gt_verts) -> dict[str, np.ndarray]:
  """FreiHAND/HO-3D metrics per sample: a dict of float64 (B,) arrays with the keys of `METRIC_KEYS`.

  pred_joints, gt_joints: (B, 21, 3) metres, 21-order (wrist first); pred_verts, gt_verts: (B, N, 3)
  metres (N = 778 for MANO). Errors in mm. `evaluate` is the mean of these.
  """
  return _evaluate_per_sample('evaluate_per_sample', pred_joints, gt_joints, pred_verts, gt_verts)


def _evaluate_per_sample(func: str, pred_joints, gt_joints, pred_verts, gt_verts):
  pred_joints, gt_joints, pred_verts, gt_verts = _check_eval_inputs(
      func, pred_joints, gt_joints, pred_verts, gt_verts
  )
  joint_err = point_distances(
      _root_relative(gt_joints, gt_joints), _root_relative(pred_joints, pred_joints)
  )
  vert_err = point_distances(
      _root_relative(gt_verts, gt_joints), _root_relative(pred_verts, pred_joints)
  )
  joints_aligned = alignment.align_w_scale_batch(gt_joints, pred_joints)
  verts_aligned = alignment.align_w_scale_batch(gt_verts, pred_verts)
  joint_err_pa = point_distances(gt_joints, joints_aligned)
  vert_err_pa = point_distances(gt_verts, verts_aligned)
  f_scores = _fscore(gt_verts, verts_aligned, F_THRESHOLDS_M)
  return {
      'mpjpe': joint_err.mean(-1) * _MM_PER_M,
      'pa_mpjpe': joint_err_pa.mean(-1) * _MM_PER_M,
      'mpvpe': vert_err.mean(-1) * _MM_PER_M,
      'pa_mpvpe': vert_err_pa.mean(-1) * _MM_PER_M,
      'pa_auc_j': auc_per_sample(joint_err_pa),
      'pa_auc_v': auc_per_sample(vert_err_pa),
      'pa_f5': f_scores[:, 0],
      'pa_f15': f_scores[:, 1],
  }


def _mean_of(per_sample: dict[str, np.ndarray]) -> dict[str, float]:
  return {key: float(np.mean(values)) for key, values in per_sample.items()}


def evaluate(pred_joints, gt_joints, pred_verts, gt_verts) -> dict[str, float]:
  """FreiHAND/HO-3D metrics over a batch, as Python floats.

  pred_joints, gt_joints: (B, 21, 3); pred_verts, gt_verts: (B, 778, 3); metres, camera frame.
  Keys: mpjpe, pa_mpjpe, mpvpe, pa_mpvpe (mm), pa_auc_j, pa_auc_v (AUC over 0-50 mm, in [0, 1]),
  pa_f5, pa_f15 (F-scores of the aligned vertices at 5 and 15 mm, in [0, 1]).
  """
  return _mean_of(_evaluate_per_sample('evaluate', pred_joints, gt_joints, pred_verts, gt_verts))


# ---------------------------------------------------------------------------------------------------
# Which side of the hand faces the camera
# ---------------------------------------------------------------------------------------------------


def palm_normal(joints) -> np.ndarray:
  """The unit normal of the palm plane through the wrist, index MCP and little MCP: (..., 21, 3) →
  (..., 3), n = (index − wrist) × (little − wrist) (`conventions.orientation_frame`'s second half).

  For a right hand (and a left hand mirrored into one, as the model frame holds it) n points out of the
  palm, so in the camera frame n_z < 0 means the palm faces the camera.
  """
  joints = np.asarray(joints, np.float64)
  if joints.ndim < 2 or joints.shape[-2:] != (NUM_JOINTS, 3):
    raise ValueError(f'palm_normal: joints must have shape (..., 21, 3), got {joints.shape}')
  return conventions.orientation_frame(joints)[..., 3:]


def palm_facing_per_sample(pred_joints, gt_joints) -> np.ndarray:
  """Whether the predicted palm faces the camera exactly when the true one does: (B, 21, 3) twice, camera
  orientation (root-relative is fine), 21-order → bool (B,), sign(n_z) of `palm_normal` equal.

  The mean is `results.json`'s `palm_facing_agreement`: 0.5 is chance, 1 means the model never mistakes
  the palm for the back.
  """
  pred_joints = np.asarray(pred_joints, np.float64)
  gt_joints = np.asarray(gt_joints, np.float64)
  alignment.check_same_shape(
      'palm_facing_per_sample', ('pred_joints', 'gt_joints'), (pred_joints, gt_joints)
  )
  return (palm_normal(pred_joints)[..., 2] < 0) == (palm_normal(gt_joints)[..., 2] < 0)


def evaluate_dexycb_per_sample(
    pred_joints, gt_joints, pred_verts=None, gt_verts=None
) -> dict[str, np.ndarray]:
  """DexYCB metrics per sample, as HandOccNet reports them: dict of float64 (B,) arrays.

  mpjpe: root-relative (each set minus its own wrist), mm. pa_mpjpe: after Umeyama alignment with the
  reflection fix, mm. pa_auc_j as in `evaluate` but on those aligned joints. With vertices (B, N, 3) also
  mpvpe, pa_mpvpe, pa_auc_v, pa_f5 and pa_f15, the vertices aligned the same way, so the keys match
  `evaluate`.
  """
  return _evaluate_dexycb_per_sample(
      'evaluate_dexycb_per_sample', pred_joints, gt_joints, pred_verts, gt_verts
  )


def _evaluate_dexycb_per_sample(func: str, pred_joints, gt_joints, pred_verts, gt_verts):
  pred_joints, gt_joints, pred_verts, gt_verts = _check_eval_inputs(
      func, pred_joints, gt_joints, pred_verts, gt_verts
  )
  joint_err = point_distances(
      _root_relative(gt_joints, gt_joints), _root_relative(pred_joints, pred_joints)
  )
  joint_err_pa = point_distances(gt_joints, alignment.align_umeyama_batch(gt_joints, pred_joints))
  out = {
      'mpjpe': joint_err.mean(-1) * _MM_PER_M,
      'pa_mpjpe': joint_err_pa.mean(-1) * _MM_PER_M,
      'pa_auc_j': auc_per_sample(joint_err_pa),
  }
  if pred_verts is not None:
    vert_err = point_distances(
        _root_relative(gt_verts, gt_joints), _root_relative(pred_verts, pred_joints)
    )
    verts_aligned = alignment.align_umeyama_batch(gt_verts, pred_verts)
    vert_err_pa = point_distances(gt_verts, verts_aligned)
    f_scores = _fscore(gt_verts, verts_aligned, F_THRESHOLDS_M)
    out.update(
        {
            'mpvpe': vert_err.mean(-1) * _MM_PER_M,
            'pa_mpvpe': vert_err_pa.mean(-1) * _MM_PER_M,
            'pa_auc_v': auc_per_sample(vert_err_pa),
            'pa_f5': f_scores[:, 0],
            'pa_f15': f_scores[:, 1],
        }
    )
  return out


def evaluate_dexycb(pred_joints, gt_joints, pred_verts=None, gt_verts=None) -> dict[str, float]:
  """DexYCB metrics over a batch (mean of `evaluate_dexycb_per_sample`), as Python floats."""
  return _mean_of(
      _evaluate_dexycb_per_sample('evaluate_dexycb', pred_joints, gt_joints, pred_verts, gt_verts)
  )


# ---------------------------------------------------------------------------------------------------
# Several hypotheses per image against the ground truth (geometry/hypotheses.py aggregates them)
# ---------------------------------------------------------------------------------------------------

# Metrics where a larger value is better (all others are errors).
HIGHER_IS_BETTER = frozenset({'pa_auc_j', 'pa_auc_v', 'pa_f5', 'pa_f15'})


def _hypothesis_joints(vertices: np.ndarray, joint_regressor: Any) -> np.ndarray:
  regressor = np.asarray(joint_regressor, np.float64)
  if regressor.ndim != 2 or regressor.shape[1] != vertices.shape[-2]:
    raise ValueError(
        f'metrics: joint_regressor must be (21, {vertices.shape[-2]}), ' f'got {regressor.shape}'
    )
  return conventions.regress_joints(vertices, regressor)


def score_hypotheses(
    vertices: Any, gt_vertices: Any, gt_joints: Any, joint_regressor: Any
) -> dict[str, np.ndarray]:
  """`evaluate_per_sample` of every hypothesis against its image's ground truth.

  vertices (B, K, N, 3), gt_vertices (B, N, 3), gt_joints (B, 21, 3), all metres; joint_regressor
  (21, N) gives the predicted joints. Returns {metric: (B, K)}.
  """
  vertices = hypotheses.check_hypotheses('score_hypotheses', vertices, module='metrics')
  batch, num_hyp, num_vertices, _ = vertices.shape
  gt_vertices = np.asarray(gt_vertices, np.float64)
  gt_joints = np.asarray(gt_joints, np.float64)
  if gt_vertices.shape != (batch, num_vertices, 3):
    raise ValueError(
        f'metrics.score_hypotheses: gt_vertices must be {(batch, num_vertices, 3)}, '
        f'got {gt_vertices.shape}'
    )
  if gt_joints.ndim != 3 or gt_joints.shape[0] != batch:
    raise ValueError(
        f'metrics.score_hypotheses: gt_joints must be (B={batch}, 21, 3), ' f'got {gt_joints.shape}'
    )
  flat = vertices.reshape(batch * num_hyp, num_vertices, 3)
  per_sample = evaluate_per_sample(
      _hypothesis_joints(flat, joint_regressor),
      np.repeat(gt_joints, num_hyp, axis=0),
      flat,
      np.repeat(gt_vertices, num_hyp, axis=0),
  )
  return {key: value.reshape(batch, num_hyp) for key, value in per_sample.items()}


def oracle_best(
    vertices: Any,
    gt_vertices: Any,
    gt_joints: Any,
    joint_regressor: Any,
    *,
    metric: str = 'pa_mpvpe',
) -> dict[str, np.ndarray]:
  """Best-of-K: for each image, the hypothesis that scores best on `metric` against the ground truth.

  An upper bound on what any aggregation could reach (it peeks at the ground truth). Returns
  {'index': (B,) int, 'errors': (B, K) the metric of every hypothesis, 'best': (B,) the chosen metric,
  'per_sample': {metric: (B,)} every metric of the chosen hypothesis}.
  """
  scores = score_hypotheses(vertices, gt_vertices, gt_joints, joint_regressor)
  if metric not in scores:
    raise ValueError(f'metrics.oracle_best: metric must be one of {sorted(scores)}, got {metric!r}')
  values = scores[metric]
  index = np.argmax(values, -1) if metric in HIGHER_IS_BETTER else np.argmin(values, -1)
  rows = np.arange(len(index))
  return {
      'index': index,
      'errors': values,
      'best': values[rows, index],
      'per_sample': {key: value[rows, index] for key, value in scores.items()},
  }


def summarize_hypotheses(
    vertices: Any,
    gt_vertices: Any,
    gt_joints: Any,
    joint_regressor: Any,
    *,
    method: str = 'mean',
    oracle_metric: str = 'pa_mpvpe',
    mesh: Any = None,
    mesh_metrics: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
  """What an evaluation with K hypotheses reports, from (B, K, N, 3) predictions in metres.

  mesh (B, N, 3) and mesh_metrics (evaluate_per_sample of it): the `method` aggregate and its
  per-sample metrics where the caller has them already (evaluation does); None computes them here.

  Returns a JSON-ready dict:
    aggregated      `evaluate` of the `method` aggregate (the keys of `evaluate`)
    oracle          the same metrics of the best-of-K hypothesis, chosen by `oracle_metric`
    first           the same metrics of hypothesis 0 alone (what a K = 1 run would report)
    uncertainty_score  which of `hypotheses.spread`'s scores is the uncertainty
                    (`hypotheses.UNCERTAINTY_SCORE`)
    uncertainty_mm  its mean over the images, mm
    spearman        {metric: rank correlation of per-sample uncertainty with that per-sample error}
    spearman_by_score  {score: {'pa_mpvpe', 'mpvpe': rank correlation}} for every score of
                    `hypotheses.spread`
    num_hypotheses, method, oracle_metric
  and, under 'per_sample' (numpy arrays, not for JSON): uncertainty (B,) metres, every score of
  `hypotheses.spread` (B,), the aggregate's per-sample metrics, and the oracle's index.
  """
  vertices = hypotheses.check_hypotheses('summarize_hypotheses', vertices, module='metrics')
  if mesh is None:
    if mesh_metrics is not None:
      raise ValueError(
          'metrics.summarize_hypotheses: mesh_metrics were given without the mesh they describe; pass '
          'both or neither.'
      )
    mesh = hypotheses.aggregate(vertices, method)
  else:
    mesh = np.asarray(mesh, np.float64)
    if mesh.shape != vertices.shape[:1] + vertices.shape[2:]:
      raise ValueError(
          f'metrics.summarize_hypotheses: mesh {mesh.shape} is not one aggregate of the hypotheses '
          f'{vertices.shape}.'
      )
  per_sample = (
      dict(mesh_metrics)
      if mesh_metrics is not None
      else evaluate_per_sample(
          _hypothesis_joints(mesh, joint_regressor), gt_joints, mesh, gt_vertices
      )
  )
  oracle = oracle_best(vertices, gt_vertices, gt_joints, joint_regressor, metric=oracle_metric)
  first = evaluate_per_sample(
      _hypothesis_joints(vertices[:, 0], joint_regressor), gt_joints, vertices[:, 0], gt_vertices
  )
  scores = hypotheses.spread(vertices, mean=mesh if method == 'aligned_mean' else None)
  uncertainty = scores[hypotheses.UNCERTAINTY_SCORE]
  correlations = {
      key: hypotheses.uncertainty_error_correlation(uncertainty, per_sample[key])
      for key in ('pa_mpvpe', 'mpvpe', 'pa_mpjpe', 'mpjpe')
  }
  by_score = {
      name: {
          key: hypotheses.uncertainty_error_correlation(scores[name], per_sample[key])
          for key in ('pa_mpvpe', 'mpvpe')
      }
      for name in hypotheses.UNCERTAINTY_SCORES
  }
  return {
      'method': method,
      'num_hypotheses': int(vertices.shape[1]),
      'oracle_metric': oracle_metric,
      'aggregated': _mean_of(per_sample),
      'oracle': _mean_of(oracle['per_sample']),
      'first': _mean_of(first),
      'uncertainty_score': hypotheses.UNCERTAINTY_SCORE,
      'uncertainty_mm': float(uncertainty.mean() * 1000.0),
      'spearman': correlations,
      'spearman_by_score': by_score,
      'per_sample': {
          'uncertainty': uncertainty,
          'scores': {name: scores[name] for name in hypotheses.UNCERTAINTY_SCORES},
          'metrics': per_sample,
          'oracle_index': oracle['index'],
      },
  }


# ---------------------------------------------------------------------------------------------------
# Temporal metrics (one clip, frames in order)
# ---------------------------------------------------------------------------------------------------


def _second_difference(points: np.ndarray) -> np.ndarray:
  """P_{f+1} − 2 P_f + P_{f−1} for f = 1 .. F−2: (F, K, 3) → (F − 2, K, 3)."""
  return points[2:] - 2.0 * points[1:-1] + points[:-2]


def _clip_points(func: str, name: str, value) -> np.ndarray:
  array = alignment.as_points(func, name, value, batched=True)
  if array.shape[0] < 3:
    raise ValueError(
        f'metrics.{func}: {name} needs at least 3 frames for a second difference, got '
        f'{array.shape[0]}'
    )
  return array


def acceleration_error(pred, gt) -> np.ndarray:
  """Per interior frame f = 1 .. F−2, the mean over points of ‖Δ²pred_f − Δ²gt_f‖, in mm/frame²,
  where Δ²P_f = P_{f+1} − 2 P_f + P_{f−1} (as HMMR and VIBE report it, on whatever points are given).

  pred, gt: (F, K, 3) metres, one clip's frames in order (e.g. root-relative vertices). Returns (F − 2,).
  """
  pred = _clip_points('acceleration_error', 'pred', pred)
  gt = _clip_points('acceleration_error', 'gt', gt)
  alignment.check_same_shape('acceleration_error', ('pred', 'gt'), (pred, gt))
  difference = _second_difference(pred) - _second_difference(gt)
  return np.linalg.norm(difference, axis=-1).mean(-1) * _MM_PER_M


def jitter(pred) -> np.ndarray:
  """Per interior frame f = 1 .. F−2, the mean over points of ‖Δ²pred_f‖, in mm/frame²: how much the
  prediction shakes, whatever the truth does. pred (F, K, 3) metres, frames in order. Returns (F − 2,).
  """
  pred = _clip_points('jitter', 'pred', pred)
  return np.linalg.norm(_second_difference(pred), axis=-1).mean(-1) * _MM_PER_M
