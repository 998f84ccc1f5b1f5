"""The paper's Table 4 ablation (diffusion on/off × cross-modality/vanilla decoder) on any config.

  python -m diffhand_jax.ablation --config=configs/synthetic.py --workdir=runs/ablation [--config.key=value]

Trains and evaluates the four variants one after another, each in WORKDIR/<variant> (so an interrupted
run resumes), then prints a Markdown table of PA-MPVPE, MPVPE, PA-MPJPE and MPJPE (mm) and writes it,
with the full results, to WORKDIR/ablation.json.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Where the four runs and ablation.json go.')
config_flags.DEFINE_config_file('config', None, 'Base training configuration file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])

VARIANTS = (  # (name, decoder, diffusion), in the paper's Table 4 order
    ('vanilla_regression', 'vanilla', False),
    ('vanilla_diffusion', 'vanilla', True),
    ('cross_modality_regression', 'cross_modality', False),
    ('cross_modality_diffusion', 'cross_modality', True),
)
COLUMNS = ('pa_mpvpe', 'mpvpe', 'pa_mpjpe', 'mpjpe')


def table(rows: dict) -> str:
  lines = ['| cross-modality decoder | diffusion | PA-MPVPE | MPVPE | PA-MPJPE | MPJPE |',
           '|---|---|---|---|---|---|']
  for name, decoder, use_diffusion in VARIANTS:
    if name in rows:
      values = ' | '.join(f'{rows[name][c]:.2f}' for c in COLUMNS)
      lines.append(f'| {"yes" if decoder == "cross_modality" else "no"} | '
                   f'{"yes" if use_diffusion else "no"} | {values} |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  from diffhand_jax import train
  rows = {}
  for name, decoder, use_diffusion in VARIANTS:
    config = FLAGS.config.copy_and_resolve_references()
    config.model.decoder = decoder
    config.model.diffusion = use_diffusion
    print(f'== {name}', flush=True)
    results = train.train_and_evaluate(config, os.path.join(FLAGS.workdir, name))
    if results.get('preempted'):
      print(f'stopped by a signal during {name}; rerun the same command to resume', flush=True)
      return
    rows[name] = {k: results[k] for k in COLUMNS + ('baseline_pa_mpvpe', 'step')}
  text = table(rows)
  print(text, flush=True)
  train.write_json_atomic(os.path.join(FLAGS.workdir, 'ablation.json'), {'table': text, 'results': rows})


if __name__ == '__main__':
  app.run(main)
