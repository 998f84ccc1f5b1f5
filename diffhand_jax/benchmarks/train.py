"""Train-step throughput and MFU: the synthetic config and the paper config at a reduced batch.

  python -m diffhand_jax.bench train [--configs=synthetic,paper] [--paper_batch=2] [--dtype=float32]
      [--mode=time|memory]

For each config it builds the real sharded train step (`step_lib.jit_train_step`, the state donated) on the
config's mesh, feeds it random batches of the right shapes (no dataset needed), and times whole steps.
FLOPs per step come from XLA's cost analysis of the compiled step (a multiply-add counts 2). The peak is
measured here, in the same process: the best of a few large square matmuls of the compute dtype. MFU is
achieved FLOP/s over that peak. A `jax.profiler` trace of a few steps splits the op time into matmul ops
(YNNPACK/oneDNN/cuBLAS/Triton GEMM fusions) and the rest, which says what limits the step.

Memory: the device's peak bytes in use after the timed steps (where the backend reports it: GPUs and
TPUs, not CPUs) next to XLA's estimate for the compiled step (`training/memory.py`'s total: arguments +
outputs − donated + temporaries + code). --mode=memory only compiles the step and reports that estimate
(what `--config.mode=memory` prints), e.g. on a CPU for the GPU's config: `bench gpu` sets those side by
side. 'tiny' is the synthetic config with the tiny model at --paper_batch, for smoke runs.
"""

from __future__ import annotations

from typing import Any

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax.runs import model_presets, run_config
from diffhand_jax.training import memory, sharding, step as step_lib, throughput
from diffhand_jax.benchmarks import common, trace
from diffhand_jax import command_line

_MATMUL_MARKERS = ('ynn', 'xnn', 'onednn', 'dot', 'gemm', 'matmul', 'cublas', 'cutlass', 'conv')
_MOVEMENT_MARKERS = (
    'copy',
    'transpose',
    'gather',
    'scatter',
    'slice',
    'concatenate',
    'pad',
    'dynamic',
)


def op_category(name: str) -> str:
  """'matmul', 'data movement' or 'elementwise/reduction', from an XLA op's name (fusion names start
  with their root ops' kinds)."""
  lowered = name.lower()
  if any(m in lowered for m in _MATMUL_MARKERS):
    return 'matmul'
  if any(m in lowered for m in _MOVEMENT_MARKERS):
    return 'data movement'
  return 'elementwise/reduction'


def load_config(name: str, paper_batch: int, dtype: str):
  """A training config by name: 'synthetic' (configs/synthetic.py), 'paper' (configs/freihand.py,
  the paper's model, at batch `paper_batch`), with the procedural hand standing in for MANO, or 'tiny'
  (the synthetic config with the tiny model preset, at batch `paper_batch`: smoke runs)."""
  if name == 'synthetic':
    config = run_config.config_file('synthetic')
  elif name == 'tiny':
    config = run_config.config_file('synthetic')
    config.model = model_presets.get_model_config('tiny')
    config.batch_size = paper_batch
  elif name == 'paper':
    config = run_config.config_file('freihand')
    config.batch_size = paper_batch
    config.dataset.hand_model = 'procedural'  # same 778-vertex topology; no MANO file needed
  else:
    raise ValueError(f'unknown config {name!r}: choose synthetic, paper or tiny')
  config.model.dtype = dtype
  return config


def peak_matmul_flops(dtype: Any) -> dict[str, float]:
  """The best FLOP/s of square matmuls of `dtype` on the default device (training/throughput.py)."""
  sizes = (1024, 2048) if jax.default_backend() == 'cpu' else (4096, 8192)
  return throughput.measured_matmul_peak(dtype, sizes=sizes, min_seconds=0.5)


def peak_bytes_in_use() -> int | None:
  """The first local device's peak bytes in use so far (None where the backend does not say: CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  peak = stats.get('peak_bytes_in_use')
  return None if peak is None else int(peak)


def estimated_bytes(compiled: Any) -> int | None:
  """XLA's per-device peak estimate of a compiled step, as `training/memory.py` adds it up."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(
      stats.argument_size_in_bytes
      + stats.output_size_in_bytes
      - stats.alias_size_in_bytes
      + stats.temp_size_in_bytes
      + stats.generated_code_size_in_bytes
  )


def memory_estimate(name: str, *, paper_batch: int, dtype: str) -> dict[str, Any]:
  """Compiles (never runs) the config's step on this backend: `memory.memory_report`."""
  config = load_config(name, paper_batch, dtype)
  report = memory.memory_report(config)
  return {
      'config': name,
      'batch': int(config.batch_size),
      'dtype': dtype,
      'backend': jax.default_backend(),
      **report,
  }


def _random_batch(config, batch_sharding) -> dict[str, jax.Array]:
  rng = np.random.default_rng(0)
  spec = step_lib.train_batch_spec(config)
  batch = {key: rng.standard_normal(s.shape).astype(s.dtype) for key, s in spec.items()}
  batch['has_3d'] = np.ones(spec['has_3d'].shape, spec['has_3d'].dtype)
  return sharding.to_global(batch, batch_sharding)


def measure(
    name: str, *, paper_batch: int, dtype: str, steps: int, profile: bool
) -> dict[str, Any]:
  config = load_config(name, paper_batch, dtype)
  topology, model, schedule, optimizer, mesh = step_lib.build_components(config)
  _, shardings = sharding.sharded_abstract_state(config, model, optimizer, mesh)
  state = step_lib.init_sharded_state(config, model, optimizer, shardings, jax.random.PRNGKey(0))
  step_fn = step_lib.jit_train_step(config, model, optimizer, schedule, topology, mesh, shardings)
  batch = _random_batch(config, sharding.batch_sharding(mesh))
  compiled = step_fn.lower(state, batch).compile()
  flops = throughput.compiled_flops(compiled)

  holder = {'state': state}

  def one_step():
    holder['state'], parts = compiled(holder['state'], batch)
    return common.block(parts)

  for _ in range(2):  # warm up (and settle the donated buffers)
    one_step()
  seconds = common.time_fn(one_step, repeats=steps, warmup=0, min_seconds=0.0)
  result = {
      'config': name,
      'batch': int(config.batch_size),
      'img_size': int(config.model.img_size),
      'encoder': config.model.encoder,
      'dtype': dtype,
      'mesh': dict(mesh.shape),
      'flops_per_step': flops,
      'step_s': seconds,
      'examples_per_s': config.batch_size / seconds['median'],
      'achieved_flops_per_s': flops / seconds['median'],
      'peak_bytes_in_use': peak_bytes_in_use(),
      'estimated_bytes': estimated_bytes(compiled),
  }
  if profile:
    rows = trace.top_ops(one_step, calls=2)
    total = max(sum(r[0] for r in rows), 1e-12)
    shares: dict[str, float] = {}
    for ms, _, name, _ in rows:
      shares[op_category(name)] = shares.get(op_category(name), 0.0) + ms / total
    result['profile'] = {
        'op_ms_per_step': total,
        'matmul_share': shares.get('matmul', 0.0),
        'shares': shares,
        'top_ops': [{'name': r[2], 'ms': r[0], 'count': r[1]} for r in rows[:10]],
    }
  return result


FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'configs',
    'synthetic,paper',
    'configs to time, comma-separated (synthetic, paper)',
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    'paper_batch',
    None,
    'batch of the paper config (default: 2 on CPU, 32 on an accelerator)',
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    'dtype', 'float32', ('float32', 'bfloat16'), 'the compute dtype', flag_values=FLAGS
)
flags.DEFINE_integer('steps', 5, 'timed steps (after 2 warm-up steps)', flag_values=FLAGS)
flags.DEFINE_enum(
    'mode',
    'time',
    ('time', 'memory'),
    "'time': run and time the steps; 'memory': only compile them and report XLA's memory estimate",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    'no_profile', False, 'skip the jax.profiler trace of the op time', flag_values=FLAGS
)
flags.DEFINE_string('output', 'bench_results/train.json', 'the JSON report', flag_values=FLAGS)


def main(argv: list[str]) -> int:
  try:
    command_line.parse(FLAGS, argv, prog='python -m diffhand_jax.bench train', doc=__doc__)
  except command_line.Exit as done:
    return done.code
  paper_batch = FLAGS.paper_batch or (2 if jax.default_backend() == 'cpu' else 32)
  dtype = jnp.bfloat16 if FLAGS.dtype == 'bfloat16' else jnp.float32
  if FLAGS.mode == 'memory':
    return memory_main(paper_batch)

  peak = peak_matmul_flops(dtype)
  results, rows = [], []
  for name in FLAGS.configs.split(','):
    r = measure(
        name,
        paper_batch=paper_batch,
        dtype=FLAGS.dtype,
        steps=FLAGS.steps,
        profile=not FLAGS.no_profile,
    )
    r['peak_matmul_flops_per_s'] = peak['flops_per_s']
    r['mfu'] = r['achieved_flops_per_s'] / peak['flops_per_s']
    results.append(r)
    shares = r.get('profile', {}).get('shares')
    rows.append(
        [
            name,
            r['batch'],
            FLAGS.dtype,
            r['step_s']['median'] * 1e3,
            f"{r['step_s']['min'] * 1e3:.4g}-{r['step_s']['max'] * 1e3:.4g}",
            r['examples_per_s'],
            r['flops_per_step'] / 1e9,
            r['achieved_flops_per_s'] / 1e9,
            peak['flops_per_s'] / 1e9,
            f"{100 * r['mfu']:.1f}%",
            '-'
            if shares is None
            else ' / '.join(
                f'{100 * shares.get(c, 0.0):.0f}%'
                for c in ('matmul', 'elementwise/reduction', 'data movement')
            ),
            f"{_mib(r['peak_bytes_in_use'])} / {_mib(r['estimated_bytes'])}",
        ]
    )
  header = [
      'config',
      'batch',
      'dtype',
      'step ms (median)',
      'min-max',
      'examples/s',
      'GFLOP/step',
      'achieved GFLOP/s',
      f'peak GFLOP/s ({peak["size"]}² matmul)',
      'MFU',
      'op time: matmul / elementwise+reduction / data movement',
      'peak MiB: measured / XLA estimate',
  ]
  common.report(
      'train',
      FLAGS.output,
      f'Train step throughput and MFU, {jax.default_backend()}',
      header,
      rows,
      results,
      peak=peak,
  )
  return 0


def _mib(value: int | None) -> str:
  return '-' if value is None else f'{value / memory.MIB:.0f}'


def memory_main(paper_batch: int) -> int:
  """--mode=memory: XLA's memory estimate of each config's step, compiled only."""
  results, rows = [], []
  for name in FLAGS.configs.split(','):
    r = memory_estimate(name, paper_batch=paper_batch, dtype=FLAGS.dtype)
    results.append(r)
    rows.append(
        [
            name,
            r['batch'],
            FLAGS.dtype,
            r['backend'],
            r['total_bytes'] / memory.MIB,
            r['temp_bytes'] / memory.MIB,
            (r['param_bytes'] + r['opt_state_bytes'] + r['ema_bytes']) / memory.MIB,
            r['compile_seconds'],
        ]
    )
  header = [
      'config',
      'batch',
      'dtype',
      'compiled for',
      'peak estimate MiB',
      'temporaries MiB',
      'params + optimiser + EMA MiB',
      'compile s',
  ]
  common.report(
      'train',
      FLAGS.output,
      f'Train step memory, XLA estimate per device, compiled for {jax.default_backend()}',
      header,
      rows,
      results,
      mode='memory',
  )
  return 0


if __name__ == '__main__':
  import sys

  sys.exit(main(sys.argv[1:]))
