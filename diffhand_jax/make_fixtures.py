"""Tiny copies of FreiHAND v2, HO-3D v2 and DexYCB in their official layouts, with MANO stand-ins.

  python -m diffhand_jax.make_fixtures --out=DIR [--which=freihand,ho3d,dex_ycb]

The builders' tests run on these; `tfds build datasets/<name> --manual_dir=DIR/<name>` builds one
(diffhand_jax/data/fixtures.py makes them).
"""

import os

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string('out', None, 'Output folder.')
flags.DEFINE_list('which', ['freihand', 'ho3d', 'dex_ycb'], 'Which datasets to write.')
flags.mark_flags_as_required(['out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from diffhand_jax.data import fixtures  # heavy: jax, so --help stays fast

  unknown = sorted(set(FLAGS.which) - set(fixtures.MAKERS))
  if unknown:
    raise app.UsageError(
        f'--which: unknown dataset(s) {unknown}; choose from {sorted(fixtures.MAKERS)}'
    )
  fixtures.make(FLAGS.out, FLAGS.which)
  print(f'wrote {", ".join(FLAGS.which)} fixtures and MANO stand-ins under {FLAGS.out}')
  for name in FLAGS.which:
    print(
        f'  tfds build datasets/{name} --manual_dir={os.path.join(FLAGS.out, name)} --data_dir=DATA_DIR '
        f'(with DIFFHAND_MANO_DIR={os.path.join(FLAGS.out, "mano")})'
    )


if __name__ == '__main__':
  app.run(main)
