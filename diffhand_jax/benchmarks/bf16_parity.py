"""bfloat16 compute against float32: the training losses of the same run in both dtypes.

  python -m diffhand_jax.bench bf16_parity [--training_config=synthetic] [--steps=200] [--output=...]

Trains the config's model from the same initial state on the same batches (the config's own training
data and augmentation, through `input_pipeline.train_batches_from_config`): with
``config.model.dtype='float32'``, with ``'bfloat16'`` (params and optimiser state float32 both times),
and, as the yardstick, in float32 again from the initial params rounded to bfloat16 and back. Reports, against the float32 run, the
relative difference of the total loss |x − f32| / f32 per step and per mean over 20 steps (what a
training log shows): median, 90th percentile and maximum, the maximum over the first 20 steps, and the
difference of the mean loss over the last 50 steps. Training is chaotic: any change of rounding sends
the runs apart after a few dozen steps, and the yardstick row shows how far a perturbation of
bfloat16's size takes them without any bfloat16 arithmetic. The synthetic config (the CPU demo) builds
its data on first use.
"""

from __future__ import annotations

from typing import Any

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffhand_jax import command_line
from diffhand_jax.benchmarks import common
from diffhand_jax.data import input_pipeline, splits
from diffhand_jax.runs import run_config
from diffhand_jax.training import sharding, step as step_lib

WINDOW = 20  # steps per logged mean, as a training log reports them


def losses(
    config: ml_collections.ConfigDict,
    dtype: str,
    batches: list[dict],
    *,
    round_init_to_bfloat16: bool = False,
) -> np.ndarray:
  """The total loss of each step (steps,) float64 of training ``config`` in ``dtype`` on ``batches``;
  ``round_init_to_bfloat16`` rounds the initial params (and EMA) to bfloat16 and back, a perturbation
  of bfloat16's size that leaves the computation float32."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.dtype = dtype
  topology, model, schedule, optimizer, mesh = step_lib.build_components(config)
  _, shardings = sharding.sharded_abstract_state(config, model, optimizer, mesh)
  state = step_lib.init_sharded_state(
      config, model, optimizer, shardings, jax.random.PRNGKey(config.seed)
  )
  if round_init_to_bfloat16:
    rounded = lambda x: x.astype(jnp.bfloat16).astype(x.dtype)
    state = state.replace(
        params=jax.tree_util.tree_map(rounded, state.params),
        ema_params=jax.tree_util.tree_map(rounded, state.ema_params),
    )
  for leaf in jax.tree_util.tree_leaves((state.params, state.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.dtype != jnp.float32:
      raise AssertionError(f'{dtype} run: a param or optimiser leaf is {leaf.dtype}')
  step_fn = step_lib.jit_train_step(config, model, optimizer, schedule, topology, mesh, shardings)
  data_sharding = sharding.batch_sharding(mesh)
  out = []
  for batch in batches:
    state, parts = step_fn(
        state, sharding.to_global({k: batch[k] for k in step_lib.TRAIN_KEYS}, data_sharding)
    )
    out.append(parts['total'])
  return np.array([float(v) for v in out], np.float64)


def compare(float32: np.ndarray, bfloat16: np.ndarray, window: int = WINDOW) -> dict[str, Any]:
  """Relative differences |bf16 − f32| / |f32| per step and per window mean."""
  per_step = np.abs(bfloat16 - float32) / np.abs(float32)
  count = len(float32) // window * window
  means32 = float32[:count].reshape(-1, window).mean(axis=1)
  means16 = bfloat16[:count].reshape(-1, window).mean(axis=1)
  per_window = np.abs(means16 - means32) / np.abs(means32)
  summary = {}
  for name, values in (('step', per_step), ('window', per_window)):
    if values.size:
      summary[name] = {
          'median': float(np.median(values)),
          'p90': float(np.percentile(values, 90)),
          'max': float(values.max()),
      }
  return summary


FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'training_config', 'synthetic', 'a config under configs/, by name or path', flag_values=FLAGS
)
flags.DEFINE_integer('steps', 200, 'training steps in each dtype', flag_values=FLAGS)
flags.DEFINE_string(
    'output', 'bench_results/bf16_parity.json', 'the JSON report', flag_values=FLAGS
)


def main(argv: list[str]) -> int:
  try:
    command_line.parse(FLAGS, argv, prog='python -m diffhand_jax.bench bf16_parity', doc=__doc__)
  except command_line.Exit as done:
    return done.code
  config = run_config.config_file(FLAGS.training_config)
  arrays = splits.open_split(
      config.dataset, config.dataset.train_split, config.dataset.get('max_train_examples')
  )
  config.dataset.num_workers = 0  # the batches do not depend on it; no worker processes here
  iterator = input_pipeline.train_batches_from_config(
      arrays,
      config.dataset,
      batch_size=config.batch_size,
      seed=config.seed,
      start_step=0,
      vertex_scale=config.model.vertex_scale,
      image_size=config.model.img_size,
  )
  batches = [next(iterator) for _ in range(FLAGS.steps)]
  iterator.close()
  float32 = losses(config, 'float32', batches)
  bfloat16 = losses(config, 'bfloat16', batches)
  perturbed = losses(config, 'float32', batches, round_init_to_bfloat16=True)
  summary = compare(float32, bfloat16)
  reference = compare(float32, perturbed)
  early = min(WINDOW, len(float32))
  tail = slice(-min(50, len(float32)), None)
  rows = []
  for label, other, stats in (
      ('bfloat16 compute', bfloat16, summary),
      ('float32, init rounded to bfloat16', perturbed, reference),
  ):
    rows.append(
        [label]
        + [
            f'{100 * stats[name][q]:.2f}%'
            for name in ('step', 'window')
            for q in ('median', 'p90', 'max')
        ]
        + [
            f'{100 * np.max(np.abs(other[:early] - float32[:early]) / float32[:early]):.2f}%',
            f'{100 * abs(other[tail].mean() - float32[tail].mean()) / float32[tail].mean():.2f}%',
        ]
    )
  summary = {'bfloat16': summary, 'float32_bf16_rounded_init': reference}
  common.report(
      'bf16_parity',
      FLAGS.output,
      f'bfloat16 vs float32 total loss, {FLAGS.training_config} config, {FLAGS.steps} steps, batch '
      f'{config.batch_size}, {jax.default_backend()} (final f32 {float32[-WINDOW:].mean():.4f}, '
      f'bf16 {bfloat16[-WINDOW:].mean():.4f}, mean of the last {WINDOW})',
      [
          'run against float32',
          'per step: median',
          'p90',
          'max',
          f'per {WINDOW}-step mean: median',
          'p90',
          'max',
          f'max over the first {early} steps',
          'mean of the last 50 steps',
      ],
      rows,
      [
          {
              'summary': summary,
              'float32': float32.tolist(),
              'bfloat16': bfloat16.tolist(),
              'float32_bf16_rounded_init': perturbed.tolist(),
          }
      ],
      settings={'config': FLAGS.training_config, 'steps': FLAGS.steps, 'window': WINDOW},
  )
  return 0


if __name__ == '__main__':
  import sys

  sys.exit(main(sys.argv[1:]))
