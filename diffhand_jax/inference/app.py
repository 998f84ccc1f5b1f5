"""The local web app (`python -m diffhand_jax.app`, docs/app.md): drop in a photo or a video, get every
hand in 3D, see where the model is unsure.

It is a Gradio page over the inference core, with no inference code of its own:

  * a photo (an upload or a webcam snapshot) goes to `pipeline.reconstruct_photos` in memory, which
    finds the hands (or takes the whole image as one hand), samples the run, places the hands in the
    photo's camera and optionally fits MANO (`mano.fit`). This module writes only the files the page
    serves: the photo's JSON (as `predict` writes it), each hand's OBJ and GLB (`mesh_io.write_glb`,
    vertex order kept, optionally coloured by `vertex_uncertainty` through `render.uncertainty_colors`),
    and the overlay with each hand's box, side and score;
  * a video goes through `video.reconstruct_video` (overlay.mp4 and one track_<id>.npz per hand);
  * the live tab streams the webcam (Gradio's streaming image input) through `live.LiveStream`, one
    per browser session (a `gr.State`): each frame's hands tracked, sampled warm and drawn, frames that
    come while one is processed dropped (`LiveHandler`).

The run is opened once, by the first request, and kept (`sampling.SamplerCache`): later requests do not
recompile. Bad uploads (not an image, no hand found, an image over `MAX_PIXELS`) become a message on
the page, with no server paths in it (`without_paths`); the server keeps running. The files of the
last `MAX_KEPT_REQUESTS` requests are kept, Gradio's cache is emptied by age (`GRADIO_CACHE`), and
everything is removed when the server stops (docs/app.md, "The files it keeps"). The page never reaches the network: `offline_environment` turns
Gradio's analytics and the Hub's telemetry off before Gradio is imported, the theme uses system fonts
(no Google Fonts stylesheet), server-side rendering (a Node process) is off, and tests/test_app.py
checks every request the browser makes goes to the local server.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import shutil
import signal
import tempfile
import time
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from diffhand_jax.geometry import mesh_io, render
from diffhand_jax.inference import detection, full_frame, io, live, loading, outputs, pipeline
from diffhand_jax.inference import sampling
from diffhand_jax.inference import tta as tta_lib
from diffhand_jax.inference import video as video_lib
from diffhand_jax.runs import checkpoints

INSTALL_HINT = 'pip install -e ".[app]"'
# Photos above this many pixels are refused with a message (PIL's own decompression-bomb limit is ~179 Mpx).
MAX_PIXELS = 40_000_000
MAX_FILE_SIZE = '60mb'
VIDEO_EXTENSIONS = ('.mp4', '.mov', '.avi', '.mkv', '.webm', '.m4v')
DETECTOR_CHOICES = ('detect hands', 'whole image is one hand')
# The longer side of the overlay the page shows, pixels at most.
OVERLAY_SIZE = 1024
# The live tab: how often the browser sends a camera frame (it sends none while one is processed).
LIVE_STREAM_EVERY = 1.0 / 30.0
# The 3D viewer's mesh colour when not coloured by uncertainty (RGBA).
SKIN = (222, 170, 140, 255)
# The app's files: the folders of the last MAX_KEPT_REQUESTS requests are kept (older ones are removed
# as new requests come); Gradio's own copies (uploads, the files it serves) are removed every
# GRADIO_CACHE[0] seconds once older than GRADIO_CACHE[1] seconds; everything when the server stops.
MAX_KEPT_REQUESTS = 8
GRADIO_CACHE = (300, 900)
# An absolute path in a message (a server path: the upload's, the run's, the scratch folder's).
_PATH = re.compile(r'(?<![\w.])/(?:[^\s/:\'\"]+/)+([^\s/:\'\"]*)')
_OFFLINE = {
    'GRADIO_ANALYTICS_ENABLED': 'False',
    'HF_HUB_DISABLE_TELEMETRY': '1',
    'HF_HUB_OFFLINE': '1',
    'GRADIO_SSR_MODE': 'False',
    'DO_NOT_TRACK': '1',
}


class AppUnavailable(RuntimeError):
  """Gradio (or trimesh) is not installed: the message says what to install."""


def offline_environment() -> None:
  """Turns off everything in Gradio and the Hub client that would reach the network (set before
  Gradio is imported: it reads them at import)."""
  for key, value in _OFFLINE.items():
    os.environ[key] = value


def import_gradio():
  """gradio, imported offline; AppUnavailable naming the extra when it (or trimesh) is missing."""
  offline_environment()
  try:
    import gradio  # pylint: disable=g-import-not-at-top  # the optional app extra
    import trimesh  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401  # the app extra
  except ImportError as error:
    raise AppUnavailable(
        f'the web app needs Gradio and trimesh ({error.name} is missing): {INSTALL_HINT}'
    ) from None
  return gradio


# ==================================================================================================
# One photo, in memory
# ==================================================================================================


@dataclasses.dataclass
class PhotoResult:
  """What the page shows for one photo. `message` is set (and the rest may be empty) when the photo
  could not be processed."""

  message: str
  overlay: str | None = None  # PNG: meshes, boxes, sides and scores over the photo
  json: str | None = None  # the photo's JSON, as `predict` writes it
  glbs: list[str] = dataclasses.field(default_factory=list)  # one per hand, in the JSON's order
  objs: list[str] = dataclasses.field(default_factory=list)
  hands: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  seconds: float = 0.0


def check_photo(path: str) -> str | None:
  """Why the file at `path` cannot be processed as a photo (a message for the page), or None."""
  try:
    with Image.open(path) as image:
      width, height = image.size
  except Image.DecompressionBombError:
    return f'The image is too large (over {MAX_PIXELS / 1e6:.0f} megapixels). Please scale it down.'
  except Exception:  # PIL raises many types for foreign files
    return (
        f'{os.path.basename(path)} is not an image this app can read '
        f'({", ".join(io.IMAGE_EXTENSIONS)}, or a video: {", ".join(VIDEO_EXTENSIONS)}).'
    )
  if width * height > MAX_PIXELS:
    return (
        f'The image is too large ({width}×{height} = {width * height / 1e6:.0f} megapixels; at most '
        f'{MAX_PIXELS / 1e6:.0f}). Please scale it down.'
    )
  return None


def without_paths(message: str, folders: tuple[str | None, ...] = ()) -> str:
  """`message` with every absolute path cut to its file name: the page shows no server paths.
  `folders` (the upload's, the run's, the scratch folder) are cut first, whatever their names hold.
  """
  for folder in sorted({f for f in folders if f and len(f) > 1}, key=len, reverse=True):
    message = message.replace(folder.rstrip(os.sep) + os.sep, '')
  return _PATH.sub(lambda match: match.group(1) or '…', message)


def gltf_vertices(vertices: np.ndarray) -> np.ndarray:
  """Camera-frame (OpenCV: x right, y down, z forward) → glTF axes (x right, y up, z towards the
  viewer): y and z negated, a rotation, so the winding and the vertex order stay."""
  return np.asarray(vertices, np.float64) * np.array([1.0, -1.0, -1.0])


def draw_boxes(overlay: np.ndarray, image_size: tuple[int, int], hands: list[dict]) -> np.ndarray:
  """Each hand's box (photo pixels, scaled to the overlay's size) and a label 'I: side score'."""
  canvas = Image.fromarray(np.asarray(overlay, np.uint8))
  draw = ImageDraw.Draw(canvas)
  sx = canvas.width / image_size[1]
  sy = canvas.height / image_size[0]
  width = max(2, round(max(canvas.size) / 300))
  font = ImageFont.load_default(size=max(12, round(max(canvas.size) / 40)))
  for number, hand in enumerate(hands):
    box = hand.get('box') or hand.get('crop_box')
    x0, y0, x1, y1 = box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy
    colour = (60, 160, 255) if hand['hand_side'] == 'right' else (255, 120, 40)
    draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
    score = hand.get('score')
    label = f'{number}: {hand["hand_side"]}' + ('' if score is None else f' {score:.2f}')
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    top_y = max(0.0, y0 - bottom - 6)
    draw.rectangle([x0, top_y, x0 + right + 6, top_y + bottom + 6], fill=colour)
    draw.text((x0 + 3, top_y + 3), label, fill=(255, 255, 255), font=font)
  return np.asarray(canvas)


def read_photo(photo: str | np.ndarray) -> pipeline.Photo | str:
  """An upload (a path) or a webcam snapshot (uint8 (H, W, 3 or 4)) as a `pipeline.Photo`, or the
  message that says why it cannot be one. An upload keeps its name and EXIF focal length; a file of
  another type than predict's (a .gif, a .tiff) is named NAME.png, as predict would have it."""
  if not isinstance(photo, str):
    return pipeline.Photo(np.asarray(photo, np.uint8)[..., :3], name='webcam.png')
  problem = check_photo(photo)
  if problem:
    return problem
  try:
    image = io.read_image(photo)
  except io.InputError as error:
    return str(error).replace(os.path.dirname(photo) + os.sep, '')
  stem, extension = os.path.splitext(os.path.basename(photo))
  if extension.lower() not in io.IMAGE_EXTENSIONS:
    return pipeline.Photo(image, name=(stem or 'photo') + '.png')
  focal, source = full_frame.focal_length(photo, image.shape[:2])
  return pipeline.Photo(image, name=stem + extension, focal=focal, focal_source=source)


def _reconstruct(
    samplers: sampling.SamplerCache, photo: pipeline.Photo, options: pipeline.Options
) -> tuple[pipeline.PhotoHands, list[str]]:
  """The photo's hands, and notes for the page: without the hand model files the MANO fit is skipped."""
  try:
    return pipeline.reconstruct_photos(samplers, [photo], options)[0], []
  except pipeline.HandModelUnavailable as error:
    note = f'MANO parameters and the fit to the landmarks skipped: {error}'
    options = dataclasses.replace(options, fit_mano=False, refine='none')
    return pipeline.reconstruct_photos(samplers, [photo], options)[0], [note]


def write_served(
    output_dir: str, result: pipeline.PhotoHands, settings: dict[str, Any], colour: bool
) -> PhotoResult:
  """The files the page serves for a photo: STEM.json, STEM_handI.obj, STEM_boxes.png (meshes, boxes,
  sides, scores), STEM_handI.glb (vertex order kept, coloured by vertex_uncertainty when `colour`).
  """
  stem = os.path.splitext(result.photo.name)[0]
  record = outputs.photo_record(result, stem, settings)
  json_path = io.write_json(os.path.join(output_dir, f'{stem}.json'), record)
  drawn = draw_boxes(outputs.overlay(result, OVERLAY_SIZE), record['image_size'], record['hands'])
  overlay_path = io.write_png(os.path.join(output_dir, f'{stem}_boxes.png'), drawn)
  glbs, objs = [], []
  for number, (hand, hand_record) in enumerate(zip(result.hands, record['hands'])):
    objs.append(
        io.write_obj(os.path.join(output_dir, hand_record['obj']), hand.vertices_camera, hand.faces)
    )
    # The JSON's values, rounded as a reader of the JSON gets them.
    std = np.asarray(hand_record['vertex_uncertainty'], np.float64)
    colours = (
        render.uncertainty_colors(std)
        if colour
        else np.tile(np.array(SKIN, np.uint8), (len(std), 1))
    )
    glb_path = os.path.join(output_dir, f'{stem}_hand{number}.glb')
    mesh_io.write_glb(glb_path, gltf_vertices(hand_record['vertices']), hand.faces, colours)
    glbs.append(glb_path)
  return PhotoResult('', overlay_path, json_path, glbs, objs, record['hands'])


def reconstruct_photo(
    workdir: str | None,
    photo: str | np.ndarray,
    output_dir: str,
    *,
    whole_image: bool = False,
    num_hypotheses: int = 5,
    steps: int | None = None,
    tta: bool = False,
    fit_mano: bool = True,
    refine: str = pipeline.PHOTO_DEFAULTS.refine,
    colour_by_uncertainty: bool = False,
    detector: Any = 'mediapipe',
    min_hand_score: float = 0.5,
    seed: int = 0,
    samplers: sampling.SamplerCache | None = None,
) -> PhotoResult:
  """One photo (a path, or a webcam snapshot as an array) through the inference core, in memory, and
  the files the page serves (`write_served`); nothing else is written.

  whole_image: no detector, the photo's largest centred square is one hand. fit_mano: add MANO
  parameters to the JSON (skipped, with a note, when the run's hand model files are missing). refine:
  'landmarks' (the default, as `predict`'s) fits each detected hand onto the detector's landmarks
  (pipeline.Options.refine), 'none' shows the network's mesh. A photo
  that cannot be processed gives a PhotoResult with only `message`; a bad workdir raises. samplers: the
  run opened once, as the page passes it; None opens `workdir` here.
  """
  start = time.perf_counter()
  photo = read_photo(photo)
  if isinstance(photo, str):
    return PhotoResult(message=photo)
  options = pipeline.Options(
      detector='none' if whole_image else detector,
      min_hand_score=min_hand_score,
      num_hypotheses=int(num_hypotheses),
      steps=None if not steps else int(steps),
      tta=tta_lib.TTAConfig() if tta else None,
      seed=seed,
      fit_mano=fit_mano,
      refine=refine,
  )
  if samplers is None:
    samplers = sampling.SamplerCache(loading.load_trained(workdir))
  try:
    result, notes = _reconstruct(samplers, photo, options)
  except io.InputError as error:
    return PhotoResult(message=str(error))
  if result.error is not None:
    return PhotoResult(message=result.error)
  if not result.hands:
    return PhotoResult(
        message='No hand found in this photo. Try a photo where the hand is larger, lower '
        "'minimum hand score', or choose 'whole image is one hand' for a crop around one hand."
    )
  os.makedirs(output_dir, exist_ok=True)
  settings = outputs.settings(samplers, options, color_by_uncertainty=False)
  served = write_served(output_dir, result, settings, colour_by_uncertainty)
  served.seconds = time.perf_counter() - start
  summary = ', '.join(
      f'{n}: {h["hand_side"]}'
      + ('' if h.get('score') is None else f' (score {h["score"]:.2f})')
      + f', uncertainty {1000 * h["uncertainty"]:.1f} mm'
      for n, h in enumerate(served.hands)
  )
  served.message = f'{len(served.hands)} hand(s) in {served.seconds:.1f} s: {summary}.'
  if num_hypotheses < 2:
    notes.append('One hypothesis: no spread to colour (choose 2 or more).')
  if notes:
    served.message += ' ' + ' '.join(notes)
  return served


def reconstruct_clip(
    workdir: str | None,
    video: str,
    output_dir: str,
    *,
    whole_image: bool = False,
    num_hypotheses: int = 1,
    steps: int | None = None,
    min_hand_score: float = 0.5,
    samplers: sampling.SamplerCache | None = None,
) -> tuple[str, str | None, list[str]]:
  """`video.reconstruct_video` with its defaults (docs/video.md): (message, the overlay.mp4 path, the
  track_<id>.npz paths); a video it cannot read gives (message, None, []). samplers: the run opened
  once, as the page passes it; None opens `workdir` here."""
  start = time.perf_counter()
  options = dataclasses.replace(
      video_lib.VIDEO_DEFAULTS,
      detector='none' if whole_image else 'mediapipe',
      min_hand_score=min_hand_score,
      num_hypotheses=int(num_hypotheses),
      steps=None if not steps else int(steps),
  )
  try:
    result = video_lib.reconstruct_video(
        workdir, video, output_dir, options, progress=False, samplers=samplers
    )
  except (io.InputError, io.VideoError, ValueError) as error:
    return f'Cannot reconstruct this video: {error}', None, []
  tracks = [str(path) for path in result['tracks'].values()]
  return (
      f'{result["frames"]} frames, {len(tracks)} track(s) in {time.perf_counter() - start:.1f} s '
      f'({result["frames_per_second"]:.1f} frames/s).',
      result['overlay'],
      tracks,
  )


# ==================================================================================================
# The page
# ==================================================================================================


class Handler:
  """The page's answer to the Reconstruct button: the run opened by the first request and kept (later
  ones do not recompile), the detector built once, and each request's served files in a folder of its
  own under `scratch`; the folders of the last MAX_KEPT_REQUESTS requests are kept, older ones removed.
  `close` removes `scratch`. Messages on the page show no server paths (`without_paths`)."""

  def __init__(self, workdir: str, scratch: str, detector: Any):
    self.workdir, self.scratch = workdir, scratch
    self._folders: collections.deque[str] = collections.deque()
    self.detector = detector
    if isinstance(detector, str) and detector != 'none':
      try:  # once, not per request; when unavailable, each request reports why
        self.detector = pipeline.resolve_detector(detector)
      except io.InputError:
        pass
    self._samplers: sampling.SamplerCache | None = None

  def samplers(self) -> sampling.SamplerCache:
    if self._samplers is None:
      self._samplers = sampling.SamplerCache(loading.load_trained(self.workdir))
    return self._samplers

  def new_folder(self) -> str:
    """A folder for one request's files; the oldest beyond MAX_KEPT_REQUESTS are removed (Gradio has
    copied what it served of them into its own cache by then)."""
    os.makedirs(self.scratch, exist_ok=True)
    self._folders.append(tempfile.mkdtemp(dir=self.scratch))
    while len(self._folders) > MAX_KEPT_REQUESTS:
      shutil.rmtree(self._folders.popleft(), ignore_errors=True)
    return self._folders[-1]

  def close(self) -> None:
    """Removes every file of every request (the scratch folder)."""
    self._folders.clear()
    shutil.rmtree(self.scratch, ignore_errors=True)

  def __call__(
      self, upload, webcam, mode, hypotheses, steps, tta, fit_mano, colour, min_score, refine=True
  ):
    """The page's outputs: (status, overlay, overlay video, hand choice, GLBs, viewer, downloads)."""
    answer = self._answer(
        upload, webcam, mode, hypotheses, steps, tta, fit_mano, colour, min_score, refine
    )
    name = upload if isinstance(upload, str) else getattr(upload, 'name', None)
    folders = (os.path.dirname(name or ''), self.scratch, os.path.abspath(self.workdir))
    return (without_paths(answer[0], folders),) + tuple(answer[1:])

  def _answer(
      self, upload, webcam, mode, hypotheses, steps, tta, fit_mano, colour, min_score, refine
  ):
    gr = import_gradio()
    empty = (
        None,
        gr.update(value=None, visible=False),
        gr.update(choices=[], value=None),
        [],
        None,
        [],
    )
    if upload is None and webcam is None:
      return ('Upload a photo or a video, or take a webcam snapshot.',) + empty
    folder = self.new_folder()
    whole = mode == DETECTOR_CHOICES[1]
    photo = webcam
    if upload is not None:
      photo = upload if isinstance(upload, str) else upload.name
      if photo.lower().endswith(VIDEO_EXTENSIONS):
        message, overlay_video, tracks = reconstruct_clip(
            self.workdir,
            photo,
            folder,
            whole_image=whole,
            num_hypotheses=hypotheses,
            steps=steps,
            min_hand_score=min_score,
            samplers=self.samplers(),
        )
        visible = gr.update(value=overlay_video, visible=True)
        return (message, None, visible, gr.update(choices=[], value=None), [], None, tracks)
    try:
      result = reconstruct_photo(
          self.workdir,
          photo,
          os.path.join(folder, 'out'),
          whole_image=whole,
          num_hypotheses=hypotheses,
          steps=steps,
          tta=tta,
          fit_mano=fit_mano,
          refine='landmarks' if refine else 'none',
          colour_by_uncertainty=colour,
          detector=self.detector,
          min_hand_score=min_score,
          samplers=self.samplers(),
      )
    except Exception as error:  # the page reports it; the server keeps serving
      return (f'Error: {type(error).__name__}: {error}',) + empty
    if result.overlay is None:
      return (result.message,) + empty
    choices = [
        (f'hand {n}: {h["hand_side"]}', path)
        for n, (h, path) in enumerate(zip(result.hands, result.glbs))
    ]
    return (
        result.message,
        result.overlay,
        gr.update(value=None, visible=False),
        gr.update(choices=choices, value=result.glbs[0]),
        result.glbs,
        result.glbs[0],
        [result.json] + result.glbs + result.objs,
    )


class LiveHandler:
  """The live tab's answer to each camera frame: the run the photo tab opened (`Handler.samplers`), one
  detector of its own (MediaPipe's, without tiles: a camera frame is small), and per browser session a
  `live.LiveStream` kept in that session's `gr.State` (the first frame builds it and compiles every
  batch size). A frame that comes while the session's last one is still processed is dropped; the
  browser already sends none while a request is pending."""

  def __init__(
      self, handler: Handler, detector: Any, options: live.LiveOptions = live.LIVE_DEFAULTS
  ):
    self.handler, self.options = handler, options
    self.detector, self.problem = detector, None
    if detector == 'mediapipe':
      try:
        self.detector = detection.make_detector('mediapipe', tiles=False)
      except detection.DetectorUnavailable as error:
        self.detector, self.problem = None, f'hand detection is unavailable here: {error}'
    elif detector == 'none':
      self.detector = None

  def new_stream(self) -> live.LiveStream:
    session = live.LiveSession(self.handler.samplers(), self.detector, self.options)
    session.warm_up()
    return live.LiveStream(session)

  def __call__(self, frame, stream):
    """(overlay, status, stream): a dropped frame changes nothing (gr.skip())."""
    gr = import_gradio()
    if frame is None:
      return gr.skip(), gr.skip(), stream
    if self.problem:
      return gr.skip(), self.problem, stream
    try:
      stream = stream or self.new_stream()
      result = stream.offer(frame)
    except Exception as error:  # the page reports it; the server keeps serving
      folders = (self.handler.scratch, os.path.abspath(self.handler.workdir))
      return gr.skip(), without_paths(f'Error: {type(error).__name__}: {error}', folders), stream
    if result is None:
      return gr.skip(), gr.skip(), stream
    return result.overlay, live_status(result, stream), stream


def live_status(result: live.LiveFrame, stream: live.LiveStream) -> str:
  """The live tab's status line: each hand (track, side, warm or cold), the frame's time, the drops."""
  hands = ', '.join(
      f'track {h.track_id} {h.side} ({"warm" if h.warm else "from noise"}, {h.passes} passes)'
      for h in result.hands
  )
  return (
      f'{len(result.hands)} hand(s){": " + hands if hands else ""}. '
      f'{1000 * result.seconds["latency"]:.0f} ms for this frame; {stream.processed} processed, '
      f'{stream.dropped} dropped.'
  )


def _live_tab(gr, live_handler: LiveHandler) -> None:
  """The live camera: the webcam streamed in, the hands' meshes over each frame streamed out."""
  gr.Markdown(
      "Start the camera: each frame comes back with every hand's mesh over it. Hands are tracked "
      'from frame to frame (the palm detector runs only when a hand is lost or new), each sampled '
      'from its last mesh; frames that arrive while one is being processed are skipped.'
  )
  with gr.Row():
    camera = gr.Image(
        label='Camera',
        sources=['webcam'],
        streaming=True,
        type='numpy',
        webcam_options=gr.WebcamOptions(mirror=False),  # the hands' sides as they are
        elem_id='live_camera',
    )
    shown = gr.Image(
        label='Hands, live', type='numpy', format='jpeg', interactive=False, elem_id='live_overlay'
    )
  status = gr.Markdown('The camera is off.', elem_id='live_status')
  stream = gr.State(None)
  camera.stream(
      live_handler,
      inputs=[camera, stream],
      outputs=[shown, status, stream],
      stream_every=LIVE_STREAM_EVERY,
      concurrency_limit=1,
      show_progress='hidden',
  )


def _controls(gr) -> list[Any]:
  """The inputs: upload, webcam, hands mode, hypotheses, steps, TTA, MANO fit, colour, minimum score,
  the fit to the landmarks; and the button last."""
  upload = gr.File(label='Photo or video', elem_id='upload', type='filepath')
  webcam = gr.Image(label='Webcam snapshot', sources=['webcam'], type='numpy', elem_id='webcam')
  mode = gr.Radio(list(DETECTOR_CHOICES), value=DETECTOR_CHOICES[0], label='Hands', elem_id='mode')
  with gr.Row():
    hypotheses = gr.Slider(1, 16, value=5, step=1, label='Hypotheses', elem_id='hypotheses')
    steps = gr.Slider(0, 50, value=0, step=1, label="DDIM steps (0: the run's)", elem_id='steps')
  with gr.Row():
    tta = gr.Checkbox(label='TTA (rotations, scales)', value=False, elem_id='tta')
    fit_mano = gr.Checkbox(label='MANO parameters (mano.fit)', value=True, elem_id='fit')
    colour = gr.Checkbox(label='Colour by uncertainty', value=True, elem_id='colour')
  with gr.Row():
    min_score = gr.Slider(
        0.05, 0.95, value=0.5, step=0.05, label='Minimum hand score', elem_id='min_score'
    )
    refine = gr.Checkbox(
        label="Fit the meshes to the detector's landmarks", value=True, elem_id='refine'
    )
  button = gr.Button('Reconstruct', variant='primary', elem_id='run')
  return [upload, webcam, mode, hypotheses, steps, tta, fit_mano, colour, min_score, refine, button]


def _results(gr) -> list[Any]:
  """The outputs: status, overlay, overlay video, hand choice, 3D viewer, downloads."""
  status = gr.Markdown('Upload a photo to start.', elem_id='status')
  overlay = gr.Image(label='Hands found', type='filepath', interactive=False, elem_id='overlay')
  overlay_video = gr.Video(
      label='Video overlay', interactive=False, visible=False, elem_id='overlay_video'
  )
  which = gr.Dropdown(choices=[], label='3D hand', elem_id='which')
  viewer = gr.Model3D(label='3D mesh', elem_id='viewer', height=420)
  downloads = gr.File(label='Downloads', file_count='multiple', elem_id='downloads')
  return [status, overlay, overlay_video, which, viewer, downloads]


def build_app(workdir: str, *, scratch: str | None = None, detector: Any = 'mediapipe'):
  """The gr.Blocks page for the run in `workdir`. scratch: where each request's served files go
  (default: a new folder under the system's temporary folder)."""
  gr = import_gradio()
  scratch = scratch or tempfile.mkdtemp(prefix='diffhand_app_')
  handler = Handler(workdir, scratch, detector)
  with gr.Blocks(title='DiffHand: hands in 3D', delete_cache=GRADIO_CACHE) as page:
    gr.Markdown(
        '# DiffHand: every hand in 3D\n'
        f'Run: `{os.path.abspath(workdir)}`. Drop in a photo (or a video), or take a webcam '
        "snapshot. Boxes show each hand with its side and the detector's score; the 3D view shows "
        "one hand at a time, coloured by the spread of the model's hypotheses when you ask for it "
        '(bright = unsure).'
    )
    with gr.Tabs():
      with gr.Tab('Photo or video', elem_id='photo_tab'):
        with gr.Row():
          with gr.Column():
            *inputs, button = _controls(gr)
          with gr.Column():
            status, overlay, overlay_video, which, viewer, downloads = _results(gr)
        glbs = gr.State([])
        button.click(
            handler,
            inputs=inputs,
            outputs=[status, overlay, overlay_video, which, glbs, viewer, downloads],
            concurrency_limit=1,
        )
        which.change(lambda path: path, inputs=which, outputs=viewer)
      with gr.Tab('Live camera', elem_id='live_tab'):
        _live_tab(gr, LiveHandler(handler, detector))
  page.scratch = scratch
  page.handler = handler  # page.handler.close() removes the requests' files
  return page


def theme():
  """Gradio's default theme with system fonts: no Google Fonts stylesheet is requested."""
  gr = import_gradio()
  return gr.themes.Default(
      font=['ui-sans-serif', 'system-ui', 'sans-serif'],
      font_mono=['ui-monospace', 'monospace'],
  )


def check_workdir(workdir: str) -> None:
  """FileNotFoundError unless `workdir` holds a run's checkpoints (checked before the page is built)."""
  if not os.path.isdir(checkpoints.checkpoint_dir(workdir)):
    raise FileNotFoundError(
        f'--workdir={workdir!r} holds no trained run (config.json, checkpoints/)'
    )


def serve(
    workdir: str, *, port: int = 7860, host: str = '127.0.0.1', detector: Any = 'mediapipe'
) -> None:
  """Builds the page and serves it until interrupted (Ctrl-C or SIGTERM; blocks), then removes every
  file the app made. OSError when the port is taken."""
  check_workdir(workdir)
  page = build_app(workdir, detector=detector)
  page.queue(default_concurrency_limit=1)

  def stop(signum, frame):  # SIGTERM ends the server as Ctrl-C does, its files removed
    raise KeyboardInterrupt

  previous = signal.signal(signal.SIGTERM, stop)
  try:
    page.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        ssr_mode=False,
        max_file_size=MAX_FILE_SIZE,
        allowed_paths=[page.scratch],
        theme=theme(),
        footer_links=[],
        show_error=True,
        quiet=False,
    )
  finally:
    signal.signal(signal.SIGTERM, previous)
    page.close()  # Gradio removes its cached uploads and served copies (delete_cache)
    page.handler.close()
