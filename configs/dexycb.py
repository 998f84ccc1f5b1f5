r"""DiffHand on DexYCB (S0): the paper's Table 2 setting, with DeiT III Large instead of HRNet-W64.

  DIFFHAND_MANO_DIR=/path/to/mano python -m diffhand_jax.main --config=configs/dexycb.py --workdir=runs/dexycb

Needs the prepared TFDS dataset `dex_ycb` (docs/design.md §7):

  DIFFHAND_MANO_DIR=/path/to/mano tfds build datasets/dex_ycb --manual_dir=/path/to/dex-ycb \
      --data_dir=~/tensorflow_datasets --file_format=array_record

The paper's recipe (Li et al. 2023, §4.1): HRNet-W64 encoder in the paper; HRNet is not built yet, so this
config uses DeiT III Large (the paper's Table 5 finds the two encoders within a few tenths of a mm); input
256x256, AdamW at 1e-4, batch 64 (global), 100 epochs, lambda_joint 1, lambda_smooth 0.05, DDIM with 10 steps.
100 epochs are converted to steps from `dataset.num_train_examples` (DexYCB S0: 465,504 train frames before
filtering; the filtered count is a few percent lower); override with --config.num_train_steps.

Expected result (test split): MPJPE 12.1 mm and PA-MPJPE 4.98 mm (paper Table 2, with HRNet-W64; DexYCB
protocol of docs/design.md §6: root-relative MPJPE, Umeyama PA with reflection fix).

Recommended GPU settings (from the measurements in docs/performance.md; no GPU figures yet):
  * --config.model.dtype=bfloat16: matmuls in bfloat16, params and optimiser state float32; attention runs
    cuDNN's fused kernel (models/attention.py). Its losses match float32's (bench bf16_parity).
  * XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true (launch/slurm.sbatch sets it): overlaps the
    gradient all-reduce of several GPUs with compute.
  * Input workers: config.dataset.num_workers defaults to min(8, CPUs - 1), 7 with the 8 CPUs per task of
    launch/slurm.sbatch. One worker prepares about 300 augmented images/s from FreiHAND's 224x224
    frames on the development CPU (DexYCB's 640x480 frames cost more to decode), and a GPU takes about
    1,000 images/s: give each GPU at least 4 workers, and more CPUs per task if the training log's
    input wait grows. `python -m diffhand_jax.bench input --data_dir=~/tensorflow_datasets
    --dataset=dex_ycb --image_size=256 --crop_margin=0.25` measures it on the real data."""

import ml_collections

from diffhand_jax.geometry import conventions
from diffhand_jax.runs import model_presets, presets

# S0 train frames before HandOccNet's filtering; `tfds build` prints how many it skips, so set the
# filtered count here (or --config.dataset.num_train_examples) for exact epochs.
NUM_TRAIN_EXAMPLES = 465504
EPOCHS = 100


def get_config() -> ml_collections.ConfigDict:
  config = presets.base_config(dataset_name='dex_ycb', eval_split='test')  # S0 test split
  presets.set_epochs(config, EPOCHS, NUM_TRAIN_EXAMPLES)
  config.eval_every_steps = 10_000

  config.model = model_presets.get_model_config('paper')  # DeiT III Large + 3 cross-modality blocks
  # ImageNet-22k pretrained DeiT III Large from the Hugging Face Hub (model_presets.PAPER_ENCODER_INIT says
  # why this tag); --config.model.encoder_init='' trains from random weights.
  config.model.encoder_init = model_presets.PAPER_ENCODER_INIT
  config.model.img_size = 256

  config.dataset.tip_ids = conventions.TIP_IDS[
      'dexycb'
  ]  # this dataset's tip vertices (docs/design.md §2)
  config.dataset.crop_margin = 0.25  # square box around the hand, +25% per side (HandOccNet: 1.5x)
  config.dataset.max_rotation_deg = 30.0
  return config
