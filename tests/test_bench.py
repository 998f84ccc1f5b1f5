"""The benchmark suite measures what it says: its samplers agree, and the profile summary counts real ops."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

try:  # before anything compiles: importing torch late in this process segfaulted (in triton's import)
  import timm  # noqa: F401
  import torch  # noqa: F401
except ImportError:
  torch = None

from diffhand_jax import bench, diffusion
from diffhand_jax.benchmarks import model_cost, sampler, trace


def test_scan_reconstruct_and_hand_written_loop_give_the_same_meshes():
  """The loop applies the DDIM update written out in the benchmark, the scan uses diffusion.ddim_sample:
  two independent routes to x_0 from the same x_T."""
  model, params, images, x_T = sampler.build('tiny', 2)
  schedule = diffusion.cosine_schedule(1000)
  fns = sampler.make_samplers(model, schedule, num_steps=3)
  scanned = fns['reconstruct'](params, images, jax.random.PRNGKey(0), noise=x_T)['vertices'][:, 0]
  looped = fns['loop'](params, images, x_T[0])
  np.testing.assert_allclose(np.asarray(scanned), np.asarray(looped), atol=1e-5, rtol=1e-5)
  # the loop's jitted step is one decoder pass then the DDIM update (docs/design.md §3), worked here in numpy
  cond = fns['encode'](params, images)
  t_now, t_next = (int(t) for t in fns['timesteps'][:2])
  x0_hat = np.asarray(
      fns['denoise'](params, cond, x_T[0], jnp.full((2,), t_now, jnp.int32)), np.float64
  )
  a_now, a_next = (float(schedule.alphas_cumprod[t]) for t in (t_now, t_next))
  x_t = np.asarray(x_T[0], np.float64)
  eps = (x_t - np.sqrt(a_now) * x0_hat) / np.sqrt(1 - a_now)
  expected = np.sqrt(a_next) * x0_hat + np.sqrt(1 - a_next) * eps
  got = fns['step'](params, cond, x_T[0], np.int32(t_now), np.int32(t_next))
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # HRNet's many convolutions take half a minute to compile here
def test_sampler_bench_runs_an_hrnet_encoder_with_its_batch_statistics():
  model, variables, images, x_T = sampler.build('tiny', 1, encoder='hrnet_w18_small', img_size=64)
  assert set(variables) == {'params', 'batch_stats'}
  fns = sampler.make_samplers(model, diffusion.cosine_schedule(1000), num_steps=2)
  scanned = fns['reconstruct'](variables, images, jax.random.PRNGKey(0), noise=x_T)['vertices'][
      :, 0
  ]
  np.testing.assert_allclose(
      np.asarray(scanned), np.asarray(fns['loop'](variables, images, x_T[0])), atol=1e-5, rtol=1e-5
  )
  # the statistics are read: other running means give another encoding
  shifted = dict(variables, batch_stats=jax.tree.map(lambda m: m + 0.5, variables['batch_stats']))
  assert not np.allclose(
      fns['encode'](variables, images).features, fns['encode'](shifted, images).features
  )
  # model_cost counts the same encoder: its parameters are those of the variables above
  cost = model_cost.measure('tiny', encoder='hrnet_w18_small', img_size=64)
  assert cost['params_encoder'] == sum(
      x.size for x in jax.tree.leaves(variables['params']['encoder'])
  )
  assert cost['flops_encoder_per_sample'] > 0


def test_profile_summary_counts_each_op_once_per_call():
  a = jnp.ones((256, 256), jnp.float32)
  fn = jax.jit(lambda x: jnp.tanh(x @ x) * 2.0)
  rows = trace.top_ops(fn, a, calls=3)
  assert rows, 'the trace holds no ops'
  total_ms = sum(r[0] for r in rows)
  assert total_ms > 0
  # every op of this program runs once per call: no fractional or inflated counts
  assert all(abs(count - round(count)) < 1e-9 and count >= 1 for _, count, _, _ in rows)
  assert all(not name.startswith(trace._WRAPPERS) for _, _, name, _ in rows)


def test_bench_all_runs_peer_comparisons_first_and_refuses_flags(capsys):
  names = bench.available()
  assert names[:3] == ['encoder', 'sampler', 'train']
  assert 'common' not in names
  assert bench.main(['all', '--repeats=1']) == 2
  assert 'defaults' in capsys.readouterr().err
  assert 'trace' not in names  # the benchmarks' shared trace reader is no benchmark


def test_each_benchmark_parses_its_own_flags(capsys):
  from diffhand_jax.benchmarks import encoder
  from diffhand_jax import command_line

  assert encoder.FLAGS is not sampler.FLAGS
  command_line.parse(sampler.FLAGS, ['--repeats=2', '--batch_sizes=4'], prog='sampler')
  command_line.parse(encoder.FLAGS, [], prog='encoder')
  assert (sampler.FLAGS.repeats, sampler.FLAGS.batch_sizes) == (2, '4')
  assert encoder.FLAGS.repeats == 7 and encoder.FLAGS.batch_sizes == '8'
  assert bench.main(['model_cost', '--batch_sizes=4']) == 2  # a flag of another benchmark
  assert "Unknown command line flag 'batch_sizes'" in capsys.readouterr().err
  assert bench.main(['model_cost', '--help']) == 0
  assert '--presets' in capsys.readouterr().out


def test_attention_bench_times_each_core_and_marks_the_default(tmp_path, capsys):
  """Two shapes on either side of the CPU's slicing rule: every core gives the same output, and the
  one marked default is the one the core picks."""
  from diffhand_jax.benchmarks import attention as attention_bench

  output = tmp_path / 'attention.json'
  code = bench.main(
      [
          'attention',
          '--shapes=2x2x16x16x8,8x2x400x400x16',
          '--implementations=heads_major,sliced',
          '--repeats=1',
          '--nobackward',
          f'--output={output}',
      ]
  )
  assert code == 0
  results = json.loads(output.read_text())['results']
  assert [(r['shape'], r['implementation']) for r in results] == [
      ([2, 2, 16, 16, 8], 'heads_major'),
      ([2, 2, 16, 16, 8], 'sliced'),
      ([8, 2, 400, 400, 16], 'heads_major'),
      ([8, 2, 400, 400, 16], 'sliced'),
  ]
  assert all(r['max_abs_difference'] < 1e-5 and r['forward_ms'] > 0 for r in results)
  assert [r['default'] for r in results] == [True, False, False, True]
  assert '(default)' in capsys.readouterr().out
  assert attention_bench.main(['--shapes=8x2x778']) == 2
  assert attention_bench.main(['--implementations=flash']) == 2
  assert attention_bench.main(['--implementations=cudnn']) == 2


def test_encoder_bench_covers_hrnet(tmp_path, capsys):
  """bench encoder runs HRNet through hrnet.from_timm (a small input, one repeat: the route, not a time)."""
  if torch is None:
    pytest.skip('bench encoder needs torch and timm (the test extra)')
  output = tmp_path / 'encoder.json'
  code = bench.main(
      [
          'encoder',
          '--models=hrnet_w18_small',
          '--batch_sizes=1',
          '--img_size=64',
          '--repeats=1',
          f'--output={output}',
      ]
  )
  assert code == 0
  (result,) = json.loads(output.read_text())['results']
  assert result['model'] == 'hrnet_w18_small' and result['img_size'] == [64, 64]
  assert result['max_abs_diff'] <= 1e-4 * result['max_abs_feature']
  assert 'hrnet_w18_small' in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(torch is None, reason='needs torch and transformers')
def test_bench_depth_smoke_checks_the_estimator_and_times_both_stages(tmp_path):
  from diffhand_jax.benchmarks import depth  # pylint: disable=g-import-not-at-top

  output = tmp_path / 'depth.json'
  workdir = str(tmp_path / 'no_run')  # not a trained run: the cpu_demo preset, random
  assert depth.main(['--smoke', f'--output={output}', f'--workdir={workdir}']) == 0
  report = json.loads(output.read_text())
  estimator, cost = report['results']['estimator'], report['results']['reconstruct']
  # The benchmark refused to time outputs that disagree; the difference it saw is in the report.
  assert estimator['max_abs_diff'] <= 1e-3 * estimator['max_abs_depth']
  assert estimator['ours_over_transformers'] == pytest.approx(
      estimator['ours_s']['median'] / estimator['transformers_s']['median']
  )
  assert cost['model'].startswith('cpu_demo') and cost['rgb_depth_s']['median'] > 0
