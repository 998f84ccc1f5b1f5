"""Where a jitted function of the model spends its time: a `jax.profiler` trace, summarised per XLA op.

  python -m diffhand_jax.profiling encoder|decoder|reconstruct [--preset=cpu_demo] [--batch=1] [--hlo]
      [--calls=3] [--limit=25] [--trace_dir=DIR]

It profiles one encoder pass, one decoder pass or the whole `reconstruct` (10 DDIM steps) of a model
preset with random weights, and prints the time per XLA op. Op names are HLO instruction names; --hlo
also prints their HLO lines. The trace reading and the summary are `diffhand_jax.benchmarks.trace`
(`trace.top_ops(fn, *args)` profiles any jitted function).
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import flags
import jax

from diffhand_jax.benchmarks import trace
from diffhand_jax import command_line

PROG = 'python -m diffhand_jax.profiling'

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'preset', 'cpu_demo', 'the model preset (diffhand_jax/runs/model_presets.py)', flag_values=FLAGS
)
flags.DEFINE_integer('batch', 1, 'images per call', flag_values=FLAGS)
flags.DEFINE_integer('calls', 3, 'profiled calls (after one to compile)', flag_values=FLAGS)
flags.DEFINE_integer('limit', 25, 'ops to print', flag_values=FLAGS)
flags.DEFINE_string(
    'trace_dir', None, 'keep the trace here (default: a temp dir)', flag_values=FLAGS
)
flags.DEFINE_bool('hlo', False, 'also print the HLO lines of the top ops', flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command on `argv` (the target and the flags, without the program name); returns the exit
  status."""
  try:
    rest = command_line.parse(FLAGS, argv, prog=PROG, doc=__doc__, max_positional=1)
    if len(rest) != 1 or rest[0] not in trace.TARGETS:
      raise command_line.usage_error(
          PROG,
          f'name one target: {"|".join(trace.TARGETS)}' + (f' (got {rest[0]!r})' if rest else ''),
      )
  except command_line.Exit as done:
    return done.code
  fn, fn_args = trace.target(rest[0], FLAGS.preset, FLAGS.batch)
  rows = trace.top_ops(fn, *fn_args, calls=FLAGS.calls, trace_dir=FLAGS.trace_dir)
  trace.print_top_ops(rows, FLAGS.limit)
  if FLAGS.hlo:
    text = jax.jit(fn).lower(*fn_args).compile().as_text()
    print(trace.hlo_of(text, [r[2] for r in rows[: FLAGS.limit]]))
  return 0


if __name__ == '__main__':
  sys.exit(main())
