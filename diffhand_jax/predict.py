"""Hand meshes for your own images.

  python -m diffhand_jax.predict --workdir=DIR --images=IN_DIR --output=OUT_DIR
      [--boxes=boxes.json] [--box_scale=1.3] [--left=left.json | --left=a.jpg,b.png | --all_left]
      [--num_hypotheses=5] [--steps=10] [--eta=0] [--method=mean|medoid|aligned_mean] [--tta] [--batch_size=8]
      [--seed=0] [--overlay_size=256] [--config.key=value ...]

For every .jpg/.jpeg/.png/.bmp/.webp in IN_DIR (any size) it writes to OUT_DIR:
  NAME.obj    the mesh: root-relative metres, camera axes (x right, y down, z forward), wrist at 0
  NAME.png    the mesh rendered over the crop the model saw (shaded triangles, not points)
  NAME.json   joints (21, 3) and vertices (778, 3) root-relative metres, per-vertex uncertainty (778,)
              metres (the spread of the K hypotheses), the weak-perspective camera, the crop box, and
              the settings

Crop: the box from --boxes ({"NAME.jpg": [x0, y0, x1, y1], ...} in pixels; the key may also be the name
without its extension), made square around its centre with side = longer side × --box_scale; without a
box, the largest centred square. The crop is resized to the model's input size.

Left hands (--left: a JSON list of names, a JSON {name: true/false} object, or a comma-separated list
of names; --all_left for every image) are mirrored before the model and mirrored back on output.

--config.key=value overrides the run's config (WORKDIR/config.json): model.sampling_steps and model.eta
(--steps and --eta, when given, win over them), model.num_hypotheses (unused here: --num_hypotheses
sets K), and any field of config.dataset and config.eval. The network is fixed by the checkpoint, so any
other config.model field is an unknown flag.

Unreadable images are reported by name and skipped; the rest are processed. Exit status: 0 when at
least one image was processed, 1 when none could be, 2 for bad arguments.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import flags

from diffhand_jax.geometry import hypotheses
from diffhand_jax import command_line
from diffhand_jax.inference import overrides
from diffhand_jax.inference.predict import InputError

PROG = 'python -m diffhand_jax.predict'

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'workdir', None, 'a training workdir (config.json, checkpoints/)', flag_values=FLAGS
)
flags.DEFINE_string('images', None, 'a folder of images', flag_values=FLAGS)
flags.DEFINE_string('output', None, 'where the .obj/.png/.json files go', flag_values=FLAGS)
flags.DEFINE_string(
    'boxes', None, 'JSON {"name.jpg": [x0, y0, x1, y1]} (pixels)', flag_values=FLAGS
)
flags.DEFINE_float(
    'box_scale',
    1.3,
    'crop side / longer box side (the training crops leave such a margin)',
    flag_values=FLAGS,
)
flags.DEFINE_string(
    'left', None, 'left hands: a JSON list/object file, or comma-separated names', flag_values=FLAGS
)
flags.DEFINE_bool('all_left', False, 'every image shows a left hand', flag_values=FLAGS)
flags.DEFINE_integer('num_hypotheses', 5, 'hypotheses K per image', flag_values=FLAGS)
flags.DEFINE_integer('steps', None, "DDIM steps (default: the config's)", flag_values=FLAGS)
flags.DEFINE_float('eta', None, "DDIM eta (default: the config's)", flag_values=FLAGS)
flags.DEFINE_enum(
    'method', 'mean', hypotheses.METHODS, 'how the K hypotheses become one mesh', flag_values=FLAGS
)
flags.DEFINE_bool('tta', False, 'test-time augmentation (rotations, scales)', flag_values=FLAGS)
flags.DEFINE_string(
    'tta_angles', '-10,0,10', 'TTA rotations, degrees, comma-separated', flag_values=FLAGS
)
flags.DEFINE_string('tta_scales', '0.9,1.0,1.1', 'TTA scales, comma-separated', flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 8, 'images per sampler call', flag_values=FLAGS)
flags.DEFINE_integer('seed', 0, "the sampler's random seed", flag_values=FLAGS)
flags.DEFINE_integer(
    'overlay_size', 256, 'side of the NAME.png overlays, pixels', flag_values=FLAGS
)
flags.mark_flags_as_required(['workdir', 'images', 'output'], flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command on `argv` (the flags, without the program name); returns the exit status."""
  try:
    command_line.parse(
        FLAGS,
        argv,
        prog=PROG,
        doc=__doc__,
        config=overrides.override_fields,
        config_help=overrides.HELP,
    )
  except command_line.Exit as done:
    return done.code
  from diffhand_jax.inference import predict, tta

  try:
    tta_config = None
    if FLAGS.tta:
      tta_config = tta.TTAConfig(
          angles_deg=tta.parse_list(FLAGS.tta_angles), scales=tta.parse_list(FLAGS.tta_scales)
      )
    result = predict.predict_folder(
        FLAGS.workdir,
        FLAGS.images,
        FLAGS.output,
        boxes=FLAGS.boxes,
        left=FLAGS.left,
        all_left=FLAGS.all_left,
        box_scale=FLAGS.box_scale,
        num_hypotheses=FLAGS.num_hypotheses,
        steps=FLAGS.steps,
        eta=FLAGS.eta,
        method=FLAGS.method,
        tta_config=tta_config,
        batch_size=FLAGS.batch_size,
        seed=FLAGS.seed,
        overlay_size=FLAGS.overlay_size,
        overrides=FLAGS.config,
    )
  except (InputError, FileNotFoundError, ValueError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2
  print(f'wrote {len(result["written"])} predictions to {FLAGS.output}')
  if result['failed']:
    print(
        f'could not read {len(result["failed"])} image(s): {", ".join(sorted(result["failed"]))}',
        file=sys.stderr,
    )
  return 0 if result['written'] else 1


def run() -> None:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main())


if __name__ == '__main__':
  run()
