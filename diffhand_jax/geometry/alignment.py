"""Rigid and similarity alignment of point sets, batched, in float64 numpy.

* `align_w_scale` (and `_batch`): FreiHAND's `align_w_scale` (lmb-freiburg/freihand): centre both sets on
  their means, divide each by its Frobenius norm + 1e-8, ``R, s = scipy.linalg.orthogonal_procrustes``;
  no reflection fix (R may be a reflection). The PA metrics of `metrics.evaluate` use it.
* `align_umeyama` (and `_batch`): Umeyama similarity alignment *with* the reflection fix (det R = +1), as
  HandOccNet's `rigid_align`; DexYCB's PA metrics use it.
* `rigid_transform_batch`, `align_rigid_batch`: rotation and translation only (Kabsch, proper rotation),
  for hypothesis aggregation and the start of `mano.fit`.

`diffhand_jax.metrics` re-exports these names (its public face since the first release), and the input
checks here are the ones the metrics share, so their messages name ``metrics.<function>``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.linalg

_EPS_NORM = 1e-8  # added to the Frobenius norms, as in FreiHAND's align_w_scale


def as_points(
    func: str, name: str, value, *, batched: bool, num_points: int | None = None
) -> np.ndarray:
  """Returns `value` as float64 (B, K, 3) (or (K, 3) when not batched); raises ValueError otherwise."""
  expected = ('(B, ' if batched else '(') + (str(num_points) if num_points else 'K') + ', 3)'
  try:
    array = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError) as error:
    raise ValueError(
        f'metrics.{func}: {name} must be a numeric array of shape {expected}; '
        f'could not convert it ({error})'
    ) from None
  ndim = 3 if batched else 2
  if (
      array.ndim != ndim
      or array.shape[-1] != 3
      or 0 in array.shape
      or (num_points is not None and array.shape[-2] != num_points)
  ):
    raise ValueError(f'metrics.{func}: {name} must have shape {expected}, got {array.shape}')
  if not np.all(np.isfinite(array)):
    bad = ~np.isfinite(array)
    where = (
        f'sample(s) {np.unique(np.nonzero(bad)[0])[:10].tolist()}'
        if batched
        else f'point(s) {np.unique(np.nonzero(bad)[0])[:10].tolist()}'
    )
    raise ValueError(
        f'metrics.{func}: {name} holds {int(bad.sum())} NaN/inf value(s), in {where}; '
        'metrics need finite coordinates'
    )
  return array


def check_same_shape(func: str, names: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
  if arrays[0].shape != arrays[1].shape:
    raise ValueError(
        f'metrics.{func}: {names[0]} and {names[1]} must have the same shape, got '
        f'{arrays[0].shape} and {arrays[1].shape}'
    )


def align_w_scale(gt, pred) -> np.ndarray:
  """FreiHAND's `align_w_scale`: `pred` (K, 3) aligned to `gt` (K, 3) by a similarity transform.

  The rotation comes from `scipy.linalg.orthogonal_procrustes` and may be a reflection (no fix), exactly
  as the official script does it. Returns float64 (K, 3).
  """
  gt = as_points('align_w_scale', 'gt', gt, batched=False)
  pred = as_points('align_w_scale', 'pred', pred, batched=False)
  check_same_shape('align_w_scale', ('gt', 'pred'), (gt, pred))
  gt_mean, pred_mean = gt.mean(0), pred.mean(0)
  gt_c, pred_c = gt - gt_mean, pred - pred_mean
  gt_norm = np.linalg.norm(gt_c) + _EPS_NORM
  pred_norm = np.linalg.norm(pred_c) + _EPS_NORM
  gt_n, pred_n = gt_c / gt_norm, pred_c / pred_norm
  rotation, scale = scipy.linalg.orthogonal_procrustes(gt_n, pred_n)
  return (pred_n @ rotation.T) * scale * gt_norm + gt_mean


def _align_w_scale_batch(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """`align_w_scale` on checked float64 (B, K, 3) arrays, with one batched SVD."""
  gt_mean = gt.mean(1, keepdims=True)
  pred_mean = pred.mean(1, keepdims=True)
  gt_c, pred_c = gt - gt_mean, pred - pred_mean
  gt_norm = np.linalg.norm(gt_c, axis=(1, 2), keepdims=True) + _EPS_NORM
  pred_norm = np.linalg.norm(pred_c, axis=(1, 2), keepdims=True) + _EPS_NORM
  gt_n, pred_n = gt_c / gt_norm, pred_c / pred_norm
  # scipy.linalg.orthogonal_procrustes(A, B): U, w, Vt = svd(A^T B); R = U Vt; scale = sum(w).
  u, w, vt = np.linalg.svd(np.swapaxes(gt_n, 1, 2) @ pred_n)
  rotation = u @ vt
  scale = w.sum(-1)[:, None, None]
  return (pred_n @ np.swapaxes(rotation, 1, 2)) * scale * gt_norm + gt_mean


def align_w_scale_batch(gt, pred) -> np.ndarray:
  """Batched FreiHAND `align_w_scale`: `pred` (B, K, 3) aligned to `gt` (B, K, 3), float64 (B, K, 3).

  Equal to `align_w_scale` applied sample by sample (within float rounding), without a Python loop.
  """
  gt = as_points('align_w_scale_batch', 'gt', gt, batched=True)
  pred = as_points('align_w_scale_batch', 'pred', pred, batched=True)
  check_same_shape('align_w_scale_batch', ('gt', 'pred'), (gt, pred))
  return _align_w_scale_batch(gt, pred)


def _proper_rotation_batch(pred_c: np.ndarray, gt_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Kabsch with the reflection fix on centred float64 (B, K, 3) arrays: the proper rotation R (B, 3, 3)
  minimising |pred_c Rᵀ − gt_c|², and the singular values of predᵀ·gt / K with the last one's sign flipped
  where the fix applied (their sum is Umeyama's scale numerator)."""
  covariance = (np.swapaxes(pred_c, 1, 2) @ gt_c) / pred_c.shape[1]
  u, s, vt = np.linalg.svd(covariance)
  # The reflection fix: when V U^T is a reflection, flip the last singular direction (and its value).
  sign = np.where(np.linalg.det(np.swapaxes(vt, 1, 2) @ np.swapaxes(u, 1, 2)) < 0, -1.0, 1.0)
  vt = vt.copy()
  s = s.copy()
  vt[:, 2, :] *= sign[:, None]
  s[:, 2] *= sign
  return np.swapaxes(vt, 1, 2) @ np.swapaxes(u, 1, 2), s


def _align_umeyama_batch(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """HandOccNet's `rigid_align(pred, gt)` on checked float64 (B, K, 3) arrays."""
  pred_mean = pred.mean(1, keepdims=True)
  gt_mean = gt.mean(1, keepdims=True)
  pred_c, gt_c = pred - pred_mean, gt - gt_mean
  rotation, s = _proper_rotation_batch(pred_c, gt_c)
  pred_variance = np.square(pred_c).mean(1).sum(-1)  # np.var(pred, axis=0).sum() per sample
  # HandOccNet divides by zero for a collapsed prediction; we map it to the GT centroid instead.
  safe_variance = np.where(pred_variance > 0, pred_variance, 1.0)
  scale = np.where(pred_variance > 0, s.sum(-1) / safe_variance, 0.0)[:, None, None]
  return scale * (pred_c @ np.swapaxes(rotation, 1, 2)) + gt_mean


def align_umeyama_batch(gt, pred) -> np.ndarray:
  """Umeyama similarity alignment *with* the reflection fix (HandOccNet's `rigid_align`), batched.

  `pred` (B, K, 3) aligned to `gt` (B, K, 3); returns float64 (B, K, 3). The rotation is always proper
  (det = +1), so a mirrored prediction is not mirrored back. A collapsed prediction (all points equal)
  maps to the GT centroid, where HandOccNet would divide by zero.
  """
  gt = as_points('align_umeyama_batch', 'gt', gt, batched=True)
  pred = as_points('align_umeyama_batch', 'pred', pred, batched=True)
  check_same_shape('align_umeyama_batch', ('gt', 'pred'), (gt, pred))
  return _align_umeyama_batch(gt, pred)


def rigid_transform_batch(gt, pred) -> tuple[np.ndarray, np.ndarray]:
  """The rotation R (B, 3, 3) (proper: the reflection fix applies) and translation t (B, 3) that minimise
  |pred Rᵀ + t − gt|² (Kabsch, no scale), for `pred` and `gt` (B, K, 3); float64."""
  gt = as_points('rigid_transform_batch', 'gt', gt, batched=True)
  pred = as_points('rigid_transform_batch', 'pred', pred, batched=True)
  check_same_shape('rigid_transform_batch', ('gt', 'pred'), (gt, pred))
  pred_mean, gt_mean = pred.mean(1), gt.mean(1)
  rotation, _ = _proper_rotation_batch(pred - pred_mean[:, None], gt - gt_mean[:, None])
  return rotation, gt_mean - np.einsum('bij,bj->bi', rotation, pred_mean)


def align_rigid_batch(gt, pred) -> np.ndarray:
  """Rotation and translation only (Kabsch, no scale), with the reflection fix, batched: `pred` (B, K, 3)
  aligned to `gt` (B, K, 3); returns float64 (B, K, 3). `align_umeyama_batch` without the scale."""
  rotation, translation = rigid_transform_batch(gt, pred)
  pred = np.asarray(pred, np.float64)
  return pred @ np.swapaxes(rotation, 1, 2) + translation[:, None]


def align_umeyama(gt, pred) -> np.ndarray:
  """`align_umeyama_batch` for one sample: `pred` (K, 3) aligned to `gt` (K, 3)."""
  gt = as_points('align_umeyama', 'gt', gt, batched=False)
  pred = as_points('align_umeyama', 'pred', pred, batched=False)
  check_same_shape('align_umeyama', ('gt', 'pred'), (gt, pred))
  return _align_umeyama_batch(gt[None], pred[None])[0]
