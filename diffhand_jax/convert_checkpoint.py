"""Convert a timm or Hugging Face ViT/DeiT checkpoint into Flax encoder params.

  python -m diffhand_jax.convert_checkpoint --model=deit3_large_patch16_224 \\
      --input=model.safetensors --output=deit3_large_224.msgpack [--img_size=256]

The reading and mapping live in `diffhand_jax.models.pretrained`; this command parses flags and prints.
Exit status: 0 when the file was written, 1 when the checkpoint could not be converted, 2 for bad flags.
"""

from __future__ import annotations

import sys
from typing import Sequence

from absl import flags
import jax
import numpy as np

from diffhand_jax import command_line
from diffhand_jax.models import pretrained, vit

PROG = 'python -m diffhand_jax.convert_checkpoint'


class _ImageSizeParser(flags.ArgumentParser):
  """N or H,W (also HxW) → int or (H, W)."""

  def parse(self, argument):
    if not isinstance(argument, str):
      return argument
    try:
      parts = [int(part) for part in argument.replace('x', ',').split(',')]
    except ValueError:
      parts = []
    if len(parts) == 1 and parts[0] > 0:
      return parts[0]
    if len(parts) == 2 and min(parts) > 0:
      return parts[0], parts[1]
    raise ValueError(f'img_size must be N or H,W, got {argument!r}')

  def flag_type(self):
    return 'N or H,W'


FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'model',
    None,
    f'timm model name, one of: {", ".join(sorted(vit.VIT_CONFIGS))}',
    flag_values=FLAGS,
)
flags.DEFINE_string('input', None, '.pth, .pt, .bin or .safetensors checkpoint', flag_values=FLAGS)
flags.DEFINE_string('output', None, 'output .msgpack file', flag_values=FLAGS)
flags.DEFINE(
    _ImageSizeParser(),
    'img_size',
    None,
    "input size N or H,W (default: the model's native size); "
    'the position embedding is resampled to it',
    flag_values=FLAGS,
)
flags.mark_flags_as_required(['model', 'input', 'output'], flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command on `argv` (the flags, without the program name); returns the exit status."""
  try:
    command_line.parse(FLAGS, argv, prog=PROG, doc=__doc__)
  except command_line.Exit as done:
    return done.code
  try:
    module, variables = pretrained.convert(
        FLAGS.model, FLAGS.input, FLAGS.output, img_size=FLAGS.img_size
    )
  except (pretrained.CheckpointError, ValueError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 1
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables['params']))
  size = vit.image_size_pair(getattr(module, 'img_size', FLAGS.img_size or 224))
  print(f'wrote {FLAGS.output}: {FLAGS.model} at {size}, {count:,} parameters')
  return 0


if __name__ == '__main__':
  sys.exit(main())
