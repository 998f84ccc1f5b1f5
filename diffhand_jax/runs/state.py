"""The train state a checkpoint holds, the optimiser whose state it carries, and their abstract shapes.

Training and the restore behind loading a trained run both need the exact structure of what was saved,
so it is defined once here, below both. Opening a run for inference builds the network alone
(`build_network`, `abstract_params`): no optimiser.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffhand_jax import diffusion
from diffhand_jax.geometry import hand_model
from diffhand_jax.models import diffhand, pretrained

PyTree = Any


def leaf_path(path: tuple) -> str:
  """'/'-joined names of a pytree path: 'params/encoder/blocks_0/attn/qkv/kernel',
  'opt_state/1/0/mu/encoder/...', 'ema_params/...', 'step'. The same for a state and for its orbax
  metadata (dataclass fields and dict keys alike), so sharding rules and checkpoint checks share it.
  """
  names = []
  for entry in path:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(entry, attribute):
        names.append(str(getattr(entry, attribute)))
        break
    else:
      names.append(str(entry))
  return '/'.join(names)


@flax.struct.dataclass
class TrainState:
  """What a checkpoint's 'state' item holds. batch_stats: the encoder's BatchNorm running statistics
  ('batch_stats' of `diffhand.init_variables`, {} for encoders without BatchNorm), and their EMA copy
  when ema_decay > 0: not trained by the optimiser, so beside the params rather than in them."""

  step: jax.Array
  params: PyTree
  opt_state: PyTree
  ema_params: PyTree
  rng: jax.Array  # a raw uint32 key, so checkpoints hold plain arrays
  batch_stats: PyTree = flax.struct.field(default_factory=dict)
  ema_batch_stats: PyTree = flax.struct.field(default_factory=dict)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, after global-norm clipping."""
  opt = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=opt.learning_rate,
      warmup_steps=opt.warmup_steps,
      decay_steps=max(config.num_train_steps, opt.warmup_steps + 1),
      end_value=opt.learning_rate * opt.get('end_lr_factor', 0.01),
  )
  return optax.chain(
      optax.clip_by_global_norm(opt.clip_norm),
      optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay),
  )


def create_train_state(config, model, optimizer, key) -> TrainState:
  """A train state with random params. Pretrained encoder weights (config.model.encoder_init) are never
  read here, since this runs under jit and eval_shape: `with_pretrained_encoder` puts them in after.
  """
  init_key, state_key = jax.random.split(key)
  variables = diffhand.init_variables(model, init_key, config.model.img_size)
  params, batch_stats = variables['params'], variables['batch_stats']
  keep_ema = config.ema_decay > 0
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=optimizer.init(params),
      ema_params=params if keep_ema else {},
      rng=state_key,
      batch_stats=batch_stats,
      ema_batch_stats=batch_stats if keep_ema else {},
  )


def with_pretrained_encoder(
    state: TrainState, encoder_variables: PyTree, shardings: TrainState
) -> TrainState:
  """``state`` with its encoder params and BatchNorm statistics, and their EMA copies, replaced by
  ``encoder_variables`` ({'params', 'batch_stats'}, numpy, from `pretrained.encoder_variables`), each
  placed with the state's own shardings. Adam's moments start at zero either way, so they stay as they
  are."""
  replaced = {}
  for collection, names in (
      ('params', ('params', 'ema_params')),
      ('batch_stats', ('batch_stats', 'ema_batch_stats')),
  ):
    for name in names:
      current = getattr(state, name)
      if current:  # an EMA that is off, or a model without statistics, holds {}
        loaded = encoder_variables.get(collection) or {}
        replaced[name] = pretrained.with_encoder(current, loaded, getattr(shardings, name))
  return state.replace(**replaced)


def abstract_state(config, model, optimizer) -> TrainState:
  """The train state of ``config`` as jax.ShapeDtypeStructs (nothing is computed or read)."""
  return jax.eval_shape(
      functools.partial(create_train_state, config, model, optimizer),
      jax.random.PRNGKey(config.seed),
  )


def abstract_params(config, model) -> PyTree:
  """The params of ``model`` (built from ``config``) as jax.ShapeDtypeStructs: what a checkpoint's
  params item holds. Nothing is computed or read, and no optimiser is built."""
  return diffhand.param_shapes(model, config.model.img_size)


def abstract_batch_stats(config, model) -> PyTree:
  """The encoder's BatchNorm statistics as jax.ShapeDtypeStructs ({} for a model without): what a
  checkpoint's batch_stats item holds."""
  return diffhand.variable_shapes(model, config.model.img_size)['batch_stats']


@flax.struct.dataclass
class Network:
  """What a config builds to sample: the hand's topology, the network and the diffusion schedule."""

  topology: hand_model.HandTopology
  model: Any = flax.struct.field(pytree_node=False)
  schedule: diffusion.Schedule = flax.struct.field(pytree_node=False)


def build_network(config: ml_collections.ConfigDict) -> Network:
  """The network of ``config``, without an optimiser; reads only the hand model file."""
  topology = hand_model.hand_topology(
      hand_model.load_hand_model(config.dataset), config.dataset.get('tip_ids')
  )
  return Network(
      topology=topology,
      model=diffhand.build_model(config.model, topology.template),
      schedule=diffusion.cosine_schedule(config.model.num_timesteps),
  )


@flax.struct.dataclass
class Components:
  """What a config builds to train, before any state exists: the network (`Network`'s fields) and the
  optimiser (whose state a checkpoint carries)."""

  topology: hand_model.HandTopology
  model: Any = flax.struct.field(pytree_node=False)
  schedule: diffusion.Schedule = flax.struct.field(pytree_node=False)
  optimizer: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def build(config: ml_collections.ConfigDict) -> Components:
  """The components of ``config``; reads only the hand model file."""
  network = build_network(config)
  return Components(
      topology=network.topology,
      model=network.model,
      schedule=network.schedule,
      optimizer=make_optimizer(config),
  )
