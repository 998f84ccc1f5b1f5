"""DiffHand on FreiHAND v2: the paper's Table 1 setting.

  DIFFHAND_MANO_DIR=/path/to/mano python -m diffhand_jax.main --config=configs/freihand.py --workdir=runs/freihand

Needs the prepared TFDS dataset `freihand` (docs/design.md §7):

  tfds build datasets/freihand --manual_dir=/path/to/FreiHAND --data_dir=~/tensorflow_datasets --file_format=array_record

The paper's recipe (Li et al. 2023, §4.1): DeiT III Large encoder, input 224x224, AdamW at 1e-4, batch 64
(global), 100 epochs, lambda_joint 1, lambda_smooth 0.05, DDIM with 10 steps. 100 epochs are converted to
steps from `dataset.num_train_examples` (FreiHAND v2: 130,240 training images); override with
--config.num_train_steps.

Expected result (evaluation split, needs the evaluation release json files for has_3d=True): PA-MPJPE 5.8 mm
and PA-MPVPE 6.1 mm (paper Table 1, with test-time augmentation as MeshGraphormer; expect a few tenths of a mm
more without it).

Recommended GPU settings (from the measurements in docs/performance.md; no GPU figures yet):
  * --config.model.dtype=bfloat16: matmuls in bfloat16, params and optimiser state float32; attention runs
    cuDNN's fused kernel (models/attention.py). Its losses match float32's (bench bf16_parity).
  * XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true (launch/slurm.sbatch sets it): overlaps the
    gradient all-reduce of several GPUs with compute.
  * Input workers: config.dataset.num_workers defaults to min(8, CPUs - 1), 7 with the 8 CPUs per task of
    launch/slurm.sbatch. One worker prepares about 300 augmented 224 px FreiHAND images/s on the
    development CPU, and a GPU takes about 1,000 images/s: give each GPU at least 4 workers, and more
    CPUs per task if the training log's input wait grows. `python -m diffhand_jax.bench input
    --data_dir=~/tensorflow_datasets` measures it on the real data."""

import ml_collections

from diffhand_jax.geometry import conventions
from diffhand_jax.runs import model_presets, presets

NUM_TRAIN_EXAMPLES = (
    130240  # 32,560 annotated samples x 4 colour versions (FreiHAND v2 training/rgb)
)
EPOCHS = 100


def get_config() -> ml_collections.ConfigDict:
  config = presets.base_config(
      dataset_name='freihand', eval_split='evaluation'
  )  # 3,960 images; GT from FreiHAND_pub_v2_eval.zip
  presets.set_epochs(config, EPOCHS, NUM_TRAIN_EXAMPLES)
  config.eval_every_steps = 10_000

  config.model = model_presets.get_model_config('paper')  # DeiT III Large + 3 cross-modality blocks
  # ImageNet-22k pretrained DeiT III Large from the Hugging Face Hub (model_presets.PAPER_ENCODER_INIT says
  # why this tag); --config.model.encoder_init='' trains from random weights.
  config.model.encoder_init = model_presets.PAPER_ENCODER_INIT
  config.model.img_size = 224

  config.dataset.tip_ids = conventions.TIP_IDS[
      'freihand'
  ]  # this dataset's tip vertices (docs/design.md §2)
  # FreiHAND frames are already 224x224 crops: no crop box (crop_margin stays None)
  config.dataset.max_rotation_deg = 30.0
  return config
