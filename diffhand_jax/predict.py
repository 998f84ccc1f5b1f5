"""Hand meshes for your own photos: every hand in each photo, in the photo's camera.

  python -m diffhand_jax.predict --workdir=DIR --images=IN_DIR --output=OUT_DIR
      [--detector=mediapipe|none] [--min_hand_score=0.5] [--focal=PIXELS] [--fit_mano]
      [--placement=landmarks|network] [--refine=landmarks|none]
      [--boxes=boxes.json] [--box_scale=1.3] [--left=left.json | --left=a.jpg,b.png | --all_left]
      [--num_hypotheses=5] [--steps=10] [--eta=0] [--method=mean|medoid|aligned_mean] [--tta] [--batch_size=8]
      [--seed=0] [--overlay_size=1024] [--color_by_uncertainty] [--config.key=value ...]
  python -m diffhand_jax.predict --workdir=DIR --video=IN.mp4|FRAMES_DIR --output=OUT_DIR
      [--warm_strength=0.3] [--video_box=x0,y0,x1,y1 | --detector=mediapipe|none] [--all_left]
      [--video_follow] [--video_reset=0.15] [--video_fps=30] [--num_hypotheses=1] [--steps=10] [...]

--video reconstructs a video (PyAV decodes it: pip install -e ".[video]") or a folder of frames (sorted
by name), frame by frame, each frame's sampler started from the previous frame's mesh (docs/video.md),
and writes OUT_DIR/overlay.mp4 and one OUT_DIR/track_<id>.npz per hand (docs/design.md §8, "Video
results"). The hands are found by --detector in every frame and followed by box overlap; or one hand
is taken from --video_box (first-frame pixels), a box that stays (--video_follow: moves with the mesh).
A video that breaks off is reported by name (exit status 1), its frames before the break written.

For every .jpg/.jpeg/.png/.bmp/.webp in IN_DIR (any size) it finds the hands (MediaPipe's palm detector
and hand-landmark model, shipped with the package: a box, a side and a score per hand) and writes to
OUT_DIR (docs/design.md §8 names the keys; docs/photos.md shows an example):
  NAME.png        every hand's mesh rendered over the photo (longer side at most --overlay_size);
                  --color_by_uncertainty colours it by the per-vertex uncertainty (dark: sure)
  NAME_handI.obj  hand I's mesh in the photo's camera frame (metres, x right, y down, z forward)
  NAME.json       the focal length and K, and a list of hands: box, hand_side, score, root-relative and
                  camera-frame joints (21, 3) and vertices (778, 3), the uncertainty (metres: how
                  much the K hypotheses disagree in shape once rigidly aligned; 0 for K = 1) and its
                  per-vertex form, the weak-perspective camera, the crop box; with
                  --fit_mano also MANO pose, betas and trans and the hand model they belong to

Placement and refinement (docs/photos.md): a detected hand comes with the detector's 21 landmarks. By
default its mesh is placed so that its joints project onto them (--placement=landmarks; "network": where
the model's own camera draws it, as hands from --boxes always are), then the run's hand model is fitted
to it, its joints onto the landmarks and its shape near the network's (--refine=landmarks; the JSON's
"network" keeps the network's own mesh, and "mesh" says which one the OBJ and the overlay show). Each
photo's line on stderr gives the joints' distance to the landmarks and the PA-MPJPE against the
detector's own 3D landmarks ("keypoints_3d", a peer's 3D estimate).

Photos without a hand are reported by name and skipped. Photos that share a stem (a.jpg, a.png) are
named after their whole name instead (a_jpg.json, a_png.json, ...). --output may not be the --images
folder nor hold the --boxes or --left file (nor, with --video, be the frames' or the video's folder);
it is checked writable before the run is opened, and each photo's JSON is written last, so a JSON means
its result is whole (docs/photos.md, "What it reads and where it writes").

Focal length (pixels): --focal, else the photo's EXIF (35 mm-equivalent focal length, or focal length
and sensor resolution), else the image diagonal (a 53° diagonal field of view).

Boxes: --boxes ({"NAME.jpg": [x0, y0, x1, y1] or a list of such boxes, in pixels; the key may also be
the name without its extension) replaces detection for the photos it names. --detector=none takes one
hand per photo in the largest centred square. Each box is made square around its centre with side =
longer side × --box_scale, and resized to the model's input size.

Left hands (--left: a JSON list of names, a JSON {name: true/false} or {name: [false, true]} object, or a
comma-separated list of names; --all_left for every image) replace the detector's sides: the named
photos' hands are left, every other photo's are right. Left hands are mirrored before the model and
mirrored back on output.

--config.key=value overrides the run's config (WORKDIR/config.json): model.sampling_steps and model.eta
(--steps and --eta, when given, win over them), model.num_hypotheses (unused here: --num_hypotheses
sets K), and any field of config.dataset and config.eval. The network is fixed by the checkpoint, so any
other config.model field is an unknown flag.

Unreadable images and images without hands are reported by name and skipped; the rest are processed.
Exit status: 0 when at least one image was processed; 2 when none could be (each skipped image is named
with why: unreadable, too small, a box outside it, no hand found), for bad arguments and missing inputs.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import flags

from diffhand_jax import command_line
from diffhand_jax.inference import io, overrides, pipeline, predict, video

PROG = 'python -m diffhand_jax.predict'

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'workdir', None, 'a training workdir (config.json, checkpoints/)', flag_values=FLAGS
)
flags.DEFINE_string('images', None, 'a folder of images', flag_values=FLAGS)
flags.DEFINE_string('output', None, 'where the .obj/.png/.json files go', flag_values=FLAGS)
flags.DEFINE_string(
    'boxes',
    None,
    'JSON {"name.jpg": [x0, y0, x1, y1] or a list of them} (pixels); replaces detection there',
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    'detector',
    'mediapipe',
    ['mediapipe', 'none'],
    "how hands are found: MediaPipe's hand models, or none (one hand, the largest centred square)",
    flag_values=FLAGS,
)
flags.DEFINE_float(
    'min_hand_score', 0.5, 'detected hands below this score are dropped', flag_values=FLAGS
)
flags.DEFINE_float(
    'focal',
    None,
    'focal length in pixels of the photos (default: from EXIF, else the image diagonal)',
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    'fit_mano', False, "add each hand's MANO pose, betas and trans (mano.fit)", flag_values=FLAGS
)
flags.DEFINE_enum(
    'placement',
    pipeline.PHOTO_DEFAULTS.placement,
    list(pipeline.PLACEMENTS),
    "where a detected hand goes in the camera: on the detector's 21 landmarks, or where the "
    "network's weak-perspective camera draws it (hands from --boxes always so)",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    'refine',
    pipeline.PHOTO_DEFAULTS.refine,
    list(pipeline.REFINEMENTS),
    "landmarks: fit the run's hand model to each detected hand, its joints onto the landmarks and its "
    "shape near the network's (the JSON keeps the network's mesh too); none: the network's mesh",
    flag_values=FLAGS,
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
command_line.define_sampling_flags(FLAGS, num_hypotheses=5)
flags.DEFINE_integer('steps', None, "DDIM steps (default: the config's)", flag_values=FLAGS)
flags.DEFINE_float('eta', None, "DDIM eta (default: the config's)", flag_values=FLAGS)
flags.DEFINE_integer('batch_size', 8, 'images per sampler call', flag_values=FLAGS)
flags.DEFINE_integer(
    'overlay_size',
    1024,
    'longer side of the NAME.png overlays at most, pixels (photos are scaled down, never up; 0: as is)',
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    'color_by_uncertainty',
    False,
    'colour each hand in NAME.png by its per-vertex uncertainty (needs --num_hypotheses >= 2)',
    flag_values=FLAGS,
)
flags.DEFINE_string(
    'video', None, 'a video file or a folder of frames, instead of --images', flag_values=FLAGS
)
flags.DEFINE_string(
    'video_box',
    None,
    "--video: the hand's box x0,y0,x1,y1 (pixels) in the first frame; the crop then follows it",
    flag_values=FLAGS,
)
flags.DEFINE_float(
    'warm_strength',
    0.3,
    '--video: each frame starts from the last mesh and runs this fraction of the DDIM steps '
    '(1: every frame from noise)',
    flag_values=FLAGS,
)
flags.DEFINE_float(
    'video_reset',
    0.15,
    '--video: start from noise again when the crop changes more than this (mean |difference|/255)',
    flag_values=FLAGS,
)
flags.DEFINE_float(
    'video_fps', None, '--video: frame rate of a folder of frames (default 30)', flag_values=FLAGS
)
flags.DEFINE_bool(
    'video_follow',
    False,
    "--video_box: move the box with the predicted mesh (as good as the model's camera)",
    flag_values=FLAGS,
)
flags.mark_flags_as_required(['workdir', 'output'], flag_values=FLAGS)


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
  if bool(FLAGS.images) == bool(FLAGS.video):
    print(f'{PROG}: give one of --images=DIR and --video=FILE_OR_DIR', file=sys.stderr)
    return 2
  if FLAGS.output and os.path.exists(FLAGS.output) and not os.path.isdir(FLAGS.output):
    print(f'{PROG}: error: --output={FLAGS.output} is a file, not a folder', file=sys.stderr)
    return 2
  try:
    return predict_video() if FLAGS.video else predict_images()
  except io.VideoError as error:
    print(f'error: {error}', file=sys.stderr)
    return 1
  except (io.InputError, FileNotFoundError, ValueError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 2


def predict_images() -> int:
  """--images: a folder of photos."""
  result = predict.predict_folder(
      FLAGS.workdir,
      FLAGS.images,
      FLAGS.output,
      command_line.inference_options(FLAGS),
      boxes=FLAGS.boxes,
      left=FLAGS.left,
      all_left=FLAGS.all_left,
      focal=FLAGS.focal,
      overlay_size=FLAGS.overlay_size,
      color_by_uncertainty=FLAGS.color_by_uncertainty,
      overrides=FLAGS.config,
  )
  print(f'wrote {len(result["written"])} predictions to {FLAGS.output}')
  if result['failed']:
    print(
        f'could not read {len(result["failed"])} image(s): {", ".join(sorted(result["failed"]))}',
        file=sys.stderr,
    )
  if result['no_hands']:
    print(
        f'no hand found in {len(result["no_hands"])} image(s): {", ".join(result["no_hands"])}',
        file=sys.stderr,
    )
  return 0 if result['written'] else 2  # nothing could be processed


def predict_video() -> int:
  """--video: a video file or a folder of frames."""
  if FLAGS.color_by_uncertainty:  # the video path keeps no per-hand uncertainty to colour by
    print(f'{PROG}: note: --color_by_uncertainty applies to --images only', file=sys.stderr)
  options = command_line.inference_options(
      FLAGS,
      video.VIDEO_DEFAULTS,
      detector='none' if FLAGS.video_box else FLAGS.detector,
      num_hypotheses=FLAGS.num_hypotheses if FLAGS['num_hypotheses'].present else 1,
  )
  video_options = video.VideoOptions(
      box=io.parse_box(FLAGS.video_box),
      left=FLAGS.all_left,
      warm_strength=FLAGS.warm_strength,
      reset_threshold=FLAGS.video_reset,
      follow=FLAGS.video_follow,
      fps=FLAGS.video_fps,
  )
  result = video.reconstruct_video(
      FLAGS.workdir, FLAGS.video, FLAGS.output, options, video_options, overrides=FLAGS.config
  )
  steady = result['steady_frames_per_second']
  print(
      f'wrote {result["frames"]} frames, {len(result["tracks"])} track(s) to {FLAGS.output}: '
      f'{result["frames_per_second"]:.1f} frames/s'
      + (f' ({steady:.1f} after compiling)' if steady else '')
      + f', {result["decoder_passes_per_frame"]:.2f} decoder passes per frame'
  )
  return 0


def run() -> None:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main())


if __name__ == '__main__':
  run()
