"""Our encoders against timm's PyTorch forward of the same variant, same weights, same batch, one process.

  python -m diffhand_jax.bench encoder [--models=deit_small_patch16_224,hrnet_w18_small] [--batch_sizes=8]
      [--img_size=224] [--output=...]

The ViT family (models/vit.py) and HRNet (models/hrnet.py, timm's `hrnet_*` names) are covered. timm's model
is created with random weights (no download), converted with `vit.from_timm` or `hrnet.from_timm` (HRNet's
running statistics included), and both run `forward_features` on the same images: timm eagerly under
`torch.inference_mode()` (its usual way to run), ours jitted (HRNet in inference mode, running
statistics). A ViT runs at its native size unless --img_size is given; HRNet at --img_size (224 when
unset). The two are timed in alternation, repeat by repeat, so drift hits both alike. Both
use every core of the machine (torch's intra-op threads are set to the core count; XLA's CPU client uses
its own pool of that size). The outputs are checked to agree before anything is
timed. The ratio is ours/timm: below 1 means we are faster.
"""

from __future__ import annotations

import os

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax.benchmarks import common
from diffhand_jax import command_line
from diffhand_jax.models import hrnet, vit


def _timm_model(name: str, img_size: int | None):
  import timm  # pylint: disable=g-import-not-at-top - heavy: test extra (timm, torch)

  kwargs = {} if img_size is None or hrnet.is_hrnet(name) else {'img_size': img_size}
  return timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()


def _timm_features(name: str, timm_model, torch_images) -> np.ndarray:
  """timm's forward_features as our features: (B, P, C) grid tokens, row-major."""
  features = timm_model.forward_features(torch_images).numpy()
  if hrnet.is_hrnet(name):  # (B, C, h, w) -> (B, h*w, C)
    batch, channels = features.shape[:2]
    return features.reshape(batch, channels, -1).transpose(0, 2, 1)
  return features[:, timm_model.num_prefix_tokens :]


def measure(
    name: str,
    batch: int,
    *,
    img_size: int | None = None,
    repeats: int = 7,
    threads: int | None = None,
    dtype: str = 'float32',
) -> dict:
  """Times one model at one batch size; returns seconds per forward for both, and the ratio."""
  import torch  # pylint: disable=g-import-not-at-top - heavy: test extra (torch)

  threads = threads or os.cpu_count() or 1
  torch.set_num_threads(threads)
  timm_model = _timm_model(name, img_size)
  state_dict = {k: v.detach().numpy() for k, v in timm_model.state_dict().items()}
  compute_dtype = jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32
  if hrnet.is_hrnet(name):
    size = (img_size or 224,) * 2
    module, variables = hrnet.from_timm(name, state_dict, dtype=compute_dtype)
  else:
    size = timm_model.patch_embed.img_size
    module, params = vit.from_timm(name, state_dict, img_size=tuple(size), dtype=compute_dtype)
    variables = {'params': params}
  variables = jax.device_put(variables)
  images_nchw = np.random.default_rng(0).standard_normal((batch, 3, *size)).astype(np.float32)
  torch_images = torch.from_numpy(images_nchw)
  jax_images = jax.device_put(jnp.asarray(images_nchw.transpose(0, 2, 3, 1)))
  forward = jax.jit(module.apply)

  def run_ours():
    return common.block(forward(variables, jax_images))

  def run_timm():
    with torch.inference_mode():
      return timm_model.forward_features(torch_images)

  ours_features, _ = run_ours()
  with torch.inference_mode():
    timm_features = _timm_features(name, timm_model, torch_images)
  max_diff = float(np.max(np.abs(np.asarray(ours_features, np.float32) - timm_features)))
  # Relative to the features' scale: a random HRNet's features reach the hundreds.
  scale = max(1.0, float(np.max(np.abs(timm_features))))
  if dtype == 'float32' and max_diff > 1e-3 * scale:
    raise AssertionError(
        f'{name}: our features differ from timm by {max_diff} (largest feature {scale}); '
        'not timing a wrong model'
    )
  timed = common.time_interleaved(
      {'ours': run_ours, 'timm': run_timm}, repeats=repeats, min_seconds=0.5
  )
  ours, theirs = timed['ours'], timed['timm']
  return {
      'model': name,
      'batch': batch,
      'img_size': list(size),
      'dtype': dtype,
      'threads': threads,
      'torch': torch.__version__,
      'max_abs_diff': max_diff,
      'max_abs_feature': scale,
      'ours_s': ours,
      'timm_s': theirs,
      'ours_over_timm': ours['median'] / theirs['median'],
      'ours_images_per_s': batch / ours['median'],
      'timm_images_per_s': batch / theirs['median'],
  }


FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'models', 'deit_small_patch16_224', 'timm model names, comma-separated', flag_values=FLAGS
)
flags.DEFINE_string('batch_sizes', '8', 'batch sizes, comma-separated', flag_values=FLAGS)
flags.DEFINE_integer('repeats', 7, 'timed repeats', flag_values=FLAGS)
flags.DEFINE_integer(
    'img_size', None, "input side; default: a ViT's native size, 224 for HRNet", flag_values=FLAGS
)
flags.DEFINE_integer('threads', None, 'default: every core', flag_values=FLAGS)
flags.DEFINE_string('output', 'bench_results/encoder.json', 'the JSON report', flag_values=FLAGS)


def main(argv: list[str]) -> int:
  try:
    command_line.parse(FLAGS, argv, prog='python -m diffhand_jax.bench encoder', doc=__doc__)
  except command_line.Exit as done:
    return done.code

  results, rows = [], []
  for name in FLAGS.models.split(','):
    for batch in [int(b) for b in FLAGS.batch_sizes.split(',')]:
      r = measure(
          name, batch, img_size=FLAGS.img_size, repeats=FLAGS.repeats, threads=FLAGS.threads
      )
      results.append(r)
      rows.append(
          [
              name,
              batch,
              r['ours_s']['median'] * 1e3,
              r['ours_s']['min'] * 1e3,
              r['ours_s']['max'] * 1e3,
              r['timm_s']['median'] * 1e3,
              r['timm_s']['min'] * 1e3,
              r['timm_s']['max'] * 1e3,
              r['ours_over_timm'],
          ]
      )
  header = [
      'model',
      'batch',
      'ours ms (median)',
      'ours min',
      'ours max',
      'timm ms (median)',
      'timm min',
      'timm max',
      'ours/timm',
  ]
  common.report(
      'encoder',
      FLAGS.output,
      f'Encoder forward: ours (JAX, jit) vs timm (PyTorch, eager), {jax.default_backend()}',
      header,
      rows,
      results,
  )
  return 0


if __name__ == '__main__':
  import sys

  sys.exit(main(sys.argv[1:]))
