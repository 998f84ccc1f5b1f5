"""The paper's Table 6 (RGB against RGB + depth) by the two-stage schedule, on a depth config.

  python -m diffhand_jax.depth_table --config=configs/freihand_depth.py --workdir=runs/table6_freihand
  python -m diffhand_jax.depth_table --config=configs/ho3d_depth.py --workdir=runs/table6_ho3d

Trains the RGB run in WORKDIR/rgb, estimates the depth (config.depth.source='estimator') where it is
missing, fine-tunes the depth run from the RGB run in WORKDIR/depth for config.depth.finetune_steps,
then prints a Markdown table of PA-MPVPE, MPVPE, PA-MPJPE and MPJPE (mm) with the paper's MPVPE gain and
writes it to WORKDIR/depth_table.json (diffhand_jax/training/depth_table.py does the work). Every stage
resumes when the command is run again. The config and what it needs are checked first, as `main` checks
them.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from diffhand_jax import command_line  # noqa: E402
from diffhand_jax.runs import checks  # noqa: E402
from diffhand_jax.training import depth_table  # noqa: E402

PROG = 'python -m diffhand_jax.depth_table'

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'workdir', None, 'Where the two runs and depth_table.json go.', flag_values=FLAGS
)


def main(argv=None) -> int:
  try:
    command_line.parse(FLAGS, argv, prog=PROG, doc=__doc__, config_file=True)
  except command_line.Exit as done:
    return done.code
  if not FLAGS['config'].present or not FLAGS.workdir:
    print(f'{PROG}: error: --config and --workdir are required', file=sys.stderr)
    return 2
  logging.set_verbosity(logging.WARNING)
  rgb, _ = depth_table.stage_configs(FLAGS.config, FLAGS.workdir)
  try:
    # The RGB stage's needs; the depth stage's (its maps, its init_from) exist only once it has run.
    checks.check_run(rgb, os.path.join(FLAGS.workdir, 'rgb'), mode='train')
  except checks.RunCheckError as error:
    print(f'{PROG}: error: {error}', file=sys.stderr)
    return 2
  try:
    summary = depth_table.run_depth_table(FLAGS.config, FLAGS.workdir)
  except KeyboardInterrupt:
    print(f'{PROG}: interrupted; rerun the same command to resume', file=sys.stderr)
    return 130
  if 'preempted' in summary:
    print(f'stopped by a signal during the {summary["preempted"]} stage; rerun to resume')
    return 0
  print(summary['table'], flush=True)
  print(f'wrote {os.path.join(FLAGS.workdir, "depth_table.json")}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
