"""bfloat16 compute against float32: the training losses of the same run in both dtypes.

  python -m diffhand_jax.bench bf16_parity [--config=synthetic] [--steps=200] [--output=...]

Trains the config's model twice from the same initial state on the same batches (the config's own
training data and augmentation, through `input_pipeline.train_batches`): once with
``config.model.dtype='float32'`` and once with ``'bfloat16'``, params and optimiser state in float32 both
times. Reports, per step, the relative difference of the total loss, |bf16 − f32| / f32: its median,
90th percentile and maximum over the steps, and the same for the mean loss over windows of 20 steps
(what a training log shows). The synthetic config (the CPU demo) builds its data on first use.
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
from diffhand_jax.data import input_pipeline
from diffhand_jax.runs import run_config
from diffhand_jax.training import sharding, step as step_lib

WINDOW = 20  # steps per logged mean, as a training log reports them


def losses(config: ml_collections.ConfigDict, dtype: str, batches: list[dict]) -> np.ndarray:
  """The total loss of each step (steps,) float64 of training ``config`` in ``dtype`` on ``batches``."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.dtype = dtype
  topology, model, schedule, optimizer, mesh = step_lib.build_components(config)
  _, shardings = sharding.sharded_abstract_state(config, model, optimizer, mesh)
  state = step_lib.init_sharded_state(
      config, model, optimizer, shardings, jax.random.PRNGKey(config.seed)
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
    'config', 'synthetic', 'a config under configs/, by name or path', flag_values=FLAGS
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
  config = run_config.config_file(FLAGS.config)
  arrays = input_pipeline.open_split(
      config.dataset, config.dataset.train_split, config.dataset.get('max_train_examples')
  )
  iterator = input_pipeline.train_batches(
      arrays,
      batch_size=config.batch_size,
      seed=config.seed,
      start_step=0,
      vertex_scale=config.model.vertex_scale,
      image_size=config.model.img_size,
      colour_strength=config.dataset.get('colour_jitter', 0.0),
      crop_margin=config.dataset.get('crop_margin'),
      augment=input_pipeline.augment_options(config.dataset),
      num_workers=0,
  )
  batches = [next(iterator) for _ in range(FLAGS.steps)]
  iterator.close()
  float32 = losses(config, 'float32', batches)
  bfloat16 = losses(config, 'bfloat16', batches)
  summary = compare(float32, bfloat16)
  rows = [
      [
          f'{name} ({"1 step" if name == "step" else f"mean of {WINDOW} steps"})',
          f'{100 * s["median"]:.2f}%',
          f'{100 * s["p90"]:.2f}%',
          f'{100 * s["max"]:.2f}%',
      ]
      for name, s in summary.items()
  ]
  common.report(
      'bf16_parity',
      FLAGS.output,
      f'bfloat16 vs float32 total loss, {FLAGS.config} config, {FLAGS.steps} steps, batch '
      f'{config.batch_size}, {jax.default_backend()} (final f32 {float32[-WINDOW:].mean():.4f}, '
      f'bf16 {bfloat16[-WINDOW:].mean():.4f}, mean of the last {WINDOW})',
      ['relative difference', 'median', '90th percentile', 'max'],
      rows,
      [
          {
              'summary': summary,
              'float32': float32.tolist(),
              'bfloat16': bfloat16.tolist(),
          }
      ],
      settings={'config': FLAGS.config, 'steps': FLAGS.steps, 'window': WINDOW},
  )
  return 0


if __name__ == '__main__':
  import sys

  sys.exit(main(sys.argv[1:]))
