"""Several hypotheses per image: aggregation, uncertainty, and whether the uncertainty means anything.

`models/diffhand.reconstruct(..., num_hypotheses=K)` samples K meshes per image (a vmap of the DDIM
sampler over the starting noise, the image encoded once). This module turns those (B, K, N, 3) samples
into one mesh per image and a per-vertex uncertainty.

    out = diffhand.reconstruct(model, params, images, key, num_hypotheses=8)
    mesh = hypotheses.aggregate(out['vertices'], 'aligned_mean')    # (B, N, 3)
    sigma = hypotheses.per_vertex_std(out['vertices'])              # (B, N)

Everything is numpy (float64) on the host, and works in any consistent unit. Scoring the hypotheses
against the ground truth (best-of-K, the summary an evaluation reports) is evaluation:
`metrics.score_hypotheses`, `metrics.oracle_best`, `metrics.summarize_hypotheses`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.stats

from diffhand_jax.geometry import alignment

METHODS = ('mean', 'medoid', 'aligned_mean')


def check_hypotheses(func: str, vertices: Any, *, module: str = 'hypotheses') -> np.ndarray:
  """``vertices`` as float64 (B, K, N, 3) with K >= 1 and finite values; else a ValueError naming
  ``module.func`` (metrics' scoring of hypotheses checks them here too)."""
  vertices = np.asarray(vertices, np.float64)
  if vertices.ndim != 4 or vertices.shape[-1] != 3 or vertices.shape[1] < 1:
    raise ValueError(
        f'{module}.{func}: vertices must have shape (B, K, N, 3) with K >= 1, '
        f'got {vertices.shape}'
    )
  if not np.all(np.isfinite(vertices)):
    raise ValueError(f'{module}.{func}: vertices hold non-finite values')
  return vertices


def pairwise_distances(vertices: Any) -> np.ndarray:
  """Mean per-vertex L2 distance between every pair of hypotheses: (B, K, N, 3) → (B, K, K)."""
  vertices = check_hypotheses('pairwise_distances', vertices)
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
  vertices = check_hypotheses('aligned_mean', vertices)
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
  vertices = check_hypotheses('aggregate', vertices)
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
  vertices = check_hypotheses('per_vertex_std', vertices)
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
  vertices = check_hypotheses('spread', vertices)
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
