"""Evaluation during and after training: sample each eval split, score it against the ground truth and
the mean-mesh baseline, write results.json and eval_per_sample.npz, and export a few meshes and overlays.

  evaluator = Evaluator(config, workdir, network, eval_sets=open_eval_sets(config), train_arrays=...,
                        logger=...)
  results = evaluator(params, step)      # once per evaluation: samples, scores, writes, reports

The eval splits are ``config.eval.datasets`` (one pass over each), else the run's own
``config.dataset.eval_split``. The `Evaluator` is built once per run with what does not change between
evaluations (the splits, the jitted sampler, the topology, the logger); each call takes only the params
and their step.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffhand_jax import metrics
from diffhand_jax.data import input_pipeline, mixture, splits
from diffhand_jax.geometry import conventions, hand_model, hypotheses, mesh_io, render
from diffhand_jax.models import diffhand
from diffhand_jax.runs import files, presets
from diffhand_jax.training import metric_log


def _to_metres(model_space: np.ndarray, vertex_scale: float) -> np.ndarray:
  return np.asarray(model_space, np.float64) * vertex_scale


_UNSET = object()


def predict_split(
    reconstruct_fn,
    params,
    arrays,
    config,
    key,
    batch_stats=None,
    *,
    crop_margin: Any = _UNSET,
    name: str = 'the eval split',
) -> dict[str, np.ndarray]:
  """Runs the sampler over a whole split, cropped by ``crop_margin`` (default config.dataset's).
  Returns root-relative metres in the (mirrored) model frame: hypotheses (M, K, N, 3), vertices_std
  (M, N) and the ground truth (gt_vertices, gt_joints). ``name`` names the split in the progress lines.
  """
  vertex_scale = config.model.vertex_scale
  if crop_margin is _UNSET:
    crop_margin = config.dataset.get('crop_margin')
  hyps, stds, gt_verts, gt_joints = [], [], [], []
  total = splits.num_rows(arrays)
  done, reported, start = 0, 0.0, time.time()
  for index, (batch, valid) in enumerate(
      input_pipeline.eval_batches(
          arrays,
          batch_size=config.eval.batch_size,
          vertex_scale=vertex_scale,
          image_size=config.model.img_size,
          crop_margin=crop_margin,
          depth_source=presets.depth_source(config),
      )
  ):
    depth = jnp.asarray(batch['depth']) if 'depth' in batch else None
    out = reconstruct_fn(
        params,
        jnp.asarray(batch['image']),
        jax.random.fold_in(key, index),
        depth=depth,
        batch_stats=batch_stats,
    )
    hyps.append(np.asarray(out['vertices'])[:valid])
    stds.append(np.asarray(out['vertices_std'])[:valid])
    gt_verts.append(batch['vertices'][:valid])
    gt_joints.append(batch['joints'][:valid])
    done += valid
    # Progress about every 10 s (a large split samples for minutes), and at the end.
    if done == total or time.time() - reported > 10.0:
      reported = time.time()
      rate = done / max(reported - start, 1e-9)
      metric_log.print0(
          f'  sampling {name}: {done}/{total} images ({rate:.1f} images/s)', flush=True
      )
  return {
      'hypotheses': _to_metres(np.concatenate(hyps), vertex_scale),
      'vertices_std': _to_metres(np.concatenate(stds), vertex_scale),
      'gt_vertices': _to_metres(np.concatenate(gt_verts), vertex_scale),
      'gt_joints': _to_metres(np.concatenate(gt_joints), vertex_scale),
  }


def score(pred_vertices, gt_vertices, gt_joints, joint_regressor) -> dict[str, float]:
  """metrics.evaluate with predicted joints regressed from the predicted mesh (J = W·V̂)."""
  return metrics.evaluate(
      conventions.regress_joints(pred_vertices, joint_regressor),
      gt_joints,
      pred_vertices,
      gt_vertices,
  )


def mean_mesh_baseline(
    train_arrays, eval_prediction, joint_regressor, vertex_scale
) -> dict[str, float]:
  """Scores always predicting the training set's mean root-relative mesh."""
  train = input_pipeline.prepare_batch(
      {k: v for k, v in train_arrays.items()}, vertex_scale=vertex_scale
  )
  mean_mesh = _to_metres(train['vertices'].mean(axis=0), vertex_scale)
  count = len(eval_prediction['gt_vertices'])
  return score(
      np.broadcast_to(mean_mesh, (count,) + mean_mesh.shape),
      eval_prediction['gt_vertices'],
      eval_prediction['gt_joints'],
      joint_regressor,
  )


def export_examples(
    directory,
    prediction,
    arrays,
    topology: hand_model.HandTopology,
    count: int,
    per_sample: dict[str, np.ndarray] | None = None,
) -> None:
  """Writes the first ``count`` predictions as .obj meshes (camera frame, placed at the ground-truth
  wrist, since the model predicts root-relative shape), ``NNNN.png`` rows of input | prediction | ground
  truth over the input (render.panel_row, >= 256 px per panel; no truth panel where has_3d is false),
  and ``contact_sheet.png`` with all the rows.

  prediction['vertices']: (M, 778, 3) root-relative metres in the mirrored model frame; arrays: the
  split's raw arrays; per_sample: optional (M,) arrays in mm keyed 'pa_mpvpe', 'mpvpe', ... (from
  metrics.evaluate_per_sample), whose values caption each row.
  """
  os.makedirs(directory, exist_ok=True)
  faces = np.asarray(topology.faces)
  rows = []
  for i in range(min(count, len(prediction['vertices']))):
    raw = {k: v[i : i + 1] for k, v in arrays.items()}
    batch = input_pipeline.prepare_batch(raw, vertex_scale=1.0)
    # Both meshes are root-relative in the mirrored frame: place them at the (mirrored) true wrist.
    vertices = prediction['vertices'][i] + batch['wrist'][0]
    truth = batch['vertices'][0] + batch['wrist'][0] if batch['has_3d'][0] else None
    if batch['is_left'][0]:  # back to the left hand's own frame
      vertices = vertices * np.array([-1.0, 1.0, 1.0])
      truth = None if truth is None else truth * np.array([-1.0, 1.0, 1.0])
    mesh_io.write_obj(os.path.join(directory, f'{i:04d}.obj'), vertices, faces)
    caption = f'{i:04d}'
    if per_sample is not None and truth is not None:
      caption += (
          f' \u00b7 PA-MPVPE {per_sample["pa_mpvpe"][i]:.1f} mm'
          f' \u00b7 MPVPE {per_sample["mpvpe"][i]:.1f} mm'
      )
    row = render.panel_row(
        arrays['image'][i], vertices, faces, arrays['K'][i], truth, caption=caption
    )
    mesh_io.write_image(os.path.join(directory, f'{i:04d}.png'), row)
    rows.append(row)
  if rows:
    mesh_io.write_image(
        os.path.join(directory, 'contact_sheet.png'), render.contact_sheet(rows, columns=2)
    )


def _process_local(params):
  """``params`` as arrays this process can use on its own (evaluation runs the whole split in every
  process; with several processes the global params are gathered first)."""
  if jax.process_count() > 1:
    params = multihost_utils.process_allgather(params, tiled=True)
  return params


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """One split to evaluate: ``name`` keys its metrics (results.json's 'datasets', the metrics.jsonl
  rows' split); ``source`` is the opened `mixture.Source`; ``primary``: the first listed, whose
  metrics are also results.json's top-level keys and whose files keep today's names."""

  name: str
  source: mixture.Source
  primary: bool


def open_eval_sets(config: ml_collections.ConfigDict) -> list[EvalSet]:
  """The eval splits of ``config`` (`mixture.eval_entries`: config.eval.datasets, else
  config.dataset.eval_split), each at most config.eval.max_examples rows, with its depth maps for a
  depth run (`depth.open_split`). Without
  config.eval.datasets the one set is named by the split alone ('test'), as before."""
  listed = bool(config.eval.get('datasets'))
  sets = []
  for index, entry in enumerate(mixture.eval_entries(config.dataset, config.eval)):
    source = mixture.open_entry(
        config.dataset,
        entry,
        config.eval.get('max_examples'),
        depth_source=presets.depth_source(config),
        estimator=presets.depth_estimator(config),
    )
    sets.append(EvalSet(entry.label if listed else entry.split, source, index == 0))
  return sets


def file_suffix(name: str) -> str:
  """'_' + ``name`` with what a file name should not hold replaced: the suffix of a set's files
  ('synthetic_hands/tiny:test' → '_synthetic_hands_tiny_test'; the primary set's files have none).
  """
  return '_' + ''.join(c if c.isalnum() or c in '-.' else '_' for c in name)


class Evaluator:
  """Samples the eval split, scores it, and writes results.json, the per-sample errors
  (eval_per_sample.npz) and the exports; a metrics.jsonl row and TensorBoard through ``logger``.

  Built once per run with what does not change between evaluations; called with the params and their
  step. With K > 1 hypotheses the reported metrics are those of their aggregate (config.eval.aggregate:
  'mean' | 'medoid' | 'aligned_mean'), and results['hypotheses'] adds the best-of-K oracle, hypothesis 0
  alone, and the rank correlation of uncertainty with error.

  With several eval sets (config.eval.datasets) each is sampled and scored in its own pass;
  results['datasets'] holds every set's metrics under its name, the first set's are also the
  top-level keys, and each set gets its metrics.jsonl row (split = its name), its per-sample file
  (eval_per_sample.npz for the first, eval_per_sample_<name>.npz) and its exports (export/step_N/,
  export/step_N/<name>/).

  network: anything with the run's ``topology``, ``model`` and ``schedule`` (`state.Network`,
  `state.Components`); eval_sets: `open_eval_sets`' list (or eval_arrays: one split, named by
  config.dataset.eval_split); train_arrays: the training split or the mixture's list of
  `mixture.Source` (its mean mesh is the baseline); logger: a `metric_log.Logger`, left open.
  """

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      workdir: str,
      network,
      *,
      train_arrays,
      logger: metric_log.Logger,
      eval_sets: list[EvalSet] | None = None,
      eval_arrays=None,
  ):
    self.config = config
    self.workdir = workdir
    self.topology = network.topology
    if eval_sets is None:
      if eval_arrays is None:
        raise ValueError('Evaluator needs eval_sets or eval_arrays')
      entry = mixture.eval_entries(config.dataset, {})[0]
      eval_sets = [EvalSet(entry.split, mixture.Source(entry, eval_arrays, splits.FEATURES), True)]
    self.eval_sets = eval_sets
    self.eval_arrays = eval_sets[0].source.arrays
    self.train_arrays = train_arrays
    self.logger = logger
    # Jitted once here; it compiles at the first evaluation and is reused by every later one.
    self.reconstruct_fn = diffhand.make_reconstruct_fn(
        network.model,
        num_steps=config.model.sampling_steps,
        num_hypotheses=config.model.num_hypotheses,
        eta=config.model.eta,
        schedule=network.schedule,
    )

  def __call__(self, params, step: int, batch_stats=None) -> dict[str, Any]:
    """Evaluates ``params`` (the ones to sample with: the EMA params where the run keeps them) of step
    ``step``, with the encoder's BatchNorm statistics ``batch_stats`` where it has them; returns
    results.json's dict."""
    step = int(step)
    params = _process_local(params)
    batch_stats = _process_local(batch_stats) if batch_stats else None
    per_set = {}
    for eval_set in self.eval_sets:
      start = time.time()
      prediction = predict_split(
          self.reconstruct_fn,
          params,
          eval_set.source.arrays,
          self.config,
          jax.random.PRNGKey(self.config.seed + 1),
          batch_stats,
          crop_margin=eval_set.source.entry.crop_margin,
          name=eval_set.name,
      )
      scores = score_prediction(prediction, self.topology, self.train_arrays, self.config)
      results = {
          **scores.results,
          'step': step,
          'num_examples': int(len(prediction['vertices'])),
          'sampler': sampler_settings(self.config),
      }
      if scores.hypotheses is not None:
        results['hypotheses'] = scores.hypotheses
        results['uncertainty'] = uncertainty_summary(scores.hypotheses)
      self.logger.write(
          step, eval_set.name, {k: v for k, v in results.items() if isinstance(v, float)}
      )
      if jax.process_index() == 0:
        self._write_set_files(eval_set, results, prediction, scores)
      print_results(results, eval_set.name, time.time() - start)
      per_set[eval_set.name] = results
    primary = next(s.name for s in self.eval_sets if s.primary)
    results = dict(per_set[primary])
    results['datasets'] = {
        name: {k: v for k, v in values.items() if k not in ('step', 'sampler')}
        for name, values in per_set.items()
    }
    if jax.process_index() == 0:
      files.write_json_atomic(os.path.join(self.workdir, 'results.json'), results)
    return results

  def _write_set_files(
      self, eval_set: EvalSet, results: dict[str, Any], prediction, scores: Scores
  ) -> None:
    """One set's eval_per_sample[_<name>].npz and (config.eval.num_export > 0) its exports,
    export/step_<step>/ (the primary set) or export/step_<step>/<name>/."""
    step = results['step']
    suffix = '' if eval_set.primary else file_suffix(eval_set.name)
    write_per_sample(
        os.path.join(self.workdir, f'eval_per_sample{suffix}.npz'), step, prediction, scores
    )
    if self.config.eval.num_export > 0:
      directory = os.path.join(self.workdir, 'export', f'step_{step}')
      if not eval_set.primary:
        directory = os.path.join(directory, suffix[1:])
      export_examples(
          directory,
          prediction,
          eval_set.source.arrays,
          self.topology,
          self.config.eval.num_export,
          scores.per_sample,
      )


@dataclasses.dataclass
class Scores:
  """What scoring a split's prediction gives.

  results: the mean of each per-sample error (mm), palm_facing_agreement and the mean-mesh baseline;
  per_sample: (M,) arrays in mm keyed as metrics.evaluate_per_sample; palm_facing: (M,) bool;
  hypotheses: metrics.summarize_hypotheses's summary without its per-sample part (None for K = 1);
  uncertainty_scores: (M,) arrays in metres keyed by score name ({} for K = 1).
  """

  results: dict[str, Any]
  per_sample: dict[str, np.ndarray]
  palm_facing: np.ndarray
  hypotheses: dict[str, Any] | None
  uncertainty_scores: dict[str, np.ndarray]


def score_prediction(prediction, topology, train_arrays, config) -> Scores:
  """Aggregates the K hypotheses of ``prediction`` (predict_split's dict; this sets its 'vertices',
  (M, N, 3)) by config.eval.aggregate and scores the mesh against the truth and the mean-mesh
  baseline of ``train_arrays``."""
  method = config.eval.get('aggregate', 'mean')
  prediction['vertices'] = hypotheses.aggregate(prediction['hypotheses'], method)
  W = np.asarray(topology.joint_regressor, np.float64)
  pred_joints = conventions.regress_joints(prediction['vertices'], W)
  per_sample = metrics.evaluate_per_sample(
      pred_joints,
      prediction['gt_joints'],
      prediction['vertices'],
      prediction['gt_vertices'],
  )
  results = {key: float(np.mean(value)) for key, value in per_sample.items()}
  palm_facing = metrics.palm_facing_per_sample(pred_joints, prediction['gt_joints'])
  results['palm_facing_agreement'] = float(np.mean(palm_facing))
  baseline = mean_mesh_baseline(
      training_mean_mesh_example(train_arrays),
      prediction,
      topology.joint_regressor,
      config.model.vertex_scale,
  )
  results['baseline_pa_mpvpe'] = baseline['pa_mpvpe']
  results['baseline_mpvpe'] = baseline['mpvpe']
  summary, uncertainty_scores = None, {}
  if int(config.model.num_hypotheses) > 1:
    summary = metrics.summarize_hypotheses(
        prediction['hypotheses'],
        prediction['gt_vertices'],
        prediction['gt_joints'],
        W,
        method=method,
        mesh=prediction['vertices'],
        mesh_metrics=per_sample,
    )
    uncertainty_scores = summary.pop('per_sample')['scores']
  return Scores(results, per_sample, palm_facing, summary, uncertainty_scores)


def training_mean_mesh_example(train_arrays) -> dict[str, np.ndarray]:
  """The mean-mesh baseline's one-example split: of the training split, or of a mixture's sources
  (a list of `mixture.Source`: their means averaged by weight)."""
  if isinstance(train_arrays, (list, tuple)):
    return mixture.mean_mesh_example(train_arrays)
  return splits.mean_mesh_example(train_arrays)


def sampler_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """results['sampler']: how the evaluation sampled."""
  return {
      'steps': int(config.model.sampling_steps),
      'eta': float(config.model.eta),
      'hypotheses': int(config.model.num_hypotheses),
      'aggregate': config.eval.get('aggregate', 'mean'),
      'diffusion': bool(config.model.diffusion),
  }


def uncertainty_summary(summary: dict[str, Any]) -> dict[str, Any]:
  """results['uncertainty'] from metrics.summarize_hypotheses's summary: the reported score, its mean
  (mm) and its rank correlation with the per-sample errors."""
  return {
      'score': summary['uncertainty_score'],
      'mean_mm': summary['uncertainty_mm'],
      'spearman_pa_mpvpe': summary['spearman']['pa_mpvpe'],
      'spearman_mpvpe': summary['spearman']['mpvpe'],
  }


def write_per_sample(path: str, step: int, prediction, scores: Scores) -> None:
  """eval_per_sample.npz, atomically: the step, the per-sample errors (M,) in mm, palm_facing (M,), and
  uncertainty_m (M,), the reported uncertainty in metres (hypotheses.UNCERTAINTY_SCORE; the mean
  vertex std for K = 1), followed by its alternatives as uncertainty_<name>."""

  def write(tmp):
    with open(tmp, 'wb') as f:
      np.savez(
          f,
          step=step,
          uncertainty_m=scores.uncertainty_scores.get(
              hypotheses.UNCERTAINTY_SCORE, prediction['vertices_std'].mean(axis=-1)
          ),
          palm_facing=scores.palm_facing,
          **{f'uncertainty_{name}': value for name, value in scores.uncertainty_scores.items()},
          **{key: np.asarray(value) for key, value in scores.per_sample.items()},
      )

  files.atomic_write(path, write)


def print_results(results: dict[str, Any], split: str, seconds: float) -> None:
  """The evaluation's summary lines (process 0)."""
  metric_log.print0(
      f'eval step {results["step"]} ({split}, {results["num_examples"]} examples, {seconds:.1f}s): '
      f'pa_mpvpe {results["pa_mpvpe"]:.2f} mm (mean-mesh baseline {results["baseline_pa_mpvpe"]:.2f}), '
      f'mpvpe {results["mpvpe"]:.2f} (baseline {results["baseline_mpvpe"]:.2f}), pa_mpjpe '
      f'{results["pa_mpjpe"]:.2f}, mpjpe {results["mpjpe"]:.2f}; palm facing the right way '
      f'{100 * results["palm_facing_agreement"]:.0f}%',
      flush=True,
  )
  if 'hypotheses' in results:
    sampler, uncertainty = results['sampler'], results['uncertainty']
    metric_log.print0(
        f'  {sampler["hypotheses"]} hypotheses ({sampler["aggregate"]}): best-of-K pa_mpvpe '
        f'{results["hypotheses"]["oracle"]["pa_mpvpe"]:.2f} mm; uncertainty '
        f'({uncertainty["score"]} spread) against error, rank correlation '
        f'{uncertainty["spearman_pa_mpvpe"]:.2f} (pa_mpvpe), '
        f'{uncertainty["spearman_mpvpe"]:.2f} (mpvpe)',
        flush=True,
    )
