"""Every inference command's output files on the tiny run, as digests: photos and crops through
`predict`, a video through `predict --video`, the three benchmark submissions, and the files the app
serves for a photo. tests/test_inference_outputs.py compares them with the digests recorded in
tests/golden/inference_outputs.json, so that a change of the code behind the commands that changes a
byte of what they write is seen.

The digests depend on the numbers, so they hold for the environment they were recorded in (the JAX,
NumPy, Pillow and PyAV versions, and the tiny run's trained parameters, which the CPU can change). To
record them again after an intended change of the outputs:

  python tests/_inference_outputs.py --record
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import sys
import tempfile
import zipfile
from importlib import metadata

import numpy as np

TESTS = pathlib.Path(__file__).resolve().parent
GOLDEN = TESTS / 'golden' / 'inference_outputs.json'
# The packages whose versions change the bytes of the outputs.
PACKAGES = ('jax', 'jaxlib', 'numpy', 'pillow', 'av', 'scipy', 'tensorflow-cpu')


def _digest(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _without_paths(text, paths: dict[str, str]):
  """`text` (str or bytes) with each of the absolute `paths` {placeholder: path} replaced."""
  for placeholder, value in sorted(paths.items(), key=lambda item: -len(item[1])):
    if isinstance(text, bytes):
      text = text.replace(value.encode(), placeholder.encode())
    else:
      text = text.replace(value, placeholder)
  return text


def _file_digest(path: pathlib.Path, paths: dict[str, str]) -> str:
  """The file's bytes with each absolute path a placeholder (the JSON settings name the workdir and the
  inputs); a zip by its members' bytes (the archive stores the time it was written), an NPZ by its
  arrays' names, types, shapes and bytes."""
  if path.suffix == '.npz':  # text arrays are UTF-32: the paths in them are replaced as text
    with np.load(path) as arrays:
      parts = []
      for name in sorted(arrays.files):
        array = arrays[name]
        if array.dtype.kind == 'U':
          array = np.array(_without_paths(str(array), paths))
        parts.append(f'{name}:{array.dtype.str}:{array.shape}'.encode() + array.tobytes())
      data = b''.join(parts)
  elif zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      data = b''.join(
          name.encode() + b'\0' + archive.read(name) for name in sorted(archive.namelist())
      )
  else:
    data = path.read_bytes()
  return _digest(_without_paths(data, paths))


def environment(workdir: str) -> dict[str, str]:
  """What the digests depend on besides the code: package versions and the trained parameters."""
  from diffhand_jax.inference import loading

  import jax

  versions = {}
  for package in PACKAGES:
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      versions[package] = 'missing'
  params = loading.load_trained(workdir).params
  flat = b''.join(np.asarray(leaf).tobytes() for leaf in jax.tree_util.tree_leaves(params))
  versions['tiny_run_params'] = _digest(flat)
  return versions


def _photo_inputs(folder: pathlib.Path) -> dict[str, pathlib.Path]:
  """Two folders of photos: whole frames for the detector, and random crops for --boxes/--left."""
  from PIL import Image

  from diffhand_jax.data import synthetic_frames as sf

  photos = folder / 'photos'
  photos.mkdir()
  frame = sf.render_frame(
      [
          sf.FrameHand('right', (0.3, 0.5), 0.45, 'flat', back=True, skin=1.0),
          sf.FrameHand('left', (0.72, 0.5), 0.45, 'relaxed', back=True, skin=2.5),
      ],
      (240, 320),
      seed=5,
  )
  Image.fromarray(frame['image']).save(photos / 'two.png')
  one = sf.render_frame(
      [sf.FrameHand('right', (0.5, 0.5), 0.55, 'flat', back=True, skin=1.0)], (240, 320), seed=5
  )
  Image.fromarray(one['image']).save(photos / 'one.jpg', quality=95)
  Image.fromarray(np.full((60, 80, 3), 90, np.uint8)).save(photos / 'empty.png')
  crops = folder / 'crops'
  crops.mkdir()
  rng = np.random.default_rng(3)
  for name, size in (('a.png', (90, 120)), ('b.png', (64, 64)), ('c.jpg', (100, 80))):
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(crops / name)
  (folder / 'boxes.json').write_text(
      json.dumps({'a.png': [[10, 10, 60, 70], [50, 20, 110, 80]], 'b': [4, 4, 60, 60]})
  )
  (folder / 'left.json').write_text(json.dumps({'a.png': [False, True], 'c.jpg': True}))
  return {'photos': photos, 'crops': crops, 'app_photo': photos / 'one.jpg'}


def _clip(folder: pathlib.Path) -> tuple[pathlib.Path, list[float]]:
  """A folder of four rendered frames and the hand's box in the first."""
  from PIL import Image

  from diffhand_jax.data import synthetic_scene

  config = synthetic_scene.SceneConfig(image_size=64, clip_length=4)
  kit = synthetic_scene.load_hand_kit()
  frames = folder / 'clip'
  frames.mkdir()
  box = None
  for index in range(4):
    example = synthetic_scene.generate_clip_frame(config, 'test', 0, index, kit=kit)
    Image.fromarray(example['image']).save(frames / f'frame_{index:03d}.png')
    box = box if box is not None else [float(v) for v in example['bbox']]
  return frames, box


def produce(workdir: str, data_dir: str, dexycb_data_dir: str | None, scratch: str) -> dict:
  """Runs every command on the fixtures in `scratch`; returns {output name: digest}."""
  from diffhand_jax import predict, submission
  from diffhand_jax.inference import app

  base = pathlib.Path(scratch)
  inputs = _photo_inputs(base)
  clip, clip_box = _clip(base)
  outputs = base / 'outputs'
  runs = {
      'predict_photos': [
          f'--images={inputs["photos"]}',
          '--num_hypotheses=2',
          '--steps=2',
          '--batch_size=2',
          '--overlay_size=160',
          '--fit_mano',
      ],
      'predict_photos_tta_colour': [
          f'--images={inputs["photos"]}',
          '--num_hypotheses=3',
          '--method=medoid',
          '--tta',
          '--tta_angles=-10,10',
          '--tta_scales=1',
          '--color_by_uncertainty',
          '--focal=500',
          '--seed=4',
      ],
      'predict_crops': [
          f'--images={inputs["crops"]}',
          f'--boxes={base / "boxes.json"}',
          f'--left={base / "left.json"}',
          '--detector=none',
          '--num_hypotheses=2',
          '--method=aligned_mean',
          '--eta=0.5',
          '--box_scale=1.1',
          '--overlay_size=0',
      ],
      'predict_video': [
          f'--video={clip}',
          f'--video_box={",".join(str(v) for v in clip_box)}',
          '--warm_strength=0.5',
          '--num_hypotheses=2',
          '--video_fps=12',
      ],
      'predict_video_follow': [
          f'--video={clip}',
          '--detector=none',
          '--all_left',
          '--video_follow',
          '--warm_strength=1',
      ],
  }
  for name, argv in runs.items():
    status = predict.main([f'--workdir={workdir}', f'--output={outputs / name}', *argv])
    if status != 0:
      raise RuntimeError(f'predict {name} exited {status}')
  benchmarks = {
      'submission_freihand': ['--benchmark=freihand', '--num_hypotheses=2', '--method=medoid'],
      'submission_ho3d': ['--benchmark=ho3d', '--tta', '--tta_angles=5', '--tta_scales=1'],
  }
  for name, argv in benchmarks.items():
    output = outputs / name / ('pred.zip')
    status = submission.main(
        [
            f'--workdir={workdir}',
            f'--output={output}',
            f'--config.dataset.data_dir={data_dir}',
            *argv,
        ]
    )
    if status != 0:
      raise RuntimeError(f'submission {name} exited {status}')
  if dexycb_data_dir is not None:
    status = submission.main(
        [
            f'--workdir={workdir}',
            '--benchmark=dexycb',
            f'--output={outputs / "submission_dexycb" / "results.txt"}',
            '--config.dataset.name=dex_ycb',
            '--config.dataset.config_name=default',
            f'--config.dataset.data_dir={dexycb_data_dir}',
            '--split=test',
        ]
    )
    if status != 0:
      raise RuntimeError(f'submission dexycb exited {status}')

  digests = {}
  paths = {
      '<WORKDIR>': os.path.abspath(workdir),
      '<SCRATCH>': os.path.abspath(scratch),
  }
  for path in sorted(outputs.rglob('*')):
    if path.is_file():
      digests[str(path.relative_to(outputs))] = _file_digest(path, paths)
  served = {
      'app_detected': dict(fit_mano=True, colour_by_uncertainty=True, num_hypotheses=3),
      'app_whole_image': dict(whole_image=True, num_hypotheses=1, steps=3, tta=True),
  }
  for name, options in served.items():
    result = app.reconstruct_photo(workdir, str(inputs['app_photo']), str(base / name), **options)
    if result.overlay is None:
      raise RuntimeError(f'app {name}: {result.message}')
    files = {'overlay.png': result.overlay, 'hands.json': result.json}
    files.update({f'hand{i}.glb': path for i, path in enumerate(result.glbs)})
    files.update({f'hand{i}.obj': path for i, path in enumerate(result.objs)})
    for role, path in files.items():
      digests[f'{name}/{role}'] = _file_digest(pathlib.Path(path), paths)
  return digests


def _fixture_runs() -> tuple[str, str, str | None]:
  sys.path.insert(0, str(TESTS))
  from _inference_workdir import tiny_workdir

  import test_dex_ycb

  workdir, data_dir = tiny_workdir()
  return workdir, data_dir, test_dex_ycb.built_fixture()['data_dir']


def record() -> None:
  """Writes tests/golden/inference_outputs.json from this checkout's commands."""
  workdir, data_dir, dexycb_dir = _fixture_runs()
  with tempfile.TemporaryDirectory() as scratch:
    digests = produce(workdir, data_dir, dexycb_dir, scratch)
  GOLDEN.parent.mkdir(exist_ok=True)
  payload = {'environment': environment(workdir), 'outputs': digests}
  GOLDEN.write_text(json.dumps(payload, indent=1, sort_keys=True) + '\n')
  print(f'recorded {len(digests)} output digests in {GOLDEN}')


if __name__ == '__main__':
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if sys.argv[1:] != ['--record']:
    sys.exit(f'usage: python {sys.argv[0]} --record')
  record()
