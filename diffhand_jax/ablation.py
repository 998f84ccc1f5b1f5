"""The paper's Table 4 ablation (diffusion on/off × cross-modality/vanilla decoder) on any config.

  python -m diffhand_jax.ablation --config=configs/synthetic.py --workdir=runs/ablation [--config.key=value]

Trains and evaluates the four variants one after another, each in WORKDIR/<variant> (so an interrupted
run resumes), then prints a Markdown table of PA-MPVPE, MPVPE, PA-MPJPE and MPJPE (mm) and writes it,
with the full results, to WORKDIR/ablation.json (diffhand_jax/training/ablation.py does the work). The
base config and what it needs are checked first, as `main` checks them.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from diffhand_jax import command_line  # noqa: E402
from diffhand_jax.runs import checks  # noqa: E402
from diffhand_jax.training import ablation  # noqa: E402

PROG = 'python -m diffhand_jax.ablation'

FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', None, 'Where the four runs and ablation.json go.', flag_values=FLAGS)


def main(argv=None) -> int:
  try:
    command_line.parse(FLAGS, argv, prog=PROG, doc=__doc__, config_file=True)
  except command_line.Exit as done:
    return done.code
  if not FLAGS['config'].present or not FLAGS.workdir:
    print(f'{PROG}: error: --config and --workdir are required', file=sys.stderr)
    return 2
  logging.set_verbosity(logging.WARNING)
  try:
    # Each variant's folder is a workdir of its own; the base config's needs are the same for all.
    checks.check_run(FLAGS.config, FLAGS.workdir, mode='train', check_resume=False)
  except checks.RunCheckError as error:
    print(f'{PROG}: error: {error}', file=sys.stderr)
    return 2
  try:
    summary = ablation.run_ablation(FLAGS.config, FLAGS.workdir)
  except KeyboardInterrupt:
    print(f'{PROG}: interrupted; rerun the same command to resume', file=sys.stderr)
    return 130
  if 'preempted' in summary:
    print(
        f'stopped by a signal during {summary["preempted"]}; rerun the same command to resume',
        flush=True,
    )
    return 0
  print(summary['table'], flush=True)
  print(f'wrote {os.path.join(FLAGS.workdir, "ablation.json")}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
