"""The web app (diffhand_jax/app.py, inference/app.py) in a real browser: the app serves a tiny trained run
on a free localhost port, headless Chromium (Debian's chromium and chromium-driver, driven by selenium)
uploads a rendered photo of a known hand, waits for the result and checks the overlay, the GLB (778
vertices, read with trimesh) and the JSON the page serves, then uploads a broken file and reads the
message. Neither the browser nor the server may reach anything but the local server.

The browser test is slow (a tiny run is trained first). DIFFHAND_APP_WORKDIR=DIR serves that run instead
(the README's screenshot: DIFFHAND_APP_WORKDIR=runs/synthetic DIFFHAND_APP_SCREENSHOT=docs/app.png).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from _inference_workdir import tiny_workdir

CHROMIUM = shutil.which('chromium') or '/usr/bin/chromium'
CHROMEDRIVER = shutil.which('chromedriver') or '/usr/bin/chromedriver'

# Runs the app with an audit hook that records every connection and name lookup the server makes.
SERVER = r"""
import sys
LOCAL = ('127.0.0.1', 'localhost', '::1', '0.0.0.0', None, '')
def hook(event, args):
  if event == 'socket.connect' and isinstance(args[1], tuple) and args[1][0] not in LOCAL:
    sys.stderr.write(f'NETWORK connect {args[1]!r}\n')
  elif event == 'socket.getaddrinfo' and args[0] not in LOCAL:
    sys.stderr.write(f'NETWORK lookup {args[0]!r}\n')
sys.addaudithook(hook)
from diffhand_jax import app
sys.exit(app.main(sys.argv[1:]))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, every: float = 0.5):
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    value = predicate()
    if value:
      return value
    time.sleep(every)
  raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')


def _get(url: str) -> bytes:
  with urllib.request.urlopen(url, timeout=30) as response:
    return response.read()


@pytest.fixture(scope='module')
def server(tmp_path_factory):
  pytest.importorskip('gradio')
  pytest.importorskip('trimesh')
  workdir = os.environ.get('DIFFHAND_APP_WORKDIR') or tiny_workdir()[0]
  log_path = tmp_path_factory.mktemp('app') / 'server.log'
  port = _free_port()
  url = f'http://127.0.0.1:{port}'
  with open(log_path, 'w') as log:
    process = subprocess.Popen(
        [sys.executable, '-c', SERVER, f'--workdir={workdir}', f'--port={port}'],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'),
    )

  def up():
    assert process.poll() is None, log_path.read_text()
    try:
      return _get(url + '/')
    except OSError:
      return None

  try:
    _wait_for(up, 180, 'the app to serve its page')
    yield url, process, log_path
  finally:
    process.terminate()
    try:
      process.wait(20)
    except subprocess.TimeoutExpired:
      process.kill()


def _chromium(*extra_arguments: str):
  """Headless Chromium driven by selenium (skips without Debian's chromium and chromium-driver)."""
  if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        'needs Debian chromium and chromium-driver (apt-get install chromium chromium-driver)'
    )
  webdriver = pytest.importorskip('selenium.webdriver')
  from selenium.webdriver.chrome.service import Service

  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for argument in (
      '--headless=new',
      '--no-sandbox',
      '--disable-dev-shm-usage',
      '--disable-gpu',
      '--window-size=1400,1300',
      # Any name other than the local server fails to resolve (and shows in the request log).
      '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',
      *extra_arguments,
  ):
    options.add_argument(argument)
  options.set_capability('goog:loggingPrefs', {'performance': 'ALL', 'browser': 'ALL'})
  driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
  driver.set_page_load_timeout(60)
  return driver


@pytest.fixture(scope='module')
def browser():
  driver = _chromium()
  try:
    yield driver
  finally:
    driver.quit()


def _requested_urls(driver) -> list[str]:
  urls = []
  for entry in driver.get_log('performance'):
    message = json.loads(entry['message'])['message']
    if message['method'] == 'Network.requestWillBeSent':
      urls.append(message['params']['request']['url'])
  return urls


def _decoded(driver, selector: str) -> list:
  """The images matching `selector` that the browser has decoded (not just present)."""
  from selenium.webdriver.common.by import By

  return [
      img
      for img in driver.find_elements(By.CSS_SELECTOR, selector)
      if driver.execute_script('return arguments[0].complete && arguments[0].naturalWidth', img)
  ]


def _status(driver) -> str:
  from selenium.webdriver.common.by import By

  return driver.find_element(By.ID, 'status').text


def _upload(driver, path: str) -> None:
  from selenium.webdriver.common.by import By

  driver.find_element(By.CSS_SELECTOR, '#upload input[type=file]').send_keys(path)
  name = os.path.basename(path)
  _wait_for(
      lambda: driver.find_elements(By.CSS_SELECTOR, f'#upload a[download="{name}"]'),
      60,
      f'{name} to upload',
  )


@pytest.fixture(scope='module')
def photo(tmp_path_factory):
  from PIL import Image

  from diffhand_jax.data import synthetic_frames as sf

  frame = sf.render_frame(
      [sf.FrameHand('right', (0.5, 0.5), 0.55, 'flat', back=True, skin=1.0)], (240, 320), seed=5
  )
  path = tmp_path_factory.mktemp('photo') / 'hand.png'
  Image.fromarray(frame['image']).save(path)
  return str(path)


@pytest.mark.slow
def test_the_page_reconstructs_a_photo_and_reports_a_broken_file(server, browser, photo, tmp_path):
  import trimesh
  from selenium.webdriver.common.by import By

  url, process, log_path = server
  browser.get(url + '/')
  _wait_for(lambda: browser.find_elements(By.ID, 'run'), 60, 'the page to load')
  _upload(browser, photo)
  # Few hypotheses and steps keep the tiny model quick; the colours need at least two hypotheses.
  start = time.monotonic()
  browser.find_element(By.CSS_SELECTOR, '#run').click()
  status = _wait_for(
      lambda: (lambda text: text if ('hand(s) in' in text or 'rror' in text) else None)(
          _status(browser)
      ),
      300,
      'the result',
  )
  seconds = time.monotonic() - start
  print(f'upload to result: {seconds:.1f} s; status: {status}')
  assert 'hand(s) in' in status, status
  assert 'right' in status, status  # the detector's side of the rendered right hand

  # The overlay image shows (decoded by the browser, not just present).
  overlay = _wait_for(lambda: _decoded(browser, '#overlay img'), 30, 'the overlay image')[0]
  assert overlay.get_attribute('src').startswith(url)

  # The files the page serves: the GLB the viewer shows and the downloads.
  links = [a.get_attribute('href') for a in browser.find_elements(By.CSS_SELECTOR, '#downloads a')]
  glbs = [link for link in links if link and link.split('?')[0].endswith('.glb')]
  jsons = [link for link in links if link and link.split('?')[0].endswith('.json')]
  objs = [link for link in links if link and link.split('?')[0].endswith('.obj')]
  assert glbs and jsons and objs and len(glbs) == len(objs), links
  # The GLB the 3D viewer loads (its download link names the file it shows): the first hand's.
  shown = _wait_for(
      lambda: browser.find_elements(
          By.CSS_SELECTOR, '#viewer a[data-testid="model3d-download-link"]'
      ),
      30,
      'the 3D viewer to load the mesh',
  )[0].get_attribute('href')
  assert shown == glbs[0] and browser.find_elements(By.CSS_SELECTOR, '#viewer canvas')
  path = tmp_path / 'hand0.glb'
  path.write_bytes(_get(shown))
  mesh = trimesh.load(str(path), force='mesh', process=False)
  assert mesh.vertices.shape == (778, 3)
  assert mesh.visual.vertex_colors.shape == (778, 4)
  payload = json.loads(_get(jsons[0]))
  hand = payload['hands'][0]
  assert hand['hand_side'] == 'right' and hand['box_source'] == 'detector'
  assert np.asarray(hand['vertices_camera']).shape == (778, 3)
  assert np.asarray(hand['mano']['pose']).shape == (48,)
  # The GLB is the JSON's root-relative mesh in glTF axes (y and z negated), vertex for vertex.
  np.testing.assert_allclose(mesh.vertices, np.asarray(hand['vertices']) * [1, -1, -1], atol=1e-5)

  screenshot = os.environ.get('DIFFHAND_APP_SCREENSHOT') or str(tmp_path / 'app.png')
  time.sleep(2)  # let the 3D viewer draw
  browser.save_screenshot(screenshot)

  # A broken file: a message on the page, and the server keeps serving.
  broken = tmp_path / 'broken.jpg'
  broken.write_bytes(b'this is not a jpeg')
  browser.get(url + '/')
  _wait_for(lambda: browser.find_elements(By.ID, 'run'), 60, 'the page to load again')
  _upload(browser, str(broken))
  browser.find_element(By.CSS_SELECTOR, '#run').click()
  message = _wait_for(
      lambda: (lambda text: text if 'not an image' in text else None)(_status(browser)),
      60,
      'the error message',
  )
  assert 'broken.jpg' in message
  assert process.poll() is None
  assert _get(url + '/')

  # Nothing but the local server was asked for, by the browser or by the server.
  requested = _requested_urls(browser)
  assert requested
  outside = [u for u in requested if not u.startswith((url, 'data:', 'blob:', 'about:', 'chrome'))]
  assert not outside, outside
  server_log = log_path.read_text()
  assert 'NETWORK' not in server_log, [
      line for line in server_log.splitlines() if 'NETWORK' in line
  ]


def _write_y4m(path, frames, fps: int = 30) -> None:
  """uint8 frames (F, H, W, 3) as a YUV4MPEG2 file (4:2:0), Chromium's fake camera's format."""
  import av  # pylint: disable=g-import-not-at-top

  with av.open(str(path), 'w', format='yuv4mpegpipe') as container:
    stream = container.add_stream('rawvideo', rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], 'yuv420p'
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


@pytest.mark.slow
def test_the_live_tab_draws_the_hands_of_a_fake_camera(server, tmp_path):
  """Chromium's fake camera plays a rendered clip of a moving right hand (a YUV4MPEG2 file, looped);
  the live tab streams it: the status names a tracked hand, and the frames the page serves back carry
  the mesh (bluish pixels where the input frame has none)."""
  from PIL import Image
  from selenium.webdriver.common.by import By

  from diffhand_jax.data import synthetic_frames

  pytest.importorskip('av')
  frames = synthetic_frames.render_clip(30, (240, 320), two_hands=False)['frames']
  clip = tmp_path / 'clip.y4m'
  _write_y4m(clip, frames)
  url, process, log_path = server
  driver = _chromium(
      '--use-fake-ui-for-media-stream',
      '--use-fake-device-for-media-stream',
      f'--use-file-for-fake-video-capture={clip}',
  )
  try:
    driver.get(url + '/')
    _wait_for(lambda: driver.find_elements(By.ID, 'run'), 60, 'the page to load')
    tab = [b for b in driver.find_elements(By.CSS_SELECTOR, 'button[role=tab]') if 'Live' in b.text]
    assert tab, [b.text for b in driver.find_elements(By.CSS_SELECTOR, 'button')]
    tab[0].click()
    # Gradio's webcam: 'Click to Access Webcam' (the fake UI grants it), then 'Record' streams.
    for label in ('Click to Access Webcam', 'Record'):
      _wait_for(
          lambda label=label: [
              b
              for b in driver.find_elements(By.CSS_SELECTOR, '#live_camera button')
              if b.is_displayed() and b.text.strip() == label
          ],
          60,
          f'the camera button {label!r}',
      )[0].click()
    status = _wait_for(
        lambda: (lambda t: t if ('track' in t or 'rror' in t) else None)(
            driver.find_element(By.ID, 'live_status').text
        ),
        300,
        'a tracked hand',
    )
    assert 'track' in status and 'right' in status, status
    # A few frames later: the served overlay, decoded by the browser and fetched here.
    time.sleep(3)
    images = _wait_for(lambda: _decoded(driver, '#live_overlay img'), 60, 'the live overlay')
    status = driver.find_element(By.ID, 'live_status').text
    source = images[0].get_attribute('src')
    assert source.startswith(url), source
    path = tmp_path / 'served.jpg'
    path.write_bytes(_get(source))
    served = np.asarray(Image.open(path).convert('RGB'), np.int64)
    assert served.shape == frames.shape[1:], served.shape
    # Its input frame is the clip's nearest one (the camera loops the clip); the mesh is where the
    # overlay is much bluer than that frame.
    inputs = frames.astype(np.int64)
    nearest = inputs[np.argmin(np.abs(inputs - served[None]).mean(axis=(1, 2, 3)))]
    blue = lambda image: image[..., 2] - image[..., 0]
    drawn = (blue(served) - blue(nearest)) > 40
    print(f'status: {status}; mesh pixels {drawn.mean():.2%}')
    assert drawn.mean() > 0.01, drawn.mean()
    assert process.poll() is None
  finally:
    driver.quit()
  assert 'NETWORK' not in log_path.read_text()


# ==================================================================================================
# Without a browser
# ==================================================================================================


def test_glb_keeps_the_vertex_order_and_colours(tmp_path):
  trimesh = pytest.importorskip('trimesh')
  from diffhand_jax.geometry import mesh_io, render
  from diffhand_jax.inference import app

  rng = np.random.default_rng(0)
  vertices = rng.normal(size=(778, 3))
  faces = rng.integers(0, 778, size=(1538, 3))
  std = rng.uniform(0, 0.02, size=778)
  colours = render.uncertainty_colors(std)
  assert colours.shape == (778, 4) and colours.dtype == np.uint8
  # Brighter where the spread is larger (inferno goes from black to yellow).
  assert colours[np.argmax(std), :3].sum() > colours[np.argmin(std), :3].sum()
  path = str(tmp_path / 'hand.glb')
  mesh_io.write_glb(path, app.gltf_vertices(vertices), faces, colours)
  mesh = trimesh.load(path, force='mesh', process=False)
  np.testing.assert_allclose(mesh.vertices, vertices * [1, -1, -1], atol=1e-6)
  np.testing.assert_array_equal(mesh.faces, faces)
  np.testing.assert_array_equal(mesh.visual.vertex_colors, colours)
  written, read = tmp_path / 'hand.obj', None
  mesh_io.write_obj(str(written), vertices, faces)
  read = mesh_io.read_obj(str(written))
  np.testing.assert_allclose(read[0], vertices, atol=1e-6)
  np.testing.assert_array_equal(read[1], faces)


def test_bad_photos_get_a_message(tmp_path, monkeypatch):
  from PIL import Image

  from diffhand_jax.inference import app

  broken = tmp_path / 'broken.jpg'
  broken.write_bytes(b'this is not a jpeg')
  assert 'broken.jpg is not an image' in app.check_photo(str(broken))
  photo = tmp_path / 'photo.png'
  Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(photo)
  assert app.check_photo(str(photo)) is None
  monkeypatch.setattr(app, 'MAX_PIXELS', 1000)
  assert 'too large (40×30' in app.check_photo(str(photo))
  # reconstruct_photo answers with the message before it loads anything (the workdir is not a run).
  result = app.reconstruct_photo(str(tmp_path / 'no_run'), str(broken), str(tmp_path / 'out'))
  assert result.overlay is None and 'not an image' in result.message


def test_boxes_are_drawn_with_side_and_score():
  from diffhand_jax.inference import app

  overlay = np.zeros((100, 200, 3), np.uint8)
  hands = [{'box': [40, 40, 80, 90], 'hand_side': 'right', 'score': 0.9}]
  drawn = app.draw_boxes(overlay, (200, 400), hands)  # the overlay is the photo at half size
  assert drawn.shape == overlay.shape
  assert drawn[20:45, 20].any()  # the box's left edge, at half the photo's x0
  assert not drawn[25:, 60:].any()  # below the label, nothing right of the right edge at x = 40
  # The side picks the colour: blue for a right hand, orange for a left one.
  left = app.draw_boxes(overlay, (200, 400), [dict(hands[0], hand_side='left')])
  assert drawn[30, 20].tolist() == [60, 160, 255] and left[30, 20].tolist() == [255, 120, 40]
  # The label's white text above the box spells the side and the score: other words, other pixels.
  text = lambda image: np.all(image == 255, axis=-1)
  assert text(drawn).any() and not text(drawn)[20:].any()
  for other in (left, app.draw_boxes(overlay, (200, 400), [dict(hands[0], score=0.1)])):
    assert not np.array_equal(text(other), text(drawn))


@pytest.fixture
def restored_environment(monkeypatch):
  """The command sets Gradio's offline variables in os.environ: restore them for the other tests."""
  from diffhand_jax.inference import app

  for key in app._OFFLINE:  # pylint: disable=protected-access
    monkeypatch.delenv(key, raising=False)


def test_the_command_names_the_extra_when_gradio_is_missing(
    monkeypatch, capsys, restored_environment
):
  from diffhand_jax import app

  monkeypatch.setitem(sys.modules, 'gradio', None)  # `import gradio` raises ImportError
  assert app.main(['--workdir=/nonexistent']) == 1
  assert 'pip install -e ".[app]"' in capsys.readouterr().err


def test_the_command_refuses_a_workdir_without_a_run(tmp_path, capsys, restored_environment):
  pytest.importorskip('gradio')
  from diffhand_jax import app

  assert app.main([f'--workdir={tmp_path}']) == 1
  err = capsys.readouterr().err
  assert 'holds no trained run' in err and str(tmp_path) in err


@pytest.mark.slow
def test_a_video_gives_the_overlay_and_one_track_per_hand(tmp_path):
  av = pytest.importorskip('av')
  from diffhand_jax.data import synthetic_scene
  from diffhand_jax.inference import app

  config = synthetic_scene.SceneConfig(image_size=64, clip_length=3)
  kit = synthetic_scene.load_hand_kit()
  frames = [synthetic_scene.generate_clip_frame(config, 'test', 0, f, kit=kit) for f in range(3)]
  path = tmp_path / 'clip.mp4'
  with av.open(str(path), 'w') as container:
    stream = container.add_stream('libx264', rate=24)
    stream.width, stream.height, stream.pix_fmt = 64, 64, 'yuv420p'
    for frame in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame['image'], format='rgb24')))
    container.mux(stream.encode())
  workdir = tiny_workdir()[0]
  message, overlay, tracks = app.reconstruct_clip(
      workdir, str(path), str(tmp_path / 'out'), whole_image=True
  )
  assert message.startswith('3 frames, 1 track(s)'), message
  assert os.path.getsize(overlay) > 0
  assert [os.path.basename(t) for t in tracks] == ['track_0.npz']
  assert np.load(tracks[0])['vertices'].shape == (3, 778, 3)
  broken = tmp_path / 'broken.mp4'
  broken.write_bytes(b'not a video')
  message, overlay, tracks = app.reconstruct_clip(workdir, str(broken), str(tmp_path / 'out2'))
  assert message.startswith('Cannot reconstruct this video') and overlay is None and not tracks


@pytest.mark.slow
def test_photos_without_a_usable_hand_get_a_message(tmp_path):
  from PIL import Image

  from diffhand_jax.inference import app

  workdir = tiny_workdir()[0]
  Image.fromarray(np.full((60, 80, 3), 90, np.uint8)).save(tmp_path / 'empty.png')
  Image.fromarray(np.full((10, 10, 3), 90, np.uint8)).save(tmp_path / 'tiny.png')
  empty = app.reconstruct_photo(workdir, str(tmp_path / 'empty.png'), str(tmp_path / 'a'))
  assert empty.overlay is None and empty.message.startswith('No hand found'), empty.message
  tiny = app.reconstruct_photo(workdir, str(tmp_path / 'tiny.png'), str(tmp_path / 'b'))
  assert tiny.overlay is None and tiny.message.startswith('tiny.png: 10×10 pixels'), tiny.message
  # The whole image as one hand needs no detector; one hypothesis has no spread to colour.
  whole = app.reconstruct_photo(
      workdir,
      str(tmp_path / 'empty.png'),
      str(tmp_path / 'c'),
      whole_image=True,
      num_hypotheses=1,
      fit_mano=False,
      colour_by_uncertainty=True,
  )
  assert len(whole.glbs) == 1 and whole.hands[0]['box_source'] == 'whole image'
  assert 'no spread to colour' in whole.message
  assert 'uncertainty 0.0 mm' in whole.message  # the JSON's `uncertainty`: 0 for one hypothesis


def test_a_photo_is_answered_in_memory_writing_only_what_the_page_serves(tmp_path):
  """A webcam snapshot (an array) and an upload go through the inference core in memory: the output
  folder then holds exactly the served files (JSON, overlay with boxes, one GLB and one OBJ per hand),
  and a run without the hand model files answers with the meshes and a note instead of the fit."""
  import dataclasses

  from diffhand_jax.data import synthetic_frames as sf
  from diffhand_jax.inference import app, loading, sampling

  opened = sampling.SamplerCache(loading.load_trained(tiny_workdir()[0]))
  frame = sf.render_frame(
      [sf.FrameHand('right', (0.5, 0.5), 0.55, 'flat', back=True, skin=1.0)], (120, 160), seed=5
  )['image']
  webcam = np.concatenate([frame, np.full(frame.shape[:2] + (1,), 255, np.uint8)], -1)  # RGBA
  result = app.reconstruct_photo(
      None, webcam, str(tmp_path / 'cam'), whole_image=True, num_hypotheses=2, samplers=opened
  )
  assert result.overlay is not None, result.message
  assert sorted(os.listdir(tmp_path / 'cam')) == [
      'webcam.json',
      'webcam_boxes.png',
      'webcam_hand0.glb',
      'webcam_hand0.obj',
  ]
  served = json.loads((tmp_path / 'cam' / 'webcam.json').read_text())
  assert served['image'] == 'webcam.png' and served['image_size'] == [120, 160]
  assert 'mano' in served['hands'][0]  # the procedural hand model is always there

  config = opened.run.config.copy_and_resolve_references()
  config.dataset.hand_model, config.dataset.mano_dir = 'mano', str(tmp_path / 'no_mano')
  without = sampling.SamplerCache(dataclasses.replace(opened.run, config=config))
  result = app.reconstruct_photo(
      None, webcam, str(tmp_path / 'skip'), whole_image=True, num_hypotheses=2, samplers=without
  )
  assert (
      'MANO parameters and the fit to the landmarks skipped: --fit_mano and --refine'
      in result.message
  )
  assert 'mano' not in json.loads((tmp_path / 'skip' / 'webcam.json').read_text())['hands'][0]


# ----- issue #36: the app cleans up after itself and shows no server paths -------------------------------------


def _handler(tmp_path, workdir):
  pytest.importorskip('gradio')
  from diffhand_jax.inference import app

  scratch = tmp_path / 'scratch'
  scratch.mkdir()
  return app, app.Handler(workdir, str(scratch), 'none'), scratch


def _ask(app, handler, upload):
  return handler(upload, None, app.DETECTOR_CHOICES[1], 1, 1, False, False, False, 0.5)


def test_each_request_keeps_its_files_only_while_they_are_recent_and_close_removes_them(tmp_path):
  from PIL import Image

  app, handler, scratch = _handler(tmp_path, tiny_workdir()[0])
  photo = tmp_path / 'photo.png'
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(photo)
  for _ in range(app.MAX_KEPT_REQUESTS + 3):
    answer = _ask(app, handler, str(photo))
    assert answer[1] is not None, answer[0]  # an overlay
  assert len(os.listdir(scratch)) == app.MAX_KEPT_REQUESTS
  assert all(os.path.exists(path) for path in answer[-1])  # the latest answer's files are there
  handler.close()
  assert not scratch.exists()


def test_error_messages_show_no_server_paths(tmp_path, monkeypatch):
  app, handler, scratch = _handler(tmp_path, str(tmp_path / 'private_run'))
  monkeypatch.setattr(handler, 'samplers', lambda: None)  # nothing here needs the run
  secret = tmp_path / 'secret_upload_folder'
  secret.mkdir()
  video = secret / 'clip.mp4'
  video.write_bytes(b'not a video at all')
  broken = secret / 'broken.png'
  broken.write_bytes(b'\x89PNG\r\n\x1a\n broken')
  messages = [_ask(app, handler, str(video))[0], _ask(app, handler, str(broken))[0]]

  def fails(*args, **kwargs):
    raise OSError(28, 'No space left on device', str(scratch / 'x' / 'out' / 'photo.json'))

  monkeypatch.setattr(app, 'reconstruct_photo', fails)
  messages.append(_ask(app, handler, str(broken))[0])
  for message in messages:
    assert str(tmp_path) not in message and '/tmp' not in message, message
  assert 'clip.mp4' in messages[0] and 'No space left on device' in messages[2], messages


def test_the_app_removes_its_files_when_stopped(tmp_path):
  """SIGTERM (and Ctrl-C) end the server with its scratch folder removed."""
  import signal

  pytest.importorskip('gradio')
  temporary = tmp_path / 'tmp'
  temporary.mkdir()
  port = _free_port()
  log_path = tmp_path / 'server.log'
  with open(log_path, 'w') as log:
    process = subprocess.Popen(
        [
            sys.executable,
            '-m',
            'diffhand_jax.app',
            f'--workdir={tiny_workdir()[0]}',
            f'--port={port}',
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, TMPDIR=str(temporary), TF_CPP_MIN_LOG_LEVEL='2'),
    )
  try:

    def up():
      assert process.poll() is None, log_path.read_text()
      try:
        return _get(f'http://127.0.0.1:{port}/')
      except OSError:
        return None

    _wait_for(up, 180, 'the app to serve its page')
    assert [n for n in os.listdir(temporary) if n.startswith('diffhand_app_')]
    process.send_signal(signal.SIGTERM)
    process.wait(60)
  finally:
    if process.poll() is None:
      process.kill()
  assert not [
      n for n in os.listdir(temporary) if n.startswith('diffhand_app_')
  ], log_path.read_text()
  assert 'Traceback' not in log_path.read_text()
