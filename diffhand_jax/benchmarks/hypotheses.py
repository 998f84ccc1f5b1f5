"""Several hypotheses, their uncertainty, and test-time augmentation, on a trained model's eval split.

  python -m diffhand_jax.bench hypotheses [--workdir=runs/synthetic] [--num_hypotheses=8] [--steps=10]
      [--max_examples=N] [--tta_angles=-10,0,10] [--tta_scales=0.9,1.0,1.1] [--no_tta] [--seed=0]
      [--output=bench_results/hypotheses.json] [--config.key=value ...]

Reports, on the run's eval split (the synthetic test split for the CPU demo):
  * hypothesis 0 alone (what K = 1 gives), the mean, the medoid and the aligned mean (rigidly aligned,
    then averaged) of K hypotheses, and the best-of-K
    oracle (the hypothesis closest to the ground truth by PA-MPVPE: an upper bound, it peeks at the GT);
  * whether the uncertainty means something: Spearman's rank correlation between each image's
    uncertainty (`hypotheses.spread`'s articulation spread of its K hypotheses: the distance left after
    aligning each rigidly to their aligned mean) and its error;
  * TTA (MeshGraphormer-style rotations × scales, K = 1) against no TTA (K = 1, the same noise).
Errors in mm (root-relative, in the model's right-hand frame), as `metrics.evaluate` computes them.
"""

from __future__ import annotations

import time

from absl import flags
import jax
import numpy as np

from diffhand_jax.benchmarks import common
from diffhand_jax import command_line, metrics
from diffhand_jax.data import input_pipeline, splits
from diffhand_jax.geometry import conventions, hypotheses
from diffhand_jax.inference import loading, overrides, sampling

_COLUMNS = ('pa_mpvpe', 'pa_mpjpe', 'mpvpe', 'mpjpe', 'pa_f5', 'pa_f15')


def _row(name: str, scores: dict) -> list:
  return [name] + [scores[c] for c in _COLUMNS]


FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'workdir',
    'runs/synthetic',
    "a trained workdir (default: the CPU demo's runs/synthetic)",
    flag_values=FLAGS,
)
flags.DEFINE_integer('num_hypotheses', 8, 'hypotheses K per image', flag_values=FLAGS)
flags.DEFINE_integer('steps', None, "DDIM steps (default: the config's)", flag_values=FLAGS)
flags.DEFINE_integer(
    'max_examples', None, 'score at most this many images of the split', flag_values=FLAGS
)
flags.DEFINE_string(
    'split', None, 'the split (default: config.dataset.eval_split)', flag_values=FLAGS
)
command_line.define_tta_flags(FLAGS, switch=False)
flags.DEFINE_bool('no_tta', False, 'skip the TTA comparison', flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, "the sampler's random seed", flag_values=FLAGS)
flags.DEFINE_string('output', 'bench_results/hypotheses.json', 'the JSON report', flag_values=FLAGS)


def main(argv: list[str]) -> int:
  try:
    command_line.parse(
        FLAGS,
        argv,
        prog='python -m diffhand_jax.bench hypotheses',
        doc=__doc__,
        config=overrides.override_fields,
        config_help=overrides.HELP,
    )
  except command_line.Exit as done:
    return done.code
  if common.trained_workdir_missing('hypotheses', FLAGS.workdir):
    return 0
  run = loading.load_trained(FLAGS.workdir, overrides=FLAGS.config)
  config = run.config
  split = FLAGS.split or config.dataset.eval_split
  vertex_scale = float(config.model.vertex_scale)
  steps = int(FLAGS.steps or config.model.sampling_steps)
  arrays = splits.load_split(config.dataset, split, FLAGS.max_examples)
  batch = input_pipeline.prepare_batch(
      arrays, vertex_scale=vertex_scale, image_size=config.model.img_size
  )
  keep = batch['has_3d'] > 0
  if not keep.any():
    raise SystemExit(f'the {split!r} split has no ground truth to score against')
  images = batch['image'][keep]
  gt_vertices = batch['vertices'][keep].astype(np.float64) * vertex_scale
  gt_joints = batch['joints'][keep].astype(np.float64) * vertex_scale
  regressor = np.asarray(run.topology.joint_regressor)
  key = jax.random.PRNGKey(FLAGS.seed)
  timings = {}

  start = time.time()
  sampler = sampling.Sampler(
      run.model,
      run.params,
      run.schedule,
      vertex_scale,
      num_steps=steps,
      num_hypotheses=FLAGS.num_hypotheses,
      eta=float(config.model.eta),
      batch_size=int(config.eval.batch_size),
      batch_stats=run.batch_stats,
  )
  samples = sampler.sample(images, key, sampling.progress_printer(f'K={FLAGS.num_hypotheses}'))
  timings['sample_k_s'] = time.time() - start
  summaries = {
      method: metrics.summarize_hypotheses(
          samples['vertices'], gt_vertices, gt_joints, regressor, method=method
      )
      for method in hypotheses.METHODS
  }
  mean_summary = summaries['mean']
  rows = [
      _row('hypothesis 0 (K=1)', mean_summary['first']),
      _row(f'mean of K={FLAGS.num_hypotheses}', mean_summary['aggregated']),
      _row(f'medoid of K={FLAGS.num_hypotheses}', summaries['medoid']['aggregated']),
      _row(f'aligned mean of K={FLAGS.num_hypotheses}', summaries['aligned_mean']['aggregated']),
      _row(f'best-of-{FLAGS.num_hypotheses} oracle (by pa_mpvpe)', mean_summary['oracle']),
  ]

  tta_result = None
  if not FLAGS.no_tta:
    tta_config = command_line.tta_config(FLAGS)
    single = sampling.Sampler(
        run.model,
        run.params,
        run.schedule,
        vertex_scale,
        num_steps=steps,
        num_hypotheses=1,
        eta=float(config.model.eta),
        batch_size=int(config.eval.batch_size),
        batch_stats=run.batch_stats,
    )
    start = time.time()
    plain = single.predict(images, key)['vertices']
    with_tta = single.predict(images, key, tta_config=tta_config)['vertices']
    timings['tta_s'] = time.time() - start
    scores = {}
    for name, mesh in (
        ('no TTA (K=1)', plain),
        (f'TTA, {len(tta_config.passes())} passes (K=1)', with_tta),
    ):
      joints = conventions.regress_joints(mesh, regressor)
      scores[name] = metrics.evaluate(joints, gt_joints, mesh, gt_vertices)
      rows.append(_row(name, scores[name]))
    tta_result = {
        'angles_deg': list(tta_config.angles_deg),
        'scales': list(tta_config.scales),
        'passes': len(tta_config.passes()),
        'scores': scores,
    }

  title = (
      f'Hypotheses and TTA on {config.dataset.name}/{split} ({int(keep.sum())} images, '
      f'{steps} DDIM steps, eta {float(config.model.eta)}); errors in mm'
  )
  table = common.print_table(title, ['prediction'] + list(_COLUMNS), rows)
  corr_rows = [
      [f'{metric}', mean_summary['spearman'][metric]]
      for metric in ('pa_mpvpe', 'mpvpe', 'pa_mpjpe', 'mpjpe')
  ]
  corr_table = common.print_table(
      f'Spearman rank correlation: per-image uncertainty (articulation spread of K={FLAGS.num_hypotheses}, '
      f'average {mean_summary["uncertainty_mm"]:.3g} mm) vs per-image error of the mean',
      ['error', 'spearman rho'],
      corr_rows,
  )
  payload = {
      'benchmark': 'hypotheses',
      'machine': common.machine(),
      'workdir': FLAGS.workdir,
      'split': split,
      'num_examples': int(keep.sum()),
      'steps': steps,
      'eta': float(config.model.eta),
      'num_hypotheses': FLAGS.num_hypotheses,
      'summaries': {
          m: {k: v for k, v in s.items() if k != 'per_sample'} for m, s in summaries.items()
      },
      'tta': tta_result,
      'timings_s': timings,
      'table': table + '\n\n' + corr_table,
  }
  common.write_json(FLAGS.output, payload)
  return 0


if __name__ == '__main__':
  import sys

  sys.exit(main(sys.argv[1:]))
