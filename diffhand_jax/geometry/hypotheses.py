"""Several hypotheses per image: aggregation, uncertainty, best-of-K oracle, and whether the
uncertainty means anything.

`models/diffhand.reconstruct(..., num_hypotheses=K)` samples K meshes per image (a vmap of the DDIM
sampler over the starting noise, the image encoded once). This module turns those (B, K, N, 3) samples
into one mesh per image and a per-vertex uncertainty, and scores them.

    out = diffhand.reconstruct(model, params, images, key, num_hypotheses=8)
    mesh = hypotheses.aggregate(out['vertices'], 'aligned_mean')    # (B, N, 3)
    sigma = hypotheses.per_vertex_std(out['vertices'])              # (B, N)
    summary = hypotheses.summarize(vertices_m, gt_vertices, gt_joints, joint_regressor)

Everything is numpy (float64) on the host, and works in any consistent unit; the scoring helpers take
metres (they call `metrics.evaluate_per_sample`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import scipy.stats

from diffhand_jax import metrics
from diffhand_jax.geometry import alignment, conventions

METHODS = ('mean', 'medoid', 'aligned_mean')
# Metrics where a larger value is better (all others are errors).
HIGHER_IS_BETTER = frozenset({'pa_auc_j', 'pa_auc_v', 'pa_f5', 'pa_f15'})


def _check_hypotheses(func: str, vertices: Any) -> np.ndarray:
  vertices = np.asarray(vertices, np.float64)
  if vertices.ndim != 4 or vertices.shape[-1] != 3 or vertices.shape[1] < 1:
    raise ValueError(
        f'hypotheses.{func}: vertices must have shape (B, K, N, 3) with K >= 1, '
        f'got {vertices.shape}'
    )
  if not np.all(np.isfinite(vertices)):
    raise ValueError(f'hypotheses.{func}: vertices hold non-finite values')
  return vertices


def pairwise_distances(vertices: Any) -> np.ndarray:
  """Mean per-vertex L2 distance between every pair of hypotheses: (B, K, N, 3) → (B, K, K)."""
  vertices = _check_hypotheses('pairwise_distances', vertices)
  diff = vertices[:, :, None] - vertices[:, None, :]  # (B, K, K, N, 3); K is small
  return np.sqrt(np.sum(np.square(diff), -1)).mean(-1)


def medoid_index(vertices: Any) -> np.ndarray:
  """Index (B,) of the hypothesis whose summed distance (mean per-vertex L2) to the others is smallest.

  Ties go to the lowest index (np.argmin), so K = 1 gives 0 and identical hypotheses give 0.
  """
  return np.argmin(pairwise_distances(vertices).sum(-1), axis=-1)


def rigid_align(source: Any, target: Any) -> np.ndarray:
  """The rotation and translation (no scale, no reflection) that best map ``source`` onto ``target`` in
  least squares (Kabsch, `alignment.align_rigid_batch`), applied to ``source``: (..., N, 3) and a target
  that broadcasts to it → (..., N, 3) float64."""
  source = np.asarray(source, np.float64)
  target = np.broadcast_to(np.asarray(target, np.float64), source.shape)
  points = source.shape[-2:]
  aligned = alignment.align_rigid_batch(
      target.reshape((-1,) + points), source.reshape((-1,) + points)
  )
  return aligned.reshape(source.shape)


def aligned_mean(vertices: Any, iterations: int = 3) -> np.ndarray:
  """The mean of K hypotheses after rigid alignment (a generalised Procrustes mean): (B, K, N, 3) →
  (B, N, 3) float64.

  Hypotheses of an ambiguous image can disagree mostly in global orientation (e.g. palm or back to the
  camera); a vertex-wise mean of such meshes is no hand at all. Here every hypothesis is rigidly aligned
  (`rigid_align`) to a reference, the aligned meshes are averaged, and the average becomes the next
  reference. The first reference is the medoid, so the result keeps the medoid's orientation and position;
  it averages only articulation and shape.
  """
  vertices = _check_hypotheses('aligned_mean', vertices)
  if iterations < 1:
    raise ValueError(f'hypotheses.aligned_mean: iterations must be >= 1, got {iterations}')
  reference = vertices[np.arange(len(vertices)), medoid_index(vertices)]  # (B, N, 3)
  for _ in range(iterations):
    reference = rigid_align(vertices, reference[:, None]).mean(axis=1)
  return reference


def aggregate(vertices: Any, method: str = 'mean') -> np.ndarray:
  """One mesh per image from K hypotheses: vertices (B, K, N, 3) → (B, N, 3) float64.

  'mean' averages the hypotheses vertex by vertex; 'medoid' returns the hypothesis with the smallest
  summed distance to the others (always one of the K, so always a mesh the model sampled);
  'aligned_mean' averages them after rigid alignment to each other (`aligned_mean`), so that
  disagreement in global orientation does not blur the hand.
  """
  vertices = _check_hypotheses('aggregate', vertices)
  if method == 'mean':
    return vertices.mean(axis=1)
  if method == 'medoid':
    index = medoid_index(vertices)
    return vertices[np.arange(len(vertices)), index]
  if method == 'aligned_mean':
    return aligned_mean(vertices)
  raise ValueError(f'hypotheses.aggregate: method must be one of {METHODS}, got {method!r}')


def per_vertex_std(vertices: Any) -> np.ndarray:
  """Per-vertex spread of the hypotheses: (B, K, N, 3) → (B, N).

  The root-mean-square over x, y, z of the per-coordinate population standard deviation over the K
  hypotheses (ddof = 0), i.e. sqrt(mean_c var_k(v_kc)); the same quantity as `reconstruct`'s
  `vertices_std`. 0 for K = 1.
  """
  vertices = _check_hypotheses('per_vertex_std', vertices)
  return np.sqrt(np.mean(np.var(vertices, axis=1), axis=-1))


def per_sample_uncertainty(vertices: Any) -> np.ndarray:
  """One uncertainty per image: the mean over vertices of `per_vertex_std`, (B, K, N, 3) → (B,)."""
  return per_vertex_std(vertices).mean(-1)


# The per-image uncertainty scores `spread` computes; `UNCERTAINTY_SCORE` is the one reported as
# `uncertainty` (in `predict` and results.json), chosen because it tracks the aligned error best
# (docs/inference.md, "What the uncertainty means").
UNCERTAINTY_SCORES = ('total', 'orientation', 'articulation')
UNCERTAINTY_SCORE = 'articulation'


def spread(
    vertices: Any, iterations: int = 3, *, mean: np.ndarray | None = None
) -> dict[str, np.ndarray]:
  """How K hypotheses disagree, split into global orientation and articulation: (B, K, N, 3) →

    total                     (B,)    `per_sample_uncertainty`: the raw per-vertex spread, averaged
    orientation               (B,)    radians, the mean angle of the rotation that rigidly aligns each
                                      hypothesis to their aligned mean (`aligned_mean`)
    articulation              (B,)    the mean over hypotheses and vertices of the distance that remains
                                      after that rigid alignment (the unit of ``vertices``)
    articulation_per_vertex   (B, N)  the root-mean-square over hypotheses of that distance, per vertex
    aligned_mean              (B, N, 3) the aligned mean itself

  Orientation spread is what an ambiguous view gives (palm or back?); articulation spread is doubt
  about the hand's shape itself, which is what the aligned errors (PA-MPVPE) measure. All are 0 for K = 1.

  ``mean``: the hypotheses' `aligned_mean` (B, N, 3) when the caller already has it; else computed here.
  """
  vertices = _check_hypotheses('spread', vertices)
  batch, num_hyp, num_vertices, _ = vertices.shape
  if mean is None:
    mean = aligned_mean(vertices, iterations)
  elif np.shape(mean) != (batch, num_vertices, 3):
    raise ValueError(
        f'hypotheses.spread: mean must be {(batch, num_vertices, 3)}, got {np.shape(mean)}'
    )
  flat = vertices.reshape(batch * num_hyp, num_vertices, 3)
  target = np.repeat(mean, num_hyp, axis=0)
  rotation, translation = alignment.rigid_transform_batch(target, flat)
  aligned = flat @ np.swapaxes(rotation, 1, 2) + translation[:, None]
  cosine = np.clip((np.trace(rotation, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
  angle = np.arccos(cosine).reshape(batch, num_hyp)
  residual = np.linalg.norm(aligned - target, axis=-1).reshape(batch, num_hyp, num_vertices)
  return {
      'total': per_sample_uncertainty(vertices),
      'orientation': angle.mean(axis=1),
      'articulation': residual.mean(axis=(1, 2)),
      'articulation_per_vertex': np.sqrt(np.mean(np.square(residual), axis=1)),
      'aligned_mean': mean,
  }


def _joints(vertices: np.ndarray, joint_regressor: Any) -> np.ndarray:
  regressor = np.asarray(joint_regressor, np.float64)
  if regressor.ndim != 2 or regressor.shape[1] != vertices.shape[-2]:
    raise ValueError(
        f'hypotheses: joint_regressor must be (21, {vertices.shape[-2]}), ' f'got {regressor.shape}'
    )
  return conventions.regress_joints(vertices, regressor)


def score_hypotheses(
    vertices: Any, gt_vertices: Any, gt_joints: Any, joint_regressor: Any
) -> dict[str, np.ndarray]:
  """`metrics.evaluate_per_sample` of every hypothesis against its image's ground truth.

  vertices (B, K, N, 3), gt_vertices (B, N, 3), gt_joints (B, 21, 3), all metres; joint_regressor
  (21, N) gives the predicted joints. Returns {metric: (B, K)}.
  """
  vertices = _check_hypotheses('score_hypotheses', vertices)
  batch, num_hyp, num_vertices, _ = vertices.shape
  gt_vertices = np.asarray(gt_vertices, np.float64)
  gt_joints = np.asarray(gt_joints, np.float64)
  if gt_vertices.shape != (batch, num_vertices, 3):
    raise ValueError(
        f'hypotheses.score_hypotheses: gt_vertices must be {(batch, num_vertices, 3)}, '
        f'got {gt_vertices.shape}'
    )
  if gt_joints.ndim != 3 or gt_joints.shape[0] != batch:
    raise ValueError(
        f'hypotheses.score_hypotheses: gt_joints must be (B={batch}, 21, 3), '
        f'got {gt_joints.shape}'
    )
  flat = vertices.reshape(batch * num_hyp, num_vertices, 3)
  per_sample = metrics.evaluate_per_sample(
      _joints(flat, joint_regressor),
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
    raise ValueError(
        f'hypotheses.oracle_best: metric must be one of {sorted(scores)}, got {metric!r}'
    )
  values = scores[metric]
  index = np.argmax(values, -1) if metric in HIGHER_IS_BETTER else np.argmin(values, -1)
  rows = np.arange(len(index))
  return {
      'index': index,
      'errors': values,
      'best': values[rows, index],
      'per_sample': {key: value[rows, index] for key, value in scores.items()},
  }


def uncertainty_error_correlation(uncertainty: Any, error: Any) -> float:
  """Spearman's rank correlation between per-sample uncertainty (M,) and per-sample error (M,).

  +1: the more uncertain the model, the worse its prediction, in perfect rank order; ~0: the uncertainty
  says nothing about the error. NaN when either input is constant (e.g. K = 1, no spread at all).
  """
  uncertainty = np.asarray(uncertainty, np.float64).reshape(-1)
  error = np.asarray(error, np.float64).reshape(-1)
  if uncertainty.shape != error.shape or uncertainty.size < 2:
    raise ValueError(
        'hypotheses.uncertainty_error_correlation: need two (M,) arrays with M >= 2, got '
        f'{np.shape(uncertainty)} and {np.shape(error)}'
    )
  if np.ptp(uncertainty) == 0 or np.ptp(error) == 0:
    return float('nan')
  return float(scipy.stats.spearmanr(uncertainty, error)[0])


def summarize(
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

  mesh (B, N, 3) and mesh_metrics (metrics.evaluate_per_sample of it): the `method` aggregate and its
  per-sample metrics where the caller has them already (evaluation does); None computes them here.

  Returns a JSON-ready dict:
    aggregated      metrics.evaluate of the `method` aggregate (the keys of metrics.evaluate)
    oracle          the same metrics of the best-of-K hypothesis, chosen by `oracle_metric`
    first           the same metrics of hypothesis 0 alone (what a K = 1 run would report)
    uncertainty_score  which of `spread`'s scores is the uncertainty (`UNCERTAINTY_SCORE`)
    uncertainty_mm  its mean over the images, mm
    spearman        {metric: rank correlation of per-sample uncertainty with that per-sample error}
    spearman_by_score  {score: {'pa_mpvpe', 'mpvpe': rank correlation}} for every score of `spread`
    num_hypotheses, method, oracle_metric
  and, under 'per_sample' (numpy arrays, not for JSON): uncertainty (B,) metres, every score of
  `spread` (B,), the aggregate's per-sample metrics, and the oracle's index.
  """
  vertices = _check_hypotheses('summarize', vertices)
  if mesh is None:
    if mesh_metrics is not None:
      raise ValueError(
          'hypotheses.summarize: mesh_metrics were given without the mesh they describe; pass both '
          'or neither.'
      )
    mesh = aggregate(vertices, method)
  else:
    mesh = np.asarray(mesh, np.float64)
    if mesh.shape != vertices.shape[:1] + vertices.shape[2:]:
      raise ValueError(
          f'hypotheses.summarize: mesh {mesh.shape} is not one aggregate of the hypotheses '
          f'{vertices.shape}.'
      )
  per_sample = (
      dict(mesh_metrics)
      if mesh_metrics is not None
      else metrics.evaluate_per_sample(_joints(mesh, joint_regressor), gt_joints, mesh, gt_vertices)
  )
  oracle = oracle_best(vertices, gt_vertices, gt_joints, joint_regressor, metric=oracle_metric)
  first = metrics.evaluate_per_sample(
      _joints(vertices[:, 0], joint_regressor), gt_joints, vertices[:, 0], gt_vertices
  )
  scores = spread(vertices, mean=mesh if method == 'aligned_mean' else None)
  uncertainty = scores[UNCERTAINTY_SCORE]
  correlations = {
      key: uncertainty_error_correlation(uncertainty, per_sample[key])
      for key in ('pa_mpvpe', 'mpvpe', 'pa_mpjpe', 'mpjpe')
  }
  by_score = {
      name: {
          key: uncertainty_error_correlation(scores[name], per_sample[key])
          for key in ('pa_mpvpe', 'mpvpe')
      }
      for name in UNCERTAINTY_SCORES
  }
  return {
      'method': method,
      'num_hypotheses': int(vertices.shape[1]),
      'oracle_metric': oracle_metric,
      'aggregated': _means(per_sample),
      'oracle': _means(oracle['per_sample']),
      'first': _means(first),
      'uncertainty_score': UNCERTAINTY_SCORE,
      'uncertainty_mm': float(uncertainty.mean() * 1000.0),
      'spearman': correlations,
      'spearman_by_score': by_score,
      'per_sample': {
          'uncertainty': uncertainty,
          'scores': {name: scores[name] for name in UNCERTAINTY_SCORES},
          'metrics': per_sample,
          'oracle_index': oracle['index'],
      },
  }


def _means(per_sample: Mapping[str, np.ndarray]) -> dict[str, float]:
  return {key: float(np.mean(value)) for key, value in per_sample.items()}
