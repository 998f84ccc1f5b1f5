"""Video: the warm-start sampler against the DDIM steps it should run, tracking by box overlap, and
`predict --video` end to end on an MP4 encoded from a rendered synthetic clip."""

import builtins
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffhand_jax import diffusion
from diffhand_jax.benchmarks import sampler as sampler_bench
from diffhand_jax.data import synthetic_scene
from diffhand_jax.inference import io, video

NUM_FRAMES = 10


@pytest.fixture(scope='module')
def tiny_model():
  """The `tiny` preset with random params, two images (B=2) and the schedule."""
  model, variables, images, _ = sampler_bench.build('tiny', 2)
  return model, variables['params'], images, diffusion.cosine_schedule(1000)


@pytest.fixture(scope='module')
def workdir():
  from _inference_workdir import tiny_workdir

  return tiny_workdir()[0]


@pytest.fixture(scope='module')
def clip():
  """A rendered clip of the sequences recipe: frames uint8 (F, 64, 64, 3) and the first frame's box."""
  config = synthetic_scene.SceneConfig(image_size=64, clip_length=NUM_FRAMES)
  kit = synthetic_scene.load_hand_kit()
  examples = [
      synthetic_scene.generate_clip_frame(config, 'test', 0, f, kit=kit) for f in range(NUM_FRAMES)
  ]
  return np.stack([e['image'] for e in examples]), examples[0]['bbox']


def _write_mp4(path, frames, fps=24, faststart=False):
  import av  # pylint: disable=g-import-not-at-top

  container = av.open(str(path), 'w', options={'movflags': 'faststart'} if faststart else {})
  stream = container.add_stream('libx264', rate=fps)
  stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], 'yuv420p'
  for frame in frames:
    for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
      container.mux(packet)
  for packet in stream.encode():
    container.mux(packet)
  container.close()


def _decode(path):
  import av  # pylint: disable=g-import-not-at-top

  with av.open(str(path)) as container:
    return np.stack([f.to_ndarray(format='rgb24') for f in container.decode(video=0)])


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------


def test_warm_reconstruct_runs_the_last_k_ddim_steps_from_the_noised_guess(tiny_model):
  """Against the benchmark's hand-written loop (one jitted DDIM step per call, see
  tests/test_bench.py): q_sample the guess to τ_{S−k}, then step along the rest of the grid."""
  model, params, images, schedule = tiny_model
  num_steps, strength = 4, 0.5
  k = diffusion.warm_start_steps(num_steps, strength)
  guess = jax.random.normal(jax.random.PRNGKey(1), (2, model.num_vertices, 3))
  noise = jax.random.normal(jax.random.PRNGKey(2), (2, model.num_vertices, 3))
  fns = sampler_bench.make_samplers(model, schedule, num_steps)
  grid = fns['timesteps'][num_steps - k :]
  x = diffusion.q_sample(schedule, guess, jnp.full((2,), int(grid[0]), jnp.int32), noise)
  cond = fns['encode']({'params': params}, images)  # the benchmark's functions take the variables
  for t_now, t_next in zip(grid[:-1], grid[1:]):
    x = fns['step']({'params': params}, cond, x, np.int32(t_now), np.int32(t_next))
  out = video.warm_reconstruct(
      model,
      params,
      images,
      guess,
      noise[None],
      jax.random.PRNGKey(0),
      num_steps=num_steps,
      strength=strength,
      schedule=schedule,
  )
  assert out['vertices'].shape == (2, 1, model.num_vertices, 3)
  np.testing.assert_allclose(np.asarray(out['vertices'][:, 0]), np.asarray(x), atol=1e-5, rtol=1e-5)


def test_sampler_strength_one_is_reconstruct_from_the_same_noise(tiny_model):
  from diffhand_jax.models import diffhand  # pylint: disable=g-import-not-at-top

  model, params, images, schedule = tiny_model
  sampler = video.WarmStartSampler(model, params, schedule, num_steps=3, strength=1.0)
  noise = sampler.noise(jax.random.PRNGKey(3), 2)
  guess = np.ones((2, model.num_vertices, 3))
  out = sampler(np.asarray(images), guess, noise, jax.random.PRNGKey(4))
  expected = diffhand.reconstruct(
      model, params, images, jax.random.PRNGKey(4), num_steps=3, schedule=schedule, noise=noise
  )
  # The same program, jitted once more: float32 rounding apart.
  np.testing.assert_allclose(
      out['vertices'], np.asarray(expected['vertices'][:, 0]), atol=1e-5, rtol=0
  )
  assert out['warm'] is False and out['passes'] == 3 and sampler.independent


def test_step_track_warm_starts_reuses_noise_and_resets_on_a_large_change(tiny_model):
  model, params, _, schedule = tiny_model
  sampler = video.WarmStartSampler(model, params, schedule, num_steps=4, strength=0.5)
  size = int(tiny_model[2].shape[1])
  rng = np.random.default_rng(0)
  still = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
  nudged = np.clip(still.astype(int) + 3, 0, 255).astype(np.uint8)  # a change of about 1 %
  other = 255 - still  # a cut: a change of about 50 %
  track = video.Track(0, None)
  outs, noises = [], []
  for index, frame in enumerate((still, nudged, other, other)):
    key = jax.random.fold_in(jax.random.PRNGKey(5), index)  # as reconstruct_video: one per frame
    outs.append(video.step_track(sampler, track, frame, key, reset_threshold=0.15))
    noises.append(np.asarray(track.noise))
  assert [o['warm'] for o in outs] == [False, True, False, True]
  assert [o['passes'] for o in outs] == [4, 2, 4, 2]
  np.testing.assert_array_equal(noises[0], noises[1])  # one noise per track ...
  assert not np.array_equal(noises[1], noises[2])  # ... drawn again after a reset
  np.testing.assert_array_equal(track.guess, outs[-1]['vertices'][0])  # the next frame's start
  fresh = video.Track(1, None)
  for index in range(2):
    out = video.step_track(
        sampler,
        fresh,
        still,
        jax.random.fold_in(jax.random.PRNGKey(6), index),
        reuse_noise=False,
        reset_threshold=0.15,
    )
    noises.append(np.asarray(fresh.noise))
  assert out['warm'] and out['passes'] == 2
  assert not np.array_equal(noises[-2], noises[-1])  # fresh noise every frame


# ------------------------------------------------------------------------------------------------
# Tracking
# ------------------------------------------------------------------------------------------------


class _Hand:

  def __init__(self, box, side='right', score=0.9):
    self.box, self.side, self.score = np.asarray(box, float), side, score


def test_box_tracker_joins_detections_by_overlap_and_side():
  tracker = video.BoxTracker(iou_threshold=0.3, max_missed=1)
  first = tracker.update([_Hand([0, 0, 10, 10]), _Hand([50, 50, 60, 60], 'left')])
  assert [t.track_id for t, _ in first] == [0, 1]
  # Both move a little (IoU 0.68 and 0.82); listed in the other order; a third hand appears.
  second = tracker.update(
      [_Hand([52, 51, 62, 61], 'left'), _Hand([2, 0, 12, 10]), _Hand([100, 0, 110, 10])]
  )
  assert sorted((t.track_id, tuple(d.box)) for t, d in second) == [
      (0, (2, 0, 12, 10)),
      (1, (52, 51, 62, 61)),
      (2, (100, 0, 110, 10)),
  ]
  # A box over track 0 but of the other side starts a track of its own.
  third = tracker.update([_Hand([2, 0, 12, 10], 'left')])
  assert [t.track_id for t, _ in third] == [3]
  assert [t.missed for t in tracker.tracks] == [1, 1, 1, 0]
  tracker.tracks[0].guess = np.zeros((3, 3))
  # Track 0 comes back after a missed frame: joined, but its last mesh is dropped (stale).
  fourth = tracker.update([_Hand([2, 1, 12, 11])])
  assert [t.track_id for t, _ in fourth] == [0] and fourth[0][0].guess is None
  assert sorted(t.track_id for t in tracker.ended) == [1, 2]  # missed twice: ended


def test_mesh_box_places_the_mesh_by_the_weak_perspective_camera():
  # u = s·X + tx over the crop [100, 200, 300, 400] (side 200): X from −1 to 1 with s = 0.5, tx = 0.2
  # gives u from −0.3 to 0.7, pixels 100 + (u + 1)/2 · 200 = 170 to 270; Y likewise with ty = −0.1.
  vertices = np.array([[-1.0, -0.5, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 0.3]])
  box = video.mesh_box(vertices, np.array([0.5, 0.2, -0.1]), np.array([100, 200, 300, 400]), 64)
  np.testing.assert_allclose(box, [170.0, 265.0, 270.0, 315.0])
  assert video.mesh_box(vertices, np.array([1e-6, 0, 0]), np.array([0, 0, 64, 64]), 64) is None
  # Followed without a detector, the box moves to the mesh box's centre and keeps its size; a centre
  # outside the box is ignored.
  hand = np.array([100.0, 100.0, 140.0, 180.0])  # 40 x 80, centre (120, 140)
  found = np.array([110.0, 120.0, 150.0, 150.0])  # centre (130, 135)
  np.testing.assert_allclose(video.follow_box(hand, found), [110, 95, 150, 175])
  np.testing.assert_array_equal(video.follow_box(hand, found + 100.0), hand)
  np.testing.assert_array_equal(video.follow_box(hand, None), hand)


# ------------------------------------------------------------------------------------------------
# A whole video
# ------------------------------------------------------------------------------------------------


def test_predict_video_writes_the_overlay_and_one_npz_per_track(workdir, clip, tmp_path, capsys):
  from diffhand_jax import predict  # pylint: disable=g-import-not-at-top
  from diffhand_jax.inference import loading  # pylint: disable=g-import-not-at-top

  frames, first_box = clip
  path = tmp_path / 'clip.mp4'
  _write_mp4(path, frames)
  out = tmp_path / 'out'
  status = predict.main(
      [
          f'--workdir={workdir}',
          f'--video={path}',
          f'--output={out}',
          '--video_box=' + ','.join(f'{v:.1f}' for v in first_box),
          '--warm_strength=0.5',
          '--steps=2',
      ]
  )
  captured = capsys.readouterr()
  assert status == 0, captured.err
  assert 'frames/s' in captured.out
  assert sorted(os.listdir(out)) == ['overlay.mp4', 'track_0.npz']
  overlay = _decode(out / 'overlay.mp4')
  assert overlay.shape == (NUM_FRAMES, 64, 64, 3)
  # The mesh is drawn: the overlay differs from the input where the hand is.
  assert np.mean(np.abs(overlay.astype(int) - _decode(path).astype(int))) > 1.0

  with np.load(out / 'track_0.npz') as npz:
    track = dict(npz)
  np.testing.assert_array_equal(track['frame_index'], np.arange(NUM_FRAMES))
  assert track['vertices'].shape == (NUM_FRAMES, 778, 3) and track['joints'].shape == (
      NUM_FRAMES,
      21,
      3,
  )
  assert track['box'].shape == track['crop_box'].shape == (NUM_FRAMES, 4)
  np.testing.assert_allclose(track['box'][0], first_box, atol=0.051)  # the given box, as typed
  assert track['hand_side'].tolist() == ['right'] * NUM_FRAMES
  # Frame 0 from noise (2 steps), then warm starts of int(2 · 0.5) = 1 step.
  assert track['warm'].tolist() == [False] + [True] * (NUM_FRAMES - 1)
  assert track['decoder_passes'].tolist() == [2] + [1] * (NUM_FRAMES - 1)
  topology = loading.load_trained(workdir).topology
  joints = np.einsum('jn,fnc->fjc', np.asarray(topology.joint_regressor), track['vertices'])
  np.testing.assert_allclose(track['joints'], joints, atol=1e-5)
  assert track['faces'].shape[1] == 3 and float(track['fps']) == pytest.approx(24.0)
  settings = json.loads(str(track['settings']))
  assert settings['warm_strength'] == 0.5 and settings['warm_steps'] == 1

  # A folder of frames, read in name order, with a detector that finds a right hand, a left hand and a
  # doubtful one (below --min_hand_score): two tracks, every frame from noise at strength 1.
  folder = tmp_path / 'frames'
  folder.mkdir()
  from PIL import Image  # pylint: disable=g-import-not-at-top

  for index, frame in enumerate(frames[:4]):
    Image.fromarray(frame).save(folder / f'frame_{index:03d}.png')
  (folder / 'notes.txt').write_text('not a frame')

  class Detector:
    name = 'fake'

    def detect(self, image):
      assert image.shape == (64, 64, 3)
      return [
          _Hand([0, 0, 20, 20], 'left', 0.8),
          _Hand(first_box),
          _Hand([40, 40, 44, 44], 'right', 0.1),
      ]

  result = video.reconstruct_video(
      workdir,
      str(folder),
      str(tmp_path / 'out_folder'),
      dataclasses.replace(video.VIDEO_DEFAULTS, detector=Detector(), steps=2),
      video.VideoOptions(warm_strength=1.0, fps=10.0),
      progress=False,
  )
  assert result['frames'] == 4 and result['decoder_passes_per_frame'] == 2 * 2.0  # two hands
  assert sorted(result['tracks']) == [0, 1]
  with np.load(result['tracks'][0]) as left, np.load(result['tracks'][1]) as right:
    assert (
        left['hand_side'].tolist() == ['left'] * 4 and right['hand_side'].tolist() == ['right'] * 4
    )
    np.testing.assert_allclose(left['score'], 0.8)
    np.testing.assert_array_equal(right['frame_index'], np.arange(4))
    assert right['warm'].tolist() == [False] * 4 and float(right['fps']) == 10.0
    np.testing.assert_allclose(right['box'], np.tile(first_box, (4, 1)), atol=1e-4)
    assert json.loads(str(right['settings']))['detector'] == 'fake'


def test_a_run_opened_once_reconstructs_what_opening_the_workdir_does(workdir, clip, tmp_path):
  """The web app opens the run once (`SamplerCache`) and reuses one warm-start sampler per setting."""
  from diffhand_jax.inference import loading, sampling  # pylint: disable=g-import-not-at-top

  frames, first_box = clip
  path = tmp_path / 'clip.mp4'
  _write_mp4(path, frames[:4])
  options = dict(
      options=dataclasses.replace(video.VIDEO_DEFAULTS, steps=2, num_hypotheses=2),
      video_options=video.VideoOptions(box=first_box, warm_strength=0.5),
      progress=False,
  )
  video.reconstruct_video(workdir, str(path), str(tmp_path / 'own'), **options)
  cache = sampling.SamplerCache(loading.load_trained(workdir))
  for name in ('first', 'second'):
    video.reconstruct_video('unread', str(path), str(tmp_path / name), samplers=cache, **options)

  def track(name):
    with np.load(tmp_path / name / 'track_0.npz') as npz:
      return npz['vertices'], json.loads(str(npz['settings']))

  own, own_settings = track('own')
  for name in ('first', 'second'):
    vertices, settings = track(name)
    np.testing.assert_array_equal(vertices, own)
    assert settings['workdir'] == own_settings['workdir'] == os.path.abspath(workdir)
  same = dict(num_steps=2, strength=0.5, num_hypotheses=2, method='mean', eta=0.0)
  assert video.warm_start_sampler(cache, **same) is video.warm_start_sampler(cache, **same)
  assert video.warm_start_sampler(cache, **same) is not video.warm_start_sampler(
      cache, **dict(same, strength=1.0)
  )
  with pytest.raises(ValueError, match='overrides'):
    video.reconstruct_video(
        workdir,
        str(path),
        str(tmp_path / 'x'),
        samplers=cache,
        overrides={'model': {}},
        **options,
    )
  assert not (tmp_path / 'x').exists()  # refused before anything is written


def test_truncated_video_is_named_and_the_frames_before_are_kept(workdir, clip, tmp_path, capsys):
  from diffhand_jax import predict  # pylint: disable=g-import-not-at-top

  frames, _ = clip
  whole = tmp_path / 'whole.mp4'
  _write_mp4(whole, np.concatenate([frames, frames]), faststart=True)  # the index first, then data
  data = whole.read_bytes()
  cut = tmp_path / 'cut.mp4'
  cut.write_bytes(data[: int(len(data) * 0.75)])
  out = tmp_path / 'out'
  status = predict.main(
      [f'--workdir={workdir}', f'--video={cut}', f'--output={out}', '--steps=2', '--detector=none']
  )
  err = capsys.readouterr().err
  assert status == 1
  assert str(cut) in err and 'truncated' in err
  with np.load(out / 'track_0.npz') as npz:
    done = len(npz['frame_index'])
  assert 0 < done < 2 * NUM_FRAMES
  assert len(_decode(out / 'overlay.mp4')) == done  # playable, and holding the frames done

  # A file cut before its index cannot be opened at all: a one-line error, nothing written.
  _write_mp4(whole, frames)  # the index last
  cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
  status = predict.main([f'--workdir={workdir}', f'--video={cut}', f'--output={tmp_path / "none"}'])
  err = capsys.readouterr().err
  assert status == 2 and f'cannot read video {cut}' in err and len(err.strip().splitlines()) == 1


def test_without_pyav_the_error_says_how_to_install(monkeypatch, tmp_path):
  real_import = builtins.__import__

  def no_av(name, *args, **kwargs):
    if name == 'av':
      raise ImportError('No module named av')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_av)
  with pytest.raises(io.InputError, match=r'pip install -e "\.\[video\]"'):
    video.reconstruct_video('unused', str(tmp_path / 'a.mp4'), str(tmp_path / 'out'))


def test_video_usage_errors_exit_2_with_one_line(tmp_path, capsys):
  from diffhand_jax import predict  # pylint: disable=g-import-not-at-top

  clip = tmp_path / 'clip.mp4'
  _write_mp4(clip, np.zeros((2, 16, 16, 3), np.uint8))
  cases = [
      (['--workdir=w', '--output=o'], 'give one of --images'),
      (['--workdir=w', '--output=o', '--images=i', f'--video={clip}'], 'give one of --images'),
      (['--workdir=w', '--output=o', f'--video={clip}', '--video_box=1,2,3'], '--video_box'),
      (['--workdir=w', '--output=o', f'--video={clip}', '--video_box=5,5,1,9'], '--video_box'),
      (['--workdir=w', '--output=o', f'--video={clip}', '--warm_strength=0'], '--warm_strength'),
      (['--workdir=w', '--output=o', f'--video={tmp_path / "missing.mp4"}'], 'missing.mp4'),
  ]
  for argv, message in cases:
    assert predict.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
