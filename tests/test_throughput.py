"""The perf/ metrics training logs: FLOPs from XLA's cost analysis, the peak table, and the window
arithmetic, each against a hand-worked figure."""

import jax
import jax.numpy as jnp
import pytest

from diffhand_jax.training import throughput


def test_compiled_flops_of_a_matmul_is_two_m_n_k():
  compiled = (
      jax.jit(lambda a, b: a @ b)
      .lower(
          jax.ShapeDtypeStruct((64, 32), jnp.float32), jax.ShapeDtypeStruct((32, 16), jnp.float32)
      )
      .compile()
  )
  assert throughput.compiled_flops(compiled) == 2 * 64 * 32 * 16


@pytest.mark.parametrize(
    'kind, dtype, peak',
    [
        ('NVIDIA H100 80GB HBM3', 'bfloat16', 989e12),
        ('NVIDIA A100-SXM4-40GB', 'bfloat16', 312e12),
        ('NVIDIA A100-SXM4-80GB', 'float32', 19.5e12),
        ('TPU v5 lite', 'bfloat16', 197e12),  # not TPU v5p's 459e12
        ('TPU v4', 'bfloat16', 275e12),
        ('cpu', 'float32', None),
    ],
)
def test_peak_table(kind, dtype, peak):
  assert throughput.table_peak(kind, dtype) == peak


def test_a_cpu_peak_is_measured():
  peak, source = throughput.device_peak('float32')
  assert peak > 1e8 and source.startswith('measured 1024² float32 matmul')


def test_the_measured_peak_is_the_fastest_call(monkeypatch):
  # A fake clock: the calls take 0.5, 0.1 and 0.5 s; the slow ones (something else on the cores) must
  # not lower the peak, which is 2·n³ over the fastest call.
  ticks = iter([0.0, 0.0, 0.5, 0.5, 0.6, 0.6, 1.1])
  monkeypatch.setattr(throughput.time, 'perf_counter', lambda: next(ticks))
  peak = throughput.measured_matmul_peak(sizes=(8,), min_seconds=1.0)
  assert peak == {'flops_per_s': pytest.approx(2 * 8**3 / 0.1), 'size': 8}


def test_window_metrics(monkeypatch):
  meter = throughput.Meter(global_batch=64, flops_per_step=5e12, peak_flops=1e14, num_devices=8)
  meter.start = 100.0
  monkeypatch.setattr(throughput.time, 'perf_counter', lambda: 110.0)
  meter.steps, meter.input_seconds = 20, 2.5  # 20 steps in 10 s, 2.5 s of them waiting for input
  metrics = meter.metrics()
  assert metrics['perf/step_time_seconds'] == pytest.approx(0.5)
  assert metrics['perf/images_per_sec'] == pytest.approx(64 * 20 / 10)
  assert metrics['perf/images_per_sec_per_device'] == pytest.approx(64 * 20 / 10 / 8)
  assert metrics['perf/per_device_tflops_per_sec'] == pytest.approx(10.0)  # 5 TFLOP every 0.5 s
  assert metrics['perf/mfu'] == pytest.approx(0.1)
  assert metrics['perf/input_wait_fraction'] == pytest.approx(0.25)
