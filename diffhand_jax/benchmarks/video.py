"""Warm-start sampling on video against independent per-frame sampling, on the synthetic test clips.

  python -m diffhand_jax.bench video [--workdir=runs/synthetic] [--strengths=0.2,0.3,0.5]
      [--fresh_noise=0.3] [--steps=10] [--num_hypotheses=1] [--method=mean] [--max_clips=N]
      [--clips=sequences] [--reset=0.15] [--seed=0] [--output=bench_results/video.json]
      [--config.key=value ...]

The clips are the test split of the synthetic `sequences` config (10 clips of 48 frames, built on first
use), reconstructed frame by frame as a live video would be: one frame at a time, each clip a new track.
Rows:
  independent        every frame from fresh noise: S decoder passes (what per-image predict does).
  independent, same noise   every frame from noise, one noise per clip: the share of the steadiness
                     that comes from reusing the noise alone.
  warm s             the first frame of a clip from noise, every later one from the previous frame's
                     mesh (inference/video.py, diffusion.ddim_sample_from) with strength s: k = int(S·s)
                     passes; one noise per clip.
  warm s, fresh noise  the same with fresh noise every frame (--fresh_noise).
  ground truth       the clips' own motion (its jitter is the true acceleration).
Columns (root-relative vertices, mm): PA-MPVPE and MPVPE over all frames; the acceleration error (the
mean norm of the second difference of predicted minus true vertices, mm/frame²) and jitter (the mean
norm of the predicted second difference) over every interior frame; decoder passes per frame; frames/s
of the model alone (crop in, mesh out, one frame at a time, after compilation).
"""

from __future__ import annotations

import os
import sys
import time

from absl import flags
import jax
import numpy as np

from diffhand_jax import command_line, metrics
from diffhand_jax.benchmarks import common
from diffhand_jax.data import input_pipeline, sequences
from diffhand_jax.geometry import conventions
from diffhand_jax.inference import loading, overrides, video

FLAGS = flags.FlagValues()
flags.DEFINE_string(
    'workdir',
    'runs/synthetic',
    "a trained workdir (default: the CPU demo's runs/synthetic)",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    'strengths',
    '0.2,0.3,0.5',
    'warm-start strengths, comma-separated, in (0, 1)',
    flag_values=FLAGS,
)
flags.DEFINE_string(
    'fresh_noise',
    '0.3',
    'strengths also run with fresh noise every frame (comma-separated; empty for none)',
    flag_values=FLAGS,
)
flags.DEFINE_integer('steps', None, "DDIM steps S (default: the config's)", flag_values=FLAGS)
flags.DEFINE_integer('num_hypotheses', 1, 'hypotheses K per frame', flag_values=FLAGS)
flags.DEFINE_string(
    'method',
    'mean',
    'how K hypotheses become one mesh (mean, medoid, aligned_mean)',
    flag_values=FLAGS,
)
flags.DEFINE_integer('max_clips', None, 'use the first N test clips', flag_values=FLAGS)
flags.DEFINE_string(
    'clips', 'sequences', 'the synthetic_hands config that holds the clips', flag_values=FLAGS
)
flags.DEFINE_float(
    'reset',
    0.15,
    'start from noise when the crop changes by more than this (mean |difference| / 255)',
    flag_values=FLAGS,
)
flags.DEFINE_integer('seed', 0, "the sampler's random seed", flag_values=FLAGS)
flags.DEFINE_string('output', 'bench_results/video.json', 'the JSON report', flag_values=FLAGS)


def run_clips(sampler, clips, *, vertex_scale, image_size, reuse_noise, reset, seed) -> dict:
  """Every clip frame by frame through `video.step_track`; returns per-frame predictions and costs."""
  predictions, passes, seconds = [], [], 0.0
  base_key = jax.random.PRNGKey(seed)
  for clip_index, clip in enumerate(clips):
    frames, _ = input_pipeline.resize_frames(clip['image'], clip['K'], image_size)
    track = video.Track(clip_index, None)
    vertices = []
    for index, frame in enumerate(frames):
      key = jax.random.fold_in(jax.random.fold_in(base_key, clip_index), index)
      start = time.perf_counter()
      out = video.step_track(
          sampler, track, frame, key, reuse_noise=reuse_noise, reset_threshold=reset
      )
      seconds += time.perf_counter() - start
      vertices.append(out['vertices'][0] * vertex_scale)
      passes.append(out['passes'])
    predictions.append(np.stack(vertices))
  return {'vertices': predictions, 'passes': np.asarray(passes), 'seconds': seconds}


def score(predictions, truths, regressor) -> dict[str, float]:
  """PA-MPVPE, MPVPE (mm) over all frames; acceleration error and jitter (mm/frame²) over every
  interior frame, on root-relative vertices."""

  def root_relative(vertices):
    return vertices - conventions.regress_joints(vertices, regressor)[:, :1]

  pred_all = np.concatenate(predictions)
  gt_vertices = np.concatenate([t['vertices'] for t in truths])
  gt_joints = np.concatenate([t['joints'] for t in truths])
  scores = metrics.evaluate(
      conventions.regress_joints(pred_all, regressor), gt_joints, pred_all, gt_vertices
  )
  accel = np.concatenate(
      [
          metrics.acceleration_error(root_relative(p), t['vertices'] - t['joints'][:, :1])
          for p, t in zip(predictions, truths)
      ]
  )
  shake = np.concatenate([metrics.jitter(root_relative(p)) for p in predictions])
  return {
      'pa_mpvpe': scores['pa_mpvpe'],
      'mpvpe': scores['mpvpe'],
      'accel_error': float(accel.mean()),
      'jitter': float(shake.mean()),
  }


def main(argv: list[str]) -> int:
  try:
    command_line.parse(
        FLAGS,
        argv,
        prog='python -m diffhand_jax.bench video',
        doc=__doc__,
        config=overrides.override_fields,
        config_help=overrides.HELP,
    )
  except command_line.Exit as done:
    return done.code
  if common.trained_workdir_missing('video', FLAGS.workdir):
    return 0
  try:
    strengths = [float(s) for s in FLAGS.strengths.split(',') if s.strip()]
    fresh = [float(s) for s in FLAGS.fresh_noise.split(',') if s.strip()]
  except ValueError:
    strengths = fresh = [-1.0]
  if not all(0.0 < s < 1.0 for s in strengths + fresh):
    print(
        f'--strengths and --fresh_noise must be numbers in (0, 1), got {FLAGS.strengths!r} and '
        f'{FLAGS.fresh_noise!r}',
        file=sys.stderr,
    )
    return 2
  run = loading.load_trained(FLAGS.workdir, overrides=FLAGS.config)
  config = run.config
  vertex_scale = float(config.model.vertex_scale)
  image_size = int(config.model.img_size)
  steps = int(FLAGS.steps or config.model.sampling_steps)
  regressor = np.asarray(run.topology.joint_regressor)
  clips = sequences.load_clips(
      config.dataset, 'test', config_name=FLAGS.clips, max_clips=FLAGS.max_clips
  )
  truths = []
  for clip in clips:
    prepared = input_pipeline.prepare_batch(clip, vertex_scale=vertex_scale, image_size=image_size)
    truths.append(
        {
            'vertices': prepared['vertices'].astype(np.float64) * vertex_scale,
            'joints': prepared['joints'].astype(np.float64) * vertex_scale,
        }
    )
  num_frames = sum(len(t['vertices']) for t in truths)
  print(f'video: {len(clips)} clips, {num_frames} frames, S={steps}, K={FLAGS.num_hypotheses}')

  setups = [('independent', 1.0, False), ('independent, same noise', 1.0, True)]
  setups += [(f'warm {s:g}', s, True) for s in strengths]
  setups += [(f'warm {s:g}, fresh noise', s, False) for s in fresh]
  rows, results = [], []
  for name, strength, reuse_noise in setups:
    sampler = video.WarmStartSampler(
        run.model,
        run.params,
        run.schedule,
        num_steps=steps,
        strength=strength,
        num_hypotheses=FLAGS.num_hypotheses,
        method=FLAGS.method,
        eta=float(config.model.eta),
        batch_stats=run.batch_stats,
    )
    # Compile both paths before timing.
    warmup = video.Track(-1, None)
    for frame in [np.zeros((image_size, image_size, 3), np.uint8)] * 2:
      video.step_track(sampler, warmup, frame, jax.random.PRNGKey(0), reset_threshold=2.0)
    run = run_clips(
        sampler,
        clips,
        vertex_scale=vertex_scale,
        image_size=image_size,
        reuse_noise=reuse_noise,
        reset=FLAGS.reset,
        seed=FLAGS.seed,
    )
    scores = score(run['vertices'], truths, regressor)
    result = {
        'name': name,
        'strength': strength,
        'reuse_noise': reuse_noise,
        'steps_run': sampler.passes(warm=True),
        **scores,
        'decoder_passes_per_frame': float(run['passes'].mean()),
        'frames_per_second': num_frames / run['seconds'],
    }
    results.append(result)
    rows.append(
        [
            name,
            result['steps_run'],
            result['pa_mpvpe'],
            result['mpvpe'],
            result['accel_error'],
            result['jitter'],
            result['decoder_passes_per_frame'],
            result['frames_per_second'],
        ]
    )
    print(f'  {name}: {result}', flush=True)
  truth_jitter = float(
      np.concatenate([metrics.jitter(t['vertices'] - t['joints'][:, :1]) for t in truths]).mean()
  )
  rows.append(['ground truth', '', '', '', 0.0, truth_jitter, '', ''])

  baseline = results[0]
  goal = []
  for r in results[2:]:
    met = (
        r['accel_error'] <= 0.5 * baseline['accel_error']
        and r['pa_mpvpe'] <= baseline['pa_mpvpe'] + 0.5
        and r['decoder_passes_per_frame'] <= 0.5 * baseline['decoder_passes_per_frame']
    )
    goal.append(
        {
            'name': r['name'],
            'accel_ratio': r['accel_error'] / baseline['accel_error'],
            'pa_mpvpe_change_mm': r['pa_mpvpe'] - baseline['pa_mpvpe'],
            'passes_ratio': r['decoder_passes_per_frame'] / baseline['decoder_passes_per_frame'],
            'met': bool(met),
        }
    )
  header = [
      'sampling',
      'steps run',
      'PA-MPVPE mm',
      'MPVPE mm',
      'accel error mm/frame²',
      'jitter mm/frame²',
      'decoder passes/frame',
      'frames/s',
  ]
  common.report(
      'video',
      FLAGS.output,
      f'warm-start vs independent sampling, {len(clips)} synthetic clips ({num_frames} frames), '
      f'S={steps}, K={FLAGS.num_hypotheses}, {jax.default_backend()}',
      header,
      rows,
      results,
      goal=goal,
      workdir=os.path.abspath(FLAGS.workdir),
      truth_jitter=truth_jitter,
  )
  for g in goal:
    print(
        f'{g["name"]}: acceleration error {g["accel_ratio"]:.2f}x independent, PA-MPVPE '
        f'{g["pa_mpvpe_change_mm"]:+.2f} mm, decoder passes {g["passes_ratio"]:.2f}x: goal '
        f'{"met" if g["met"] else "not met"}'
    )
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
