"""The CPU demo: DiffHand trained on the synthetic-hands dataset, no download needed.

  python -m diffhand_jax.main --config=configs/synthetic.py --workdir=runs/synthetic

Builds `synthetic_hands/default` (64x64 renders of the procedural hand) into ~/tensorflow_datasets on
the first run, trains the `cpu_demo` model, evaluates on the test split with 10 DDIM steps, and exports
meshes and overlays. On a 2-core CPU the whole command should take at most 10 minutes, and the test
split's pa_mpvpe should be at most half of the mean-mesh baseline's (both are in results.json).
"""

import ml_collections

from configs import model_presets


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = 'train'  # or 'evaluate'
  config.seed = 0
  config.batch_size = 32
  config.num_train_steps = 900
  config.log_every_steps = 100
  config.eval_every_steps = 900
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  config.mesh = {'data': -1, 'fsdp': 1}
  config.fsdp_min_size = 2**18
  config.ema_decay = 0.995  # evaluate an exponential moving average of the weights

  config.model = model_presets.get_model_config('cpu_demo')
  # Narrower than the preset's decoder: more steps fit in the 10-minute budget, which matters more here.
  config.model.width = 32
  config.model.num_heads = 2

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = 'synthetic_hands'
  config.dataset.config_name = 'default'
  config.dataset.data_dir = ''  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.dataset.train_split = 'train'
  config.dataset.eval_split = 'test'
  config.dataset.hand_model = 'procedural'  # the hand the data was rendered from
  config.dataset.tip_ids = ml_collections.config_dict.placeholder(tuple)  # None = the model file's
  config.dataset.colour_jitter = 0.5
  # The frames are already crops around the hand: no crop box, no geometric jitter.
  config.dataset.crop_margin = ml_collections.config_dict.placeholder(float)
  config.dataset.max_rotation_deg = ml_collections.config_dict.placeholder(float)
  config.dataset.max_train_examples = ml_collections.config_dict.placeholder(int)

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 100
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
  config.eval.batch_size = 100
  config.eval.num_export = 4
  config.eval.aggregate = 'mean'  # how K > 1 hypotheses (config.model.num_hypotheses) become one mesh: mean | medoid
  config.eval.max_examples = ml_collections.config_dict.placeholder(int)
  return config
