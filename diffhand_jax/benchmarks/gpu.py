"""Everything the paper configs need to know about a GPU, in one command, within 8 minutes.

  python -m diffhand_jax.bench gpu [--table=docs/gpu_table.md] [--budget_s=480] [--sections=...]
  python -m diffhand_jax.bench gpu --smoke     # the same sections on tiny shapes, on a CPU, in seconds

Whenever a GPU is at hand, run this first. Each section is another benchmark of `bench`, run with the
paper's shapes, in a process of its own (so that a section that runs out of memory or hangs harms no
other, and each one's peak memory is its own) and stopped at its own time budget; a section that fails
or runs out of time is a row of the table that says so, not a crash. The sections, in order:

  attention      cuDNN's fused attention against the CPU path (heads-major), bfloat16, on the ViT-L's
                 and the decoder's shapes: the error of each against the float32 answer (`bench attention`)
  train_b32      the paper train step (DeiT III Large + the D = 256 decoder) in bfloat16 at per-device
  train_b64      batch 32 and 64: step time, images/s, MFU, peak memory and XLA's estimate (`bench train`)
  reconstruct    `reconstruct` of the paper model, 10 DDIM steps, batch 1 and 64 (`bench sampler`)
  photo          one whole photo in, every hand out, the paper model (random weights) (`bench photo`)
  live           the live camera path on a synthetic clip, with the trained run of --workdir (the CPU
                 demo's, carried to the machine; skipped without one) (`bench live`)
  input          the training input pipeline with a worker process per CPU (`bench input`)
  memory_cpu_b32 the train step's memory as a CPU compile estimates it (`bench train --mode=memory`
  memory_cpu_b64 with JAX_PLATFORMS=cpu): what a user without a GPU is told, against the GPU's peak;
                 these two run beside the others from the start (a CPU compile takes minutes), and
                 `input`, which takes every core, waits for them

It writes one Markdown table (--table, default docs/gpu_table.md, which docs/performance.md shows) and
the sections' JSON next to it under --results_dir. --smoke runs the same sections on the tiny model and
tiny shapes, in this process, and writes its table to bench_results/gpu_table_smoke.md, labelled as a
smoke run: its figures are no GPU's.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from absl import flags
import jax

from diffhand_jax import command_line
from diffhand_jax.benchmarks import common
from diffhand_jax.training import throughput

MIB = 2.0**20
GIB = 2.0**30
# Goals (issue 34): reconstruct of the paper model, batch 1, 10 steps.
RECONSTRUCT_GOAL_MS = 15.0


@dataclasses.dataclass(frozen=True)
class Context:
  """What the sections' flags depend on."""

  smoke: bool
  cpus: int
  workdir: str


@dataclasses.dataclass(frozen=True)
class Section:
  """One benchmark run: `benchmark`'s main with `argv(context)` (its --output added), stopped after
  `budget_s`; `rows(payload, done)` turns its JSON (and the sections done before, {name: payload})
  into table rows (measurement, result, goal, met: True/False/None); `skip(context)` says why it
  cannot run here, if so."""

  name: str
  benchmark: str
  budget_s: float
  argv: Callable[[Context], list[str]]
  rows: Callable[[dict[str, Any], dict[str, Any]], list[tuple[str, str, str, bool | None]]]
  env: tuple[tuple[str, str], ...] = ()
  # Why the section cannot run here (None: it can), e.g. a trained run it needs is missing.
  skip: Callable[[Context], str | None] = lambda context: None
  # Isolated runs: a CPU-only section starts with the first one and runs beside the GPU's sections
  # (its budget counts from then); a section marked `alone` waits for those to finish first.
  background: bool = False
  alone: bool = False


# ==================================================================================================
# The sections' flags and rows
# ==================================================================================================

# B x heads x T x S x head size: the ViT-L at 224 in training (batch 32), the decoder's first U level
# and its cross-attention to the image tokens while sampling (32 images x 5 hypotheses).
ATTENTION_SHAPES = '32x16x197x197x64,160x8x195x195x32,160x8x778x197x32'
SMOKE_ATTENTION_SHAPES = '2x2x16x16x8'


def _attention_argv(c: Context) -> list[str]:
  if c.smoke:  # no cuDNN on a CPU: XLA's core stands in for it
    return [
        f'--shapes={SMOKE_ATTENTION_SHAPES}',
        '--implementations=heads_major,xla',
        '--dtype=bfloat16',
        '--repeats=1',
        '--nobackward',
    ]
  return [
      f'--shapes={ATTENTION_SHAPES}',
      '--implementations=heads_major,cudnn',
      '--dtype=bfloat16',
      '--repeats=3',
  ]


def _attention_rows(payload, done):
  """Per shape: the fused core's error against float32 beside the CPU path's; equal enough when it is
  at most twice the CPU path's (both round to bfloat16) plus 1e-3."""
  del done
  rows = []
  by_shape: dict[str, dict[str, dict]] = {}
  for r in payload['results']:
    by_shape.setdefault('×'.join(map(str, r['shape'])), {})[r['implementation']] = r
  for shape, found in by_shape.items():
    cpu_path = found.get('heads_major')
    others = [name for name in found if name != 'heads_major']
    for name in others:
      fused = found[name]
      met = None
      if cpu_path is not None:
        met = fused['max_abs_error_vs_float32'] <= 2 * cpu_path['max_abs_error_vs_float32'] + 1e-3
      rows.append(
          (
              f'attention {shape}, {fused["dtype"]}: {name} vs the CPU path',
              f'max |Δ| vs float32 {fused["max_abs_error_vs_float32"]:.2e} '
              f'(CPU path {cpu_path["max_abs_error_vs_float32"]:.2e}); forward '
              f'{fused["forward_ms"]:.3g} ms (CPU path {cpu_path["forward_ms"]:.3g} ms)'
              if cpu_path
              else f'max |Δ| vs float32 {fused["max_abs_error_vs_float32"]:.2e}',
              '≤ 2 × the CPU path + 1e-3',
              met,
          )
      )
  return rows


def _train_argv(batch: int) -> Callable[[Context], list[str]]:
  def argv(c: Context) -> list[str]:
    if c.smoke:
      return ['--configs=tiny', '--paper_batch=2', '--steps=1', '--no_profile']
    return [
        '--configs=paper',
        f'--paper_batch={batch}',
        '--dtype=bfloat16',
        '--steps=5',
        '--no_profile',
    ]

  return argv


def _mfu_against_table(result: dict[str, Any], machine: dict[str, Any]) -> str:
  kinds = machine.get('devices') or ['']
  peak = throughput.table_peak(kinds[0], result['dtype'])
  if peak is None:
    return 'no spec-sheet peak for this device'
  return f'{100 * result["achieved_flops_per_s"] / peak:.1f}% of the spec sheet'


def _train_rows(payload, done):
  del done
  rows = []
  for r in payload['results']:
    step_ms = r['step_s']['median'] * 1e3
    peak = r.get('peak_bytes_in_use')
    estimate = r.get('estimated_bytes')
    rows.append(
        (
            f'train step {r["config"]} ({r["encoder"]}), {r["dtype"]}, batch {r["batch"]}',
            f'{step_ms:.4g} ms, {r["examples_per_s"]:.4g} images/s, '
            f'{r["achieved_flops_per_s"] / 1e12:.4g} TFLOP/s: MFU {100 * r["mfu"]:.1f}% of the '
            f'measured matmul peak, {_mfu_against_table(r, payload["machine"])}',
            '-',
            None,
        )
    )
    rows.append(
        (
            f'train step memory, batch {r["batch"]}',
            f'peak in use {_gib(peak)}; XLA estimate compiled here {_gib(estimate)}',
            '-',
            None,
        )
    )
  return rows


def _memory_argv(batch: int) -> Callable[[Context], list[str]]:
  def argv(c: Context) -> list[str]:
    if c.smoke:
      return ['--mode=memory', '--configs=tiny', '--paper_batch=2']
    return ['--mode=memory', '--configs=paper', f'--paper_batch={batch}', '--dtype=bfloat16']

  return argv


def _memory_rows(payload, done):
  """The CPU compile's estimate against the train section's measured peak on this device."""
  rows = []
  for r in payload['results']:
    measured = None
    for name, other in done.items():
      if name.startswith('train_') and other is not None:
        for t in other['results']:
          if t['batch'] == r['batch'] and t['config'] == r['config']:
            measured = t.get('peak_bytes_in_use')
    ratio = (
        '' if not measured else f'; measured peak / CPU estimate {measured / r["total_bytes"]:.2f}'
    )
    rows.append(
        (
            f'train step memory, batch {r["batch"]}, compiled for {r["backend"]}',
            f'XLA estimate {_gib(r["total_bytes"])} (temporaries {_gib(r["temp_bytes"])}); '
            f'measured peak on the device {_gib(measured)}{ratio}',
            '-',
            None,
        )
    )
  return rows


def _reconstruct_argv(c: Context) -> list[str]:
  if c.smoke:
    return ['--preset=tiny', '--batch_sizes=1', '--num_steps=1', '--repeats=1']
  return ['--preset=paper', '--batch_sizes=1,64', '--num_steps=10', '--repeats=3']


def _reconstruct_rows(payload, done):
  del done
  rows = []
  for r in payload['results']:
    ms = r['seconds']['reconstruct']['median'] * 1e3
    goal = r['batch'] == 1 and r['preset'] == 'paper' and r['num_steps'] == 10
    rows.append(
        (
            f'reconstruct {r["preset"]}, {r["num_steps"]} steps, batch {r["batch"]}',
            f'{ms:.4g} ms ({ms / r["batch"]:.3g} ms per image); encoder '
            f'{r["seconds"]["encoder"]["median"] * 1e3:.3g} ms, one decoder pass '
            f'{r["seconds"]["decoder"]["median"] * 1e3:.3g} ms; Python loop / scan '
            f'{r["loop_over_reconstruct"]:.2f}',
            f'≤ {RECONSTRUCT_GOAL_MS:g} ms' if goal else '-',
            (ms <= RECONSTRUCT_GOAL_MS) if goal else None,
        )
    )
  return rows


def _photo_argv(c: Context) -> list[str]:
  if c.smoke:  # no landmark fit: its compilation alone would take longer than the whole smoke run
    return ['--preset=tiny', '--images=synthetic', '--synthetic=1', '--photos=1', '--settings=fast']
  return ['--preset=paper', '--synthetic=4', '--photos=20', '--settings=photo']


def _photo_rows(payload, done):
  del done
  rows = []
  for r in payload['results']:
    s = r['summary']['all']
    stages = ', '.join(
        f'{stage} {s[f"{stage}_p50_ms"]:.3g}' for stage in ('detect', 'crop', 'sample', 'fit')
    )
    rows.append(
        (
            f'photo, {payload["run"]}, setting {r["setting"]}',
            f'p50 {s["p50_ms"]:.4g} ms, p95 {s["p95_ms"]:.4g} ms over {s["photos"]} photos '
            f'({s["hands_per_photo"]:.2f} hands each); p50 ms: {stages}; compiles while timed '
            f'{r["compiles_while_timed"]}',
            '-',
            None,
        )
    )
  return rows


def _live_argv(c: Context) -> list[str]:
  return ['--smoke'] if c.smoke else [f'--workdir={c.workdir}']


def _live_skip(c: Context) -> str | None:
  """bench live samples a trained run (the CPU demo's): on a GPU machine it must be carried there."""
  if c.smoke or os.path.exists(os.path.join(c.workdir, 'config.json')):
    return None
  return f'no trained run in --workdir={c.workdir} (bench live samples one: carry the CPU demo run)'


def _live_rows(payload, done):
  """bench live's `run` result: frames/s, drops, latency and the stages' means."""
  del done
  r = payload['results']
  stages = ', '.join(f'{k} {v["mean"]:.3g}' for k, v in r['stages_ms'].items())
  return [
      (
          f'live camera, {r["settings"]["workdir"]}, {r["frames"]} frames at '
          f'{r["settings"]["fps"]:g} frames/s',
          f'{r["processed_fps"]:.3g} processed frames/s, {r["dropped"]} dropped; latency p50 '
          f'{r["latency_ms"]["p50"]:.3g} ms, p95 {r["latency_ms"]["p95"]:.3g} ms; stage means ms: '
          f'{stages}',
          '-',
          None,
      )
  ]


def _input_argv(c: Context) -> list[str]:
  if c.smoke:
    return [
        '--workers=1',
        '--batch_size=4',
        '--image_size=32',
        '--num_batches=1',
        '--repeats=1',
        '--fixture_annotations=2',
        '--skip_memory',
    ]
  return [f'--workers={c.cpus}', '--num_batches=8', '--repeats=2', '--skip_memory']


def _input_rows(payload, done):
  del done
  settings = payload['settings']
  return [
      (
          f'input pipeline: {r["pipeline"]}, batch {settings["batch_size"]} at '
          f'{settings["image_size"]} px',
          f'{r["images_per_s"]["median"]:.4g} images/s, '
          f'{r["images_per_s"]["cpu_ms_per_image"]:.3g} CPU ms per image',
          '-',
          None,
      )
      for r in payload['results']
      if r['workers'] or r['prefetch']
  ]


def _gib(value: float | None) -> str:
  return '-' if value is None else f'{value / GIB:.2f} GiB'


SECTIONS = (
    Section('attention', 'attention', 20, _attention_argv, _attention_rows),
    Section('train_b32', 'train', 100, _train_argv(32), _train_rows),
    Section('train_b64', 'train', 100, _train_argv(64), _train_rows),
    Section('reconstruct', 'sampler', 55, _reconstruct_argv, _reconstruct_rows),
    Section('photo', 'photo', 85, _photo_argv, _photo_rows),
    Section('live', 'live', 45, _live_argv, _live_rows, skip=_live_skip),
    # The input pipeline takes every core: alone, after the CPU compiles below.
    Section('input', 'input', 55, _input_argv, _input_rows, alone=True),
    # A CPU compile of the paper's train step takes minutes: both run beside the GPU's sections.
    Section(
        'memory_cpu_b32',
        'train',
        300,
        _memory_argv(32),
        _memory_rows,
        env=(('JAX_PLATFORMS', 'cpu'),),
        background=True,
    ),
    Section(
        'memory_cpu_b64',
        'train',
        300,
        _memory_argv(64),
        _memory_rows,
        env=(('JAX_PLATFORMS', 'cpu'),),
        background=True,
    ),
)


# ==================================================================================================
# Running the sections
# ==================================================================================================


@dataclasses.dataclass
class Outcome:
  """What became of a section: status 'ok', 'failed', 'timed out' or 'skipped', with a note."""

  section: str
  status: str
  seconds: float
  note: str = ''
  payload: dict[str, Any] | None = None
  cpu_seconds: float = 0.0  # CPU time of this process and its finished children (on a busy machine,
  # what the section costs better than its wall-clock time)


def _benchmark_exists(name: str) -> bool:
  return importlib.util.find_spec(f'diffhand_jax.benchmarks.{name}') is not None


def _last_lines(path: str, count: int = 3) -> str:
  try:
    with open(path, errors='replace') as f:
      lines = [line.strip() for line in f if line.strip()]
  except OSError:
    return ''
  return ' | '.join(lines[-count:])[-400:]


def run_section(
    section: Section, context: Context, results_dir: str, budget_s: float, isolate: bool
) -> Outcome:
  """Runs one section (in a process of its own when `isolate`, stopped after `budget_s`); never
  raises."""
  output = os.path.join(results_dir, f'{section.name}.json')
  log = os.path.join(results_dir, f'{section.name}.log')
  if not _benchmark_exists(section.benchmark):
    return Outcome(
        section.name,
        'skipped',
        0.0,
        f'no `bench {section.benchmark}` in this checkout (diffhand_jax/benchmarks/'
        f'{section.benchmark}.py)',
    )
  reason = section.skip(context)
  if reason is not None:
    return Outcome(section.name, 'skipped', 0.0, reason)
  if isolate and budget_s < 1:  # (in this process nothing could stop a section: budgets are moot)
    return Outcome(section.name, 'skipped', 0.0, 'no time left in the total budget')
  if os.path.exists(output):
    os.remove(output)
  argv = [section.benchmark, *section.argv(context), f'--output={output}']
  start, cpu_start = time.perf_counter(), _cpu_seconds()
  print(f'== gpu: {section.name} (budget {budget_s:.0f} s): bench {" ".join(argv)}', flush=True)
  if isolate:
    status, note = _run_process(argv, dict(section.env), log, budget_s)
  else:
    status, note = _run_here(argv)
  # CPU time only in this process: isolated sections overlap (background), their children's mix.
  seconds, cpu = time.perf_counter() - start, (0.0 if isolate else _cpu_seconds() - cpu_start)
  payload = None
  if status == 'ok':
    try:
      with open(output) as f:
        payload = json.load(f)
    except (OSError, ValueError) as error:
      status, note = 'failed', f'no report: {error}'
  if status != 'ok' and isolate and not note:
    note = _last_lines(log)
  spent = '' if isolate else f' ({cpu:.0f} CPU s)'
  print(f'== gpu: {section.name}: {status} in {seconds:.0f} s{spent} {note}', flush=True)
  return Outcome(section.name, status, seconds, note, payload, cpu)


def _cpu_seconds() -> float:
  """User + system CPU seconds of this process and its waited-for children."""
  own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
      resource.RUSAGE_CHILDREN
  )
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run_process(
    argv: list[str], env: dict[str, str], log: str, budget_s: float
) -> tuple[str, str]:
  """`python -m diffhand_jax.bench ARGV` in a new process group, killed with its children (input
  workers) at the budget."""
  with open(log, 'w') as out:
    process = subprocess.Popen(
        [sys.executable, '-m', 'diffhand_jax.bench', *argv],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        start_new_session=True,
    )
    try:
      code = process.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
      return 'timed out', f'stopped at its budget of {budget_s:.0f} s'
  return ('ok', '') if code == 0 else ('failed', f'exit status {code}')


def _run_here(argv: list[str]) -> tuple[str, str]:
  """The benchmark's main in this process (the smoke run): its exceptions become a 'failed' note."""
  module = importlib.import_module(f'diffhand_jax.benchmarks.{argv[0]}')
  try:
    code = module.main(argv[1:]) or 0
  except Exception as error:  # a broken section must not hide the others  # pylint: disable=broad-except
    return (
        'failed',
        f'{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ""}',
    )
  return ('ok', '') if code == 0 else ('failed', f'exit status {code}')


def run_sections(
    sections: list[Section], context: Context, results_dir: str, budget_s: float, isolate: bool
) -> list[Outcome]:
  """Each section in turn, within its budget and what is left of `budget_s` (isolated only: in this
  process, the smoke run, every section runs); isolated, the background sections run beside the
  others from the start. Outcomes in the sections' order. A section that would
  run exactly what an earlier one ran (the smoke run's tiny shapes are one for batch 32 and 64) takes
  that one's report instead of running it again."""
  start = time.perf_counter()
  done: dict[str, Outcome] = {}
  ran: dict[tuple, Outcome] = {}
  background = [s for s in sections if s.background and isolate]
  threads = []
  for section in background:  # each waits on its own process, beside the others

    def run(section=section):
      done[section.name] = run_section(
          section, context, results_dir, min(section.budget_s, budget_s), isolate
      )

    threads.append(threading.Thread(target=run, daemon=True))
    threads[-1].start()
  for section in sections:
    if section in background:
      continue
    if section.alone:
      for thread in threads:
        thread.join()
    key = (section.benchmark, tuple(section.argv(context)), section.env)
    if key in ran and ran[key].status == 'ok':
      earlier = ran[key]
      done[section.name] = Outcome(
          section.name, 'ok', 0.0, f'the same run as {earlier.section}', earlier.payload
      )
      continue
    left = budget_s - (time.perf_counter() - start)
    done[section.name] = run_section(
        section, context, results_dir, min(section.budget_s, left), isolate
    )
    ran.setdefault(key, done[section.name])
  for thread in threads:
    thread.join()
  return [done[section.name] for section in sections]


def table_rows(outcomes: list[Outcome]) -> list[list[str]]:
  """The Markdown table's rows: each section's measurements, or one row saying why it has none."""
  rows, done = [], {}
  for outcome in outcomes:
    section = next(s for s in SECTIONS if s.name == outcome.section)
    measured = []
    if outcome.payload is not None:
      try:
        measured = section.rows(outcome.payload, done)
      except (KeyError, TypeError, ValueError, IndexError) as error:
        outcome.status, outcome.note = (
            'failed',
            f'unreadable report: {type(error).__name__} {error}',
        )
      done[outcome.section] = outcome.payload
    if not measured:
      rows.append([outcome.section, '-', f'**{outcome.status}**: {outcome.note}', '-', '-', ''])
    for what, result, goal, met in measured:
      verdict = '-' if met is None else ('met' if met else '**missed**')
      rows.append([outcome.section, what, result, goal, verdict, f'{outcome.seconds:.0f}'])
  return rows


HEADER = ('section', 'measurement', 'result', 'goal', 'goal met', 'section s')


def render(outcomes: list[Outcome], context: Context, total_s: float, budget_s: float) -> str:
  """The table file's text: a heading saying what machine and run it is, the table, the totals."""
  machine = common.machine()
  when = datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')
  devices = ', '.join(sorted(set(machine['devices'])))
  lines = ['<!-- Written by `python -m diffhand_jax.bench gpu`; it rewrites this file. -->', '']
  if context.smoke:
    lines += [
        f'**SMOKE RUN** (`bench gpu --smoke`, {when}, {machine["backend"]}: {devices}): the tiny',
        'model on tiny shapes, to check that every section runs. **These are not GPU figures.**',
    ]
  else:
    lines += [
        f'Measured by `python -m diffhand_jax.bench gpu` on {when}: {machine["backend"]}, {devices}; '
        f'{machine["cpu_count"]} CPUs ({machine["cpu"]}); JAX {machine["jax"]}.',
    ]
  lines += [
      '',
      '| ' + ' | '.join(HEADER) + ' |',
      '|' + '|'.join('---' for _ in HEADER) + '|',
  ]
  for row in table_rows(outcomes):
    lines.append('| ' + ' | '.join(str(cell).replace('|', '/') for cell in row) + ' |')
  statuses = ', '.join(f'{o.section} {o.status}' for o in outcomes)
  lines += ['', f'All sections in {total_s:.0f} s (budget {budget_s:.0f} s): {statuses}.', '']
  return '\n'.join(lines)


FLAGS = flags.FlagValues()
flags.DEFINE_bool('smoke', False, 'tiny shapes on any machine, in this process', flag_values=FLAGS)
flags.DEFINE_string(
    'table',
    '',
    'the Markdown table (default: docs/gpu_table.md; with --smoke '
    'bench_results/gpu_table_smoke.md)',
    flag_values=FLAGS,
)
flags.DEFINE_string(
    'results_dir', 'bench_results/gpu', "the sections' JSON reports and logs", flag_values=FLAGS
)
flags.DEFINE_float('budget_s', 480.0, 'the time all sections together may take', flag_values=FLAGS)
flags.DEFINE_list(
    'sections',
    [],
    f'run only these (default: all: {", ".join(s.name for s in SECTIONS)})',
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    'isolate',
    None,
    'each section in a process of its own, killed at its budget (default: yes, but not with --smoke)',
    flag_values=FLAGS,
)
flags.DEFINE_string(
    'workdir', 'runs/synthetic', 'a trained run, for the sections that take one', flag_values=FLAGS
)


def main(argv: list[str]) -> int:
  prog = 'python -m diffhand_jax.bench gpu'
  try:
    command_line.parse(FLAGS, argv, prog=prog, doc=__doc__)
    names = [s.name for s in SECTIONS]
    unknown = [s for s in FLAGS.sections if s not in names]
    if unknown or FLAGS.budget_s <= 0:
      raise command_line.usage_error(
          prog,
          f'--sections must name some of {", ".join(names)} (unknown: {unknown}); --budget_s > 0',
      )
  except command_line.Exit as done:
    return done.code
  smoke = FLAGS.smoke
  if not smoke and jax.default_backend() == 'cpu':
    print(
        f"{prog}: no GPU here (JAX sees {jax.default_backend()}): these are a CPU's figures; "
        'use --smoke to check the sections run',
        flush=True,
    )
  isolate = (not smoke) if FLAGS.isolate is None else FLAGS.isolate
  table = FLAGS.table or ('bench_results/gpu_table_smoke.md' if smoke else 'docs/gpu_table.md')
  context = Context(smoke=smoke, cpus=os.cpu_count() or 1, workdir=FLAGS.workdir)
  os.makedirs(FLAGS.results_dir, exist_ok=True)
  chosen = [s for s in SECTIONS if not FLAGS.sections or s.name in FLAGS.sections]
  start = time.perf_counter()
  outcomes = run_sections(chosen, context, FLAGS.results_dir, FLAGS.budget_s, isolate)
  total = time.perf_counter() - start
  text = render(outcomes, context, total, FLAGS.budget_s)
  os.makedirs(os.path.dirname(os.path.abspath(table)), exist_ok=True)
  with open(table, 'w') as f:
    f.write(text)
  print(text, flush=True)
  print(f'wrote {table}', flush=True)
  common.write_json(
      os.path.join(FLAGS.results_dir, 'gpu.json'),
      {
          'benchmark': 'gpu',
          'machine': common.machine(),
          'smoke': smoke,
          'total_s': total,
          'budget_s': FLAGS.budget_s,
          'outcomes': [
              {k: v for k, v in dataclasses.asdict(o).items() if k != 'payload'} for o in outcomes
          ],
      },
  )
  # The table is written whatever happened; the exit status says whether a section broke.
  return 1 if any(o.status in ('failed', 'timed out') for o in outcomes) else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
