"""Where a jitted function spends its time: a `jax.profiler` trace, summarised per XLA op.

  from diffhand_jax.benchmarks import trace
  rows = trace.top_ops(fn, *args, calls=3)      # [(ms per call, count per call, op name, thread), ...]
  trace.print_top_ops(rows)

The trace is the one `jax.profiler.trace` writes (open it in TensorBoard / xprof for the timeline); this
module reads its XSpace protobuf directly (the copy of the schema that TensorFlow ships), so a summary needs
no extra package. Op names are HLO instruction names: `hlo_of(compiled.as_text(), names)` finds their
lines. `target` builds the functions that `python -m diffhand_jax.profiling` profiles; the train
benchmark profiles its train step with `top_ops`.
"""

from __future__ import annotations

import collections
import glob
import os
import tempfile
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from diffhand_jax import diffusion
from diffhand_jax.benchmarks import sampler

# What `python -m diffhand_jax.profiling` can profile (see `target`).
TARGETS = ('encoder', 'decoder', 'reconstruct')

# Events that wrap other events (whole executions, thread-pool waits), not ops of the program.
_WRAPPERS = (
    'ThunkExecutor',
    'SlinkyThreadPool',
    'PjitFunction',
    'ExecuteHelper',
    'Execute',
    'TfrtCpuExecutable',
    'PjRt',
    'CommonPjRt',
    'ParseArguments',
    'Handle inputs',
    '$',
)
_BOOKKEEPING = ('ThreadpoolListener', 'end: ', 'Allocate', 'Wait for', 'PythonRefManager')


def _load_xspace(directory: str):
  try:
    # pylint: disable-next=g-import-not-at-top
    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # heavy: tensorflow, only here
  except ImportError as error:
    raise RuntimeError(
        'reading a trace needs the XSpace protobuf schema that tensorflow ships '
        '(pip install tensorflow-cpu), or open the trace in TensorBoard'
    ) from error
  paths = sorted(glob.glob(os.path.join(directory, '**', '*.xplane.pb'), recursive=True))
  if not paths:
    raise RuntimeError(f'no *.xplane.pb trace under {directory}')
  space = xplane_pb2.XSpace()
  with open(paths[-1], 'rb') as f:
    space.ParseFromString(f.read())
  return space


def summarise(directory: str, calls: int) -> list[tuple[float, float, str, str]]:
  """Per XLA op name: (ms per call, runs per call, name, the threads it ran on), longest first.

  Only events of XLA's worker threads count; the Python thread's dispatch events and the thread pool's
  bookkeeping markers are left out. An op that ran on several threads is summed over them.
  """
  space = _load_xspace(directory)
  total_ms: collections.Counter = collections.Counter()
  count: collections.Counter = collections.Counter()
  threads: dict[str, set] = collections.defaultdict(set)
  for plane in space.planes:
    metadata = plane.event_metadata
    for line in plane.lines:
      thread = line.name.split('/')[0]
      if thread == 'python' or not line.events:
        continue
      for event in line.events:
        name = metadata[event.metadata_id].name
        if name.startswith(_WRAPPERS) or name.startswith(_BOOKKEEPING):
          continue
        total_ms[name] += event.duration_ps / 1e9
        count[name] += 1
        threads[name].add(thread)
  return [
      (ms / calls, count[name] / calls, name, ','.join(sorted(threads[name])))
      for name, ms in total_ms.most_common()
  ]


def top_ops(
    fn: Callable[..., Any], *args: Any, calls: int = 3, trace_dir: str | None = None
) -> list[tuple[float, float, str, str]]:
  """Runs ``fn(*args)`` once to compile, then ``calls`` times under the profiler; see `summarise`."""
  jax.block_until_ready(fn(*args))
  directory = trace_dir or tempfile.mkdtemp(prefix='diffhand_trace_')
  with jax.profiler.trace(directory):
    for _ in range(calls):
      jax.block_until_ready(fn(*args))
  return summarise(directory, calls)


def print_top_ops(rows: Sequence[tuple[float, float, str, str]], limit: int = 25) -> None:
  total = sum(r[0] for r in rows)
  print(f'{"ms/call":>9} {"share":>6} {"n/call":>7}  op (thread)')
  for ms, n, name, thread in rows[:limit]:
    print(f'{ms:9.3f} {ms / max(total, 1e-12):6.1%} {n:7.1f}  {name} ({thread})')
  print(f'{total:9.3f} total op time per call, summed over threads ({len(rows)} ops)')


def hlo_of(text: str, names: Sequence[str]) -> str:
  """The HLO computations (fusion bodies) whose instruction name is in ``names``."""
  wanted = set(names)
  lines = text.splitlines()
  out = []
  for line in lines:
    stripped = line.strip().removeprefix('ROOT ').removeprefix('%')
    for name in wanted:
      if stripped.startswith(f'{name} ='):
        out.append(stripped[:400])
  return '\n'.join(out)


def target(name: str, preset: str, batch: int):
  """(jitted fn, args) of a named target (TARGETS), on a model preset with random weights."""
  model, params, images, x_T = sampler.build(preset, batch)
  fns = sampler.make_samplers(model, diffusion.cosine_schedule(1000), 10)
  if name == 'encoder':
    return fns['encode'], (params, images)
  if name == 'decoder':
    cond = fns['encode'](params, images)
    return fns['denoise'], (params, cond, x_T[0], jnp.full((batch,), 999, jnp.int32))
  if name == 'reconstruct':
    return (lambda p, x, n: fns['reconstruct'](p, x, jax.random.PRNGKey(0), noise=n)), (
        params,
        images,
        x_T,
    )
  raise ValueError(f'unknown target {name!r}: choose one of {", ".join(TARGETS)}')
