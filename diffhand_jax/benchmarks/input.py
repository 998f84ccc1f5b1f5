"""Training input pipeline throughput, in images/s: train batches with augmentation at 224 px, by the
number of input worker processes.

  python -m diffhand_jax.bench input [--data_dir=DIR --dataset=freihand --split=train]
                                     [--workers=1,2,...] [--batch_size=64] [--image_size=224]
                                     [--crop_margin=M]
                                     [--num_batches=12] [--prefetch=4] [--repeats=3] [--output=...]
  python -m diffhand_jax.bench input --mixture [--data_dir=DIR] [--workers=2]

Without --data_dir it builds a FreiHAND-shaped fixture (diffhand_jax/data/fixtures.py: 224x224 JPEG frames
of noise, which decode slower than photographs) in a temporary directory, in the ArrayRecord format, and
removes it afterwards. Each repeat times the next ``num_batches`` batches of one iterator (FreiHAND's
augmentation: colour, scale, rotation up to 30 degrees, translation), for:
  * main process, no prefetch: each batch made when asked for, in the caller's thread (the work's own
    rate on one core);
  * main process: prefetched on a thread pool (config.dataset.num_workers=0);
  * N workers: prepared in N worker processes (grain's mp_prefetch; config.dataset.num_workers=N), for
    each N of --workers (default 1, 2, and 4 and 8 where the machine has that many CPUs);
  * in memory: the split (at most --memory_examples of it) read into memory first, main process with
    prefetch (decoding excluded from the timing).
Worker start-up (spawning the processes, importing TensorFlow there) is excluded: the clock starts after
a first round of batches. The consumer does nothing between batches, so the figures are the producer's
rate, the most a training step can be fed. The last column is the CPU time per image of all the
processes (and of the main process alone) over the timed runs: on a machine that other programs share,
the wall-clock rates drop with their load, while the CPU time per image says what the pipeline costs.
The small fixture sits in the page cache, so disk reads are not measured.

With --mixture it times a weighted mixture of four sources (data/mixture.py) against its first source
alone, both on --workers (default 2) worker processes: with --data_dir the mixture of
configs/mixture.py (FreiHAND 0.4, DexYCB 0.3, HO-3D 0.2, synthetic hands 0.1, each with its own crop),
else the fixtures of the three real datasets (HO-3D's and DexYCB's frames a tenth of the real size, so
cheaper to decode than real ones) and synthetic_hands/tiny, built in a temporary directory. The
'vs single' column is the mixture's rate over the single dataset's (the goal: >= 0.8).
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time

from absl import flags
import numpy as np
import tensorflow_datasets as tfds

from diffhand_jax.data import fixtures, input_pipeline, mixture, splits
from diffhand_jax.data.builders.dex_ycb import dex_ycb_dataset_builder as dex_ycb
from diffhand_jax.data.builders.freihand import freihand_dataset_builder as freihand
from diffhand_jax.data.builders.ho3d import ho3d_dataset_builder as ho3d
from diffhand_jax.benchmarks import common
from diffhand_jax import command_line

# FreiHAND's training augmentation (configs/freihand.py and diffhand_jax/runs/presets.py).
AUGMENT = {
    'scale_range': (0.9, 1.1),
    'max_rotation': float(np.deg2rad(30.0)),
    'max_translation': 0.05,
}
COLOUR_STRENGTH = 0.2


def build_fixture(directory: str, num_annotations: int) -> dict[str, str]:
  """A FreiHAND fixture (4 colour versions per annotation) prepared as ArrayRecord under ``directory``;
  returns its dataset config."""
  mano_dir = fixtures.write_mano_standins(os.path.join(directory, 'mano'))
  manual_dir = os.path.join(directory, 'freihand')
  fixtures.make_freihand(manual_dir, mano_dir, num_train=num_annotations, num_eval=1)
  data_dir = os.path.join(directory, 'tfds')
  builder = freihand.Builder(data_dir=data_dir, file_format=splits.STREAMING_FILE_FORMAT)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return {'name': 'freihand', 'data_dir': data_dir}


# The mixture of configs/mixture.py; on the fixtures the synthetic source is synthetic_hands/tiny.
MIXTURE = (
    ('freihand', 'train', 0.4),
    ('dex_ycb', 'train', 0.3),
    ('ho3d', 'train', 0.2),
    ('synthetic_hands', 'train', 0.1),
)


def build_mixture_fixtures(directory: str, num_annotations: int) -> dict[str, str]:
  """The FreiHAND (``num_annotations`` x 4 images), HO-3D and DexYCB fixtures prepared as ArrayRecord
  under ``directory`` (synthetic_hands/tiny builds itself there on first use); returns the data dir's
  dataset config."""
  config = build_fixture(directory, num_annotations)
  mano_dir = os.path.join(directory, 'mano')
  previous = os.environ.get('DIFFHAND_MANO_DIR')
  os.environ['DIFFHAND_MANO_DIR'] = mano_dir  # the builders read the hand files from there
  try:
    for name, make, module in (
        ('ho3d', fixtures.make_ho3d, ho3d),
        ('dex_ycb', fixtures.make_dex_ycb, dex_ycb),
    ):
      manual_dir = os.path.join(directory, name)
      make(manual_dir, mano_dir)
      module.Builder(
          data_dir=config['data_dir'], file_format=splits.STREAMING_FILE_FORMAT
      ).download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  finally:
    if previous is None:
      del os.environ['DIFFHAND_MANO_DIR']
    else:
      os.environ['DIFFHAND_MANO_DIR'] = previous
  return config


def cpu_seconds() -> dict[str, float]:
  """CPU seconds (user + system) so far of this process and of its live child processes (the input
  workers), from /proc; children are {} where /proc is not there."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  out = {'main': usage.ru_utime + usage.ru_stime}
  tick = os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100
  me = str(os.getpid())
  try:
    pids = [p for p in os.listdir('/proc') if p.isdigit()]
  except OSError:
    return out
  for pid in pids:
    try:
      with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
      continue
    if fields[1] == me:  # ppid
      out[pid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
  return out


def images_per_second(
    arrays, args, *, prefetch: int, num_threads: int = 1, num_workers: int = 0
) -> dict[str, float]:
  """min / median / max images/s over ``args.repeats`` runs of ``args.num_batches`` consecutive batches
  (``args``: the parsed flags, or anything with batch_size, image_size, num_batches and repeats)
  of one iterator, after a first run that starts its workers (steady state); and the CPU time per
  image of all processes over the timed runs ('cpu_ms_per_image', 'main_cpu_ms_per_image'), which
  other programs on the machine disturb far less than the wall-clock rate."""
  options = dict(
      batch_size=args.batch_size,
      seed=0,
      start_step=0,
      vertex_scale=0.1,
      image_size=args.image_size,
      colour_strength=COLOUR_STRENGTH,
      augment=AUGMENT,
      prefetch=prefetch,
      num_threads=num_threads,
      num_workers=num_workers,
  )
  if isinstance(arrays, (list, tuple)):  # a mixture's sources: each with its own crop
    batches = mixture.train_batches(arrays, **options)
  else:
    batches = input_pipeline.train_batches(
        arrays, crop_margin=getattr(args, 'crop_margin', None), **options
    )

  def draw():
    for _ in range(args.num_batches):
      batch = next(batches)
    return batch

  try:
    draw()  # start-up: the workers' processes and imports
    before = cpu_seconds()
    seconds = common.time_fn(draw, repeats=args.repeats, warmup=0, min_seconds=0.0)
    after = cpu_seconds()
  finally:
    batches.close()
  images = args.batch_size * args.num_batches
  timed_images = images * args.repeats
  spent = {key: after[key] - before.get(key, 0.0) for key in after}
  return {
      'min': images / seconds['max'],
      'median': images / seconds['median'],
      'max': images / seconds['min'],
      'cpu_ms_per_image': 1e3 * sum(spent.values()) / timed_images,
      'main_cpu_ms_per_image': 1e3 * spent['main'] / timed_images,
  }


def default_worker_counts() -> list[int]:
  """1 and 2 workers, and 4 and 8 where the machine has at least that many CPUs."""
  cpus = input_pipeline.available_cpus()
  return [1, 2] + [n for n in (4, 8) if n <= cpus]


FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'data_dir', '', 'a prepared TFDS data dir (default: build a fixture)', flag_values=FLAGS
)
flags.DEFINE_string('dataset', 'freihand', 'the TFDS dataset in --data_dir', flag_values=FLAGS)
flags.DEFINE_string('config_name', '', 'its builder config', flag_values=FLAGS)
flags.DEFINE_string('split', 'train', 'the split to read', flag_values=FLAGS)
flags.DEFINE_integer(
    'fixture_annotations',
    16,
    'FreiHAND annotations of the fixture (4 images each)',
    flag_values=FLAGS,
)
flags.DEFINE_integer('batch_size', 64, 'images per batch', flag_values=FLAGS)
flags.DEFINE_integer('image_size', 224, 'crop side, pixels', flag_values=FLAGS)
flags.DEFINE_float(
    'crop_margin',
    None,
    "crop a square box around each hand's bbox widened by this margin (HO-3D, DexYCB: 0.25); "
    'default: the frames are crops already (FreiHAND)',
    flag_values=FLAGS,
)
flags.DEFINE_integer('num_batches', 12, 'batches per timed repeat', flag_values=FLAGS)
flags.DEFINE_integer(
    'prefetch', input_pipeline.DEFAULT_PREFETCH, 'batches prefetched', flag_values=FLAGS
)
flags.DEFINE_integer(
    'num_threads',
    None,
    'prefetch threads of the main-process settings (default: min(prefetch, cpus - 1))',
    flag_values=FLAGS,
)
flags.DEFINE_list(
    'workers',
    None,
    'worker process counts to time (default: 1, 2, and 4, 8 where there are that many CPUs)',
    flag_values=FLAGS,
)
flags.DEFINE_integer('repeats', 3, 'timed repeats', flag_values=FLAGS)
flags.DEFINE_bool('skip_memory', False, 'do not time the in-memory split', flag_values=FLAGS)
flags.DEFINE_integer(
    'memory_examples',
    512,
    'the in-memory setting reads at most this many examples of the ' 'split',
    flag_values=FLAGS,
)
flags.DEFINE_string('output', 'bench_results/input.json', 'the JSON report', flag_values=FLAGS)
flags.DEFINE_bool(
    'mixture',
    False,
    'time the four-source mixture against its first source alone (see above)',
    flag_values=FLAGS,
)


def time_mixture(dataset_config: dict[str, str], where: str) -> None:
  """--mixture: the four-source mixture and its first source alone, on each --workers count (2)."""
  entries = [
      (name + ('/tiny' if where == 'fixture' and name == 'synthetic_hands' else ''), split, weight)
      for name, split, weight in MIXTURE
  ]
  run_config = {**dataset_config, 'mixture': tuple(entries), 'in_memory': False}
  sources = mixture.open_sources(run_config)
  single = sources[:1]  # the same source, read alone: all its batches' rows from it
  workers = [int(n) for n in FLAGS.workers] if FLAGS.workers else [2]
  rows, results = [], []
  for n in workers:
    rates = {}
    for name, chosen in ((f'{single[0].label} alone', single), ('mixture', sources)):
      print(f'timing: {name}, {n} workers', flush=True)
      rates[name] = images_per_second(chosen, FLAGS, prefetch=FLAGS.prefetch, num_workers=n)
    alone, mixed = rates[f'{single[0].label} alone'], rates['mixture']
    ratio = mixed['median'] / alone['median']
    for name, rate in rates.items():
      rows.append(
          [
              name,
              n,
              rate['median'],
              rate['min'],
              rate['max'],
              f'{ratio:.2f}x' if name == 'mixture' else '-',
              f"{rate['cpu_ms_per_image']:.2f} ({rate['main_cpu_ms_per_image']:.2f})",
          ]
      )
    results.append({'workers': n, 'single': alone, 'mixture': mixed, 'mixture_over_single': ratio})
  common.report(
      'input',
      FLAGS.output,
      f'Training input pipeline, mixture ({mixture.describe(sources)}; {where}) against '
      f'{single[0].label} alone, batch {FLAGS.batch_size}, {FLAGS.image_size} px, augmented, '
      f'{input_pipeline.available_cpus()} CPUs',
      [
          'pipeline',
          'workers',
          'images/s (median)',
          'min',
          'max',
          'vs single',
          'CPU ms/image, all (main)',
      ],
      rows,
      results,
      settings={
          'mixture': entries,
          'data': where,
          'batch_size': FLAGS.batch_size,
          'image_size': FLAGS.image_size,
          'num_batches': FLAGS.num_batches,
          'prefetch': FLAGS.prefetch,
          'repeats': FLAGS.repeats,
          'cpus': input_pipeline.available_cpus(),
          'augment': AUGMENT,
          'colour_strength': COLOUR_STRENGTH,
      },
  )


def main(argv: list[str]) -> int:
  try:
    command_line.parse(FLAGS, argv, prog='python -m diffhand_jax.bench input', doc=__doc__)
  except command_line.Exit as done:
    return done.code

  temporary = None
  try:
    if FLAGS.data_dir:
      dataset_config = {
          'name': FLAGS.dataset,
          'config_name': FLAGS.config_name,
          'data_dir': FLAGS.data_dir,
      }
      where = FLAGS.data_dir
    else:
      temporary = tempfile.mkdtemp(prefix='diffhand_bench_input_')
      start = time.time()
      print(
          f'building a FreiHAND fixture ({FLAGS.fixture_annotations} x 4 images) in {temporary}',
          flush=True,
      )
      build = build_mixture_fixtures if FLAGS.mixture else build_fixture
      dataset_config = build(temporary, FLAGS.fixture_annotations)
      print(f'built in {time.time() - start:.0f} s', flush=True)
      where = 'fixture'
    if FLAGS.mixture:
      time_mixture(dataset_config, where)
      return 0
    builder = splits.get_builder(dataset_config, prepare=False)
    source = splits.SplitSource(builder, FLAGS.split)
    _, threads = input_pipeline.prefetch_settings(source, FLAGS.prefetch, FLAGS.num_threads)
    workers = [int(n) for n in FLAGS.workers] if FLAGS.workers else default_worker_counts()
    # (name, arrays, workers, prefetch, threads)
    settings = [
        ('main process, no prefetch', source, 0, 0, 1),
        ('main process', source, 0, FLAGS.prefetch, threads),
    ]
    settings += [
        (f'{n} worker{"s" if n > 1 else ""}', source, n, FLAGS.prefetch, 1) for n in workers
    ]
    if not FLAGS.skip_memory:
      memory = source.read(np.arange(min(source.num_examples, FLAGS.memory_examples)))
      settings.append(
          (
              f'in memory ({len(memory["image"])} examples), main process',
              memory,
              0,
              FLAGS.prefetch,
              threads,
          )
      )
    rows, results = [], []
    for name, arrays, num_workers, prefetch, num_threads in settings:
      print(f'timing: {name}', flush=True)
      rate = images_per_second(
          arrays, FLAGS, prefetch=prefetch, num_threads=num_threads, num_workers=num_workers
      )
      results.append(
          {
              'pipeline': name,
              'workers': num_workers,
              'prefetch': prefetch,
              'threads': num_threads,
              'images_per_s': rate,
          }
      )
    one = next((r['images_per_s']['median'] for r in results if r['workers'] == 1), None)
    for r in results:
      ratio = r['images_per_s']['median'] / one if one and r['workers'] else None
      r['over_one_worker'] = ratio
      rate = r['images_per_s']
      rows.append(
          [
              r['pipeline'],
              r['workers'],
              r['threads'] if not r['workers'] else '-',
              rate['median'],
              rate['min'],
              rate['max'],
              '-' if ratio is None else f'{ratio:.2f}x',
              f"{rate['cpu_ms_per_image']:.2f} ({rate['main_cpu_ms_per_image']:.2f})",
          ]
      )
    common.report(
        'input',
        FLAGS.output,
        f'Training input pipeline ({builder.info.full_name}:{FLAGS.split}, {source.num_examples} '
        f'examples, batch {FLAGS.batch_size}, {FLAGS.image_size} px, augmented, '
        f'{input_pipeline.available_cpus()} CPUs)',
        [
            'pipeline',
            'workers',
            'threads',
            'images/s (median)',
            'min',
            'max',
            'vs 1 worker',
            'CPU ms/image, all (main)',
        ],
        rows,
        results,
        settings={
            'dataset': builder.info.full_name,
            'split': FLAGS.split,
            'data': where,
            'num_examples': source.num_examples,
            'batch_size': FLAGS.batch_size,
            'image_size': FLAGS.image_size,
            'crop_margin': FLAGS.crop_margin,
            'num_batches': FLAGS.num_batches,
            'prefetch': FLAGS.prefetch,
            'repeats': FLAGS.repeats,
            'cpus': input_pipeline.available_cpus(),
            'augment': AUGMENT,
            'colour_strength': COLOUR_STRENGTH,
        },
    )
  finally:
    if temporary is not None:
      shutil.rmtree(temporary, ignore_errors=True)
  return 0


if __name__ == '__main__':
  import sys

  sys.exit(main(sys.argv[1:]))
