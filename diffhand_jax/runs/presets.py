"""What every training config shares (docs/design.md §8 keys), so that each dataset's config states only what
differs. `configs/synthetic.py`, `freihand.py`, `ho3d.py` and `dexycb.py` start from `base_config()`.
"""

import ml_collections

# config.batch_norm.statistics: how a step combines BatchNorm statistics across the data axis.
BATCH_NORM_STATISTICS = ('synchronised', 'per_device')
# config.depth.source and config.depth.train.
DEPTH_SOURCES = ('dataset', 'estimator')
DEPTH_TRAIN = ('all', 'depth_block')


def base_config(*, dataset_name: str, eval_split: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = 'train'  # or 'evaluate', or 'memory' (compile only; print per-device memory)
  config.seed = 0
  config.batch_size = 64
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2_000
  config.keep_checkpoints = 3
  config.mesh = {'data': -1, 'fsdp': 1}  # -1 = fill in with the remaining devices
  config.fsdp_min_size = 2**18  # tensors smaller than this stay replicated
  # How params, optimiser state and EMA are laid out on the mesh: (regex, spec) pairs; the first regex
  # found (re.search) in a tensor's path ('params/encoder/blocks_0/mlp/fc1/kernel',
  # 'opt_state/1/0/mu/...', 'ema_params/...') gives its spec: 'fsdp_largest' (shard the largest
  # dimension divisible by the fsdp axis, for tensors of at least fsdp_min_size elements), 'replicate',
  # or a tuple of mesh axis names / None per dimension, e.g. (None, 'fsdp'). No match: replicated.
  config.sharding_rules = (('.*', 'fsdp_largest'),)
  config.grad_accum_steps = 1  # > 1: split the global batch into this many micro-batches per update
  config.ema_decay = (
      0.0  # > 0: also keep (and evaluate) an exponential moving average of the weights
  )
  # BatchNorm in training, for encoders that have it (HRNet; docs/design.md §11). statistics: how a
  # step's batch statistics are combined across the data axis: 'synchronised' (the whole global batch,
  # as SyncBatchNorm; the default: a step does not depend on how many devices share the batch) or
  # 'per_device' (each device's rows, as PyTorch DDP; the running statistics then move by the mean of
  # the devices' updates). freeze: normalise with the running statistics and never update them.
  config.batch_norm = ml_collections.ConfigDict({'statistics': 'synchronised', 'freeze': False})

  # A run that starts from another run's weights (the two-stage depth schedule, docs/design.md §11):
  # the workdir of that run; every param both models have is copied from its newest checkpoint (read
  # only). None = start from random weights (and config.model.encoder_init).
  config.init_from = ml_collections.config_dict.placeholder(str)
  # The depth condition, used when config.model.use_depth (docs/design.md §4, §7). source: 'estimator'
  # (maps estimated once per dataset by `python -m diffhand_jax.estimate_depth`, stored beside the TFDS
  # data) or 'dataset' (the depth the dataset ships: synthetic, HO-3D/DexYCB 'rgbd'). estimator_init:
  # the estimator's Hub id or local path (models/midas.py); estimator_size: its input side in pixels.
  # train: what the depth run trains, 'all' (the paper) or 'depth_block' (the new block only).
  config.depth = ml_collections.ConfigDict()
  config.depth.source = 'estimator'
  config.depth.estimator_init = 'Intel/dpt-large'
  config.depth.estimator_size = 384
  config.depth.train = 'all'
  config.depth.batch_size = 8  # images per estimator call in estimate_depth (per device)
  config.depth.shard_size = 1024  # examples per stored shard of estimated maps
  # Steps of the depth stage in the Table 6 command (diffhand_jax.depth_table); None = a tenth of the
  # RGB stage's (the paper: "a few epochs" after 100).
  config.depth.finetune_steps = ml_collections.config_dict.placeholder(int)

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = dataset_name
  config.dataset.config_name = 'default'
  config.dataset.data_dir = ''  # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.dataset.train_split = 'train'
  # A weighted mixture of training sources (data/mixture.py): (dataset, split, weight) entries, the
  # dataset 'name' or 'name/config', with an optional 4th item, its crop_margin (default: the
  # dataset's, mixture.DEFAULT_CROP_MARGIN). () = the one-entry mixture (name, train_split, 1).
  config.dataset.mixture = ()
  config.dataset.eval_split = eval_split
  config.dataset.hand_model = (
      'mano'  # 'mano': MANO_RIGHT/LEFT.pkl via mano_dir or $DIFFHAND_MANO_DIR
  )
  config.dataset.mano_dir = ''
  config.dataset.tip_ids = ml_collections.config_dict.placeholder(tuple)  # None = the model file's
  # A square crop around `bbox` widened by this margin per side; None = the frame is already a crop.
  config.dataset.crop_margin = ml_collections.config_dict.placeholder(float)
  # Training jitter of the crop (diffhand_jax/data/augment.py); max_rotation_deg None = no geometric jitter.
  config.dataset.scale_range = (0.9, 1.1)
  config.dataset.max_rotation_deg = ml_collections.config_dict.placeholder(float)
  config.dataset.max_translation = 0.05  # fraction of the crop box
  config.dataset.colour_jitter = 0.2
  config.dataset.max_train_examples = ml_collections.config_dict.placeholder(int)
  # Streaming (splits.SplitSource) vs whole split in memory; None = in memory for synthetic only.
  config.dataset.in_memory = ml_collections.config_dict.placeholder(bool)
  config.dataset.prefetch_batches = ml_collections.config_dict.placeholder(int)  # None = 4
  config.dataset.num_threads = ml_collections.config_dict.placeholder(int)  # None = cores - 1
  # Input worker processes (0 = the main process's threads); None = 0 for an in-memory split, else
  # min(8, CPUs this process may use − 1) (input_pipeline.default_num_workers).
  config.dataset.num_workers = ml_collections.config_dict.placeholder(int)

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
  # The vertex and joint terms' per-point error (losses.point_distance): 'squared' is Eq. 13's;
  # 'euclidean' (not squared) weights grossly wrong hands less.
  config.loss.point_distance = 'squared'
  # Training timesteps (losses.sample_timesteps): 'uniform' is the paper's t ~ U{0..T-1}; 'power' with
  # timestep_power = p > 1 weights high noise levels more.
  config.loss.timestep_sampling = 'uniform'
  config.loss.timestep_power = 1.0
  # The share of each batch moved to t = T-1, where the image alone must decide the hand (its global
  # orientation included); 0 is the paper's objective.
  config.loss.timestep_top_fraction = 0.0
  # Weight of the auxiliary orientation term (needs config.model.orientation_head); 0 is the paper's.
  config.loss.lambda_orientation = 0.0

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 64
  config.eval.num_export = 8
  # How K > 1 hypotheses (config.model.num_hypotheses) become one mesh: 'mean' | 'medoid' | 'aligned_mean'
  # (hypotheses.aggregate).
  config.eval.aggregate = 'mean'
  config.eval.max_examples = ml_collections.config_dict.placeholder(int)
  # The splits evaluated during and after training, each in its own pass: (dataset, split) entries
  # (an optional 3rd item: its crop_margin); () = config.dataset.eval_split of config.dataset.name.
  config.eval.datasets = ()
  return config


def set_epochs(config: ml_collections.ConfigDict, epochs: int, num_train_examples: int) -> None:
  """num_train_steps = ceil(epochs · examples / batch), recomputed when any of the three is overridden
  on the command line."""
  config.epochs = epochs
  config.dataset.num_train_examples = num_train_examples
  batch = config.get_ref('batch_size')
  examples = config.dataset.get_ref('num_train_examples')
  config.num_train_steps = (config.get_ref('epochs') * examples + batch - 1) // batch


def depth_source(config: ml_collections.ConfigDict) -> str | None:
  """config.depth.source for a depth-conditioned model (config.model.use_depth), else None: what the
  input pipeline's ``depth_source`` takes."""
  if not config.model.get('use_depth', False):
    return None
  depth = config.get('depth') or {}
  return depth.get('source', 'estimator')


def depth_estimator(config: ml_collections.ConfigDict) -> str | None:
  """config.depth.estimator_init of a depth run (the estimator inference runs), else None."""
  if not config.model.get('use_depth', False):
    return None
  return (config.get('depth') or {}).get('estimator_init')


def use_depth(config: ml_collections.ConfigDict, *, finetune_epochs: int) -> None:
  """Makes an RGB config the depth run of the two-stage schedule: the depth block on, MiDaS's depth
  (config.depth.source='estimator'), and config.depth.finetune_steps = ceil(epochs · examples / batch)
  for the depth stage of `depth_table`."""
  config.model.use_depth = True
  config.depth.source = 'estimator'
  examples = config.dataset.num_train_examples
  config.depth.finetune_steps = -(-finetune_epochs * examples // config.batch_size)
