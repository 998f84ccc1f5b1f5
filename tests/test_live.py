"""The live camera path (inference/live.py): tracking as MediaPipe does with a scripted detector, one
padded sampler call per frame, the drop policy on a fake clock, the tracking ROI, the cheap drawing
against the z-buffered one, and `bench live --smoke`. The browser test of the app's live tab is in
tests/test_app.py (slow)."""

import math

import numpy as np
import pytest

from diffhand_jax.inference import detection, live, loading, sampling, video

SIZE = 96  # the fake frames' side


@pytest.fixture(scope='module')
def samplers():
  """The bench's smoke network (`tiny`, 32 px, 2 DDIM steps) without params: `_run` replaces its
  sampler, so nothing is initialised or compiled here."""
  from diffhand_jax.benchmarks import live as live_bench
  from diffhand_jax.runs import state

  config = live_bench.smoke_config()
  network = state.build_network(config)
  return sampling.SamplerCache(
      loading.TrainedRun(
          workdir='',
          config=config,
          model=network.model,
          params=None,
          topology=network.topology,
          schedule=network.schedule,
          step=0,
      )
  )


def _hand(box, side='right', score=0.9):
  box = np.asarray(box, np.float64)
  # Landmarks spread over the box: the wrist at the bottom centre, the rest above it.
  keypoints = np.stack(
      [np.linspace(box[0] + 2, box[2] - 2, 21), np.linspace(box[3] - 2, box[1] + 2, 21)], -1
  )
  keypoints[0] = [(box[0] + box[2]) / 2, box[3] - 2]
  return detection.DetectedHand(box=box, side=side, score=score, keypoints=keypoints)


class BoxDetector:
  """`detect` answers from a script: frame index -> the hands in view [(side, box)]."""

  name = 'scripted'

  def __init__(self, script):
    self.script, self.frame, self.detect_frames = script, 0, []

  def visible(self):
    return [_hand(box, side) for side, box in self.script.get(self.frame, [])]

  def detect(self, image):
    assert image.shape == (SIZE, SIZE, 3)
    self.detect_frames.append(self.frame)
    return self.visible()


class ScriptedDetector(BoxDetector):
  """With `track`, as MediaPipeHands: a hand is found again when one in view overlaps the box of the
  previous landmarks."""

  def track(self, image, keypoints):
    previous = detection.landmark_box(keypoints, 0.0)
    for hand in self.visible():
      if detection.box_iou(previous, hand.box) > 0.3:
        return hand
    return None


def _run(samplers, detector, frames, monkeypatch, **options):
  """Processes `frames` grey frames; returns [(LiveFrame, the frame's sampler calls [(rows, warm)])].
  The sampler is replaced by one that records its calls and returns the hand model's template: the
  tracking is under test here, not the network (bench live's smoke test runs the compiled one)."""
  calls = []
  template = np.asarray(samplers.run.topology.template) / float(
      samplers.run.config.model.vertex_scale
  )

  def fake(self, images, guess, noise, key):
    warm = guess is not None
    calls.append((len(images), warm))
    rows = len(images)
    assert noise.shape == (1, rows, template.shape[0], 3)
    vertices = np.broadcast_to(template, (rows,) + template.shape)
    return {
        'vertices': vertices,
        'hypotheses': vertices[:, None],
        'camera': np.tile([0.8, 0.0, 0.0], (rows, 1)),
        'warm': warm,
        'passes': self.passes(warm),
    }

  monkeypatch.setattr(video.WarmStartSampler, '__call__', fake)
  session = live.LiveSession(
      samplers, detector, live.LiveOptions(warm_strength=0.5, draw_size=0, **options)
  )
  results = []
  for index in range(frames):
    detector.frame = index
    calls.clear()
    result = session.process(np.full((SIZE, SIZE, 3), 90, np.uint8))
    results.append((result, list(calls)))
  return results


def test_hands_are_tracked_from_their_landmarks_and_a_returning_hand_is_a_new_track(
    samplers, monkeypatch
):
  a, b = [10, 20, 40, 60], [55, 20, 85, 60]
  script = {0: [('right', a)], 1: [('right', a)], 2: [('right', a), ('left', b)]}
  script.update({3: [('right', a), ('left', b)], 4: [('left', b)], 5: [], 6: [('right', a)]})
  detector = ScriptedDetector(script)
  results = _run(samplers, detector, 7, monkeypatch, max_hands=2, redetect_every=2)
  # The palm detector: frame 0 (nothing tracked), 2 (one hand of two, 2 frames on), 4 (right lost),
  # 5 and 6 (nothing tracked); never in frames 1 and 3.
  assert detector.detect_frames == [0, 2, 4, 5, 6]
  ids = [[(h.track_id, h.side) for h in r.hands] for r, _ in results]
  assert ids == [
      [(0, 'right')],
      [(0, 'right')],
      [(0, 'right'), (1, 'left')],
      [(0, 'right'), (1, 'left')],
      [(1, 'left')],
      [],
      [(2, 'right')],  # the right hand again: a new track, from noise
  ]
  # One sampler call per frame with hands, padded to 1 or 2 rows; warm only when every hand has a
  # mesh from the frame before (a new hand makes the frame's call cold).
  assert [c for _, c in results] == [
      [(1, False)],
      [(1, True)],
      [(2, False)],
      [(2, True)],
      [(1, True)],
      [],
      [(1, False)],
  ]
  passes = [[h.passes for h in r.hands] for r, _ in results]
  assert passes == [[2], [1], [2, 2], [1, 1], [1], [], [2]]  # S = 2, k = int(2 · 0.5) = 1
  hand = results[3][0].hands[1]
  assert hand.placement == 'landmarks' and hand.vertices_camera.shape == (778, 3)
  assert results[3][0].overlay.shape == (SIZE, SIZE, 3)


def test_a_detector_without_track_runs_every_frame_and_joins_boxes_by_overlap(
    samplers, monkeypatch
):
  detector = BoxDetector({i: [('right', [10 + i, 20, 40 + i, 60])] for i in range(3)})
  results = _run(samplers, detector, 3, monkeypatch)
  assert detector.detect_frames == [0, 1, 2]
  assert [[h.track_id for h in r.hands] for r, _ in results] == [[0], [0], [0]]
  assert [c for _, c in results] == [[(1, False)], [(1, True)], [(1, True)]]


def test_frames_that_arrive_while_one_is_processed_are_dropped():
  clock = [0.0]

  class Session:
    """Takes 50 ms a frame on the fake clock; offers a frame to the stream while busy."""

    def __init__(self):
      self.inner = []

    def process(self, frame):
      self.inner.append(stream.offer(frame))  # a frame arriving now: dropped (busy)
      clock[0] += 0.05
      return live.LiveFrame(frame, [], np.eye(3), False, {})

  stream = live.LiveStream(Session(), clock=lambda: clock[0])
  processed = []
  for index in range(10):  # 30 frames/s: arrivals every 33.3 ms
    clock[0] = max(clock[0], index / 30)
    if stream.offer(np.zeros((4, 4, 3)), arrival=index / 30) is not None:
      processed.append(index)
  # Frame 0 ends at 50 ms, so frame 1 (33 ms) is dropped and frame 2 (67 ms) taken, and so on.
  assert processed == [0, 2, 4, 6, 8]
  assert stream.processed == 5 and stream.dropped == 5 + 5  # the 5 offered from inside process
  assert stream.session.inner == [None] * 5


def test_the_tracking_roi_turns_and_moves_with_the_hand():
  # An upright hand: wrist at the bottom, fingers up: no rotation; the ROI holds every landmark.
  rng = np.random.default_rng(0)
  keypoints = np.column_stack([rng.uniform(-20, 20, 21), rng.uniform(-60, 0, 21)])
  keypoints[0] = [0.0, 10.0]
  keypoints[[5, 9, 13]] = [[-10, -30], [0, -32], [10, -30]]
  centre, side, angle = detection.landmarks_roi(keypoints)
  assert abs(angle) < 0.05
  assert np.all(np.abs(keypoints - centre) <= side / 2)
  # Turned by 40° about a point and moved: the ROI turns and moves with it, its side unchanged.
  turn = math.radians(40)
  rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
  pivot, shift = np.array([5.0, -7.0]), np.array([100.0, 50.0])
  moved = (keypoints - pivot) @ rotation.T + pivot + shift
  centre2, side2, angle2 = detection.landmarks_roi(moved)
  np.testing.assert_allclose(centre2, rotation @ (centre - pivot) + pivot + shift, atol=1e-9)
  assert side2 == pytest.approx(side)
  assert angle2 == pytest.approx(angle + turn)


def test_the_cheap_drawing_covers_what_the_z_buffered_one_does():
  from diffhand_jax.data import synthetic_frames
  from diffhand_jax.geometry import render

  frame = synthetic_frames.render_frame(
      [synthetic_frames.FrameHand('right', (0.5, 0.5), 0.6, 'relaxed')], (120, 160), supersample=1
  )
  truth = frame['hands'][0]
  from diffhand_jax.data import synthetic_scene

  faces = np.asarray(synthetic_scene.load_hand_kit().faces)
  image = np.full((120, 160, 3), 128, np.uint8)
  cheap = render.overlay_flat(image, truth['vertices'], faces, frame['K'])
  exact = render.overlay(image, truth['vertices'], faces, frame['K'], alpha=0.6)
  cheap_mask, exact_mask = np.any(cheap != image, -1), np.any(exact != image, -1)
  iou = (cheap_mask & exact_mask).sum() / (cheap_mask | exact_mask).sum()
  assert exact_mask.sum() > 500 and iou > 0.9, iou
  # Lit from the camera and blended at the same opacity: similar colours where both draw.
  both = cheap_mask & exact_mask
  assert np.abs(cheap[both].astype(int) - exact[both].astype(int)).mean() < 25


def test_bench_live_smoke_reports_every_stage(tmp_path, capsys):
  import json

  from diffhand_jax.benchmarks import live as live_bench

  output = tmp_path / 'live.json'
  assert live_bench.main(['--smoke', f'--output={output}']) == 0
  report = json.loads(output.read_text())
  result = report['results']
  assert result['processed'] + result['dropped'] == result['frames'] == live_bench.SMOKE_FRAMES
  assert result['processed'] >= 1 and set(result['stages_ms']) == set(live.STAGES)
  assert result['latency_ms']['p50'] <= result['latency_ms']['p95']
  assert 'frame to mesh' in report['table'] and 'smoke' in capsys.readouterr().out
