r"""DiffHand on a weighted mixture of FreiHAND, DexYCB, HO-3D and the synthetic hands, evaluated on each.

  DIFFHAND_MANO_DIR=/path/to/mano python -m diffhand_jax.main --config=configs/mixture.py --workdir=runs/mixture

The paper trains one model per dataset; models meant for people's own photos (HaMeR, WiLoR) train one
on many. Every batch draws FreiHAND 40%, DexYCB 30%, HO-3D 20% and the synthetic hands 10%
(config.dataset.mixture; Grain's weighted interleaving, data/mixture.py). Each source keeps its own
crop (FreiHAND's frames are already crops; HO-3D's and DexYCB's full frames are cropped around the
hand box, +25% per side) and is resized to the one input size, 256 px. Needs the three real datasets
prepared as in configs/freihand.py, configs/ho3d.py and configs/dexycb.py (`tfds build datasets/<name>
... --file_format=array_record`); the synthetic hands build themselves on first use. `main` refuses
to start, listing the `tfds build` commands, while any of them is missing.

Model: the paper's (DeiT III Large from ImageNet-22k weights, 3 cross-modality blocks), AdamW at 1e-4,
global batch 64, 150,000 steps: 9.6M images, about 30 passes over FreiHAND's 130,240 at its 40%, 6 over
DexYCB's 465,504 at 30%, 26 over HO-3D's 66,034 at 20%. `--config.mode=memory` compiles the step and
prints its per-device memory without reading any data: on one CPU device, float32, the whole batch of
64 on it, XLA plans a peak of 67,661 MiB (params 1,199, optimiser state 2,397, temporaries 64,016;
compiled in 173 s on 2026-12-05). Spread the batch over several GPUs, or use
--config.model.dtype=bfloat16 or --config.grad_accum_steps, to fit an 80 GB GPU with room to spare.

Evaluation (every 10,000 steps and at the end, config.eval.datasets): FreiHAND's evaluation split,
DexYCB's S0 test split and the synthetic test split, one pass each. results.json holds the first's
metrics at its top level and every set's under results['datasets']['<dataset>:<split>'], each with the
mean-mesh baseline (the mixture's mean training mesh, weighted as the batches draw); metrics.jsonl has
one row per set. HO-3D's evaluation split has no public 3D ground truth, so it is not listed: score it
with `python -m diffhand_jax.submission --config.dataset.name=ho3d ...` on the CodaLab server.

What to expect: no run of this config has been made yet (no GPU here). Per dataset, the papers' numbers
for single-dataset training are FreiHAND PA-MPVPE 6.1 mm (DiffHand, Table 1) and DexYCB PA-MPJPE about
5.5 mm (Table 2); mixed-data models (HaMeR) report that a mixture matches or beats them on each test
set and transfers better to other photos. Expect each test set's errors within a few tenths of a mm of
the single-dataset runs, and far better than each set's mean-mesh baseline.

Caveats: the synthetic hands are renders of the procedural hand, whose mesh stands in for MANO's with
the same format but not the same vertices; with real MANO files its 10% teaches another vertex layout
(drop it with --config.dataset.mixture="(('freihand','train',0.4),('dex_ycb','train',0.3),('ho3d','train',0.2))").
The predicted joints are regressed with FreiHAND's fingertip vertices (config.dataset.tip_ids); the
other datasets' tips differ by a few millimetres (geometry/conventions.py TIP_IDS).
"""

import ml_collections

from diffhand_jax.geometry import conventions
from diffhand_jax.runs import model_presets, presets


def get_config() -> ml_collections.ConfigDict:
  config = presets.base_config(dataset_name='freihand', eval_split='evaluation')
  config.dataset.mixture = (
      ('freihand', 'train', 0.4),
      ('dex_ycb', 'train', 0.3),
      ('ho3d', 'train', 0.2),
      ('synthetic_hands', 'train', 0.1),
  )
  config.eval.datasets = (
      ('freihand', 'evaluation'),
      ('dex_ycb', 'test'),
      ('synthetic_hands', 'test'),
  )
  config.num_train_steps = 150_000
  config.eval_every_steps = 10_000

  config.model = model_presets.get_model_config('paper')  # DeiT III Large + 3 cross-modality blocks
  config.model.encoder_init = model_presets.PAPER_ENCODER_INIT
  config.model.img_size = 256  # the one input size every source is resized to

  config.dataset.tip_ids = conventions.TIP_IDS['freihand']  # see the docstring's caveats
  config.dataset.max_rotation_deg = 30.0
  return config
