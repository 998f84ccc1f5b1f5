"""The depth estimator (models/midas.py) against transformers' DPT, and what depth adds to `reconstruct`.

  python -m diffhand_jax.bench depth [--batch=4] [--size=384] [--repeats=3] [--workdir=/work/demo_run]
      [--reconstruct_batch=4] [--depth_size=384] [--steps=N] [--threads=N] [--smoke] [--output=...]

1. Estimator forward: transformers' `DPTForDepthEstimation` with the DPT-Large architecture
   (`midas.DPT_LARGE_CONFIG`, Intel/dpt-large's config.json; random weights, no download), converted with
   `midas.from_transformers`, at --batch x --size px. transformers runs eagerly under `torch.no_grad()`
   on every core; ours jitted, timed after compiling. The outputs are checked to agree before timing;
   the two are timed in alternation. ours/transformers below 1 means we are faster.
2. What the depth stage adds to a `reconstruct` call: the run in --workdir (or, without one, the
   `cpu_demo` preset with random weights) reconstructs --reconstruct_batch crops as it does (RGB only),
   against the same model with `use_depth=True` whose one jitted call first runs the estimator on the
   crops (re-normalised to DPT's input, resized to --depth_size, as DPT's image processor resizes to
   384) and resizes the depth map back to the crop. Both with the run's DDIM steps.

--smoke: a tiny estimator config at 64 px, batch 1, one repeat: checks that the benchmark runs.
"""

from __future__ import annotations

import os

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax import command_line
from diffhand_jax.benchmarks import common
from diffhand_jax.data import input_pipeline
from diffhand_jax.inference import loading
from diffhand_jax.models import diffhand, midas
from diffhand_jax.runs import model_presets

# --smoke's estimator: DPT-Large's structure, shrunk.
SMOKE_CONFIG = dict(
    midas.DPT_LARGE_CONFIG,
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=64,
    backbone_out_indices=[0, 1, 2, 3],
    neck_hidden_sizes=[8, 16, 32, 32],
    fusion_hidden_size=16,
)


def measure_estimator(
    config: dict, batch: int, size: int, *, repeats: int, threads: int | None = None
) -> dict:
  """Seconds per forward of ours (jit) and transformers' (eager) DPT, same weights, same pixels."""
  import torch  # pylint: disable=g-import-not-at-top - heavy: test extra (torch, transformers)
  import transformers  # pylint: disable=g-import-not-at-top

  threads = threads or os.cpu_count() or 1
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  reference = transformers.DPTForDepthEstimation(transformers.DPTConfig(**config)).eval()
  state_dict = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
  module, params = midas.from_transformers(config, state_dict)
  params = jax.device_put(params)
  pixels = np.random.default_rng(0).uniform(-1, 1, (batch, 3, size, size)).astype(np.float32)
  torch_pixels = torch.from_numpy(pixels)
  jax_pixels = jax.device_put(jnp.asarray(pixels.transpose(0, 2, 3, 1)))
  forward = jax.jit(module.apply)

  def run_ours():
    return common.block(forward({'params': params}, jax_pixels))

  def run_theirs():
    with torch.no_grad():
      return reference(pixel_values=torch_pixels).predicted_depth

  ours_depth = np.asarray(run_ours())
  theirs_depth = run_theirs().numpy()
  max_diff = float(np.max(np.abs(ours_depth - theirs_depth)))
  scale = max(float(np.max(np.abs(theirs_depth))), 1e-6)
  if max_diff > 1e-3 * scale:
    raise AssertionError(
        f'our depth differs from transformers by {max_diff} (largest {scale}); not timing a wrong model'
    )
  timed = common.time_interleaved(
      {'ours': run_ours, 'transformers': run_theirs}, repeats=repeats, min_seconds=0.0
  )
  ours, theirs = timed['ours'], timed['transformers']
  return {
      'batch': batch,
      'size': size,
      'threads': threads,
      'torch': torch.__version__,
      'transformers': transformers.__version__,
      'max_abs_diff': max_diff,
      'max_abs_depth': scale,
      'ours_s': ours,
      'transformers_s': theirs,
      'ours_over_transformers': ours['median'] / theirs['median'],
  }


def _model_and_variables(workdir: str | None, key: jax.Array):
  """(model, params, batch_stats, steps, crop size, source): the trained run in `workdir`, else the
  cpu_demo preset with random weights."""
  if workdir and os.path.exists(os.path.join(workdir, 'config.json')):
    run = loading.load_trained(workdir)
    model_config, source = run.config.model, workdir
    model, params, batch_stats = run.model, run.params, run.batch_stats
  else:
    model_config, source = model_presets.get_model_config('cpu_demo'), 'cpu_demo preset (random)'
    model = diffhand.build_model(model_config)
    variables = diffhand.init_variables(model, key, model_config.img_size)
    params, batch_stats = variables['params'], variables['batch_stats']
  size = model_config.img_size
  crop = (size, size) if isinstance(size, int) else tuple(size)
  return model, params, batch_stats, int(model_config.sampling_steps), crop, source


def measure_reconstruct(
    estimator_config: dict,
    *,
    workdir: str | None,
    batch: int,
    depth_size: int,
    repeats: int,
    steps: int | None = None,
) -> dict:
  """Seconds per `reconstruct` call without depth, and with the estimator run inside the same call."""
  key = jax.random.PRNGKey(0)
  model, params, batch_stats, run_steps, (height, width), source = _model_and_variables(
      workdir, key
  )
  steps = steps or run_steps
  depth_model = model.clone(use_depth=True)
  depth_variables = diffhand.init_variables(depth_model, key, (height, width))
  estimator, estimator_params = midas.init_random(estimator_config, key)
  images = jax.random.normal(jax.random.PRNGKey(1), (batch, height, width, 3), jnp.float32)
  plain = diffhand.make_reconstruct_fn(model, num_steps=steps)

  @jax.jit
  def with_depth(variables, estimator_params, images, key):
    # The crops as the model sees them (ImageNet-normalised) -> DPT's pixels at its size -> depth at
    # the crop's size.
    pixels = midas.renormalize(
        images, input_pipeline.IMAGENET_MEAN.tolist(), input_pipeline.IMAGENET_STD.tolist()
    )
    pixels = midas.resize_bilinear(pixels, (depth_size, depth_size), align_corners=False)
    depth = estimator.apply({'params': estimator_params}, pixels)[..., None]
    depth = midas.resize_bilinear(depth, (height, width), align_corners=False)
    return diffhand.reconstruct(
        depth_model,
        variables['params'],
        images,
        key,
        num_steps=steps,
        depth=depth,
        batch_stats=variables['batch_stats'],
    )

  def run_plain():
    return common.block(plain(params, images, key, batch_stats=batch_stats))

  def run_depth():
    return common.block(with_depth(depth_variables, estimator_params, images, key))

  timed = common.time_interleaved(
      {'rgb': run_plain, 'rgb+depth': run_depth}, repeats=repeats, min_seconds=0.0
  )
  return {
      'model': source,
      'crop': [height, width],
      'batch': batch,
      'steps': steps,
      'depth_size': depth_size,
      'rgb_s': timed['rgb'],
      'rgb_depth_s': timed['rgb+depth'],
      'added_s': timed['rgb+depth']['median'] - timed['rgb']['median'],
      'ratio': timed['rgb+depth']['median'] / timed['rgb']['median'],
  }


FLAGS = flags.FlagValues()
flags.DEFINE_integer('batch', 4, 'estimator batch', flag_values=FLAGS)
flags.DEFINE_integer('size', 384, 'estimator input side (DPT-Large: 384)', flag_values=FLAGS)
flags.DEFINE_integer('repeats', 3, 'timed repeats (each is one call)', flag_values=FLAGS)
flags.DEFINE_integer('threads', None, "torch's threads; default: every core", flag_values=FLAGS)
flags.DEFINE_string(
    'workdir',
    '/work/demo_run',
    'a trained run for the reconstruct comparison; absent: the cpu_demo preset, random',
    flag_values=FLAGS,
)
flags.DEFINE_integer('reconstruct_batch', 4, 'crops per reconstruct call', flag_values=FLAGS)
flags.DEFINE_integer('depth_size', 384, 'side the estimator sees the crops at', flag_values=FLAGS)
flags.DEFINE_integer('steps', None, "DDIM steps (default: the run's)", flag_values=FLAGS)
flags.DEFINE_bool('smoke', False, 'tiny shapes, one repeat: checks that it runs', flag_values=FLAGS)
flags.DEFINE_string('output', 'bench_results/depth.json', 'the JSON report', flag_values=FLAGS)


def main(argv: list[str]) -> int:
  try:
    command_line.parse(FLAGS, argv, prog='python -m diffhand_jax.bench depth', doc=__doc__)
  except command_line.Exit as done:
    return done.code
  if FLAGS.smoke:
    config, batch, size, repeats, depth_size, rbatch = SMOKE_CONFIG, 1, 64, 1, 64, 1
  else:
    config, batch, size = midas.DPT_LARGE_CONFIG, FLAGS.batch, FLAGS.size
    repeats, depth_size, rbatch = FLAGS.repeats, FLAGS.depth_size, FLAGS.reconstruct_batch
  estimator = measure_estimator(config, batch, size, repeats=repeats, threads=FLAGS.threads)
  print(
      f'estimator: ours {estimator["ours_s"]["median"]:.3f} s, transformers '
      f'{estimator["transformers_s"]["median"]:.3f} s per forward',
      flush=True,
  )
  cost = measure_reconstruct(
      config,
      workdir=FLAGS.workdir,
      batch=rbatch,
      depth_size=depth_size,
      repeats=repeats,
      steps=FLAGS.steps,
  )
  name = 'DPT (smoke config)' if FLAGS.smoke else 'DPT-Large'
  rows = [
      [
          f'{name} forward, batch {batch} @ {size} px',
          estimator['ours_s']['median'] * 1e3,
          estimator['transformers_s']['median'] * 1e3,
          estimator['ours_over_transformers'],
      ],
      [
          f'reconstruct, {cost["model"]}, batch {rbatch}, {cost["steps"]} steps: RGB vs RGB + '
          f'depth estimated at {depth_size} px',
          cost['rgb_depth_s']['median'] * 1e3,
          cost['rgb_s']['median'] * 1e3,
          cost['ratio'],
      ],
  ]
  header = ['what', 'ours / with depth ms (median)', 'transformers / RGB only ms', 'ratio']
  common.report(
      'depth',
      FLAGS.output,
      f'Depth estimator: ours (JAX, jit) vs transformers (PyTorch, eager), {jax.default_backend()}',
      header,
      rows,
      {'estimator': estimator, 'reconstruct': cost},
      smoke=bool(FLAGS.smoke),
  )
  return 0


if __name__ == '__main__':
  import sys

  sys.exit(main(sys.argv[1:]))
