"""The paper's Table 4 ablation (diffusion on/off × cross-modality/vanilla decoder) on any config.

  python -m diffhand_jax.ablation --config=configs/synthetic.py --workdir=runs/ablation [--config.key=value]

Trains and evaluates the four variants one after another, each in WORKDIR/<variant> (so an interrupted
run resumes), then prints a Markdown table of PA-MPVPE, MPVPE, PA-MPJPE and MPJPE (mm) and writes it,
with the full results, to WORKDIR/ablation.json (diffhand_jax/training/ablation.py does the work).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where the four runs and ablation.json go.')
config_flags.DEFINE_config_file(
    'config', None, 'Base training configuration file.', lock_config=True
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  from diffhand_jax.training import ablation

  summary = ablation.run_ablation(FLAGS.config, FLAGS.workdir)
  if 'preempted' in summary:
    print(
        f'stopped by a signal during {summary["preempted"]}; rerun the same command to resume',
        flush=True,
    )
    return
  print(summary['table'], flush=True)
  print(f'wrote {os.path.join(FLAGS.workdir, "ablation.json")}', flush=True)


if __name__ == '__main__':
  app.run(main)
