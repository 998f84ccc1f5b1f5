"""The train state a checkpoint holds, the optimiser whose state it carries, and their abstract shapes.

Training and the restore behind loading a trained run both need the exact structure of what was saved,
so it is defined once here, below both. Opening a run for inference builds the network alone
(`build_network`, `abstract_params`): no optimiser.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
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
  optimizer = optax.chain(
      optax.clip_by_global_norm(opt.clip_norm),
      optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay),
  )
  if trains_depth_block_only(config):
    # The fine-tune of the new block alone: every other param gets a zero update (and no Adam state).
    return optax.multi_transform(
        {'train': optimizer, 'freeze': optax.set_to_zero()}, _depth_block_labels
    )
  return optimizer


def trains_depth_block_only(config: ml_collections.ConfigDict) -> bool:
  """config.depth.train == 'depth_block' for a depth model: only the depth block's params train."""
  depth = config.get('depth') or {}
  return bool(config.model.get('use_depth', False)) and depth.get('train', 'all') == 'depth_block'


def _depth_block_labels(params: PyTree) -> PyTree:
  return {
      name: jax.tree_util.tree_map(
          lambda _, n=name: 'train' if n == 'depth_block' else 'freeze', sub
      )
      for name, sub in params.items()
  }


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


def copy_problems(target: PyTree, source: PyTree, *, added: tuple[str, ...] = ('depth_block',)):
  """Why ``source`` (numpy tree) cannot be copied into ``target`` (one collection of a train state):
  a source leaf the target lacks, a shape that differs, or a target leaf the source lacks outside the
  ``added`` top-level modules. [] when every source leaf has its place."""
  flat_target = flax.traverse_util.flatten_dict(target, sep='/')
  flat_source = flax.traverse_util.flatten_dict(source, sep='/')
  problems = [f'{key}: not in the new model' for key in flat_source if key not in flat_target]
  problems += [
      f'{key}: shape {tuple(np.shape(value))} there, {tuple(flat_target[key].shape)} now'
      for key, value in flat_source.items()
      if key in flat_target and tuple(np.shape(value)) != tuple(flat_target[key].shape)
  ]
  problems += [
      f'{key}: not in the source run'
      for key in flat_target
      if key not in flat_source and key.split('/')[0] not in added
  ]
  return problems


def with_variables(state: TrainState, variables: PyTree, shardings: TrainState) -> TrainState:
  """``state`` with every param and BatchNorm statistic that ``variables`` ({'params', 'batch_stats'},
  numpy: another run's, `init_from.read_source`) holds, in the params and their EMA copy, each placed
  with the state's own shardings; the leaves it lacks (the depth block) keep their initial values.
  Adam's moments stay at zero. Raises ValueError naming the leaves that do not fit."""
  replaced = {}
  for collection, names in (
      ('params', ('params', 'ema_params')),
      ('batch_stats', ('batch_stats', 'ema_batch_stats')),
  ):
    source = variables.get(collection) or {}
    for name in names:
      current = getattr(state, name)
      if not current:
        continue
      problems = copy_problems(current, source)
      if problems:
        raise ValueError(
            f"config.init_from: the source run's {collection} do not fit this model: "
            + '; '.join(problems[:8])
        )
      flat = flax.traverse_util.flatten_dict(current, sep='/')
      flat_shardings = flax.traverse_util.flatten_dict(getattr(shardings, name), sep='/')
      for key, value in flax.traverse_util.flatten_dict(source, sep='/').items():
        value = np.asarray(value, dtype=flat[key].dtype)
        flat[key] = jax.make_array_from_callback(
            value.shape, flat_shardings[key], lambda index, v=value: v[index]
        )
      replaced[name] = flax.traverse_util.unflatten_dict(flat, sep='/')
  return state.replace(**replaced)
