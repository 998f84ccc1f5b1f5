"""The paper's ablations on any config: Table 4 (diffusion on/off × cross-modality/vanilla decoder) and
Table 5 (image encoder: DeiT-Large against HRNet-W64).

  python -m diffhand_jax.ablation --config=configs/synthetic.py --workdir=runs/ablation [--config.key=value]
  python -m diffhand_jax.ablation --table=5 --config=configs/dexycb.py --workdir=runs/table5/dexycb
  python -m diffhand_jax.ablation --table=5 --reduced_encoders --config=configs/synthetic.py \
      --workdir=runs/table5/synthetic   # both encoders scaled down to what a CPU trains

Trains and evaluates the table's variants one after another, each in WORKDIR/<variant> (so an
interrupted run resumes), then prints a Markdown table of PA-MPVPE, MPVPE, PA-MPJPE and MPJPE (mm), with
the paper's figures beside Table 5's rows, and writes it, with the full results, to WORKDIR/ablation.json
(diffhand_jax/training/ablation.py does the work). Every variant's config and what it needs (Table 5's
two sets of pretrained weights) are checked first, as `main` checks them.
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
flags.DEFINE_string(
    'workdir', None, "Where the variants' runs and ablation.json go.", flag_values=FLAGS
)
flags.DEFINE_enum(
    'table',
    '4',
    ['4', '5'],
    'The paper table: 4 (decoder x diffusion) or 5 (encoder).',
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    'reduced_encoders',
    False,
    'Table 5 only: the two encoder families scaled down to what a CPU trains, from random weights.',
    flag_values=FLAGS,
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
  table = int(FLAGS.table)
  try:
    configs = ablation.variant_configs(FLAGS.config, table, FLAGS.reduced_encoders)
  except ValueError as error:
    print(f'{PROG}: error: {error}', file=sys.stderr)
    return 2
  # Every variant is checked before any runs, and one message lists all that is missing: the problems
  # that all variants share once, then each variant's own (Table 5's two sets of weights).
  problems = {}
  for name, config in configs.items():
    try:
      # Each variant's folder is a workdir of its own.
      checks.check_run(config, os.path.join(FLAGS.workdir, name), mode='train', check_resume=False)
    except checks.RunCheckError as error:
      problems[name] = error.problems
  if problems:
    everywhere = len(problems) == len(configs)
    shared = [p for p in next(iter(problems.values())) if everywhere]
    shared = [p for p in shared if all(p in found for found in problems.values())]
    lines = shared + [
        f'variant {name}: {p}' for name, found in problems.items() for p in found if p not in shared
    ]
    print(f'{PROG}: error: {checks.RunCheckError(lines, "the ablation")}', file=sys.stderr)
    return 2
  try:
    summary = ablation.run_ablation(FLAGS.config, FLAGS.workdir, table, FLAGS.reduced_encoders)
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
