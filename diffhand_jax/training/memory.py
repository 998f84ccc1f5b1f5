"""Ahead-of-time compilation of the train step: how much memory each device needs, before you queue.

  python -m diffhand_jax.main --config=configs/freihand.py --config.mode=memory \\
      --config.batch_size=128 --config.grad_accum_steps=2 --config.model.dtype=bfloat16

Lowers and compiles the sharded, donated train step for the config's batch, model and mesh (over the
devices this process sees) without initialising params or reading data, and prints XLA's memory
analysis per device in MiB, next to the bytes the params, optimiser state and EMA take per device
under the sharding rules. Run it on one node of the kind you will train on: the numbers are the
compiler's for this backend (a CPU compile says little about a GPU's temporaries).
"""

from __future__ import annotations

import time
from typing import Any

import jax
import ml_collections
import numpy as np

from diffhand_jax.training import sharding, step as step_lib

MIB = 2.0**20


def per_device_bytes(abstract_tree: Any) -> int:
  """Bytes of one device's shard of every leaf (jax.ShapeDtypeStruct with a sharding), summed."""
  total = 0
  for leaf in jax.tree_util.tree_leaves(abstract_tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def memory_report(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Compiles (never runs) the train step of ``config``; returns per-device bytes.

  Keys: argument_bytes, output_bytes, alias_bytes (outputs written over donated arguments),
  temp_bytes, generated_code_bytes, total_bytes (= argument + output - alias + temp + generated code,
  XLA's peak estimate), param_bytes, opt_state_bytes, ema_bytes; and mesh, num_devices, batch_size,
  grad_accum_steps, dtype, compile_seconds.
  """
  topology, model, schedule, optimizer, mesh = step_lib.build_components(config)
  abstract_state, shardings = sharding.sharded_abstract_state(config, model, optimizer, mesh)
  step_fn = step_lib.jit_train_step(config, model, optimizer, schedule, topology, mesh, shardings)
  data_sharding = sharding.batch_sharding(mesh)
  abstract_batch = step_lib.abstract_train_batch(config, data_sharding)
  start = time.time()
  compiled = step_fn.lower(abstract_state, abstract_batch).compile()
  seconds = time.time() - start
  stats = compiled.memory_analysis()
  if stats is None:
    raise RuntimeError(
        f'diffhand_jax/training/memory.py: the {jax.default_backend()} backend gives no memory '
        'analysis for compiled programs'
    )
  report = {
      'mesh': dict(mesh.shape),
      'num_devices': int(mesh.size),
      'batch_size': int(config.batch_size),
      'grad_accum_steps': int(config.get('grad_accum_steps', 1)),
      'dtype': str(config.model.get('dtype', 'float32')),
      'compile_seconds': seconds,
      'argument_bytes': int(stats.argument_size_in_bytes),
      'output_bytes': int(stats.output_size_in_bytes),
      'alias_bytes': int(stats.alias_size_in_bytes),
      'temp_bytes': int(stats.temp_size_in_bytes),
      'generated_code_bytes': int(stats.generated_code_size_in_bytes),
      'param_bytes': per_device_bytes(abstract_state.params),
      'opt_state_bytes': per_device_bytes(abstract_state.opt_state),
      'ema_bytes': per_device_bytes(abstract_state.ema_params),
  }
  report['total_bytes'] = (
      report['argument_bytes']
      + report['output_bytes']
      - report['alias_bytes']
      + report['temp_bytes']
      + report['generated_code_bytes']
  )
  return report


def format_report(report: dict[str, Any]) -> str:
  """The report as the table `main` prints (MiB per device)."""
  rows = [
      ('arguments', 'argument_bytes'),
      ('outputs', 'output_bytes'),
      ('  aliased (donated)', 'alias_bytes'),
      ('temporaries', 'temp_bytes'),
      ('generated code', 'generated_code_bytes'),
      ('total (peak estimate)', 'total_bytes'),
      ('params', 'param_bytes'),
      ('optimiser state', 'opt_state_bytes'),
      ('EMA params', 'ema_bytes'),
  ]
  micro = report['batch_size'] // report['grad_accum_steps'] // report['num_devices']
  lines = [
      f"train step on {report['num_devices']} {jax.default_backend()} device(s), mesh {report['mesh']}: "
      f"global batch {report['batch_size']} in {report['grad_accum_steps']} micro-batch(es) "
      f"({micro} examples per device per micro-batch), compute {report['dtype']}, compiled in "
      f"{report['compile_seconds']:.1f}s",
      'per-device memory (MiB):',
  ]
  lines += [f'  {label:<24}{report[key] / MIB:>12.2f}' for label, key in rows]
  return '\n'.join(lines)


def print_memory_report(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`memory_report`, printed as a table by process 0; returns the report."""
  report = memory_report(config)
  if jax.process_index() == 0:
    print(format_report(report), flush=True)
  return report
