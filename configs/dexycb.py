r"""DiffHand on DexYCB (S0): the paper's Table 2 setting, HRNet-W64 from ImageNet weights at 256 px.

  DIFFHAND_MANO_DIR=/path/to/mano python -m diffhand_jax.main --config=configs/dexycb.py --workdir=runs/dexycb

The encoder's weights are timm's `timm/hrnet_w64.ms_in1k`, read through the Hugging Face cache (fill it on
a machine with internet access: `hf download timm/hrnet_w64.ms_in1k model.safetensors`). DeiT III Large,
the paper's other encoder (its Table 5), instead:
  --config.model.encoder=deit3_large_patch16_224 \
      --config.model.encoder_init=timm/deit3_large_patch16_224.fb_in22k_ft_in1k

Needs the prepared TFDS dataset `dex_ycb` (docs/design.md §7):

  DIFFHAND_MANO_DIR=/path/to/mano tfds build datasets/dex_ycb --manual_dir=/path/to/dex-ycb \
      --data_dir=~/tensorflow_datasets --file_format=array_record

The paper's recipe (Li et al. 2023, §4.1): HRNet-W64 encoder, its BatchNorm statistics trained over the
whole global batch (config.batch_norm, docs/design.md §11); input 256x256, AdamW at 1e-4, batch 64 (global), 100 epochs, lambda_joint 1, lambda_smooth 0.05, DDIM with 10 steps.
100 epochs are converted to steps from `dataset.num_train_examples` (DexYCB S0: 465,504 train frames before
filtering; the filtered count is a few percent lower); override with --config.num_train_steps.

Expected result (test split): MPJPE 12.1 mm and PA-MPJPE 4.98 mm (paper Table 2, with HRNet-W64; DexYCB
protocol of docs/design.md §6: root-relative MPJPE, Umeyama PA with reflection fix).

Recommended GPU settings (from the measurements in docs/performance.md; no GPU figures yet):
  * --config.model.dtype=bfloat16: convolutions and matmuls in bfloat16, params, batch statistics and
    optimiser state float32; the decoder's attention runs cuDNN's fused kernel (models/attention.py).
    bench bf16_parity measured its losses against float32's with the ViT encoder, not yet with HRNet.
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

  config.model = model_presets.get_model_config('paper')  # 3 cross-modality blocks of width 256
  # HRNet-W64 as the paper, ImageNet-1k pretrained from the Hugging Face Hub;
  # --config.model.encoder_init='' trains from random weights.
  config.model.encoder = model_presets.PAPER_HRNET_ENCODER
  config.model.encoder_init = model_presets.PAPER_HRNET_INIT
  config.model.img_size = 256

  config.dataset.tip_ids = conventions.TIP_IDS[
      'dexycb'
  ]  # this dataset's tip vertices (docs/design.md §2)
  config.dataset.crop_margin = 0.25  # square box around the hand, +25% per side (HandOccNet: 1.5x)
  config.dataset.max_rotation_deg = 30.0
  return config
