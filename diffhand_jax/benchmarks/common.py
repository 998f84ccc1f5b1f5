"""Timing, machine description and reporting shared by the benchmarks."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Sequence

import jax

from diffhand_jax.runs import files, model_presets


def model_config(preset: str, encoder: str | None = None, img_size: int | None = None) -> Any:
  """A model preset's config, with ``encoder`` (its overrides unset) and ``img_size`` in place of the
  preset's when given: how the benchmarks measure another encoder (an HRNet, say) in a preset."""
  config = model_presets.get_model_config(preset)
  if encoder:
    model_presets.set_encoder(config, encoder)
  if img_size:
    config.img_size = img_size
  return config


def block(tree: Any) -> Any:
  """Waits for every array in ``tree``: JAX dispatch is asynchronous."""
  return jax.block_until_ready(tree)


def time_fn(
    fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1, min_seconds: float = 0.2
) -> dict[str, float]:
  """Times ``fn()`` (which must block) after ``warmup`` calls.

  Each repeat runs ``fn`` enough times to last about ``min_seconds`` and reports seconds per call, so
  short calls are not dominated by timer resolution.

  Returns:
    {'min': s, 'median': s, 'max': s, 'calls_per_repeat': n} in seconds per call.
  """
  return time_interleaved({'fn': fn}, repeats=repeats, warmup=warmup, min_seconds=min_seconds)['fn']


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int = 7,
    warmup: int = 1,
    min_seconds: float = 0.2,
) -> dict[str, dict[str, float]]:
  """`time_fn` for several callables, alternating them repeat by repeat, so that a slow spell of the
  machine (another process, frequency changes) falls on all of them alike. Returns time_fn's dict per
  name."""
  calls = {}
  for name, fn in fns.items():
    for _ in range(warmup):
      fn()
    start = time.perf_counter()
    fn()
    calls[name] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-9)))
  per_call: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      for _ in range(calls[name]):
        fn()
      per_call[name].append((time.perf_counter() - start) / calls[name])
  return {
      name: {
          'min': min(v),
          'median': statistics.median(v),
          'max': max(v),
          'calls_per_repeat': calls[name],
      }
      for name, v in per_call.items()
  }


def machine() -> dict[str, Any]:
  """What the figures were measured on."""
  cpu_model = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu_model = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  devices = jax.devices()
  return {
      'platform': platform.platform(),
      'python': platform.python_version(),
      'cpu': cpu_model,
      'cpu_count': os.cpu_count(),
      'jax': jax.__version__,
      'backend': jax.default_backend(),
      'devices': [str(d.device_kind) for d in devices],
  }


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """Prints (and returns) a Markdown table, so it can be pasted into the README as is."""

  def fmt(value):
    if isinstance(value, float):
      return f'{value:.4g}'
    return str(value)

  lines = [
      f'### {title}',
      '',
      '| ' + ' | '.join(header) + ' |',
      '|' + '|'.join('---' for _ in header) + '|',
  ]
  lines += ['| ' + ' | '.join(fmt(v) for v in row) + ' |' for row in rows]
  text = '\n'.join(lines)
  print(text, flush=True)
  return text


def report(
    benchmark: str,
    output: str,
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    results: Any,
    **extra: Any,
) -> str:
  """Prints the benchmark's table and writes ``output`` as JSON: {'benchmark', 'machine', **extra,
  'results', 'table'}. Returns the table."""
  table = print_table(title, header, rows)
  write_json(
      output,
      {'benchmark': benchmark, 'machine': machine(), **extra, 'results': results, 'table': table},
  )
  return table


def write_json(path: str, payload: dict[str, Any]) -> None:
  """``payload`` as indented JSON at ``path``, never half-written; prints "wrote PATH"."""
  files.write_json_atomic(path, payload)
  print(f'wrote {path}', flush=True)


def trained_workdir_missing(name: str, workdir: str) -> bool:
  """True (after saying so) when ``workdir`` holds no trained run: the benchmark is skipped, since `bench
  all` runs every benchmark with its defaults and a missing run is no failure."""
  if os.path.exists(os.path.join(workdir, 'config.json')):
    return False
  print(
      f'{name}: skipped, {workdir!r} is not a trained workdir (train one with '
      '`python -m diffhand_jax.main --config=configs/synthetic.py --workdir=runs/synthetic`)'
  )
  return True
