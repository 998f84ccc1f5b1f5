"""One whole photo in, every hand out: the latency of `predict`'s path per photo, by stage.

  python -m diffhand_jax.bench photo [--workdir=runs/synthetic | --preset=paper]
      [--images=synthetic,opencv-doc] [--photos=100] [--settings=photo] [--batch_size=N]

Each photo goes alone through `pipeline.reconstruct_photos` (what `predict` and the app run): the
detector, the crops, the sampler with the setting's hypotheses, the placement in the camera and the
landmark refinement (`mano.fit`). Photos: synthetic frames of 1-2 procedural hands (640 × 480, the
truth unused, `bench placement`'s) and the real hand photos of Debian's opencv-doc, taken in turn,
cycled up to --photos. Every distinct photo goes through once first, so that each shape the timed
loop meets is compiled; the timed loop counts XLA compilations (it should see none). Reported: p50
and p95 over the photos of the whole call and of each stage (`pipeline.STAGES`), in ms, and the
process's CPU time per photo (all threads: on a shared machine the wall clock also holds the waits
for a core).

The run: --workdir (a trained run, the CPU demo's by default), or --preset (tiny, cpu_demo, paper:
that model with random weights in the demo's config, `loading.untrained_run`: the paper's DeiT III Large
costs the same whatever its weights).

Settings (--settings, comma-separated), trade-offs against predict's defaults (`PHOTO_DEFAULTS`):
  photo        predict's defaults: the detector with tiles, 5 hypotheses in batches of 8, landmark refine
  no_refine    the same without the landmark refinement (the network's mesh, placed on the landmarks)
  no_tiles     the detector on the whole photo only (no search for small hands in tiles)
  small_batch  crops sampled in batches of 1 (no padding of one photo's hands to 8)
  one_hypothesis  1 hypothesis instead of 5 (no spread, no uncertainty)
  fast         no_tiles + small_batch + one_hypothesis + no_refine
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from typing import Any

from absl import flags
import jax
import numpy as np

from diffhand_jax import command_line
from diffhand_jax.benchmarks import common, placement
from diffhand_jax.inference import detection, io, loading, pipeline, sampling
from diffhand_jax.runs import model_presets, run_config

SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (pipeline.Options fields over PHOTO_DEFAULTS, MediaPipeHands fields)
    'photo': ({}, {}),
    'no_refine': (dict(refine='none'), {}),
    'no_tiles': ({}, dict(tiles=False)),
    'small_batch': (dict(batch_size=1), {}),
    'one_hypothesis': (dict(num_hypotheses=1), {}),
    'fast': (dict(refine='none', batch_size=1, num_hypotheses=1), dict(tiles=False)),
}
SOURCES = ('synthetic', 'opencv-doc')


def percentile(values: list[float], q: float) -> float:
  """The q-th percentile (linear interpolation), NaN for no values."""
  return float(np.percentile(values, q)) if values else float('nan')


def open_run(workdir: str, preset: str) -> Any:
  """The run to time: `preset`'s model with random weights in the demo's config, else the trained run
  in `workdir`."""
  if not preset:
    return loading.load_trained(workdir)
  config = run_config.config_file('synthetic')
  config.model = model_presets.get_model_config(preset)
  return loading.untrained_run(config)


def load_photos(sources: list[str], synthetic_count: int, seed: int) -> list[pipeline.Photo]:
  """The distinct photos of `sources`, interleaved: synthetic frames (placement.synthetic_photos) and
  the installed opencv-doc photos."""
  lists = []
  if 'synthetic' in sources and synthetic_count:
    lists.append([photo for photo, _ in placement.synthetic_photos(synthetic_count, seed)])
  if 'opencv-doc' in sources:
    paths = placement.photo_paths('opencv-doc')
    lists.append([pipeline.Photo(io.read_image(p), name=os.path.basename(p)) for p in paths])
  photos = []
  for row in range(max((len(each) for each in lists), default=0)):
    photos += [each[row] for each in lists if row < len(each)]
  return photos


def _source(photo: pipeline.Photo) -> str:
  return 'synthetic' if photo.focal_source == 'known' else 'opencv-doc'


class CompileCounter:
  """Counts XLA compilations while it is on (jax.monitoring's backend-compile events). One per process
  (`compile_counter`): jax.monitoring keeps its listeners for good."""

  EVENT = '/jax/core/compile/backend_compile_duration'

  def __init__(self):
    self.count = 0
    self.on = False
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event: str, *args, **kwargs) -> None:
    del args, kwargs
    if self.on and event == self.EVENT:
      self.count += 1


_COUNTER: list[CompileCounter] = []


def compile_counter() -> CompileCounter:
  if not _COUNTER:
    _COUNTER.append(CompileCounter())
  return _COUNTER[0]


def measure(
    samplers: sampling.SamplerCache,
    setting: str,
    photos: list[pipeline.Photo],
    count: int,
    batch_size: int | None,
    counter: CompileCounter,
) -> dict[str, Any]:
  """Every distinct photo once (compiling), then `count` photos in turn, each timed alone."""
  fields, detector_fields = SETTINGS[setting]
  options = dataclasses.replace(pipeline.PHOTO_DEFAULTS, **fields)
  if batch_size is not None and 'batch_size' not in fields:
    options = dataclasses.replace(options, batch_size=batch_size)
  if detector_fields:
    options = dataclasses.replace(options, detector=detection.MediaPipeHands(**detector_fields))
  start = time.perf_counter()
  for photo in photos:
    pipeline.reconstruct_photos(samplers, [photo], options)
  warmup_s = time.perf_counter() - start
  rows = []
  counter.count, counter.on = 0, True
  try:
    for number in range(count):
      photo = photos[number % len(photos)]
      timings: dict[str, float] = {}
      start, cpu = time.perf_counter(), time.process_time()
      (result,) = pipeline.reconstruct_photos(samplers, [photo], options, timings=timings)
      total, cpu = time.perf_counter() - start, time.process_time() - cpu
      rows.append(
          dict(
              photo=photo.name,
              source=_source(photo),
              hands=len(result.hands),
              total_s=total,
              cpu_s=cpu,
              **{f'{stage}_s': timings.get(stage, 0.0) for stage in pipeline.STAGES},
          )
      )
  finally:
    counter.on = False
  return {
      'setting': setting,
      'options': {
          k: v for k, v in dataclasses.asdict(options).items() if k not in ('detector', 'tta')
      },
      'detector': detector_fields or 'default',
      'warmup_s': warmup_s,
      'compiles_while_timed': counter.count,
      'photos': rows,
      'summary': summarise(rows),
  }


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
  """{'all' and each source: {'photos', 'hands', 'p50_ms', 'p95_ms', and p50 of each stage}}."""
  groups = {'all': rows, **{s: [r for r in rows if r['source'] == s] for s in SOURCES}}
  out = {}
  for name, group in groups.items():
    if not group:
      continue
    totals = [1e3 * r['total_s'] for r in group]
    out[name] = {
        'photos': len(group),
        'hands_per_photo': statistics.mean(r['hands'] for r in group),
        'p50_ms': percentile(totals, 50),
        'p95_ms': percentile(totals, 95),
        'cpu_p50_ms': percentile([1e3 * r['cpu_s'] for r in group], 50),
        **{
            f'{stage}_p50_ms': percentile([1e3 * r[f'{stage}_s'] for r in group], 50)
            for stage in pipeline.STAGES
        },
        **{
            f'{stage}_p95_ms': percentile([1e3 * r[f'{stage}_s'] for r in group], 95)
            for stage in pipeline.STAGES
        },
    }
  return out


FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', 'runs/synthetic', 'a trained run (the CPU demo)', flag_values=FLAGS)
flags.DEFINE_enum(
    'preset',
    '',
    ('',) + model_presets.PRESETS,
    "instead of --workdir: this model preset with random weights ('paper': DeiT III Large)",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    'images', ','.join(SOURCES), f'photo sources, comma-separated, of {SOURCES}', flag_values=FLAGS
)
flags.DEFINE_integer('photos', 100, 'photos timed (the distinct ones cycled)', flag_values=FLAGS)
flags.DEFINE_integer('synthetic', 20, 'distinct synthetic frames', flag_values=FLAGS)
flags.DEFINE_string('settings', 'photo', f'of {", ".join(SETTINGS)}', flag_values=FLAGS)
flags.DEFINE_integer(
    'batch_size', None, "the sampler's batch (default: predict's, 8)", flag_values=FLAGS
)
flags.DEFINE_integer('seed', 0, 'seed of the synthetic frames', flag_values=FLAGS)
flags.DEFINE_string('output', 'bench_results/photo.json', 'the JSON report', flag_values=FLAGS)


def main(argv: list[str]) -> int:
  prog = 'python -m diffhand_jax.bench photo'
  try:
    command_line.parse(FLAGS, argv, prog=prog, doc=__doc__)
    settings = [s.strip() for s in FLAGS.settings.split(',') if s.strip()]
    sources = [s.strip() for s in FLAGS.images.split(',') if s.strip()]
    if not settings or any(s not in SETTINGS for s in settings):
      raise command_line.usage_error(prog, f'--settings must name some of {", ".join(SETTINGS)}')
    if not sources or any(s not in SOURCES for s in sources):
      raise command_line.usage_error(prog, f'--images must name some of {", ".join(SOURCES)}')
    if FLAGS.photos < 1 or FLAGS.synthetic < 0 or (FLAGS.batch_size or 1) < 1:
      raise command_line.usage_error(prog, '--photos and --batch_size >= 1, --synthetic >= 0')
  except command_line.Exit as done:
    return done.code
  if not FLAGS.preset and common.trained_workdir_missing('photo', FLAGS.workdir):
    return 2
  try:
    photos = load_photos(sources, FLAGS.synthetic, FLAGS.seed)
  except io.InputError as error:
    print(f'{prog}: {error}')
    return 2
  if not photos:
    print(f'{prog}: no photos (--images={FLAGS.images}, --synthetic={FLAGS.synthetic})')
    return 2
  run = open_run(FLAGS.workdir, FLAGS.preset)
  samplers = sampling.SamplerCache(run)
  counter = compile_counter()
  model_name = FLAGS.preset or f'{os.path.basename(os.path.abspath(FLAGS.workdir))} (trained)'
  results, rows = [], []
  for setting in settings:
    print(f'photo: {setting}, {len(photos)} distinct photos, {FLAGS.photos} timed', flush=True)
    result = measure(samplers, setting, photos, FLAGS.photos, FLAGS.batch_size, counter)
    results.append(result)
    for group, s in result['summary'].items():
      rows.append(
          [
              model_name,
              setting,
              group,
              s['photos'],
              f"{s['hands_per_photo']:.2f}",
              s['p50_ms'],
              s['p95_ms'],
              s['cpu_p50_ms'],
              *[s[f'{stage}_p50_ms'] for stage in pipeline.STAGES],
              result['compiles_while_timed'] if group == 'all' else '',
          ]
      )
  header = [
      'model',
      'setting',
      'photos',
      'timed',
      'hands/photo',
      'p50 ms',
      'p95 ms',
      'CPU ms p50',
      *[f'{stage} p50 ms' for stage in pipeline.STAGES],
      'compiles while timed',
  ]
  common.report(
      'photo',
      FLAGS.output,
      f'one photo in, every hand out, per photo ({jax.default_backend()})',
      header,
      rows,
      results,
      run=model_name,
      sources=sources,
  )
  return 0


if __name__ == '__main__':
  import sys

  sys.exit(main(sys.argv[1:]))
