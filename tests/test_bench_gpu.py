"""`bench gpu` and `bench photo`: the smoke run goes through every section and writes one table; a
section that breaks or overruns its budget is a row of that table; the photo path's stages add up.
"""

import importlib.util
import json

import pytest

from diffhand_jax import bench
from diffhand_jax.benchmarks import gpu


def _live_exists() -> bool:
  return importlib.util.find_spec('diffhand_jax.benchmarks.live') is not None


@pytest.mark.slow  # about 100 s of CPU; .ci/run runs `bench gpu --smoke` itself after the fast suite
def test_gpu_smoke_runs_every_section_into_one_table(tmp_path):
  """Every section on tiny shapes, and the figures it reports checked against each other."""
  results, table = tmp_path / 'gpu', tmp_path / 'table.md'
  code = bench.main(['gpu', '--smoke', f'--results_dir={results}', f'--table={table}'])
  outcomes = {o['section']: o for o in json.loads((results / 'gpu.json').read_text())['outcomes']}
  assert list(outcomes) == [s.name for s in gpu.SECTIONS]
  expected = {name: 'ok' for name in outcomes}
  if not _live_exists():
    expected['live'] = 'skipped'
  assert {name: o['status'] for name, o in outcomes.items()} == expected, outcomes
  assert code == 0
  text = table.read_text()
  assert 'SMOKE RUN' in text and 'not GPU figures' in text
  rows = [line for line in text.splitlines() if line.startswith('| ') and 'section' not in line]
  assert {row.split(' | ')[0][2:] for row in rows} == set(outcomes)

  # The photo path: its stages are parts of each photo's time, and nothing compiled while timed.
  (photo,) = json.loads((results / 'photo.json').read_text())['results']
  assert photo['compiles_while_timed'] == 0
  for row in photo['photos']:
    stages = sum(row[f'{stage}_s'] for stage in ('detect', 'crop', 'sample', 'place', 'fit'))
    assert 0 < stages <= row['total_s'] and row['detect_s'] > 0 and row['sample_s'] > 0
  # The memory section's compile-only estimate is the timed step's own, for the same config on CPU.
  (timed,) = json.loads((results / 'train_b32.json').read_text())['results']
  (estimate,) = json.loads((results / 'memory_cpu_b32.json').read_text())['results']
  assert timed['estimated_bytes'] == estimate['total_bytes'] > 0
  # bfloat16 attention: both cores near the float32 answer, and near each other.
  attention = json.loads((results / 'attention.json').read_text())['results']
  assert all(r['dtype'] == 'bfloat16' and r['max_abs_error_vs_float32'] < 2e-2 for r in attention)


def test_gpu_section_that_fails_or_overruns_is_a_row_not_a_crash(tmp_path):
  context = gpu.Context(smoke=True, cpus=1, workdir='')
  broken = gpu.Section('attention', 'attention', 30, lambda c: ['--shapes=8x2'], None)
  failed = gpu.run_section(broken, context, str(tmp_path), 30, isolate=False)
  assert failed.status == 'failed' and 'exit status 2' in failed.note
  # The default shapes take far longer than 3 s: the process (group) is killed at the budget.
  slow = gpu.Section('attention', 'attention', 3, lambda c: [], None)
  overran = gpu.run_section(slow, context, str(tmp_path), 3, isolate=True)
  assert overran.status == 'timed out' and overran.seconds < 30
  text = gpu.render([failed, overran], context, 5.0, 480.0)
  assert '**failed**: exit status 2' in text and '**timed out**: stopped at its budget' in text
