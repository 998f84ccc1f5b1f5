"""The update step: noised inputs, the DiffHand losses, gradient accumulation, AdamW and EMA, jitted
with explicit shardings."""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffhand_jax import diffusion
from diffhand_jax.geometry import hand_model
from diffhand_jax.models import diffhand
from diffhand_jax.runs import presets, state as state_lib
from diffhand_jax.training import losses, sharding

PyTree = Any


def init_sharded_state(config, model, optimizer, shardings, key: jax.Array) -> state_lib.TrainState:
  """A fresh train state, created directly in its shardings (never materialised whole on one device)."""
  return jax.jit(
      functools.partial(state_lib.create_train_state, config, model, optimizer),
      out_shardings=shardings,
  )(key)


def noised_inputs(key: jax.Array, x0: jax.Array, schedule, config) -> tuple[jax.Array, jax.Array]:
  """The timesteps t (B,) and noised meshes x_t (B, N, 3) of one step, drawn for the whole global batch
  at once, so that splitting it into micro-batches (gradient accumulation) changes no example's draw.
  The regression variant (model.diffusion=False) gets t = regression_timestep and x_t = 0."""
  batch_size = x0.shape[0]
  if not config.model.diffusion:
    return (
        jnp.full((batch_size,), config.model.regression_timestep, jnp.int32),
        jnp.zeros_like(x0),
    )
  t_key, noise_key = jax.random.split(key)
  t = losses.sample_timesteps(
      t_key,
      batch_size,
      schedule.num_timesteps,
      config.loss.get('timestep_sampling', 'uniform'),
      config.loss.get('timestep_power', 1.0),
      config.loss.get('timestep_top_fraction', 0.0),
  )
  return t, diffusion.q_sample(schedule, x0, t, jax.random.normal(noise_key, x0.shape, x0.dtype))


def trains_batch_norm(config, batch_stats) -> bool:
  """Whether a step updates the encoder's BatchNorm statistics: it has some and config.batch_norm
  does not freeze them."""
  return bool(batch_stats) and not config.get('batch_norm', {}).get('freeze', False)


def _statistics(config) -> str:
  statistics = config.get('batch_norm', {}).get('statistics', 'synchronised')
  if statistics not in presets.BATCH_NORM_STATISTICS:
    raise ValueError(
        f'config.batch_norm.statistics must be one of {presets.BATCH_NORM_STATISTICS}, '
        f'got {statistics!r}'
    )
  return statistics


def training_pass(model, params, batch_stats, batch, config, num_devices: int = 1):
  """(model.training_pass's outputs, the BatchNorm statistics after it) on batch['image'] (B, ...),
  batch['x_t'] (B, N, 3), batch['t'] (B,). Statistics that are trained (`trains_batch_norm`) normalise
  with the batch's and come back updated: for config.batch_norm.statistics 'synchronised' over the
  whole batch; for 'per_device' over each of ``num_devices`` equal blocks of rows (a device's rows,
  since batches split over the mesh in blocks), the running ones moving by the blocks' mean update.
  """
  variables = diffhand.model_variables(params, batch_stats)
  # batch['depth'] (B, H, W): the normalised depth map of a depth run (config.model.use_depth).
  inputs = (batch['image'], batch['x_t'], batch['t']) + (
      (batch['depth'],) if 'depth' in batch else ()
  )
  if not trains_batch_norm(config, batch_stats):
    images, x_t, t, *depth = inputs
    out = model.apply(
        variables, images, x_t, t, depth=depth[0] if depth else None, method=model.training_pass
    )
    return out, batch_stats

  def run(images, x_t, t, *depth):
    out, updates = model.apply(
        variables,
        images,
        x_t,
        t,
        True,
        depth=depth[0] if depth else None,
        method=model.training_pass,
        mutable=['batch_stats'],
    )
    return out, updates['batch_stats']

  if _statistics(config) == 'synchronised' or num_devices == 1:
    return run(*inputs)
  blocks = [x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:]) for x in inputs]
  out, stats = jax.vmap(run)(*blocks)
  out = jax.tree_util.tree_map(lambda x: x.reshape((-1,) + x.shape[2:]), out)
  return out, jax.tree_util.tree_map(lambda s: jnp.mean(s, axis=0), stats)


def loss_fn(
    params, batch_stats, model, batch, topology: hand_model.HandTopology, config, num_devices=1
):
  """One denoising pass on batch['x_t'] at batch['t'] (from `noised_inputs`) and the DiffHand losses,
  all in model space: (loss, (parts, BatchNorm statistics after the pass)). The model computes in
  config.model.dtype; the losses are float32."""
  # The model built from config.model knows whether it has the orientation head.
  out, batch_stats = training_pass(model, params, batch_stats, batch, config, num_devices)
  loss, parts = losses.total_loss(
      out['x0_hat'].astype(jnp.float32),
      batch['vertices'],
      batch['joints'],
      batch['joints_2d'],
      out['camera'].astype(jnp.float32),
      topology.joint_regressor,
      topology.faces,
      has_3d=batch['has_3d'],
      has_2d=_has_2d(batch, config),
      orientation=out.get('orientation'),
      distance=config.loss.get('point_distance', 'squared'),
      **_loss_weights(config),
  )
  return loss, (parts, batch_stats)


def _loss_weights(config) -> dict[str, float]:
  """The λs of `losses.combine_parts`, from config.loss."""
  return {
      'lambda_joint': config.loss.lambda_joint,
      'lambda_smooth': config.loss.lambda_smooth,
      'lambda_orientation': config.loss.get('lambda_orientation', 0.0),
  }


def _has_2d(batch, config) -> jax.Array:
  return batch['has_3d'] * float(config.loss.get('use_2d', True))


def micro_batches(batch: Mapping[str, jax.Array], num_micro: int, mesh: Mesh | None = None):
  """(B, ...) arrays → (num_micro, B / num_micro, ...). Micro-batch j holds rows j, j + num_micro, ...:
  every device's rows of the batch (split over the mesh on axis 0) feed every micro-batch evenly, so no
  data moves between devices."""

  def split(x):
    x = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:]).swapaxes(0, 1)
    if mesh is not None:
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, tuple(mesh.axis_names))))
    return x

  return {key: split(value) for key, value in batch.items()}


def accumulated_loss_and_grads(
    params,
    batch_stats,
    batch,
    num_micro: int,
    *,
    model,
    topology,
    config,
    mesh=None,
    param_shardings=None,
):
  """(loss parts, gradients, BatchNorm statistics) of the whole batch, computed ``num_micro``
  micro-batches at a time (lax.scan, gradients summed in float32; with ``param_shardings`` the running
  sum is laid out as the params are, so FSDP keeps it sharded). Trained BatchNorm statistics are
  updated once per micro-batch, in order, as PyTorch's accumulation does.

  The losses are weighted means over the batch (sum(w · l) / sum(w), w = has_3d or has_2d), so each
  micro-batch's terms are weighted by its share of the batch's weight: the sums equal the one-batch
  loss and gradients even when the labelled examples are spread unevenly over the micro-batches.
  """
  total_3d = jnp.sum(batch['has_3d'].astype(jnp.float32))
  total_2d = jnp.sum(_has_2d(batch, config).astype(jnp.float32))

  def share(weights, total):
    return jnp.where(
        total > 0, jnp.sum(weights.astype(jnp.float32)) / jnp.where(total > 0, total, 1.0), 0.0
    )

  num_devices = mesh.size if mesh is not None else 1

  def weighted_loss(p, stats, micro):
    _, (parts, stats) = loss_fn(p, stats, model, micro, topology, config, num_devices)
    shares = {
        'has_3d': share(micro['has_3d'], total_3d),
        'has_2d': share(_has_2d(micro, config), total_2d),
    }
    weighted = {
        name: shares[weights] * parts[name]
        for name, weights in losses.PART_WEIGHTS.items()
        if name in parts
    }
    parts = losses.combine_parts(weighted, **_loss_weights(config))
    return parts['total'], (parts, stats)

  def like_params(tree):
    return (
        tree if param_shardings is None else jax.lax.with_sharding_constraint(tree, param_shardings)
    )

  def body(carry, micro):
    grad_sum, stats = carry
    (_, (parts, stats)), grads = jax.value_and_grad(weighted_loss, has_aux=True)(
        params, stats, micro
    )
    return (like_params(jax.tree_util.tree_map(jnp.add, grad_sum, grads)), stats), parts

  zeros = like_params(jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
  (grads, batch_stats), parts = jax.lax.scan(
      body, (zeros, batch_stats), micro_batches(batch, num_micro, mesh)
  )
  grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, params)
  return jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), parts), grads, batch_stats


def check_batch_layout(config, mesh: Mesh) -> None:
  """The global batch must split evenly into config.grad_accum_steps micro-batches, each with the same
  number of rows on every device of the mesh."""
  num_micro = int(config.get('grad_accum_steps', 1))
  if num_micro < 1:
    raise ValueError(f'config.grad_accum_steps must be >= 1, got {num_micro}')
  rows = config.batch_size // num_micro if config.batch_size % num_micro == 0 else None
  if rows is None or rows % mesh.size:
    raise ValueError(
        f'config.batch_size={config.batch_size} must be a multiple of grad_accum_steps '
        f'({num_micro}) x devices in the mesh ({mesh.size}: {dict(mesh.shape)}), so that '
        f'every micro-batch splits evenly over the devices'
    )


def train_step(
    state: state_lib.TrainState,
    batch,
    *,
    model,
    optimizer,
    schedule,
    topology,
    config,
    mesh: Mesh | None = None,
    param_shardings=None,
):
  """One optimiser update on a global batch; with config.grad_accum_steps = k > 1 the gradients are
  accumulated over k micro-batches first (``mesh`` keeps each micro-batch split over the devices, and
  ``param_shardings`` the gradient sum laid out as the params)."""
  key = jax.random.fold_in(state.rng, state.step)
  t, x_t = noised_inputs(key, batch['vertices'], schedule, config)
  batch = dict(batch, t=t, x_t=x_t)
  num_micro = int(config.get('grad_accum_steps', 1))
  if num_micro == 1:
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    num_devices = mesh.size if mesh is not None else 1
    (_, (parts, batch_stats)), grads = grad_fn(
        state.params, state.batch_stats, model, batch, topology, config, num_devices
    )
  else:
    parts, grads, batch_stats = accumulated_loss_and_grads(
        state.params,
        state.batch_stats,
        batch,
        num_micro,
        model=model,
        topology=topology,
        config=config,
        mesh=mesh,
        param_shardings=param_shardings,
    )
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params, ema_batch_stats = state.ema_params, state.ema_batch_stats
  if config.ema_decay > 0:
    # The statistics are averaged like the weights (as timm's ModelEmaV2 does with every buffer), so
    # the EMA weights are evaluated with statistics of the same age.
    ema_params, ema_batch_stats = optax.incremental_update(
        (params, batch_stats), (ema_params, ema_batch_stats), 1.0 - config.ema_decay
    )
  parts = dict(parts, grad_norm=optax.global_norm(grads))
  return (
      state.replace(
          step=state.step + 1,
          params=params,
          opt_state=opt_state,
          ema_params=ema_params,
          batch_stats=batch_stats,
          ema_batch_stats=ema_batch_stats,
      ),
      parts,
  )


TRAIN_KEYS = ('image', 'vertices', 'joints', 'joints_2d', 'has_3d')


def train_keys(config) -> tuple[str, ...]:
  """The batch keys a training step of ``config`` takes: `TRAIN_KEYS`, and 'depth' for a depth run."""
  return TRAIN_KEYS + (('depth',) if config.model.get('use_depth', False) else ())


def train_batch_spec(config) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of a global training batch (what `input_pipeline.train_batches` yields)."""
  batch, size, vertices = config.batch_size, config.model.img_size, config.model.num_vertices
  return {
      'image': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
      'vertices': jax.ShapeDtypeStruct((batch, vertices, 3), jnp.float32),
      'joints': jax.ShapeDtypeStruct((batch, 21, 3), jnp.float32),
      'joints_2d': jax.ShapeDtypeStruct((batch, 21, 2), jnp.float32),
      'has_3d': jax.ShapeDtypeStruct((batch,), jnp.float32),
  } | (
      {'depth': jax.ShapeDtypeStruct((batch, size, size), jnp.float32)}
      if config.model.get('use_depth', False)
      else {}
  )


def jit_train_step(config, model, optimizer, schedule, topology, mesh: Mesh, shardings):
  """`train_step` jitted with explicit shardings (state by the rules, batch over every mesh axis) and
  the state donated."""
  check_batch_layout(config, mesh)
  return jax.jit(
      functools.partial(
          train_step,
          model=model,
          optimizer=optimizer,
          schedule=schedule,
          topology=topology,
          config=config,
          mesh=mesh,
          param_shardings=shardings.params,
      ),
      in_shardings=(shardings, sharding.batch_sharding(mesh)),
      out_shardings=(shardings, None),
      donate_argnums=(0,),
  )


def build_components(config):
  """(topology, model, schedule, optimizer, mesh) of a config; reads only the hand model file."""
  components = state_lib.build(config)
  return (
      components.topology,
      components.model,
      components.schedule,
      components.optimizer,
      sharding.make_mesh(config.mesh),
  )


def abstract_train_batch(config, batch_sharding: NamedSharding) -> dict[str, jax.ShapeDtypeStruct]:
  """`train_batch_spec` with the batch's sharding: what the train step is compiled for ahead of time."""
  return {
      key: jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=batch_sharding)
      for key, spec in train_batch_spec(config).items()
  }
