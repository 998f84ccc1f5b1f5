"""Regenerate the licence-free procedural hand (diffhand_jax/assets/procedural_hand.npz).

  python -m diffhand_jax.make_procedural_hand [--out=PATH]

The generator (diffhand_jax/geometry/procedural_hand.py) is deterministic and needs only numpy and scipy.
"""

import os

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string('out', None, 'Output .npz (default: the file the package ships).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from diffhand_jax.geometry import mano, procedural_hand  # heavy: jax, so --help stays fast

  out = FLAGS.out or mano.PROCEDURAL_PATH
  arrays = procedural_hand.generate()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.savez_compressed(out, **arrays)
  print(f'wrote {out}: {arrays["v_template"].shape[0]} vertices, {arrays["f"].shape[0]} faces')


if __name__ == '__main__':
  app.run(main)
