"""The attention core's implementations against each other, on the shapes the models use.

  python -m diffhand_jax.bench attention [--shapes=8x2x778x778x16,...] [--backward=true]
      [--implementations=heads_major,sliced,xla] [--repeats=5] [--dtype=float32]

Each shape is B x heads x T x S x head_dim: queries (B, T, heads, d), keys and values (B, S, heads, d).
For each shape and implementation of `models/attention.dot_product_attention` it times, jit-compiled in
float32, the forward pass and (with --backward) the forward and backward pass of a scalar loss, and
reports the largest difference of the output from the first implementation's, and from the float32
answer (the CPU path, heads-major, computed in float32 on the same inputs, rounded to --dtype): with
--dtype=bfloat16 on an NVIDIA GPU, `cudnn` against `heads_major` checks cuDNN's fused kernel against
the CPU path (`bench gpu` does). `default` marks the one
that the core picks on this machine. The default shapes are the table's in docs/performance.md: the
decoder's full-resolution block (778 x 778) in training (B = 8) and in sampling (B = 80: 20 images x 4
hypotheses), the U shape's first level (195 x 195), the cross-attention to the image (778 x 64), and
ViTs at 224 and 256.
"""

from __future__ import annotations

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax import command_line
from diffhand_jax.benchmarks import common
from diffhand_jax.models import attention

DEFAULT_SHAPES = (
    '8x2x778x778x16,80x2x778x778x16,80x2x300x300x16,8x2x195x195x16,80x2x195x195x16,'
    '80x2x778x64x16,8x6x197x197x64,4x16x257x257x64'
)

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'shapes', DEFAULT_SHAPES, 'B x heads x T x S x head_dim, comma-separated', flag_values=FLAGS
)
flags.DEFINE_string(
    'implementations',
    'heads_major,sliced,xla',
    f'comma-separated, of {attention.IMPLEMENTATIONS[1:]}',
    flag_values=FLAGS,
)
flags.DEFINE_bool('backward', True, 'also time the forward and backward pass', flag_values=FLAGS)
flags.DEFINE_integer(
    'repeats', 5, 'timed repeats (alternating the implementations)', flag_values=FLAGS
)
flags.DEFINE_enum(
    'dtype', 'float32', ('float32', 'bfloat16'), 'the inputs and compute dtype', flag_values=FLAGS
)
flags.DEFINE_string('output', 'bench_results/attention.json', 'the JSON report', flag_values=FLAGS)


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
  """'8x2x778x778x16' → (B, heads, T, S, head_dim); ValueError unless five positive integers."""
  parts = tuple(int(p) for p in text.strip().split('x'))
  if len(parts) != 5 or min(parts) < 1:
    raise ValueError(text)
  return parts


def measure(
    shape, implementations, backward: bool, repeats: int, dtype: str = 'float32'
) -> list[dict]:
  """One result per implementation: forward (and forward + backward) seconds, and the output's max
  |difference| from the first implementation's and from the float32 heads-major answer."""
  batch, heads, tokens, keys, head_dim = shape
  rng = np.random.default_rng(0)
  query = jnp.asarray(rng.normal(size=(batch, tokens, heads, head_dim)), dtype)
  key, value = (
      jnp.asarray(rng.normal(size=(batch, keys, heads, head_dim)), dtype) for _ in range(2)
  )
  as_f32 = lambda x: x.astype(jnp.float32)
  exact = np.asarray(
      jax.jit(
          lambda q, k, v: attention.dot_product_attention(q, k, v, implementation='heads_major')
      )(as_f32(query), as_f32(key), as_f32(value))
  )
  forward, gradient = {}, {}
  for name in implementations:
    core = lambda q, k, v, name=name: attention.dot_product_attention(q, k, v, implementation=name)
    forward[name] = jax.jit(core)
    gradient[name] = jax.jit(
        jax.grad(lambda q, k, v, core=core: jnp.sum(core(q, k, v) ** 2), argnums=(0, 1, 2))
    )
  outputs = {
      name: np.asarray(fn(query, key, value)).astype(np.float32) for name, fn in forward.items()
  }
  first = outputs[implementations[0]]
  passes = {'forward': forward, 'backward': gradient} if backward else {'forward': forward}
  calls = {
      f'{name} {kind}': (lambda fn=fn: common.block(fn(query, key, value)))
      for kind, fns in passes.items()
      for name, fn in fns.items()
  }
  times = common.time_interleaved(calls, repeats=repeats)
  chosen = attention.default_implementation(dtype, head_dim, (batch, heads, tokens, keys))
  return [
      {
          'shape': list(shape),
          'implementation': name,
          'default': name == chosen,
          'forward_ms': times[f'{name} forward']['median'] * 1e3,
          'forward_backward_ms': (
              times[f'{name} backward']['median'] * 1e3 if backward else float('nan')
          ),
          'max_abs_difference': float(np.abs(outputs[name] - first).max()),
          'max_abs_error_vs_float32': float(np.abs(outputs[name] - exact).max()),
          'dtype': dtype,
      }
      for name in implementations
  ]


def main(argv: list[str]) -> int:
  prog = 'python -m diffhand_jax.bench attention'
  try:
    command_line.parse(FLAGS, argv, prog=prog, doc=__doc__)
    try:
      shapes = [parse_shape(s) for s in FLAGS.shapes.split(',') if s.strip()]
    except ValueError as bad:
      raise command_line.usage_error(
          prog, f'--shapes: {bad} is not B x heads x T x S x head_dim (five positive integers)'
      ) from None
    implementations = [i.strip() for i in FLAGS.implementations.split(',') if i.strip()]
    unknown = [i for i in implementations if i not in attention.IMPLEMENTATIONS[1:]]
    if not shapes or not implementations or unknown or FLAGS.repeats < 1:
      raise command_line.usage_error(
          prog,
          f'need --shapes, --implementations of {attention.IMPLEMENTATIONS[1:]} '
          f'(unknown: {unknown}), and --repeats >= 1',
      )
    if 'cudnn' in implementations and jax.default_backend() != 'gpu':
      raise command_line.usage_error(
          prog, f"--implementations: 'cudnn' needs an NVIDIA GPU; this is {jax.default_backend()}"
      )
  except command_line.Exit as done:
    return done.code
  results, rows = [], []
  for shape in shapes:
    print(f'attention {"x".join(map(str, shape))}', flush=True)
    for r in measure(shape, implementations, FLAGS.backward, FLAGS.repeats, FLAGS.dtype):
      results.append(r)
      rows.append(
          [
              ' × '.join(map(str, shape)),
              r['implementation'] + (' (default)' if r['default'] else ''),
              r['forward_ms'],
              r['forward_backward_ms'],
              r['max_abs_difference'],
              r['max_abs_error_vs_float32'],
          ]
      )
  header = [
      'B × heads × T × S × d',
      'implementation',
      'forward ms',
      'forward + backward ms',
      'max |Δ| vs the first',
      'max |Δ| vs float32',
  ]
  common.report(
      'attention',
      FLAGS.output,
      f'attention core, {FLAGS.dtype}, {jax.default_backend()}',
      header,
      rows,
      results,
  )
  return 0


if __name__ == '__main__':
  import sys

  sys.exit(main(sys.argv[1:]))
