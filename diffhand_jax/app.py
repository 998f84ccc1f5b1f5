"""A local web app: drop in a photo (or a video), see every hand in 3D and where the model is unsure.

  python -m diffhand_jax.app --workdir=DIR [--port=7860] [--host=127.0.0.1]

Serves a Gradio page (pip install -e ".[app]") at http://HOST:PORT/ for the trained run in DIR: an
upload (photo or video) and a webcam snapshot; every hand found drawn over the photo with its side and
score; each hand's mesh in a 3D viewer, optionally coloured by the per-vertex spread of the hypotheses;
controls for the hypotheses, the DDIM steps and TTA; the JSON (with MANO parameters) and the meshes
(.glb, .obj) to download. It uses the same library functions as `python -m diffhand_jax.predict` and
never reaches the network (no analytics, no CDN assets). docs/app.md describes the page.

Exit status: 0 when stopped (Ctrl-C), 1 when Gradio is missing, the workdir holds no run or the port is
taken, 2 for bad flags.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import flags

from diffhand_jax import command_line
from diffhand_jax.inference import app

PROG = 'python -m diffhand_jax.app'

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'workdir', None, 'a training workdir (config.json, checkpoints/)', flag_values=FLAGS
)
flags.DEFINE_integer('port', 7860, 'the port to serve on', flag_values=FLAGS)
flags.DEFINE_string(
    'host', '127.0.0.1', 'the address to serve on (0.0.0.0: every interface)', flag_values=FLAGS
)
flags.mark_flags_as_required(['workdir'], flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command on `argv` (the flags, without the program name); returns the exit status."""
  try:
    command_line.parse(FLAGS, argv, prog=PROG, doc=__doc__)
  except command_line.Exit as done:
    return done.code
  try:
    app.import_gradio()
    app.check_workdir(FLAGS.workdir)
  except (app.AppUnavailable, FileNotFoundError) as error:
    print(f'{PROG}: {error}', file=sys.stderr)
    return 1
  print(f'serving {FLAGS.workdir} at http://{FLAGS.host}:{FLAGS.port}/ (Ctrl-C stops)', flush=True)
  try:
    app.serve(FLAGS.workdir, port=FLAGS.port, host=FLAGS.host)
  except OSError as error:  # e.g. the port is taken
    print(f'{PROG}: {error}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    pass
  return 0


def run() -> None:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main())


if __name__ == '__main__':
  run()
