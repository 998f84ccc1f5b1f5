"""Throughput of a training run: images/s, step time, FLOP/s per device, MFU, and the share of each step
spent waiting for input. What training logs under perf/ (maxtext's names), and what `bench train` uses.

FLOPs come from XLA's cost analysis of the compiled, partitioned step: the FLOPs one device executes per
step (a multiply-add counts 2). The peak is the device's dense matmul peak for the compute dtype: a table of
known GPU and TPU peaks, or on a CPU (and any device the table lacks) the measured rate of a large matmul.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dense (no sparsity) peak FLOP/s per device, by a substring of jax's device_kind (lower case) and compute
# dtype. From the vendors' data sheets; float32 on NVIDIA is plain FP32 (XLA's default precision for
# float32 matmuls on GPU uses TF32 only when asked).
PEAK_FLOPS: dict[tuple[str, str], float] = {
    ('h200', 'bfloat16'): 989e12,
    ('h100', 'bfloat16'): 989e12,
    ('a100', 'bfloat16'): 312e12,
    ('l4', 'bfloat16'): 121e12,
    ('a10', 'bfloat16'): 125e12,
    ('v100', 'float16'): 125e12,
    ('h200', 'float32'): 67e12,
    ('h100', 'float32'): 67e12,
    ('a100', 'float32'): 19.5e12,
    ('tpu v4', 'bfloat16'): 275e12,
    ('tpu v5 lite', 'bfloat16'): 197e12,
    ('tpu v5e', 'bfloat16'): 197e12,
    ('tpu v5p', 'bfloat16'): 459e12,
    ('tpu v5', 'bfloat16'): 459e12,
    ('tpu v6', 'bfloat16'): 918e12,
}


def table_peak(device_kind: str, dtype: str) -> float | None:
  """The table's peak for a device kind ('NVIDIA H100 80GB HBM3', 'TPU v4') and dtype, or None."""
  kind = device_kind.lower()
  # The longest matching key first, so that 'tpu v5 lite' wins over 'tpu v5'.
  for (name, key_dtype), peak in sorted(PEAK_FLOPS.items(), key=lambda item: -len(item[0][0])):
    if name in kind and key_dtype == dtype:
      return peak
  return None


def measured_matmul_peak(
    dtype: Any = jnp.float32, sizes: tuple[int, ...] | None = None, min_seconds: float = 0.2
) -> dict[str, float]:
  """The best FLOP/s of square matmuls of ``dtype`` on the default device: {'flops_per_s', 'size'}.

  Each size is timed call by call for ``min_seconds`` and rated by its fastest call: a peak, so a moment
  when something else holds the cores (a data build's workers exiting, say) should not lower it."""
  if sizes is None:
    sizes = (1024,) if jax.default_backend() == 'cpu' else (4096, 8192)
  best = {'flops_per_s': 0.0, 'size': 0}
  matmul = jax.jit(lambda x, y: x @ y)
  for n in sizes:
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    matmul(a, b).block_until_ready()  # compile
    fastest, start = float('inf'), time.perf_counter()
    while True:
      call_start = time.perf_counter()
      matmul(a, b).block_until_ready()
      now = time.perf_counter()
      fastest = min(fastest, now - call_start)
      if now - start >= min_seconds:
        break
    rate = 2.0 * n**3 / fastest
    if rate > best['flops_per_s']:
      best = {'flops_per_s': rate, 'size': n}
  return best


def device_peak(dtype: str) -> tuple[float, str]:
  """(peak FLOP/s of one device for ``dtype``, where it comes from)."""
  device = jax.devices()[0]
  peak = table_peak(device.device_kind, dtype)
  if peak is not None:
    return peak, f'table: {device.device_kind} {dtype}'
  measured = measured_matmul_peak(jnp.dtype(dtype))
  return (
      measured['flops_per_s'],
      f'measured {measured["size"]}² {dtype} matmul on {device.device_kind}',
  )


def compiled_flops(compiled: Any) -> float:
  """FLOPs per call of a compiled program (per device for a partitioned one), by XLA's cost analysis."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis.get('flops', 0.0)) if analysis else 0.0


@dataclasses.dataclass
class Meter:
  """Accumulates one logging window: steps, wall time, and time spent waiting for input."""

  global_batch: int
  flops_per_step: float  # per device
  peak_flops: float  # per device
  num_devices: int
  steps: int = 0
  input_seconds: float = 0.0
  start: float = dataclasses.field(default_factory=time.perf_counter)

  def reset(self) -> None:
    self.steps, self.input_seconds, self.start = 0, 0.0, time.perf_counter()

  def metrics(self) -> dict[str, float]:
    """The perf/ metrics of the window so far (call after blocking on its last step)."""
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    step_time = elapsed / max(self.steps, 1)
    images = self.global_batch * self.steps / elapsed
    flops = self.flops_per_step / step_time
    return {
        'perf/step_time_seconds': step_time,
        'perf/images_per_sec': images,
        'perf/images_per_sec_per_device': images / self.num_devices,
        'perf/per_device_tflops_per_sec': flops / 1e12,
        'perf/mfu': flops / self.peak_flops if self.peak_flops > 0 else float('nan'),
        'perf/input_wait_fraction': float(np.clip(self.input_seconds / elapsed, 0.0, 1.0)),
    }
