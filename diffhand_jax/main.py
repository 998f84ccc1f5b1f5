"""Train, evaluate and export DiffHand.

  python -m diffhand_jax.main --config=configs/synthetic.py --workdir=runs/synthetic
  python -m diffhand_jax.main --config=configs/synthetic.py --workdir=runs/synthetic --config.mode=evaluate
  python -m diffhand_jax.main --config=configs/synthetic.py --config.mode=memory   # no --workdir needed

Training resumes from the newest checkpoint in --workdir. Mode 'memory' compiles the train step without
running it and prints the per-device memory XLA plans for it (diffhand_jax/training/memory.py). Any config field can
be overridden on the command line (``--config.batch_size=16``).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow only reads the datasets here

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where checkpoints, logs, results and exports go.')
config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file (configs/*.py).', lock_config=True
)
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  import tensorflow as tf

  tf.config.set_visible_devices([], 'GPU')  # keep TensorFlow off the accelerators JAX uses
  from absl import logging

  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
  from diffhand_jax.training import distributed, train

  how = distributed.maybe_initialize()
  if how != 'single':
    import jax

    print(
        f'process {jax.process_index()} of {jax.process_count()} ({how}), '
        f'{jax.local_device_count()} local / {jax.device_count()} global devices',
        flush=True,
    )
  config = FLAGS.config
  mode = config.get('mode', 'train')
  if mode in ('train', 'evaluate') and not FLAGS.workdir:
    raise app.UsageError(f'--workdir is required in mode {mode!r}')
  if mode == 'train':
    train.train_and_evaluate(config, FLAGS.workdir)
  elif mode == 'evaluate':
    train.evaluate_checkpoint(config, FLAGS.workdir)
  elif mode == 'memory':
    from diffhand_jax.training import memory

    memory.print_memory_report(config)
  else:
    raise app.UsageError(f"config.mode must be 'train', 'evaluate' or 'memory', got {mode!r}")


def run():
  app.run(main)


if __name__ == '__main__':
  run()
