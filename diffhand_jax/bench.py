"""Benchmark entry point.

  python -m diffhand_jax.bench NAME [--flags]     # one benchmark
  python -m diffhand_jax.bench all                 # every benchmark, in turn
  python -m diffhand_jax.bench list                # what exists

Each benchmark prints a Markdown table and writes JSON (default ``bench_results/NAME.json``).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from diffhand_jax import benchmarks


def available() -> list[str]:
  return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name != 'common')


def main(argv: list[str]) -> int:
  names = available()
  if not argv or argv[0] in ('-h', '--help', 'list'):
    print(__doc__)
    print('benchmarks:', ', '.join(names))
    return 0 if argv else 2
  name, rest = argv[0], argv[1:]
  if name == 'all':
    for each in names:
      print(f'== {each}', flush=True)
      importlib.import_module(f'diffhand_jax.benchmarks.{each}').main(rest)
    return 0
  if name not in names:
    print(f'unknown benchmark {name!r}; choose one of: {", ".join(names)}, all', file=sys.stderr)
    return 2
  return importlib.import_module(f'diffhand_jax.benchmarks.{name}').main(rest) or 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
