"""Benchmark entry point.

  python -m diffhand_jax.bench NAME [--flags]     # one benchmark
  python -m diffhand_jax.bench all                 # every benchmark, in turn, with its defaults
  python -m diffhand_jax.bench gpu                 # on a GPU, first: what the paper configs need (8 min)
  python -m diffhand_jax.bench list                # what exists
  diffhand-bench NAME [--flags]                    # the same, as the installed command

Each benchmark prints a Markdown table and writes JSON (default ``bench_results/NAME.json``). Each has
absl flags of its own (``python -m diffhand_jax.bench NAME --help``), held in the module's own
`flags.FlagValues`, so two benchmarks may both have e.g. --batch.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import Sequence

from diffhand_jax import benchmarks

# `all` runs the peer comparisons first; anything else found in benchmarks/ follows in name order.
ORDER = ('encoder', 'sampler', 'train', 'input', 'model_cost', 'hypotheses')
# Modules of benchmarks/ that the benchmarks share, not benchmarks themselves.
HELPERS = ('common', 'trace')
# Benchmarks that `all` leaves out: `gpu` runs the others itself, on a GPU's shapes.
NOT_IN_ALL = ('gpu',)


def available() -> list[str]:
  found = {m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name not in HELPERS}
  return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def main(argv: Sequence[str] | None = None) -> int:
  """Runs `argv` (the benchmark's name and its flags; None: sys.argv[1:]); returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  names = available()
  if not argv or argv[0] in ('-h', '--help', 'list'):
    print(__doc__)
    print('benchmarks:', ', '.join(names))
    return 0 if argv else 2
  name, rest = argv[0], argv[1:]
  if name == 'all':
    if rest:
      print(
          '`bench all` runs every benchmark with its defaults; pass flags to one benchmark at a time',
          file=sys.stderr,
      )
      return 2
    failed = []
    for each in [n for n in names if n not in NOT_IN_ALL]:
      print(f'== {each}', flush=True)
      try:
        code = importlib.import_module(f'diffhand_jax.benchmarks.{each}').main([]) or 0
      except Exception as error:  # one broken benchmark should not hide the others' figures
        print(f'{each}: failed: {type(error).__name__}: {error}', file=sys.stderr, flush=True)
        code = 1
      if code:
        failed.append(each)
    if failed:
      print(f'failed: {", ".join(failed)}', file=sys.stderr)
    return 1 if failed else 0
  if name not in names:
    print(f'unknown benchmark {name!r}; choose one of: {", ".join(names)}, all', file=sys.stderr)
    return 2
  return importlib.import_module(f'diffhand_jax.benchmarks.{name}').main(rest) or 0


if __name__ == '__main__':
  sys.exit(main())
