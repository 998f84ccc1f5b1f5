"""`mano.fit`, MANO parameters from a mesh: its error and its time on meshes with known parameters.

  python -m diffhand_jax.bench fit [--batch_sizes=1,64,1024] [--num_iterations=10] [--repeats=3]
      [--hand=procedural|PATH/MANO_RIGHT.pkl] [--seed=0]

For each batch size it draws that many in-range hands (`mano.sample_random_pose`: finger poses within
the joint limits, a uniformly random global rotation; betas ~ N(0, 1) clipped to ±2.5; a translation
of up to 0.3 m around a point 0.6 m in front of the camera), makes their meshes with `mano.forward`,
fits them with `mano.fit`, and reports the mean vertex error (mean, 95th percentile and maximum over
the batch, mm), the time of the first call (compilation included) and the median time of `--repeats`
further calls. The goal (issue 16): mean ≤ 0.5 mm, 95th percentile ≤ 2 mm, batch 64 under 10 s after
compilation on a 2-core CPU.
"""

from __future__ import annotations

import statistics
import time

from absl import flags
import jax
import numpy as np

from diffhand_jax import command_line
from diffhand_jax.benchmarks import common
from diffhand_jax.geometry import mano


def problems(model: mano.ManoModel, batch: int, seed: int) -> dict[str, np.ndarray]:
  """`batch` random in-range hands: pose (B, 48) (flat_hand_mean=False), betas, trans, vertices."""
  rng = np.random.default_rng(seed)
  pose = mano.sample_random_pose(rng, model, batch, flat_hand_mean=False, random_global_orient=True)
  betas = np.clip(rng.normal(0.0, 1.0, (batch, model.num_betas)), -2.5, 2.5).astype(np.float32)
  trans = (rng.uniform(-0.3, 0.3, (batch, 3)) + [0.0, 0.0, 0.6]).astype(np.float32)
  vertices = np.asarray(mano.forward(model, pose, betas, trans=trans)[0], np.float64)
  return {'pose': pose, 'betas': betas, 'trans': trans, 'vertices': vertices}


def measure(
    model: mano.ManoModel, batch: int, num_iterations: int, repeats: int, seed: int
) -> dict[str, float]:
  truth = problems(model, batch, seed)
  start = time.perf_counter()
  out = mano.fit(model, truth['vertices'], num_iterations=num_iterations)
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    mano.fit(model, truth['vertices'], num_iterations=num_iterations)
    times.append(time.perf_counter() - start)
  # The error against the meshes the parameters were drawn for (not the fit's own report).
  error = np.linalg.norm(out['vertices'] - truth['vertices'], axis=-1).mean(-1) * 1e3
  return {
      'batch': batch,
      'num_iterations': num_iterations,
      'error_mean_mm': float(error.mean()),
      'error_p95_mm': float(np.percentile(error, 95)),
      'error_max_mm': float(error.max()),
      'first_call_s': first,
      'seconds': float(statistics.median(times)) if times else float('nan'),
      'seconds_min': float(min(times)) if times else float('nan'),
  }


FLAGS = flags.FlagValues()
flags.DEFINE_string('batch_sizes', '1,64,1024', 'batch sizes, comma-separated', flag_values=FLAGS)
flags.DEFINE_integer(
    'num_iterations',
    None,
    "Levenberg-Marquardt iterations (default: mano.fit's)",
    flag_values=FLAGS,
)
flags.DEFINE_integer('repeats', 3, 'timed calls after the first', flag_values=FLAGS)
flags.DEFINE_string(
    'hand', 'procedural', "'procedural', or the path of a MANO_RIGHT.pkl", flag_values=FLAGS
)
flags.DEFINE_integer('seed', 0, 'seed of the random hands', flag_values=FLAGS)
flags.DEFINE_string('output', 'bench_results/fit.json', 'the JSON report', flag_values=FLAGS)


def main(argv: list[str]) -> int:
  prog = 'python -m diffhand_jax.bench fit'
  try:
    command_line.parse(FLAGS, argv, prog=prog, doc=__doc__)
    try:
      batches = [int(b) for b in FLAGS.batch_sizes.split(',') if b.strip()]
    except ValueError:
      batches = []
    if not batches or min(batches) < 1 or FLAGS.repeats < 0:
      raise command_line.usage_error(
          prog, '--batch_sizes must be positive integers, comma-separated; --repeats >= 0'
      )
  except command_line.Exit as done:
    return done.code
  model = mano.load_procedural() if FLAGS.hand == 'procedural' else mano.load(FLAGS.hand)
  iterations = FLAGS.num_iterations or mano.fit.__kwdefaults__['num_iterations']
  rows, results = [], []
  for batch in batches:
    r = measure(model, batch, iterations, FLAGS.repeats, FLAGS.seed)
    results.append(r)
    rows.append(
        [
            batch,
            iterations,
            r['error_mean_mm'],
            r['error_p95_mm'],
            r['error_max_mm'],
            r['first_call_s'],
            r['seconds'],
            r['seconds'] / batch * 1e3,
        ]
    )
  header = [
      'batch',
      'iterations',
      'mean error mm',
      'p95 mm',
      'max mm',
      'first call s (compile + run)',
      'fit s (median)',
      'ms per hand',
  ]
  common.report(
      'fit',
      FLAGS.output,
      f'mano.fit on in-range {FLAGS.hand} hands, {jax.default_backend()}',
      header,
      rows,
      results,
      hand=FLAGS.hand,
  )
  return 0


if __name__ == '__main__':
  import sys

  sys.exit(main(sys.argv[1:]))
