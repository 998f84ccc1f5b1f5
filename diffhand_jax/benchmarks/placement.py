"""Where the meshes land in whole photos: on real photos against the detector's landmarks, and on
synthetic frames against the truth, for each way of placing and refining the hands.

  python -m diffhand_jax.bench placement --workdir=runs/synthetic [--images=DIR|opencv-doc]
      [--frames=24] [--settings=network,landmarks,refined] [--seed=0]

Settings (`pipeline.Options`): 'network' places each hand where the model's weak-perspective camera
draws it (the only placement before issue 31); 'landmarks' on the detector's 21 landmarks
(`crops.root_from_keypoints`); 'refined' also fits the run's hand model to the landmarks
(`mano.fit` with keypoints_2d). All run the same detector and sampler (5 hypotheses, aligned mean).

Real photos (--images: a folder, or `opencv-doc` for the photos of real hands that Debian's
opencv-doc package ships, `OPENCV_DOC_PHOTOS`): per detected hand, the median distance of its projected
joints to the detector's landmarks as a fraction of the hand box's longer side, the IoU of the projected
mesh's bounding box with the hand box, and the PA-MPJPE against the detector's own 3D landmarks.
Medians over hands. Goals (issue 31): joint error ≤ 0.08 of the box side, IoU ≥ 0.5.

Synthetic frames (--frames of them, 1-2 hands of the procedural hand each, backs to the camera, random
place, size, roll and pose, `data.synthetic_frames`, focal length known): the same two figures, and
against the renderer's truth the wrist's 3D error, the placed/true depth ratio, the camera-frame MPJPE
and the PA-MPJPE. Medians over the detected hands matched to a true one (box IoU > 0.3).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from absl import flags
import numpy as np

from diffhand_jax import command_line, metrics
from diffhand_jax.benchmarks import common
from diffhand_jax.data import synthetic_frames
from diffhand_jax.geometry import render
from diffhand_jax.inference import detection, io, loading, pipeline, sampling

OPENCV_DOC = '/usr/share/doc/opencv-doc'
# Photos of real hands in Debian's opencv-doc (the duplicates it ships under other names left out).
OPENCV_DOC_PHOTOS = (
    'opencv4/html/handSrc.jpg',
    'opencv4/html/handDst.jpg',
    'opencv4/html/Hull_Original_Image.jpg',
    'opencv4/html/Back_Projection1_Source_Image.jpg',
    'opencv4/html/Back_Projection_Theory0.jpg',
    'opencv4/html/Back_Projection_Theory2.jpg',
    'opencv4/html/Histogram_Comparison_Source_2.jpg',
    'opencv4/html/frame.jpg',
    'opencv4/html/fileListImage.jpg',
    'opencv4/html/asymetricalPattern.jpg',
    'opencv4/html/screen_charuco.jpg',
    'opencv4/html/grabcut_rect.jpg',
    'examples/data/messi5.jpg',
)
SETTINGS = {
    'network': dict(placement='network', refine='none'),
    'landmarks': dict(placement='landmarks', refine='none'),
    'refined': dict(placement='landmarks', refine='landmarks'),
}


def photo_paths(images: str) -> list[str]:
  """The photos --images names: a folder's images, or the opencv-doc photos that are installed."""
  if images == 'opencv-doc':
    paths = [os.path.join(OPENCV_DOC, p) for p in OPENCV_DOC_PHOTOS]
    found = [p for p in paths if os.path.isfile(p)]
    if not found:  # measure the synthetic frames alone rather than fail
      print(f'no opencv-doc photos under {OPENCV_DOC} (apt-get install opencv-doc): synthetic only')
    return found
  return [os.path.join(images, name) for name in io.list_images(images)]


def hand_figures(hand: pipeline.Hand, K: np.ndarray) -> dict[str, float]:
  """A hand's fit to the detector: joint error / box side (median over joints), mesh-box IoU, PA-MPJPE
  against the 3D landmarks (mm)."""
  box = np.asarray(hand.crop.box, np.float64)
  side = float(np.max(box[2:] - box[:2]))
  uv = render.project(hand.vertices_camera, K)
  figures = {'iou': float(detection.box_iou(np.concatenate([uv.min(0), uv.max(0)]), box))}
  if hand.crop.keypoints_2d is not None:
    joints = render.project(hand.joints_camera, K)
    distance = np.linalg.norm(joints - hand.crop.keypoints_2d, axis=-1)
    figures['joint_error'] = float(np.median(distance)) / side
  if hand.landmarks_3d_pa_mpjpe_mm is not None:
    figures['pa_to_landmarks_3d_mm'] = hand.landmarks_3d_pa_mpjpe_mm
  return figures


def truth_figures(hand: pipeline.Hand, truth: dict[str, Any]) -> dict[str, float]:
  """A hand against the renderer's truth: wrist error (m), depth ratio, MPJPE and PA-MPJPE (mm)."""
  true_joints = np.asarray(truth['joints'], np.float64)
  return {
      'root_error_m': float(np.linalg.norm(hand.joints_camera[0] - true_joints[0])),
      'depth_ratio': float(hand.joints_camera[0, 2] / true_joints[0, 2]),
      'mpjpe_mm': float(np.linalg.norm(hand.joints_camera - true_joints, axis=-1).mean() * 1e3),
      'pa_mpjpe_mm': float(metrics.pa_mpjpe(hand.joints_camera[None], true_joints[None])[0]),
  }


def synthetic_photos(count: int, seed: int) -> list[tuple[pipeline.Photo, list[dict[str, Any]]]]:
  """`count` frames of 1-2 hands with their truth, as Photos with the renderer's focal length."""
  rng = np.random.default_rng(seed)
  frames = []
  for number in range(count):
    hands = [
        synthetic_frames.FrameHand(
            side=str(rng.choice(['right', 'left'])),
            centre=(0.25 + 0.5 * k + rng.uniform(-0.1, 0.1), rng.uniform(0.35, 0.65)),
            height=rng.uniform(0.3, 0.5),
            pose=str(rng.choice(['flat', 'relaxed', 'random'])),
            roll_deg=rng.uniform(-30, 30),
            back=True,
            skin=rng.uniform(0, 4),
        )
        for k in range(int(rng.integers(1, 3)))
    ]
    frame = synthetic_frames.render_frame(
        hands, (480, 640), seed=seed + number, background='gradient'
    )
    photo = pipeline.Photo(
        frame['image'], name=f'frame{number}', focal=float(frame['K'][0, 0]), focal_source='known'
    )
    frames.append((photo, frame['hands']))
  return frames


def _matched(hand: pipeline.Hand, truths: list[dict[str, Any]]) -> dict[str, Any] | None:
  ious = [float(detection.box_iou(hand.crop.box, truth['box'])) for truth in truths]
  best = int(np.argmax(ious)) if ious else -1
  return truths[best] if best >= 0 and ious[best] > 0.3 else None


def measure(
    samplers: sampling.SamplerCache,
    setting: str,
    photos: list[pipeline.Photo],
    frames: list[tuple[pipeline.Photo, list[dict[str, Any]]]],
) -> dict[str, Any]:
  """The medians of `hand_figures` on the photos and of both figures on the frames, for one setting."""
  options = pipeline.Options(method='aligned_mean', **SETTINGS[setting])
  start = time.perf_counter()
  real = [
      hand_figures(hand, result.K)
      for result in pipeline.reconstruct_photos(samplers, photos, options)
      for hand in result.hands
  ]
  results = pipeline.reconstruct_photos(samplers, [photo for photo, _ in frames], options)
  synthetic = []
  for result, (_, truths) in zip(results, frames):
    for hand in result.hands:
      truth = _matched(hand, truths)
      if truth is not None:
        synthetic.append({**hand_figures(hand, result.K), **truth_figures(hand, truth)})
  median = lambda rows, key: (
      float(statistics.median([r[key] for r in rows if key in r]))
      if any(key in r for r in rows)
      else float('nan')
  )
  return {
      'setting': setting,
      'real_hands': len(real),
      'real': {key: median(real, key) for key in ('joint_error', 'iou', 'pa_to_landmarks_3d_mm')},
      'synthetic_hands': len(synthetic),
      'synthetic_true_hands': sum(len(truths) for _, truths in frames),
      'synthetic': {
          key: median(synthetic, key)
          for key in (
              'joint_error',
              'iou',
              'root_error_m',
              'depth_ratio',
              'mpjpe_mm',
              'pa_mpjpe_mm',
          )
      },
      'seconds': time.perf_counter() - start,
  }


FLAGS = flags.FlagValues()
flags.DEFINE_string('workdir', 'runs/synthetic', 'a trained run (the CPU demo)', flag_values=FLAGS)
flags.DEFINE_string(
    'images',
    'opencv-doc',
    "a folder of real photos, 'opencv-doc', or '' for none",
    flag_values=FLAGS,
)
flags.DEFINE_integer('frames', 24, 'synthetic frames with known truth', flag_values=FLAGS)
flags.DEFINE_string(
    'settings', 'network,landmarks,refined', f'of {", ".join(SETTINGS)}', flag_values=FLAGS
)
flags.DEFINE_integer('seed', 0, 'seed of the synthetic frames', flag_values=FLAGS)
flags.DEFINE_string('output', 'bench_results/placement.json', 'the JSON report', flag_values=FLAGS)


def main(argv: list[str]) -> int:
  prog = 'python -m diffhand_jax.bench placement'
  try:
    command_line.parse(FLAGS, argv, prog=prog, doc=__doc__)
    settings = [s.strip() for s in FLAGS.settings.split(',') if s.strip()]
    if not settings or any(s not in SETTINGS for s in settings) or FLAGS.frames < 0:
      raise command_line.usage_error(
          prog, f'--settings must name some of {", ".join(SETTINGS)}; --frames >= 0'
      )
  except command_line.Exit as done:
    return done.code
  if common.trained_workdir_missing('placement', FLAGS.workdir):
    return 2
  try:
    paths = photo_paths(FLAGS.images) if FLAGS.images else []
    photos = [pipeline.Photo(io.read_image(path), name=os.path.basename(path)) for path in paths]
  except io.InputError as error:
    print(f'{prog}: {error}')
    return 2
  samplers = sampling.SamplerCache(loading.load_trained(FLAGS.workdir))
  frames = synthetic_photos(FLAGS.frames, FLAGS.seed)
  results = [measure(samplers, setting, photos, frames) for setting in settings]
  rows = [
      [
          r['setting'],
          r['real_hands'],
          r['real']['joint_error'],
          r['real']['iou'],
          r['real']['pa_to_landmarks_3d_mm'],
          f"{r['synthetic_hands']}/{r['synthetic_true_hands']}",
          r['synthetic']['joint_error'],
          r['synthetic']['iou'],
          r['synthetic']['root_error_m'],
          r['synthetic']['depth_ratio'],
          r['synthetic']['mpjpe_mm'],
          r['synthetic']['pa_mpjpe_mm'],
      ]
      for r in results
  ]
  header = [
      'setting',
      'real hands',
      'real joint err / box',
      'real IoU',
      'real PA vs MP 3D mm',
      'synth hands found',
      'synth joint err / box',
      'synth IoU',
      'synth root err m',
      'synth depth placed/true',
      'synth MPJPE mm',
      'synth PA-MPJPE mm',
  ]
  common.report(
      'placement',
      FLAGS.output,
      f'hands placed in whole photos ({len(photos)} real photos, {FLAGS.frames} synthetic frames)',
      header,
      rows,
      results,
      workdir=os.path.abspath(FLAGS.workdir),
      photos=[os.path.basename(p) for p in paths],
  )
  return 0


if __name__ == '__main__':
  import sys

  sys.exit(main(sys.argv[1:]))
