"""Benchmark submission files: writers, readers and validators, and a command that writes them from a
checkpoint.

  python -m diffhand_jax.submission --workdir=DIR --benchmark=freihand --output=pred.zip
  python -m diffhand_jax.submission --workdir=DIR --benchmark=ho3d --output=pred.zip
  python -m diffhand_jax.submission --workdir=DIR --benchmark=dexycb --output=results.txt
      [--split=NAME] [--num_hypotheses=K] [--method=mean|medoid|aligned_mean] [--tta] [--config.key=value ...]

Formats (as the official evaluation scripts read them):

* FreiHAND (lmb-freiburg/freihand `eval.py`): `pred.zip` holding only `pred.json` at its top level,
  `[xyz_list, verts_list]`, one (21, 3) and one (778, 3) list per evaluation image in id order, metres,
  OpenCV camera frame, FreiHAND (= our 21) joint order.
* HO-3D v2 (shreyashampali/ho3d `eval.py`): the same `pred.zip`/`pred.json` layout, in `evaluation.txt`
  order, OpenGL camera frame (diag(1, -1, -1) of ours), HO-3D's joint order.
* DexYCB (NVlabs/dex-ycb-toolkit `hpe_eval.py`): a text file, one line per sample:
  `image_id,x1,y1,z1,...,x21,y21,z21` (64 comma-separated fields), millimetres, camera frame, 21-order.
  The image id is the toolkit's sample index in `DexYCBDataset('s0', split)`, counted before any
  filtering (the builder's `sample_id`; datasets/dex_ycb explains the order). `HPEEvaluator.evaluate`
  scores every sample of the split whose joint_3d is not all -1 and asserts that each has a line
  ("missing image id in result file"): a file must cover the whole split; lines for other ids are
  ignored, and a repeated id silently replaces the earlier line (we refuse it). The builder's metadata
  holds the number of samples the toolkit scores, and the writer checks the file against it.

Absolute positions. The model predicts root-relative shape. The aligned metrics that papers report
(FreiHAND/HO-3D Procrustes-aligned joints and mesh and their F-scores; DexYCB root-relative and
Procrustes MPJPE) do not depend on where the root is, but the files must hold camera-frame positions and
the scripts' unaligned numbers do depend on them. So:
  * FreiHAND and DexYCB: the wrist comes from the predicted weak-perspective camera and the crop's K
    (`crops.root_from_weak_perspective`); no ground truth is used. FreiHAND's per-image
    `evaluation_scale.json` is not needed: the predicted shape is already metric.
  * HO-3D: the evaluation meta files provide the wrist (`handJoints3D`, the root only), so the
    prediction is placed there, as the benchmark intends.

Every writer validates what it writes (count, shapes, finiteness, units and frame sanity), writes to a
temporary file next to the output, reads that file back, validates it again, and only then renames it
into place: a failed run never leaves a partial or invalid submission behind.

--config.key=value overrides the run's config (WORKDIR/config.json): model.sampling_steps,
model.num_hypotheses and model.eta (the sampler; the network is fixed by the checkpoint), and any field of
config.dataset (e.g. --config.dataset.data_dir=DIR) and config.eval. Exit status: 0 when the file was
written, 1 when the predictions failed the benchmark's checks, 2 for bad flags and missing inputs (no
trained run, no checkpoint, data not prepared), each with a one-line message.

The writers, readers and validators are in `diffhand_jax.inference.submission`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Sequence

from absl import flags

from diffhand_jax import command_line
from diffhand_jax.inference import overrides, submission
from diffhand_jax.runs import checkpoints

PROG = 'python -m diffhand_jax.submission'

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'workdir', None, 'a training workdir (config.json, checkpoints/)', flag_values=FLAGS
)
flags.DEFINE_enum(
    'benchmark', None, submission.BENCHMARKS, 'the benchmark whose file to write', flag_values=FLAGS
)
flags.DEFINE_string(
    'output', None, 'pred.zip (freihand, ho3d) or a .txt (dexycb)', flag_values=FLAGS
)
flags.DEFINE_string(
    'split', None, 'the evaluation split (default: config.dataset.eval_split)', flag_values=FLAGS
)
command_line.define_sampling_flags(FLAGS, num_hypotheses=None)
flags.DEFINE_string(
    'root_feature', None, 'ho3d: the feature holding the given root', flag_values=FLAGS
)
flags.DEFINE_string(
    'id_feature',
    None,
    "dexycb: the feature holding the toolkit's sample index (default: "
    'the first of image_id, sample_id, id; datasets/dex_ycb emits sample_id)',
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    'max_examples',
    None,
    'for a quick try: the file then lacks the rest of the split (a '
    'DexYCB file is then incomplete, which the toolkit refuses)',
    flag_values=FLAGS,
)
flags.mark_flags_as_required(['workdir', 'benchmark', 'output'], flag_values=FLAGS)


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
  try:
    summary = submission.write_submission(
        FLAGS.workdir,
        FLAGS.benchmark,
        FLAGS.output,
        command_line.inference_options(FLAGS, submission.SUBMISSION_DEFAULTS),
        overrides=FLAGS.config,
        split=FLAGS.split,
        root_feature=FLAGS.root_feature,
        id_feature=FLAGS.id_feature,
        max_examples=FLAGS.max_examples,
    )
  except (
      FileNotFoundError,
      checkpoints.CheckpointMismatchError,
  ) as error:  # a missing or wrong input
    print(f'error: {error}', file=sys.stderr)
    return 2
  except (submission.SubmissionError, ValueError, KeyError) as error:
    print(f'error: {error}', file=sys.stderr)
    return 1
  print(
      f'wrote {summary["output"]}: {summary["count"]} {FLAGS.benchmark} predictions '
      f'({json.dumps({k: v for k, v in summary.items() if k not in ("output", "count")})})'
  )
  return 0


def run() -> None:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main())


if __name__ == '__main__':
  run()
