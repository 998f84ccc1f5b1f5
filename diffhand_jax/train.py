"""Training and evaluation loop: one readable file in banner-commented sections.

  train_and_evaluate(config, workdir)   trains (resuming from workdir), evaluates, exports
  evaluate_checkpoint(config, workdir)  scores the latest checkpoint only

Writes (DESIGN §8): workdir/metrics.jsonl, workdir/results.json, workdir/checkpoints/ (orbax),
workdir/tensorboard/, and workdir/export/step_<N>/ (predicted .obj meshes and overlay .png).
Only process 0 writes logs and exports; checkpoints are written collectively.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from diffhand_jax import diffusion, input_pipeline, losses, mano, metrics
from diffhand_jax.models import diffhand

PyTree = Any


# ==================================================================================================
# Hand model (template, joint regressor, faces)
# ==================================================================================================

@flax.struct.dataclass
class HandTopology:
  """What the losses and the metrics need from the hand model.

  joint_regressor: float32 (21, N), W of the paper's Eq. 9; faces: int32 (F, 3); template: (N, 3) m.
  """
  joint_regressor: jax.Array
  faces: jax.Array
  template: np.ndarray = flax.struct.field(pytree_node=False)


def load_hand_model(dataset_config: Mapping[str, Any]) -> mano.ManoModel:
  """The procedural hand, or MANO_RIGHT.pkl from the config's mano_dir / $DIFFHAND_MANO_DIR."""
  kind = dataset_config.get('hand_model', 'procedural')
  if kind == 'procedural':
    return mano.load_procedural()
  mano_dir = dataset_config.get('mano_dir') or os.environ.get('DIFFHAND_MANO_DIR', '')
  if not mano_dir:
    raise FileNotFoundError('this config needs the MANO model: set config.dataset.mano_dir or the '
                            'environment variable DIFFHAND_MANO_DIR to the folder holding MANO_RIGHT.pkl')
  return mano.load(os.path.join(mano_dir, 'MANO_RIGHT.pkl'), side='right')


def hand_topology(hand_model: mano.ManoModel, tip_ids=None) -> HandTopology:
  W = mano.joint_regressor21(hand_model, tip_ids)
  return HandTopology(joint_regressor=jnp.asarray(W, jnp.float32),
                      faces=jnp.asarray(np.asarray(hand_model.faces), jnp.int32),
                      template=np.asarray(hand_model.v_template))


# ==================================================================================================
# Mesh and sharding
# ==================================================================================================

def make_mesh(mesh_config: Mapping[str, int], devices=None) -> Mesh:
  """A device mesh from {'data': -1, 'fsdp': 1}-style axis sizes; one -1 is filled in."""
  devices = list(jax.devices() if devices is None else devices)
  names = list(mesh_config.keys())
  sizes = [int(mesh_config[n]) for n in names]
  if sizes.count(-1) > 1:
    raise ValueError(f'config.mesh may fill in one axis (-1), got {dict(mesh_config)}')
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'config.mesh {dict(mesh_config)} does not divide {len(devices)} devices')
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f'config.mesh {dict(mesh_config)} needs {int(np.prod(sizes))} devices, '
                     f'{len(devices)} are present')
  return Mesh(np.asarray(devices).reshape(sizes), names)


def param_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """FSDP rule: shard the largest dimension divisible by the fsdp axis of tensors with at least
  ``min_size`` elements; replicate the rest."""
  if fsdp_size <= 1 or int(np.prod(shape)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = 'fsdp'
      return P(*spec)
  return P()


# The default of config.sharding_rules: every tensor goes by the FSDP rule above.
DEFAULT_SHARDING_RULES = (('.*', 'fsdp_largest'),)
_NAMED_SPECS = ('fsdp_largest', 'replicate')


def leaf_path(path: tuple) -> str:
  """'/'-joined names of a pytree path: 'params/encoder/blocks_0/attn/qkv/kernel',
  'opt_state/1/0/mu/encoder/...', 'ema_params/...', 'step'."""
  names = []
  for entry in path:
    for attribute in ('key', 'name', 'idx'):
      if hasattr(entry, attribute):
        names.append(str(getattr(entry, attribute)))
        break
    else:
      names.append(str(entry))
  return '/'.join(names)


def check_sharding_rules(rules) -> list[tuple[re.Pattern, Any]]:
  """config.sharding_rules → [(compiled regex, spec)], or a ValueError saying which rule is wrong."""
  compiled = []
  for index, rule in enumerate(rules):
    where = f'config.sharding_rules[{index}] = {rule!r}'
    if isinstance(rule, (str, bytes)) or len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"{where}: a rule is a pair (regex over the param path, spec), e.g. "
                       f"('encoder/.*/kernel', 'fsdp_largest')")
    pattern, spec = rule
    try:
      regex = re.compile(pattern)
    except re.error as error:
      raise ValueError(f'{where}: {pattern!r} is not a valid regex ({error})') from None
    if isinstance(spec, str):
      if spec not in _NAMED_SPECS:
        raise ValueError(f'{where}: spec must be one of {_NAMED_SPECS} or a tuple of mesh axis names / '
                         f'None per dimension, got {spec!r}')
    elif spec is None:
      spec = 'replicate'
    elif isinstance(spec, (tuple, list)):
      spec = tuple(tuple(axis) if isinstance(axis, list) else axis for axis in spec)
    else:
      raise ValueError(f'{where}: spec must be a string or a tuple, got {type(spec).__name__}')
    compiled.append((regex, spec))
  return compiled


def _explicit_spec(spec: tuple, path: str, shape: tuple[int, ...], mesh_shape: Mapping[str, int],
                   pattern: str) -> P:
  where = f'config.sharding_rules: rule {pattern!r} gives {spec!r} to {path} of shape {shape}'
  if len(spec) != len(shape):
    raise ValueError(f'{where}, but the spec needs one entry (axis name, tuple of names or None) per '
                     f'dimension: {len(spec)} != {len(shape)}')
  for dim, axes in enumerate(spec):
    if axes is None:
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    unknown = [name for name in names if name not in mesh_shape]
    if unknown:
      raise ValueError(f'{where}, but the mesh has no axis {unknown[0]!r} (axes: {list(mesh_shape)})')
    size = int(np.prod([mesh_shape[name] for name in names]))
    if shape[dim] % size:
      raise ValueError(f'{where}, but dimension {dim} ({shape[dim]}) does not divide over {axes!r} '
                       f'({size} devices)')
  return P(*spec)


def rule_spec(path: str, shape: tuple[int, ...], rules, mesh_shape: Mapping[str, int],
              min_size: int) -> P:
  """The PartitionSpec of the tensor at ``path``: the spec of the first rule whose regex matches
  (re.search) the path; replicated when none matches.

  rules: config.sharding_rules, pairs (regex, spec) with spec 'fsdp_largest' (`param_spec`, with
  ``min_size``), 'replicate', or a tuple with one mesh axis name, tuple of names, or None per dimension.
  """
  return _first_match(path, shape, check_sharding_rules(rules), mesh_shape, min_size)


def _first_match(path, shape, compiled_rules, mesh_shape, min_size) -> P:
  for regex, spec in compiled_rules:
    if not regex.search(path):
      continue
    if spec == 'replicate':
      return P()
    if spec == 'fsdp_largest':
      return param_spec(tuple(shape), int(mesh_shape.get('fsdp', 1)), min_size)
    return _explicit_spec(spec, path, tuple(shape), mesh_shape, regex.pattern)
  return P()


def state_shardings(mesh: Mesh, abstract_state: PyTree, min_size: int,
                    rules=DEFAULT_SHARDING_RULES) -> PyTree:
  """A NamedSharding per leaf of ``abstract_state`` by the sharding rules (see `rule_spec`); the paths
  the rules see are those of the state: 'params/...', 'opt_state/...', 'ema_params/...', 'step', 'rng'."""
  compiled_rules = check_sharding_rules(rules)
  mesh_shape = dict(mesh.shape)
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(
          mesh, _first_match(leaf_path(path), tuple(leaf.shape), compiled_rules, mesh_shape, min_size)),
      abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Batches are split over every mesh axis (data, then fsdp)."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def to_global(batch: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's rows of the global batch → global jax.Arrays."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


# ==================================================================================================
# Train state and optimiser
# ==================================================================================================

@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: PyTree
  opt_state: PyTree
  ema_params: PyTree
  rng: jax.Array  # a raw uint32 key, so checkpoints hold plain arrays


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, after global-norm clipping."""
  opt = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate, warmup_steps=opt.warmup_steps,
      decay_steps=max(config.num_train_steps, opt.warmup_steps + 1),
      end_value=opt.learning_rate * opt.get('end_lr_factor', 0.01))
  return optax.chain(optax.clip_by_global_norm(opt.clip_norm),
                     optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay))


def create_train_state(config, model, optimizer, key) -> TrainState:
  init_key, state_key = jax.random.split(key)
  params = diffhand.init(model, init_key, config.model.img_size,
                         encoder_init=config.model.get('encoder_init'))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                    ema_params=params if config.ema_decay > 0 else {}, rng=state_key)


# ==================================================================================================
# Update step
# ==================================================================================================

def init_sharded_state(config, model, optimizer, shardings, key: jax.Array) -> TrainState:
  """A fresh train state, created directly in its shardings (never materialised whole on one device)."""
  return jax.jit(functools.partial(create_train_state, config, model, optimizer),
                 out_shardings=shardings)(key)


def noised_inputs(key: jax.Array, x0: jax.Array, schedule, config) -> tuple[jax.Array, jax.Array]:
  """The timesteps t (B,) and noised meshes x_t (B, N, 3) of one step, drawn for the whole global batch
  at once, so that splitting it into micro-batches (gradient accumulation) changes no example's draw.
  The regression variant (model.diffusion=False) gets t = regression_timestep and x_t = 0."""
  batch_size = x0.shape[0]
  if not config.model.diffusion:
    return (jnp.full((batch_size,), config.model.regression_timestep, jnp.int32), jnp.zeros_like(x0))
  t_key, noise_key = jax.random.split(key)
  t = losses.sample_timesteps(t_key, batch_size, schedule.num_timesteps,
                              config.loss.get('timestep_sampling', 'uniform'),
                              config.loss.get('timestep_power', 1.0))
  return t, diffusion.q_sample(schedule, x0, t, jax.random.normal(noise_key, x0.shape, x0.dtype))


def loss_fn(params, model, batch, topology: HandTopology, config):
  """One denoising pass on batch['x_t'] at batch['t'] (from `noised_inputs`) and the DiffHand losses,
  all in model space. The model computes in config.model.dtype; the losses are float32."""
  x0_hat, camera = model.apply({'params': params}, batch['image'], batch['x_t'], batch['t'])
  loss, parts = losses.total_loss(
      x0_hat.astype(jnp.float32), batch['vertices'], batch['joints'], batch['joints_2d'],
      camera.astype(jnp.float32), topology.joint_regressor, topology.faces, has_3d=batch['has_3d'],
      has_2d=_has_2d(batch, config), lambda_joint=config.loss.lambda_joint,
      lambda_smooth=config.loss.lambda_smooth)
  return loss, parts


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


def accumulated_loss_and_grads(params, batch, num_micro: int, *, model, topology, config, mesh=None,
                               param_shardings=None):
  """Loss parts and gradients of the whole batch, computed ``num_micro`` micro-batches at a time
  (lax.scan, gradients summed in float32; with ``param_shardings`` the running sum is laid out as the
  params are, so FSDP keeps it sharded).

  The losses are weighted means over the batch (sum(w · l) / sum(w), w = has_3d or has_2d), so each
  micro-batch's terms are weighted by its share of the batch's weight: the sums equal the one-batch
  loss and gradients even when the labelled examples are spread unevenly over the micro-batches.
  """
  total_3d = jnp.sum(batch['has_3d'].astype(jnp.float32))
  total_2d = jnp.sum(_has_2d(batch, config).astype(jnp.float32))

  def share(weights, total):
    return jnp.where(total > 0, jnp.sum(weights.astype(jnp.float32)) / jnp.where(total > 0, total, 1.0),
                     0.0)

  def weighted_loss(p, micro):
    _, parts = loss_fn(p, model, micro, topology, config)
    share_3d, share_2d = share(micro['has_3d'], total_3d), share(_has_2d(micro, config), total_2d)
    parts = {'vertex': share_3d * parts['vertex'], 'joint_3d': share_3d * parts['joint_3d'],
             'joint_2d': share_2d * parts['joint_2d'], 'smooth': share_3d * parts['smooth']}
    parts['joint'] = parts['joint_3d'] + parts['joint_2d']
    # losses.total_loss's combination (paper Eq. 13), of the weighted terms.
    parts['total'] = (parts['vertex'] + config.loss.lambda_joint * parts['joint']
                      + config.loss.lambda_smooth * parts['smooth'])
    return parts['total'], parts

  def like_params(tree):
    return tree if param_shardings is None else jax.lax.with_sharding_constraint(tree, param_shardings)

  def body(grad_sum, micro):
    (_, parts), grads = jax.value_and_grad(weighted_loss, has_aux=True)(params, micro)
    return like_params(jax.tree_util.tree_map(jnp.add, grad_sum, grads)), parts

  zeros = like_params(jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
  grads, parts = jax.lax.scan(body, zeros, micro_batches(batch, num_micro, mesh))
  grads = jax.tree_util.tree_map(lambda g, p: g.astype(p.dtype), grads, params)
  return jax.tree_util.tree_map(lambda x: jnp.sum(x, axis=0), parts), grads


def check_batch_layout(config, mesh: Mesh) -> None:
  """The global batch must split evenly into config.grad_accum_steps micro-batches, each with the same
  number of rows on every device of the mesh."""
  num_micro = int(config.get('grad_accum_steps', 1))
  if num_micro < 1:
    raise ValueError(f'config.grad_accum_steps must be >= 1, got {num_micro}')
  rows = config.batch_size // num_micro if config.batch_size % num_micro == 0 else None
  if rows is None or rows % mesh.size:
    raise ValueError(f'config.batch_size={config.batch_size} must be a multiple of grad_accum_steps '
                     f'({num_micro}) x devices in the mesh ({mesh.size}: {dict(mesh.shape)}), so that '
                     f'every micro-batch splits evenly over the devices')


def train_step(state: TrainState, batch, *, model, optimizer, schedule, topology, config,
               mesh: Mesh | None = None, param_shardings=None):
  """One optimiser update on a global batch; with config.grad_accum_steps = k > 1 the gradients are
  accumulated over k micro-batches first (``mesh`` keeps each micro-batch split over the devices, and
  ``param_shardings`` the gradient sum laid out as the params)."""
  key = jax.random.fold_in(state.rng, state.step)
  t, x_t = noised_inputs(key, batch['vertices'], schedule, config)
  batch = dict(batch, t=t, x_t=x_t)
  num_micro = int(config.get('grad_accum_steps', 1))
  if num_micro == 1:
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, parts), grads = grad_fn(state.params, model, batch, topology, config)
  else:
    parts, grads = accumulated_loss_and_grads(state.params, batch, num_micro, model=model,
                                              topology=topology, config=config, mesh=mesh,
                                              param_shardings=param_shardings)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params = state.ema_params
  if config.ema_decay > 0:
    ema_params = optax.incremental_update(params, state.ema_params, 1.0 - config.ema_decay)
  parts = dict(parts, grad_norm=optax.global_norm(grads))
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       ema_params=ema_params), parts


# ==================================================================================================
# Checkpoints
# ==================================================================================================

def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=config.checkpoint_every_steps, max_to_keep=config.get('keep_checkpoints', 3),
      create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: TrainState):
  """The newest readable checkpoint, or None. A damaged newest one is skipped with a warning."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as error:  # orbax raises many types for truncated or partial directories
      print(f'warning: checkpoint at step {step} could not be restored ({type(error).__name__}: '
            f'{error}); trying an earlier one', flush=True)
  return None


# ==================================================================================================
# Evaluation
# ==================================================================================================

def _to_metres(model_space: np.ndarray, vertex_scale: float) -> np.ndarray:
  return np.asarray(model_space, np.float64) * vertex_scale


def augment_options(dataset_config) -> dict[str, Any] | None:
  """The crop jitter of a dataset config, as `augment.sample_params` keywords; None = no jitter."""
  if dataset_config.get('max_rotation_deg') is None:
    return None
  return {'scale_range': tuple(dataset_config.get('scale_range', (1.0, 1.0))),
          'max_rotation': float(np.deg2rad(dataset_config.max_rotation_deg)),
          'max_translation': float(dataset_config.get('max_translation', 0.0))}


def predict_split(reconstruct_fn, params, arrays, config, key) -> dict[str, np.ndarray]:
  """Runs the sampler over a whole split. Returns root-relative metres in the (mirrored) model frame:
  hypotheses (M, K, N, 3), vertices_std (M, N) and the ground truth (gt_vertices, gt_joints)."""
  vertex_scale = config.model.vertex_scale
  hyps, stds, gt_verts, gt_joints = [], [], [], []
  for index, (batch, valid) in enumerate(input_pipeline.eval_batches(
      arrays, batch_size=config.eval.batch_size, vertex_scale=vertex_scale,
      image_size=config.model.img_size, crop_margin=config.dataset.get('crop_margin'))):
    out = reconstruct_fn(params, jnp.asarray(batch['image']), jax.random.fold_in(key, index))
    hyps.append(np.asarray(out['vertices'])[:valid])
    stds.append(np.asarray(out['vertices_std'])[:valid])
    gt_verts.append(batch['vertices'][:valid])
    gt_joints.append(batch['joints'][:valid])
  return {'hypotheses': _to_metres(np.concatenate(hyps), vertex_scale),
          'vertices_std': _to_metres(np.concatenate(stds), vertex_scale),
          'gt_vertices': _to_metres(np.concatenate(gt_verts), vertex_scale),
          'gt_joints': _to_metres(np.concatenate(gt_joints), vertex_scale)}


def regress_joints(vertices: np.ndarray, joint_regressor) -> np.ndarray:
  """J = W·V̂ in numpy float64: (B, N, 3) → (B, 21, 3)."""
  return np.einsum('jn,bnc->bjc', np.asarray(joint_regressor, np.float64), vertices)


def score(pred_vertices, gt_vertices, gt_joints, joint_regressor) -> dict[str, float]:
  """metrics.evaluate with predicted joints regressed from the predicted mesh (J = W·V̂)."""
  return metrics.evaluate(regress_joints(pred_vertices, joint_regressor), gt_joints, pred_vertices,
                          gt_vertices)


def mean_mesh_baseline(train_arrays, eval_prediction, joint_regressor, vertex_scale) -> dict[str, float]:
  """Scores always predicting the training set's mean root-relative mesh."""
  train = input_pipeline.prepare_batch(
      {k: v for k, v in train_arrays.items()}, vertex_scale=vertex_scale)
  mean_mesh = _to_metres(train['vertices'].mean(axis=0), vertex_scale)
  count = len(eval_prediction['gt_vertices'])
  return score(np.broadcast_to(mean_mesh, (count,) + mean_mesh.shape),
               eval_prediction['gt_vertices'], eval_prediction['gt_joints'], joint_regressor)


def export_examples(directory, prediction, arrays, topology: HandTopology, count: int) -> None:
  """Writes the first ``count`` predictions as .obj meshes (camera frame, placed at the ground-truth
  wrist, since the model predicts root-relative shape) and overlays on their input images."""
  from diffhand_jax import render
  os.makedirs(directory, exist_ok=True)
  faces = np.asarray(topology.faces)
  for i in range(min(count, len(prediction['vertices']))):
    raw = {k: v[i:i + 1] for k, v in arrays.items()}
    batch = input_pipeline.prepare_batch(raw, vertex_scale=1.0)
    vertices = prediction['vertices'][i] + batch['wrist'][0]
    if batch['is_left'][0]:  # back to the left hand's own frame
      vertices = vertices * np.array([-1.0, 1.0, 1.0])
    write_obj(os.path.join(directory, f'{i:04d}.obj'), vertices, faces)
    image = render.overlay(arrays['image'][i], vertices, faces, arrays['K'][i])
    _write_png(os.path.join(directory, f'{i:04d}.png'), image)


def write_obj(path: str, vertices: np.ndarray, faces: np.ndarray) -> None:
  lines = [f'v {x:.6f} {y:.6f} {z:.6f}' for x, y, z in np.asarray(vertices)]
  lines += [f'f {a + 1} {b + 1} {c + 1}' for a, b, c in np.asarray(faces)]
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _write_png(path: str, image: np.ndarray) -> None:
  from PIL import Image
  Image.fromarray(np.asarray(image, np.uint8)).save(path)


# ==================================================================================================
# Logging
# ==================================================================================================

class Logger:
  """metrics.jsonl + TensorBoard, written by process 0 only."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.writer = None
    if self.enabled:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split, **{k: float(v) for k, v in values.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for name, value in values.items():
      self.writer.add_scalar(f'{split}/{name}', float(value), int(step))
    self.writer.flush()

  def close(self):
    if self.writer is not None:
      self.writer.close()


def _truncate_metrics_log(path: str, step: int) -> None:
  """On resume, drops log lines from steps after the restored checkpoint (they will be redone), and a
  line cut short by a kill."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]

  def keep(line: str) -> bool:
    try:
      return line.endswith('\n') and json.loads(line)['step'] <= step
    except (json.JSONDecodeError, KeyError, TypeError):
      return False

  kept = [line for line in lines if keep(line)]
  if len(kept) != len(lines):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      f.writelines(kept)
    os.replace(tmp, path)


def _format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s' if seconds >= 3600 \
      else f'{seconds // 60}m{seconds % 60:02d}s'


def write_json_atomic(path: str, payload) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=2)
  os.replace(tmp, path)


# ==================================================================================================
# The loop
# ==================================================================================================

def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """workdir/config.json: what `load_for_inference` (predict, evaluate) rebuilds the model from."""
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, 'config.json'), json.loads(config.to_json_best_effort()))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} does not exist: is {workdir!r} a training workdir?')
  with open(path) as f:
    try:
      payload = json.load(f)
    except json.JSONDecodeError as error:
      raise ValueError(f'{path} is not valid JSON: {error}') from None
  config = ml_collections.ConfigDict(payload)
  # JSON turns tuples into lists; the model wants its static fields hashable.
  config.model.fps_sizes = tuple(config.model.fps_sizes)
  config.model.depth_channels = tuple(config.model.depth_channels)
  return config


def load_for_inference(workdir: str, *, use_ema: bool = True):
  """Rebuilds the model of a training run and restores its newest checkpoint.

  Returns (config, model, params, topology, schedule); params are the EMA params when the run kept them
  and ``use_ema``.
  """
  config = load_config(workdir)
  topology, model, schedule, optimizer, _ = _setup(config, workdir)
  manager = checkpoint_manager(workdir, config)
  state = restore_latest(manager, _abstract_state(config, model, optimizer))
  manager.close()
  if state is None:
    raise FileNotFoundError(f'no checkpoint in {os.path.join(workdir, "checkpoints")}')
  params = state.ema_params if (use_ema and config.ema_decay > 0) else state.params
  return config, model, params, topology, schedule


def _setup(config, workdir):
  os.makedirs(workdir, exist_ok=True)
  return build_components(config)


def build_components(config):
  """(topology, model, schedule, optimizer, mesh) of a config; reads only the hand model file."""
  hand_model = load_hand_model(config.dataset)
  topology = hand_topology(hand_model, config.dataset.get('tip_ids'))
  model = diffhand.build_model(config.model, topology.template)
  schedule = diffusion.cosine_schedule(config.model.num_timesteps)
  optimizer = make_optimizer(config)
  mesh = make_mesh(config.mesh)
  return topology, model, schedule, optimizer, mesh


def _abstract_state(config, model, optimizer):
  return jax.eval_shape(functools.partial(create_train_state, config, model, optimizer),
                        jax.random.PRNGKey(config.seed))


def sharded_abstract_state(config, model, optimizer, mesh: Mesh) -> tuple[TrainState, TrainState]:
  """(the train state as jax.ShapeDtypeStructs carrying their shardings, the NamedShardings), by
  config.sharding_rules (default: DEFAULT_SHARDING_RULES) and config.fsdp_min_size."""
  abstract_state = _abstract_state(config, model, optimizer)
  shardings = state_shardings(mesh, abstract_state, config.get('fsdp_min_size', 2**18),
                              config.get('sharding_rules', DEFAULT_SHARDING_RULES))
  abstract_state = jax.tree_util.tree_map(
      lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
      abstract_state, shardings)
  return abstract_state, shardings


TRAIN_KEYS = ('image', 'vertices', 'joints', 'joints_2d', 'has_3d')


def train_batch_spec(config) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of a global training batch (what `input_pipeline.train_batches` yields)."""
  batch, size, vertices = config.batch_size, config.model.img_size, config.model.num_vertices
  return {'image': jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32),
          'vertices': jax.ShapeDtypeStruct((batch, vertices, 3), jnp.float32),
          'joints': jax.ShapeDtypeStruct((batch, 21, 3), jnp.float32),
          'joints_2d': jax.ShapeDtypeStruct((batch, 21, 2), jnp.float32),
          'has_3d': jax.ShapeDtypeStruct((batch,), jnp.float32)}


def jit_train_step(config, model, optimizer, schedule, topology, mesh: Mesh, shardings):
  """`train_step` jitted with explicit shardings (state by the rules, batch over every mesh axis) and
  the state donated."""
  check_batch_layout(config, mesh)
  return jax.jit(
      functools.partial(train_step, model=model, optimizer=optimizer, schedule=schedule,
                        topology=topology, config=config, mesh=mesh, param_shardings=shardings.params),
      in_shardings=(shardings, batch_sharding(mesh)), out_shardings=(shardings, None),
      donate_argnums=(0,))


def _eval_params(state: TrainState, config):
  """The params to evaluate, as arrays this process can use on its own (evaluation runs the whole
  split in every process; with several processes the global params are gathered first)."""
  params = state.ema_params if config.ema_decay > 0 else state.params
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    params = multihost_utils.process_allgather(params, tiled=True)
  return params


def run_evaluation(state, config, workdir, topology, model, reconstruct_fn, eval_arrays, train_arrays,
                   logger, *, export: bool = True) -> dict[str, Any]:
  """Samples the eval split, scores it, and writes results.json, the per-sample errors
  (eval_per_sample.npz) and the exports. With K > 1 hypotheses the reported metrics are those of their
  aggregate (config.eval.aggregate: 'mean' | 'medoid'), and results['hypotheses'] adds the best-of-K
  oracle, hypothesis 0 alone, and the rank correlation of uncertainty with error."""
  from diffhand_jax import hypotheses as hypotheses_lib
  step = int(state.step)
  start = time.time()
  prediction = predict_split(reconstruct_fn, _eval_params(state, config), eval_arrays, config,
                             jax.random.PRNGKey(config.seed + 1))
  method = config.eval.get('aggregate', 'mean')
  prediction['vertices'] = hypotheses_lib.aggregate(prediction['hypotheses'], method)
  W = np.asarray(topology.joint_regressor, np.float64)
  per_sample = metrics.evaluate_per_sample(regress_joints(prediction['vertices'], W), prediction['gt_joints'],
                                           prediction['vertices'], prediction['gt_vertices'])
  results = {key: float(np.mean(value)) for key, value in per_sample.items()}
  baseline = mean_mesh_baseline(input_pipeline.mean_mesh_example(train_arrays), prediction,
                                topology.joint_regressor, config.model.vertex_scale)
  results['baseline_pa_mpvpe'] = baseline['pa_mpvpe']
  results['baseline_mpvpe'] = baseline['mpvpe']
  results['step'] = step
  results['num_examples'] = int(len(prediction['vertices']))
  num_hypotheses = int(config.model.num_hypotheses)
  results['sampler'] = {'steps': int(config.model.sampling_steps), 'eta': float(config.model.eta),
                        'hypotheses': num_hypotheses, 'aggregate': method,
                        'diffusion': bool(config.model.diffusion)}
  if num_hypotheses > 1:
    summary = hypotheses_lib.summarize(prediction['hypotheses'], prediction['gt_vertices'],
                                       prediction['gt_joints'], W, method=method)
    summary.pop('per_sample')
    results['hypotheses'] = summary
  split = config.dataset.eval_split
  logger.write(step, split, {k: v for k, v in results.items() if isinstance(v, float)})
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, 'results.json'), results)
    per_sample_path = os.path.join(workdir, 'eval_per_sample.npz')
    with open(per_sample_path + '.tmp', 'wb') as f:
      np.savez(f, step=step, uncertainty_m=prediction['vertices_std'].mean(axis=-1),
               **{key: np.asarray(value) for key, value in per_sample.items()})
    os.replace(per_sample_path + '.tmp', per_sample_path)
    if export and config.eval.num_export > 0:
      export_examples(os.path.join(workdir, 'export', f'step_{step}'), prediction, eval_arrays, topology,
                      config.eval.num_export)
  _print(f'eval step {step} ({split}, {results["num_examples"]} examples, {time.time() - start:.1f}s): '
        f'pa_mpvpe {results["pa_mpvpe"]:.2f} mm (mean-mesh baseline {baseline["pa_mpvpe"]:.2f}), '
        f'mpvpe {results["mpvpe"]:.2f}, pa_mpjpe {results["pa_mpjpe"]:.2f}, mpjpe {results["mpjpe"]:.2f}',
        flush=True)
  if num_hypotheses > 1:
    oracle = results['hypotheses']['oracle']
    _print(f'  {num_hypotheses} hypotheses ({method}): best-of-K pa_mpvpe {oracle["pa_mpvpe"]:.2f} mm; '
          f'uncertainty-error rank correlation '
          f'{results["hypotheses"]["spearman"]["pa_mpvpe"]:.2f}', flush=True)
  return results


def _eval_arrays(config):
  return input_pipeline.open_split(config.dataset, config.dataset.eval_split,
                                   config.eval.get('max_examples'))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains from scratch or from the newest checkpoint in ``workdir``; returns the final results."""
  topology, model, schedule, optimizer, mesh = _setup(config, workdir)
  save_config(config, workdir)
  train_arrays = input_pipeline.open_split(config.dataset, config.dataset.train_split,
                                           config.dataset.get('max_train_examples'))
  eval_arrays = _eval_arrays(config)
  _print(f'data: {len(train_arrays["image"])} train / {len(eval_arrays["image"])} '
        f'{config.dataset.eval_split} examples; mesh {dict(mesh.shape)}', flush=True)

  abstract_state, shardings = sharded_abstract_state(config, model, optimizer, mesh)
  manager = checkpoint_manager(workdir, config)
  restored = restore_latest(manager, abstract_state)
  if restored is None:
    state = init_sharded_state(config, model, optimizer, shardings, jax.random.PRNGKey(config.seed))
    _print(f'initialised {diffhand.num_params(state.params):,} params', flush=True)
  else:
    state = restored
    _print(f'resumed from step {int(state.step)}', flush=True)
  start_step = int(state.step)
  if jax.process_index() == 0:
    _truncate_metrics_log(os.path.join(workdir, 'metrics.jsonl'), start_step)

  data_sharding = batch_sharding(mesh)
  step_fn = jit_train_step(config, model, optimizer, schedule, topology, mesh, shardings)
  reconstruct_fn = diffhand.make_reconstruct_fn(
      model, num_steps=config.model.sampling_steps, num_hypotheses=config.model.num_hypotheses,
      eta=config.model.eta, schedule=schedule)

  logger = Logger(workdir)
  batches = input_pipeline.train_batches(
      train_arrays, batch_size=config.batch_size, seed=config.seed, start_step=start_step,
      vertex_scale=config.model.vertex_scale, image_size=config.model.img_size,
      colour_strength=config.dataset.get('colour_jitter', 0.0),
      crop_margin=config.dataset.get('crop_margin'), augment=augment_options(config.dataset),
      process_index=jax.process_index(), process_count=jax.process_count())
  results = None
  window_start, window_steps, history = time.time(), 0, []
  loop_start = time.time()
  try:
    with PreemptionSignal() as preemption:
      for step in range(start_step, config.num_train_steps):
        batch = next(batches)
        state, parts = step_fn(state, to_global({k: batch[k] for k in TRAIN_KEYS}, data_sharding))
        history.append(parts)
        window_steps += 1
        done = step + 1
        if done % config.log_every_steps == 0 or done == config.num_train_steps:
          values = {k: float(np.mean([float(p[k]) for p in history])) for k in history[0]}
          _check_finite(values['total'], done, workdir)
          elapsed = time.time() - window_start
          rate = window_steps / max(elapsed, 1e-9)
          values['steps_per_sec'] = rate
          values['loss'] = values['total']
          logger.write(done, 'train', values)
          eta = (config.num_train_steps - done) / max(rate, 1e-9)
          _print(f'step {done}/{config.num_train_steps} | loss {values["total"]:.4f} '
                f'(vertex {values["vertex"]:.4f}, joint {values["joint"]:.4f}, '
                f'smooth {values["smooth"]:.4f}) | {rate:.2f} steps/s | ETA {_format_seconds(eta)}',
                flush=True)
          window_start, window_steps, history = time.time(), 0, []
        preempted = preemption.received or manager.reached_preemption(done)
        if preempted or manager.should_save(done):
          # Never let a diverged state replace the last good checkpoint.
          _check_finite(float(parts['total']), done, workdir)
          manager.save(done, args=ocp.args.StandardSave(state), force=preempted)
        if preempted:
          manager.wait_until_finished()
          _print(f'preempted: saved a checkpoint at step {done}; rerun the same command to resume',
                flush=True)
          manager.close()
          logger.close()
          return {'step': done, 'preempted': True}
        if done % config.eval_every_steps == 0 or done == config.num_train_steps:
          results = run_evaluation(state, config, workdir, topology, model, reconstruct_fn, eval_arrays,
                                   train_arrays, logger)
  except BaseException:
    # Let the checkpoints already saved (the last good state) finish writing before the error leaves.
    manager.wait_until_finished()
    manager.close()
    logger.close()
    raise
  if manager.latest_step() != int(state.step):
    manager.save(int(state.step), args=ocp.args.StandardSave(state), force=True)
  manager.wait_until_finished()
  manager.close()
  logger.close()
  _print(f'trained steps {start_step}..{int(state.step)} in {_format_seconds(time.time() - loop_start)}',
        flush=True)
  if results is None:  # nothing left to train: score what was restored
    results = evaluate_checkpoint(config, workdir)
  return results


def _print(*args, **kwargs) -> None:
  """Progress output, from process 0 only."""
  if jax.process_index() == 0:
    print(*args, **kwargs)


def _check_finite(loss: float, step: int, workdir: str) -> None:
  if not np.isfinite(loss):
    raise FloatingPointError(
        f'the training loss became {loss} by step {step}; stopping. The last good checkpoint is kept '
        f'in {os.path.join(workdir, "checkpoints")} (lower the learning rate or check the data)')


class PreemptionSignal:
  """Turns SIGTERM (what SLURM and most schedulers send before a kill) into a flag the loop checks
  after each step, so that the step in flight finishes and a checkpoint is written.

  Only in a single process: with several, JAX's coordination service catches SIGTERM and every process
  agrees on the step to stop at through `CheckpointManager.reached_preemption`.
  """

  def __init__(self):
    self.received = False
    self._previous = None

  def _handle(self, signum, frame):
    del frame
    _print(f'received signal {signum}: checkpointing after this step', flush=True)
    self.received = True

  def __enter__(self):
    import signal
    import threading
    if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    import signal
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Scores the newest checkpoint in ``workdir`` (EMA params when the config keeps them)."""
  topology, model, schedule, optimizer, mesh = _setup(config, workdir)
  manager = checkpoint_manager(workdir, config)
  abstract_state = _abstract_state(config, model, optimizer)
  state = restore_latest(manager, abstract_state)
  manager.close()
  if state is None:
    raise FileNotFoundError(f'no checkpoint to evaluate in {os.path.join(workdir, "checkpoints")}')
  train_arrays = input_pipeline.open_split(config.dataset, config.dataset.train_split,
                                           config.dataset.get('max_train_examples'))
  reconstruct_fn = diffhand.make_reconstruct_fn(
      model, num_steps=config.model.sampling_steps, num_hypotheses=config.model.num_hypotheses,
      eta=config.model.eta, schedule=schedule)
  logger = Logger(workdir)
  try:
    return run_evaluation(state, config, workdir, topology, model, reconstruct_fn, _eval_arrays(config),
                          train_arrays, logger)
  finally:
    logger.close()
