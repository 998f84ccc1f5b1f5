"""The full `reconstruct` (one encoder pass + a one-scan DDIM) against its parts and against a Python loop.

  python -m diffhand_jax.bench sampler [--preset=cpu_demo] [--batch_sizes=1,64] [--num_steps=10]
      [--encoder=hrnet_w64 --img_size=256]

Three ways to get the same meshes from the same params, images and x_T, for a model preset
(diffhand_jax/runs/model_presets.py, random weights):
  reconstruct  `diffhand.make_reconstruct_fn`: one jitted program, the image encoded once, the DDIM
               steps in one `lax.scan`.
  parts        one jitted encoder pass plus S separately jitted decoder passes, each timed alone and
               summed: the compute that any sampler must do. reconstruct/parts is the scan's overhead.
  dispatch     one call of a jitted function taking the loop step's arguments and doing nothing: the
               per-step price of leaving the scan for Python.
  loop         what a user writes without the scan: the jitted encoder, then a Python loop of S calls of
               one jitted DDIM step (decoder pass + update). loop/reconstruct is the scan's gain.
All three are checked to give the same vertices before anything is timed. The default preset is
`cpu_demo` on a CPU and `paper` on an accelerator; --encoder swaps the preset's encoder for another
(an HRNet, with its BatchNorm statistics, or a timm ViT at its own size).
"""

from __future__ import annotations

from typing import Any

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax import diffusion
from diffhand_jax.benchmarks import common
from diffhand_jax import command_line
from diffhand_jax.models import diffhand
from diffhand_jax.runs import model_presets


def build(
    preset: str, batch: int, encoder: str | None = None, img_size: int | None = None
) -> tuple[Any, Any, Any, Any]:
  """A model of the preset with random variables ({'params'[, 'batch_stats']}), images (B, H, W, 3) and
  x_T (1, B, N, 3). ``encoder`` replaces the preset's encoder (its overrides unset)."""
  config = common.model_config(preset, encoder, img_size)
  model = diffhand.build_model(config)
  variables = diffhand.init_variables(model, jax.random.PRNGKey(0), config.img_size)
  variables = diffhand.model_variables(variables['params'], variables['batch_stats'])
  size = int(config.img_size)
  images = jax.random.normal(jax.random.PRNGKey(1), (batch, size, size, 3), jnp.float32)
  x_T = jax.random.normal(jax.random.PRNGKey(2), (1, batch, model.num_vertices, 3), jnp.float32)
  return model, variables, images, x_T


def make_samplers(model, schedule: diffusion.Schedule, num_steps: int) -> dict[str, Any]:
  """The jitted callables of the three ways (see the module docstring). Each takes the model's variables
  ({'params'[, 'batch_stats']}) first."""
  reconstruct_fn = diffhand.make_reconstruct_fn(model, num_steps=num_steps, schedule=schedule)

  def reconstruct(variables, images, key, noise=None):
    return reconstruct_fn(
        variables['params'], images, key, noise=noise, batch_stats=variables.get('batch_stats')
    )

  encode = jax.jit(lambda v, x: model.apply(v, x, method=diffhand.DiffHand.encode))
  denoise = jax.jit(lambda v, c, x, t: model.apply(v, c, x, t, method=diffhand.DiffHand.denoise)[0])
  timesteps = diffusion.ddim_timesteps(schedule.num_timesteps, num_steps)

  @jax.jit
  def step(variables, cond, x_t, t_now, t_next):
    alpha_now = jnp.where(t_now >= 0, schedule.alphas_cumprod[jnp.maximum(t_now, 0)], 1.0)
    alpha_next = jnp.where(t_next >= 0, schedule.alphas_cumprod[jnp.maximum(t_next, 0)], 1.0)
    x0_hat = model.apply(
        variables,
        cond,
        x_t,
        jnp.full((x_t.shape[0],), t_now, jnp.int32),
        method=diffhand.DiffHand.denoise,
    )[0]
    eps_hat = (x_t - jnp.sqrt(alpha_now) * x0_hat) / jnp.sqrt(1.0 - alpha_now)
    return jnp.sqrt(alpha_next) * x0_hat + jnp.sqrt(jnp.maximum(1.0 - alpha_next, 0.0)) * eps_hat

  def loop(params, images, x_T):
    cond = encode(params, images)
    x = x_T
    for t_now, t_next in zip(timesteps[:-1], timesteps[1:]):
      x = step(params, cond, x, np.int32(t_now), np.int32(t_next))
    return x

  noop = jax.jit(lambda params, cond, x_t, t_now, t_next: x_t + 0.0)
  return {
      'reconstruct': reconstruct,
      'encode': encode,
      'denoise': denoise,
      'step': step,
      'loop': loop,
      'noop': noop,
      'timesteps': timesteps,
  }


def measure(
    preset: str,
    batch: int,
    num_steps: int,
    repeats: int,
    encoder: str | None = None,
    img_size: int | None = None,
) -> dict[str, Any]:
  model, params, images, x_T = build(preset, batch, encoder, img_size)
  schedule = diffusion.cosine_schedule(1000)
  fns = make_samplers(model, schedule, num_steps)
  key = jax.random.PRNGKey(3)
  scan_vertices = fns['reconstruct'](params, images, key, noise=x_T)['vertices'][:, 0]
  loop_vertices = fns['loop'](params, images, x_T[0])
  np.testing.assert_allclose(
      np.asarray(scan_vertices), np.asarray(loop_vertices), atol=1e-3, rtol=1e-3
  )

  cond = common.block(fns['encode'](params, images))
  t = jnp.full((batch,), int(fns['timesteps'][0]), jnp.int32)
  timed = {
      'reconstruct': common.time_fn(
          lambda: common.block(fns['reconstruct'](params, images, key, noise=x_T)), repeats=repeats
      ),
      'encoder': common.time_fn(
          lambda: common.block(fns['encode'](params, images)), repeats=repeats
      ),
      'decoder': common.time_fn(
          lambda: common.block(fns['denoise'](params, cond, x_T[0], t)), repeats=repeats
      ),
      'loop': common.time_fn(
          lambda: common.block(fns['loop'](params, images, x_T[0])), repeats=repeats
      ),
      # What one loop iteration costs beyond its compute: a jitted call taking the same arguments.
      'dispatch': common.time_fn(
          lambda: common.block(fns['noop'](params, cond, x_T[0], np.int32(1), np.int32(0))),
          repeats=repeats,
      ),
  }
  parts = timed['encoder']['median'] + num_steps * timed['decoder']['median']
  return {
      'preset': preset,
      'encoder': encoder or model_presets.get_model_config(preset).encoder,
      'batch': batch,
      'num_steps': num_steps,
      'seconds': timed,
      'parts_s': parts,
      'reconstruct_over_parts': timed['reconstruct']['median'] / parts,
      'loop_over_reconstruct': timed['loop']['median'] / timed['reconstruct']['median'],
  }


FLAGS = flags.FlagValues()
flags.DEFINE_string('preset', None, 'default: cpu_demo on CPU, paper otherwise', flag_values=FLAGS)
flags.DEFINE_string('batch_sizes', '1,64', 'batch sizes, comma-separated', flag_values=FLAGS)
flags.DEFINE_integer('num_steps', 10, 'DDIM steps', flag_values=FLAGS)
flags.DEFINE_integer('repeats', 5, 'timed repeats', flag_values=FLAGS)
flags.DEFINE_string(
    'encoder', None, "another encoder than the preset's (e.g. hrnet_w64)", flag_values=FLAGS
)
flags.DEFINE_integer('img_size', None, "input size (default: the preset's)", flag_values=FLAGS)
flags.DEFINE_string('output', 'bench_results/sampler.json', 'the JSON report', flag_values=FLAGS)


def main(argv: list[str]) -> int:
  try:
    command_line.parse(FLAGS, argv, prog='python -m diffhand_jax.bench sampler', doc=__doc__)
  except command_line.Exit as done:
    return done.code
  preset = FLAGS.preset or ('cpu_demo' if jax.default_backend() == 'cpu' else 'paper')

  rows, results = [], []
  for batch in [int(b) for b in FLAGS.batch_sizes.split(',')]:
    r = measure(preset, batch, FLAGS.num_steps, FLAGS.repeats, FLAGS.encoder, FLAGS.img_size)
    results.append(r)
    s = r['seconds']
    rows.append(
        [
            preset if FLAGS.encoder is None else f'{preset}, {FLAGS.encoder}',
            batch,
            FLAGS.num_steps,
            s['reconstruct']['median'] * 1e3,
            f"{s['reconstruct']['min'] * 1e3:.4g}-{s['reconstruct']['max'] * 1e3:.4g}",
            s['encoder']['median'] * 1e3,
            s['decoder']['median'] * 1e3,
            r['parts_s'] * 1e3,
            s['loop']['median'] * 1e3,
            f"{s['loop']['min'] * 1e3:.4g}-{s['loop']['max'] * 1e3:.4g}",
            s['dispatch']['median'] * 1e6,
            r['reconstruct_over_parts'],
            r['loop_over_reconstruct'],
        ]
    )
  header = [
      'preset',
      'batch',
      'steps',
      'reconstruct ms (median)',
      'min-max',
      'encoder ms',
      'decoder ms (one pass)',
      'parts ms (enc + S dec)',
      'loop ms (median)',
      'min-max',
      'dispatch µs per loop step',
      'reconstruct/parts',
      'loop/reconstruct',
  ]
  common.report(
      'sampler',
      FLAGS.output,
      f'reconstruct (one scan) vs its parts vs a Python loop, ' f'{jax.default_backend()}',
      header,
      rows,
      results,
  )
  return 0


if __name__ == '__main__':
  import sys

  sys.exit(main(sys.argv[1:]))
