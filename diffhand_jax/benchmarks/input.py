"""Training input pipeline throughput, in images/s: train batches with augmentation at 224 px.

  python -m diffhand_jax.bench input [--data_dir=DIR --dataset=freihand --split=train]
                                     [--batch_size=64] [--image_size=224] [--num_batches=12]
                                     [--prefetch=4] [--num_threads=N] [--repeats=3] [--output=...]

Without --data_dir it builds a FreiHAND-shaped fixture (diffhand_jax/data/fixtures.py: 224x224 JPEG frames of
noise, which decode slower than photographs) in a temporary directory, in the ArrayRecord format, and
removes it afterwards. Each repeat times the next ``num_batches`` batches of one iterator (FreiHAND's
augmentation: colour, scale, rotation up to 30 degrees, translation), for:
  * stream: a SplitSource, decoding the rows of each batch, with the thread-pool prefetch;
  * stream, no prefetch: the same in the caller's thread (what the thread pool buys);
  * memory: the split (at most --memory_examples of it) read into memory first, with the prefetch
    (decoding excluded from the timing).
The consumer does nothing between batches, so the figures are the producer's rate, the most a training
step can be fed; use --num_batches well above --prefetch (the lead built up before timing is small).
The small fixture sits in the page cache, so disk reads are not measured.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from absl import flags
import numpy as np

from diffhand_jax.data import input_pipeline
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
  import tensorflow_datasets as tfds
  from diffhand_jax.data import fixtures
  from diffhand_jax.data.builders.freihand import freihand_dataset_builder as freihand

  mano_dir = fixtures.write_mano_standins(os.path.join(directory, 'mano'))
  manual_dir = os.path.join(directory, 'freihand')
  fixtures.make_freihand(manual_dir, mano_dir, num_train=num_annotations, num_eval=1)
  data_dir = os.path.join(directory, 'tfds')
  builder = freihand.Builder(data_dir=data_dir, file_format=input_pipeline.STREAMING_FILE_FORMAT)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return {'name': 'freihand', 'data_dir': data_dir}


def images_per_second(arrays, args, *, prefetch: int, num_threads: int) -> dict[str, float]:
  """min / median / max images/s over ``args.repeats`` runs of ``args.num_batches`` consecutive batches
  (``args``: the parsed flags, or anything with batch_size, image_size, num_batches and repeats)
  of one iterator (steady state: its threads stay ahead of the consumer between runs)."""
  batches = input_pipeline.train_batches(
      arrays,
      batch_size=args.batch_size,
      seed=0,
      start_step=0,
      vertex_scale=0.1,
      image_size=args.image_size,
      colour_strength=COLOUR_STRENGTH,
      augment=AUGMENT,
      prefetch=prefetch,
      num_threads=num_threads,
  )

  def draw():
    for _ in range(args.num_batches):
      batch = next(batches)
    return batch

  try:
    seconds = common.time_fn(draw, repeats=args.repeats, warmup=1, min_seconds=0.0)
  finally:
    batches.close()
  images = args.batch_size * args.num_batches
  return {
      'min': images / seconds['max'],
      'median': images / seconds['median'],
      'max': images / seconds['min'],
  }


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
flags.DEFINE_integer('num_batches', 12, 'batches per timed repeat', flag_values=FLAGS)
flags.DEFINE_integer(
    'prefetch', input_pipeline.DEFAULT_PREFETCH, 'batches prefetched', flag_values=FLAGS
)
flags.DEFINE_integer(
    'num_threads',
    None,
    'prefetch threads (default: min(prefetch, cpu_count - 1))',
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
      dataset_config = build_fixture(temporary, FLAGS.fixture_annotations)
      print(f'built in {time.time() - start:.0f} s', flush=True)
      where = 'fixture'
    builder = input_pipeline.get_builder(dataset_config, prepare=False)
    source = input_pipeline.SplitSource(builder, FLAGS.split)
    _, threads = input_pipeline.prefetch_settings(source, FLAGS.prefetch, FLAGS.num_threads)
    settings = [('stream', source, FLAGS.prefetch, threads), ('stream, no prefetch', source, 0, 1)]
    if not FLAGS.skip_memory:
      memory = source.read(np.arange(min(source.num_examples, FLAGS.memory_examples)))
      settings.append(
          (f'memory ({len(memory["image"])} examples)', memory, FLAGS.prefetch, threads)
      )
    rows, results = [], []
    for name, arrays, prefetch, num_threads in settings:
      rate = images_per_second(arrays, FLAGS, prefetch=prefetch, num_threads=num_threads)
      results.append(
          {'pipeline': name, 'prefetch': prefetch, 'threads': num_threads, 'images_per_s': rate}
      )
      rows.append([name, prefetch, num_threads, rate['median'], rate['min'], rate['max']])
    common.report(
        'input',
        FLAGS.output,
        f'Training input pipeline ({builder.info.full_name}:{FLAGS.split}, {source.num_examples} examples, '
        f'batch {FLAGS.batch_size}, {FLAGS.image_size} px, augmented)',
        ['pipeline', 'prefetch', 'threads', 'images/s (median)', 'min', 'max'],
        rows,
        results,
        settings={
            'dataset': builder.info.full_name,
            'split': FLAGS.split,
            'data': where,
            'num_examples': source.num_examples,
            'batch_size': FLAGS.batch_size,
            'image_size': FLAGS.image_size,
            'num_batches': FLAGS.num_batches,
            'repeats': FLAGS.repeats,
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
