"""Run as a script with 8 fake CPU devices: 3 train steps of the tiny model on one device and on the
meshes (data=8), (data=2, fsdp=4), (fsdp=8); writes losses, params and shardings to OUT.npz.
Used by tests/test_multiprocess.py::test_meshes_match_one_device."""

import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8 ' + os.environ.get(
    'XLA_FLAGS', ''
)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import functools  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _inference_workdir import tiny_config  # noqa: E402

from diffhand_jax import diffusion  # noqa: E402
from diffhand_jax.data import input_pipeline, splits  # noqa: E402
from diffhand_jax.geometry import hand_model  # noqa: E402
from diffhand_jax.models import diffhand  # noqa: E402
from diffhand_jax.runs import state as state_lib  # noqa: E402
from diffhand_jax.training import sharding, step as step_lib  # noqa: E402

MESHES = {
    'one_device': {'data': 1, 'fsdp': 1},
    'data8': {'data': 8, 'fsdp': 1},
    'data2_fsdp4': {'data': 2, 'fsdp': 4},
    'fsdp8': {'data': 1, 'fsdp': 8},
}


def run(config, arrays, mesh_config):
  devices = jax.devices()[: int(np.prod(list(mesh_config.values())))]
  mesh = sharding.make_mesh(mesh_config, devices)
  topology = hand_model.hand_topology(
      hand_model.load_hand_model(config.dataset), config.dataset.get('tip_ids')
  )
  model = diffhand.build_model(config.model, topology.template)
  schedule = diffusion.cosine_schedule(config.model.num_timesteps)
  optimizer = state_lib.make_optimizer(config)
  abstract = state_lib.abstract_state(config, model, optimizer)
  shardings = sharding.state_shardings(mesh, abstract, min_size=1)
  state = step_lib.init_sharded_state(
      config, model, optimizer, shardings, jax.random.PRNGKey(config.seed)
  )
  data_sharding = sharding.batch_sharding(mesh)
  step_fn = jax.jit(
      functools.partial(
          step_lib.train_step,
          model=model,
          optimizer=optimizer,
          schedule=schedule,
          topology=topology,
          config=config,
      ),
      in_shardings=(shardings, data_sharding),
      out_shardings=(shardings, None),
  )
  batches = input_pipeline.train_batches(
      arrays,
      batch_size=config.batch_size,
      seed=config.seed,
      start_step=0,
      vertex_scale=config.model.vertex_scale,
      image_size=config.model.img_size,
      colour_strength=config.dataset.colour_jitter,
  )
  keys = ('image', 'vertices', 'joints', 'joints_2d', 'has_3d')
  losses = []
  for _ in range(3):
    batch = next(batches)
    state, parts = step_fn(state, sharding.to_global({k: batch[k] for k in keys}, data_sharding))
    losses.append(float(parts['total']))
  leaves = jax.tree_util.tree_leaves(state.params)
  sharded = sum('fsdp' in str(leaf.sharding.spec) for leaf in leaves)
  flat = np.concatenate([np.asarray(leaf).ravel() for leaf in leaves])
  return np.array(losses), flat, sharded


def main(data_dir, out):
  config = tiny_config(data_dir)
  config.batch_size = 8
  arrays = splits.load_split(config.dataset, 'train')
  results = {}
  for name, mesh_config in MESHES.items():
    losses, params, sharded = run(config, arrays, mesh_config)
    results[f'{name}_losses'] = losses
    results[f'{name}_params'] = params
    results[f'{name}_sharded_leaves'] = np.array(sharded)
  np.savez(out, **results)
  print(json.dumps({k: v.tolist() for k, v in results.items() if not k.endswith('_params')}))


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])
