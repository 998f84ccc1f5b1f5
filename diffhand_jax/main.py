"""Train, evaluate and export DiffHand.

  python -m diffhand_jax.main --config=configs/synthetic.py --workdir=runs/synthetic
  python -m diffhand_jax.main --config=configs/synthetic.py --workdir=runs/synthetic --config.mode=evaluate
  python -m diffhand_jax.main --config=configs/synthetic.py --config.mode=memory   # no --workdir needed

Training resumes from the newest checkpoint in --workdir. Mode 'memory' compiles the train step without
running it and prints the per-device memory XLA plans for it (diffhand_jax/training/memory.py). Any config
field can be overridden on the command line (``--config.batch_size=16``).

Before anything is built, the config's fields and everything the run needs (the MANO files, the prepared
dataset, the pretrained encoder of a fresh run, a writable workdir, devices for the mesh, a workdir that
holds no other model) are checked, and every problem is reported in one message with exit status 2. One
run holds a workdir at a time (workdir/run.lock). Ctrl-C and SIGTERM both checkpoint the current step and
exit; a second Ctrl-C quits at once.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow only reads the datasets here

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import jax  # noqa: E402

from diffhand_jax import command_line  # noqa: E402
from diffhand_jax.geometry import hand_model  # noqa: E402
from diffhand_jax.models import checkpoint_errors  # noqa: E402
from diffhand_jax.runs import checks, lock  # noqa: E402
from diffhand_jax.training import distributed, memory, train  # noqa: E402

PROG = 'python -m diffhand_jax.main'

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'workdir', None, 'Where checkpoints, logs, results and exports go.', flag_values=FLAGS
)
flags.DEFINE_bool(
    'move_aside',
    False,
    'When --workdir holds a run of another model, move that run to WORKDIR.<timestamp> and start '
    'afresh (nothing is deleted).',
    flag_values=FLAGS,
)


def error_exit(message: str, status: int = 2) -> int:
  print(f'{PROG}: error: {message}', file=sys.stderr, flush=True)
  return status


def main(argv=None) -> int:
  """Runs the command on ``argv`` (the flags, without the program name); returns the exit status."""
  try:
    command_line.parse(FLAGS, argv, prog=PROG, doc=__doc__, config_file=True)
  except command_line.Exit as done:
    return done.code
  if not FLAGS['config'].present:
    return error_exit('--config=configs/<name>.py is required')
  config = FLAGS.config
  mode = config.get('mode', 'train')

  # TensorFlow waits until the flags are parsed, so that --help answers quickly.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # heavy: seconds to import

  tf.config.set_visible_devices([], 'GPU')  # keep TensorFlow off the accelerators JAX uses
  logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO
  how = distributed.maybe_initialize()
  if how != 'single':
    print(
        f'process {jax.process_index()} of {jax.process_count()} ({how}), '
        f'{jax.local_device_count()} local / {jax.device_count()} global devices',
        flush=True,
    )
  workdir = FLAGS.workdir
  try:
    # Everything is checked before the lock is taken, so that a refused run changes nothing.
    checks.check_run(config, workdir, mode=mode, check_resume=not FLAGS.move_aside)
  except checks.RunCheckError as error:
    return error_exit(str(error))

  if mode == 'memory':
    if config.dataset.hand_model == 'mano':
      _, missing = hand_model.mano_dir_problem(
          config.dataset.get('mano_dir'), 'memory', ('MANO_RIGHT.pkl',)
      )
      if missing:  # the same 778-vertex topology: the memory plan does not change
        print(
            'no MANO files: the memory report uses the procedural hand (same topology)', flush=True
        )
        config.dataset.hand_model = 'procedural'
    memory.print_memory_report(config)
    return 0

  holder = None
  try:
    if jax.process_index() == 0:
      if FLAGS.move_aside:
        moved = lock.move_run_aside(workdir)
        if moved:
          print(f'moved the run that was in {workdir} to {moved}', flush=True)
      holder = lock.WorkdirLock(workdir).acquire()
    if mode == 'train':
      results = train.train_and_evaluate(config, workdir)
      if results.get('preempted'):  # the loop said where it stopped
        return 130 if results.get('signal') == 'SIGINT' else 0
    else:
      train.evaluate_checkpoint(config, workdir)
  except lock.WorkdirLockedError as error:
    return error_exit(str(error))
  except (checkpoint_errors.CheckpointMismatchError, checkpoint_errors.CheckpointError) as error:
    return error_exit(str(error))
  except FloatingPointError as error:  # the NaN stop: its message says what was kept
    return error_exit(str(error))
  except KeyboardInterrupt:
    return error_exit('interrupted (a second Ctrl-C); the last checkpoint saved is kept', 130)
  finally:
    if holder is not None:
      holder.release()
  return 0


def run() -> None:
  sys.exit(main())


if __name__ == '__main__':
  run()
