"""The paper's Table 4 ablation (diffusion on/off × cross-modality/vanilla decoder) on any config.

`run_ablation(config, workdir)` trains and evaluates the four variants one after another, each in
WORKDIR/<variant> (so an interrupted run resumes), and writes the table with the full results to
WORKDIR/ablation.json.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from diffhand_jax.runs import files
from diffhand_jax.training import train

VARIANTS = (  # (name, decoder, diffusion), in the paper's Table 4 order
    ('vanilla_regression', 'vanilla', False),
    ('vanilla_diffusion', 'vanilla', True),
    ('cross_modality_regression', 'cross_modality', False),
    ('cross_modality_diffusion', 'cross_modality', True),
)
COLUMNS = ('pa_mpvpe', 'mpvpe', 'pa_mpjpe', 'mpjpe')


def table(rows: dict) -> str:
  """A Markdown table of the variants' errors (mm), in the paper's order."""
  lines = [
      '| cross-modality decoder | diffusion | PA-MPVPE | MPVPE | PA-MPJPE | MPJPE |',
      '|---|---|---|---|---|---|',
  ]
  for name, decoder, use_diffusion in VARIANTS:
    if name in rows:
      values = ' | '.join(f'{rows[name][c]:.2f}' for c in COLUMNS)
      lines.append(
          f'| {"yes" if decoder == "cross_modality" else "no"} | '
          f'{"yes" if use_diffusion else "no"} | {values} |'
      )
  return '\n'.join(lines)


def run_ablation(base_config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and scores the four variants of ``base_config``. Returns {'table', 'results'}, or
  {'preempted': variant} when a signal stopped one of them (rerun to resume)."""
  rows = {}
  for name, decoder, use_diffusion in VARIANTS:
    config = base_config.copy_and_resolve_references()
    config.model.decoder = decoder
    config.model.diffusion = use_diffusion
    print(f'== {name}', flush=True)
    results = train.train_and_evaluate(config, os.path.join(workdir, name))
    if results.get('preempted'):
      return {'preempted': name}
    rows[name] = {k: results[k] for k in COLUMNS + ('baseline_pa_mpvpe', 'step')}
  summary = {'table': table(rows), 'results': rows}
  files.write_json_atomic(os.path.join(workdir, 'ablation.json'), summary)
  return summary
