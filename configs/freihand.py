"""DiffHand on FreiHAND v2: the paper's Table 1 setting.

  DIFFHAND_MANO_DIR=/path/to/mano python -m diffhand_jax.main --config=configs/freihand.py --workdir=runs/freihand

Needs the prepared TFDS dataset `freihand` (DESIGN §7):

  tfds build datasets/freihand --manual_dir=/path/to/FreiHAND --data_dir=~/tensorflow_datasets

The paper's recipe (Li et al. 2023, §4.1): DeiT III Large encoder, input 224x224, AdamW at 1e-4, batch 64
(global), 100 epochs, lambda_joint 1, lambda_smooth 0.05, DDIM with 10 steps. 100 epochs are converted to
steps from `dataset.num_train_examples` (FreiHAND v2: 130,240 training images); override with
--config.num_train_steps.

Expected result (evaluation split, needs the evaluation release json files for has_3d=True): PA-MPJPE 5.8 mm
and PA-MPVPE 6.1 mm (paper Table 1, with test-time augmentation as MeshGraphormer; expect a few tenths of a mm
more without it)."""

import ml_collections

from configs import model_presets

NUM_TRAIN_EXAMPLES = 130240  # 32,560 annotated samples x 4 colour versions (FreiHAND v2 training/rgb)
EPOCHS = 100


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = 'train'  # or 'evaluate'
  config.seed = 0
  config.batch_size = 64
  config.epochs = EPOCHS
  config.log_every_steps = 100
  config.eval_every_steps = 10_000
  config.checkpoint_every_steps = 2_000
  config.keep_checkpoints = 3
  config.mesh = {'data': -1, 'fsdp': 1}
  config.fsdp_min_size = 2**18
  config.ema_decay = 0.0

  config.model = model_presets.get_model_config('paper')  # DeiT III Large + 3 cross-modality blocks
  config.model.img_size = 224

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'freihand'
  config.dataset.config_name = 'default'
  config.dataset.data_dir = ''  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.dataset.train_split = 'train'
  config.dataset.eval_split = 'evaluation'  # 3,960 images; GT from FreiHAND_pub_v2_eval.zip
  config.dataset.num_train_examples = NUM_TRAIN_EXAMPLES
  # ceil(epochs * examples / batch), recomputed when any of the three is overridden on the command line.
  batch = config.get_ref('batch_size')
  examples = config.dataset.get_ref('num_train_examples')
  config.num_train_steps = (config.get_ref('epochs') * examples + batch - 1) // batch
  config.dataset.hand_model = 'mano'  # real MANO: MANO_RIGHT/LEFT.pkl via $DIFFHAND_MANO_DIR
  # FreiHAND tip vertices (thumb, index, middle, ring, little), DESIGN §2
  config.dataset.tip_ids = (744, 320, 443, 555, 672)
  config.dataset.crop_margin = ml_collections.config_dict.placeholder(float)  # None: FreiHAND frames are already 224x224 crops: the whole frame is used
  config.dataset.scale_range = (0.9, 1.1)  # augmentation (diffhand_jax/augment.py)
  config.dataset.max_rotation_deg = 30.0
  config.dataset.max_translation = 0.05  # fraction of the crop box
  config.dataset.colour_jitter = 0.2
  config.dataset.max_train_examples = ml_collections.config_dict.placeholder(int)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-4
  config.optimizer.warmup_steps = 1_000
  config.optimizer.end_lr_factor = 0.01
  config.optimizer.weight_decay = 1e-4
  config.optimizer.clip_norm = 1.0
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999

  config.loss = ml_collections.ConfigDict()
  config.loss.lambda_joint = 1.0
  config.loss.lambda_smooth = 0.05
  config.loss.use_2d = True  # the 2D joint term through the weak-perspective camera

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 64
  config.eval.num_export = 8
  config.eval.aggregate = 'mean'  # how K > 1 hypotheses (config.model.num_hypotheses) become one mesh: mean | medoid
  config.eval.max_examples = ml_collections.config_dict.placeholder(int)
  return config
