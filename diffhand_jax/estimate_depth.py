"""Estimate the depth of a prepared dataset once, for depth-conditioned training (docs/design.md §7, §11).

  python -m diffhand_jax.estimate_depth --config=configs/freihand_depth.py [--config.key=value]

Runs the estimator config.depth.estimator_init names (default Intel/dpt-large, through the Hugging Face
cache) over every frame of config.dataset's train and eval splits (--splits to choose), and stores the
normalised maps beside the TFDS data, in <data_dir>/<dataset>/<config>/<version>/depth/<split>/, where
training with config.depth.source='estimator' reads them. Frames go in batches of config.depth.batch_size
per device, split over this host's devices; on several hosts (as `main` starts them) each takes every
P-th shard. Shards are written whole, so a killed run resumes where it stopped when run again.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402

from diffhand_jax import command_line  # noqa: E402
from diffhand_jax.data import splits  # noqa: E402
from diffhand_jax.inference import sampling  # noqa: E402
from diffhand_jax.runs import depth_estimator as depth  # noqa: E402
from diffhand_jax.models import checkpoint_errors  # noqa: E402
from diffhand_jax.training import distributed  # noqa: E402

PROG = 'python -m diffhand_jax.estimate_depth'

FLAGS = flags.FlagValues()
flags.DEFINE_list(
    'splits',
    None,
    'Splits to estimate (default: config.dataset.train_split and eval_split).',
    flag_values=FLAGS,
)


def error_exit(message: str, status: int = 2) -> int:
  print(f'{PROG}: error: {message}', file=sys.stderr, flush=True)
  return status


def main(argv=None) -> int:
  try:
    command_line.parse(FLAGS, argv, prog=PROG, doc=__doc__, config_file=True)
  except command_line.Exit as done:
    return done.code
  if not FLAGS['config'].present:
    return error_exit('--config=configs/<name>.py is required')
  config = FLAGS.config
  logging.set_verbosity(logging.WARNING)
  problem = splits.preparation_problem(config.dataset) or depth.estimator_problem(config.depth)
  if problem:
    return error_exit(problem)
  distributed.maybe_initialize()
  names = FLAGS.splits or list(
      dict.fromkeys([config.dataset.train_split, config.dataset.eval_split])
  )
  try:
    estimator = depth.load_estimator(config.depth)
    for split in names:
      result = depth.estimate_split(
          estimator,
          config.dataset,
          split,
          batch_size=config.depth.batch_size,
          shard_size=config.depth.shard_size,
          process_index=jax.process_index(),
          process_count=jax.process_count(),
          progress=sampling.progress_printer(f'depth of {split}'),
      )
      rate = result['estimated'] / max(result['seconds'], 1e-9)
      print(
          f'{split}: {result["num_examples"]} maps in {result["directory"]} '
          f'({result["estimated"]} estimated now, {rate:.1f} images/s)',
          flush=True,
      )
  except (checkpoint_errors.CheckpointError, ValueError, FileNotFoundError, KeyError) as error:
    return error_exit(str(error).splitlines()[0] if str(error) else repr(error))
  except KeyboardInterrupt:
    return error_exit('interrupted; the shards written are kept: rerun to resume', 130)
  return 0


if __name__ == '__main__':
  sys.exit(main())
