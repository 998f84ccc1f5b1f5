"""The one-scan DDIM sampler against a Python loop of jitted single steps.

  python -m diffhand_jax.bench sampler [--batch_sizes=1,64] [--num_steps=10] [--output=...]

Both run the same small per-vertex MLP denoiser on (B, 778, 3) with the same DDIM equations
(``diffusion.ddim_sample`` for the scan; the loop calls a jitted step once per timestep from Python).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax import diffusion
from diffhand_jax.benchmarks import common

NUM_VERTICES = 778
HIDDEN = 128


def init_mlp(key: jax.Array) -> dict[str, jax.Array]:
  """A per-vertex MLP (3 + time features → 128 → 128 → 3)."""
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      'w1': jax.random.normal(k1, (3 + 16, HIDDEN)) / np.sqrt(19.0), 'b1': jnp.zeros(HIDDEN),
      'w2': jax.random.normal(k2, (HIDDEN, HIDDEN)) / np.sqrt(HIDDEN), 'b2': jnp.zeros(HIDDEN),
      'w3': jax.random.normal(k3, (HIDDEN, 3)) / np.sqrt(HIDDEN), 'b3': jnp.zeros(3),
  }


def mlp_denoiser(params: dict[str, jax.Array], x_t: jax.Array, t: jax.Array) -> jax.Array:
  """x̂_0 from x_t (B, N, 3) and t (B,)."""
  freqs = jnp.exp(-jnp.arange(8) * np.log(1000.0) / 8)
  angles = t[:, None].astype(jnp.float32) * freqs
  t_feat = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # (B, 16)
  t_feat = jnp.broadcast_to(t_feat[:, None], x_t.shape[:2] + (16,))
  h = jax.nn.gelu(jnp.concatenate([x_t, t_feat], axis=-1) @ params['w1'] + params['b1'])
  h = jax.nn.gelu(h @ params['w2'] + params['b2'])
  return h @ params['w3'] + params['b3']


def make_scan_sampler(schedule: diffusion.Schedule, num_steps: int):
  @jax.jit
  def sample(params, x_T):
    return diffusion.ddim_sample(lambda x, t: mlp_denoiser(params, x, t), x_T, schedule,
                                 num_steps=num_steps)
  return sample


def make_loop_sampler(schedule: diffusion.Schedule, num_steps: int):
  """The same η = 0 update, one jitted call per step from a Python loop."""
  timesteps = diffusion.ddim_timesteps(schedule.num_timesteps, num_steps)

  @jax.jit
  def step(params, x_t, t_now, t_next):
    alpha_now = jnp.where(t_now >= 0, schedule.alphas_cumprod[jnp.maximum(t_now, 0)], 1.0)
    alpha_next = jnp.where(t_next >= 0, schedule.alphas_cumprod[jnp.maximum(t_next, 0)], 1.0)
    x0_hat = mlp_denoiser(params, x_t, jnp.full((x_t.shape[0],), t_now, jnp.int32))
    eps_hat = (x_t - jnp.sqrt(alpha_now) * x0_hat) / jnp.sqrt(1.0 - alpha_now)
    return jnp.sqrt(alpha_next) * x0_hat + jnp.sqrt(jnp.maximum(1.0 - alpha_next, 0.0)) * eps_hat

  def sample(params, x_T):
    x = x_T
    for t_now, t_next in zip(timesteps[:-1], timesteps[1:]):
      x = step(params, x, np.int32(t_now), np.int32(t_next))
    return x
  return sample


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog='python -m diffhand_jax.bench sampler', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch_sizes', default='1,64')
  parser.add_argument('--num_steps', type=int, default=10)
  parser.add_argument('--repeats', type=int, default=7)
  parser.add_argument('--output', default='bench_results/sampler.json')
  args = parser.parse_args(argv)

  schedule = diffusion.cosine_schedule(1000)
  params = init_mlp(jax.random.PRNGKey(0))
  scan_sampler = make_scan_sampler(schedule, args.num_steps)
  loop_sampler = make_loop_sampler(schedule, args.num_steps)
  rows, results = [], []
  for batch in [int(b) for b in args.batch_sizes.split(',')]:
    x_T = jax.random.normal(jax.random.PRNGKey(1), (batch, NUM_VERTICES, 3))
    np.testing.assert_allclose(np.asarray(scan_sampler(params, x_T)),
                               np.asarray(loop_sampler(params, x_T)), atol=1e-4)
    scan_t = common.time_fn(lambda: common.block(scan_sampler(params, x_T)), repeats=args.repeats)
    loop_t = common.time_fn(lambda: common.block(loop_sampler(params, x_T)), repeats=args.repeats)
    ratio = loop_t['median'] / scan_t['median']
    results.append({'batch': batch, 'num_steps': args.num_steps, 'scan_s': scan_t, 'loop_s': loop_t,
                    'loop_over_scan': ratio})
    rows.append([batch, args.num_steps, scan_t['median'] * 1e3, scan_t['min'] * 1e3, scan_t['max'] * 1e3,
                 loop_t['median'] * 1e3, loop_t['min'] * 1e3, loop_t['max'] * 1e3, ratio])
  header = ['batch', 'steps', 'scan ms (median)', 'scan min', 'scan max', 'loop ms (median)', 'loop min',
            'loop max', 'loop/scan']
  table = common.print_table('DDIM sampler: one lax.scan vs a Python loop of jitted steps (MLP denoiser)',
                             header, rows)
  common.write_json(args.output, {'benchmark': 'sampler', 'machine': common.machine(), 'results': results,
                                  'table': table})
  return 0


if __name__ == '__main__':
  import sys
  sys.exit(main(sys.argv[1:]))
