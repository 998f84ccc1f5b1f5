"""Issue #36: a seeded generator throws a few hundred odd files at `predict` (random bytes, zero bytes,
truncated PNGs and JPEGs, every PIL mode, 16-bit PNGs, tiny, huge-by-header and oddly shaped images),
random --boxes lists and video folders. No call may end in a traceback: each either processes what it
can, skipping the rest by name, or stops with exit status 2 (1 for a video that breaks off) and one
line; nothing is written outside --output, and every JSON written there names files that are whole.

The command's `main` runs in this process on one opened run (`loading.load_trained` and
`sampling.SamplerCache` are patched to hand it out), so the samplers compile once."""

import io as bytes_io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from diffhand_jax import predict
from diffhand_jax.inference import loading, sampling

SEED = 36
ROUNDS = 6
FILES_PER_ROUND = 50
VIDEO_FOLDERS = 8
EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.PNG')


@pytest.fixture(scope='module')
def opened():
  from _inference_workdir import tiny_workdir

  workdir = tiny_workdir()[0]
  return workdir, sampling.SamplerCache(loading.load_trained(workdir))


@pytest.fixture
def one_run(opened, monkeypatch):
  workdir, samplers = opened
  monkeypatch.setattr(loading, 'load_trained', lambda *args, **kwargs: samplers.run)
  monkeypatch.setattr(sampling, 'SamplerCache', lambda run: samplers)
  return workdir


def _chunk(kind: bytes, data: bytes) -> bytes:
  crc = zlib.crc32(kind + data) & 0xFFFFFFFF
  return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', crc)


def _png16(array: np.ndarray) -> bytes:
  a = np.asarray(array, np.uint16)
  a = a[..., None] if a.ndim == 2 else a
  height, width, channels = a.shape
  raw = b''.join(b'\x00' + a[y].astype('>u2').tobytes() for y in range(height))
  header = struct.pack('>IIBBBBB', width, height, 16, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
  return (
      b'\x89PNG\r\n\x1a\n'
      + _chunk(b'IHDR', header)
      + _chunk(b'IDAT', zlib.compress(raw))
      + _chunk(b'IEND', b'')
  )


def _huge_header_png(width: int, height: int) -> bytes:
  """A PNG whose header claims width × height pixels, with almost no data."""
  header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
  return (
      b'\x89PNG\r\n\x1a\n'
      + _chunk(b'IHDR', header)
      + _chunk(b'IDAT', zlib.compress(b'\x00' * 64))
      + _chunk(b'IEND', b'')
  )


def _encoded(image: Image.Image, format_: str) -> bytes:
  buffer = bytes_io.BytesIO()
  image.save(buffer, format=format_)
  return buffer.getvalue()


def _random_image(rng: np.random.Generator) -> tuple[bytes, str]:
  """(file bytes, extension) of one odd or ordinary photo."""
  kind = rng.integers(0, 12)
  side = [1, 2, 5, 15, 16, 17, 40, 64, 97, 130][rng.integers(0, 10)]
  other = [1, 3, 16, 33, 64, 120][rng.integers(0, 6)]
  height, width = (side, other) if rng.random() < 0.5 else (other, side)
  pixels = rng.integers(0, 256, (height, width, 3), np.uint8)
  rgb = Image.fromarray(pixels)
  if kind == 0:
    return rng.bytes(int(rng.integers(0, 3000))), EXTENSIONS[rng.integers(0, len(EXTENSIONS))]
  if kind == 1:
    return b'', EXTENSIONS[rng.integers(0, len(EXTENSIONS))]
  if kind == 2:  # a truncated PNG or JPEG
    data = _encoded(rgb, 'PNG' if rng.random() < 0.5 else 'JPEG')
    return (
        data[: int(rng.integers(1, max(2, len(data))))],
        '.png' if data[:4] == b'\x89PNG' else '.jpg',
    )
  if kind == 3:
    return _png16(rng.integers(0, 65536, (height, width, int(rng.choice([1, 2, 3, 4]))))), '.png'
  if kind == 4:
    mode = ['L', 'P', 'RGBA', 'LA', '1', 'I;16', 'I'][rng.integers(0, 7)]
    return _encoded(rgb.convert(mode), 'PNG'), '.png'
  if kind == 5:
    return _encoded(rgb.convert('CMYK'), 'JPEG'), '.jpg'
  if kind == 6:  # the header claims a huge image
    return _huge_header_png(int(rng.choice([20000, 70000])), int(rng.choice([9000, 70000]))), '.png'
  if kind == 7:  # another format under an image extension
    return _encoded(rgb, 'GIF'), '.png'
  if kind == 8:  # a correct image with bytes flipped in the middle
    data = bytearray(_encoded(rgb, 'PNG' if rng.random() < 0.5 else 'JPEG'))
    for index in rng.integers(0, len(data), 8):
      data[index] ^= 0xFF
    return bytes(data), '.png' if data[:4] == b'\x89PNG' else '.jpg'
  format_, extension = [('PNG', '.png'), ('JPEG', '.jpg'), ('BMP', '.bmp'), ('WEBP', '.webp')][
      rng.integers(0, 4)
  ]
  return _encoded(rgb, format_), extension


def _random_box(rng: np.random.Generator):
  choice = rng.integers(0, 10)
  if choice == 0:
    return [float(v) for v in rng.choice([np.nan, np.inf, -np.inf, 1e308, -1e308, 0.0], 4)]
  if choice == 1:
    return ['a', None, {}, []][: int(rng.integers(0, 5))]
  if choice == 2:
    return [10**400, 0, 5, 5]
  if choice == 3:
    return [[float(v) for v in rng.uniform(-50, 200, 4)] for _ in range(int(rng.integers(0, 3)))]
  if choice == 4:
    return 'x0,y0,x1,y1'
  x0, y0 = rng.uniform(-20, 100, 2)
  return [float(x0), float(y0), float(x0 + rng.uniform(-5, 150)), float(y0 + rng.uniform(-5, 150))]


def _random_boxes(rng: np.random.Generator, names: list[str]):
  choice = rng.integers(0, 8)
  if choice == 0:
    return '[1, 2, 3]'
  if choice == 1:
    return '{"a.png": ' + '[' * 100_000 + ']' * 100_000 + '}'  # deeper than json can go
  if choice == 2:
    return rng.bytes(64)
  chosen = [n for n in names if rng.random() < 0.5] + ['not_there.png']
  payload = {name: _random_box(rng) for name in chosen}
  return json.dumps(payload, allow_nan=True)


def _files(root) -> dict[str, tuple[int, int]]:
  """Every file under root: (size, mtime in ns)."""
  found = {}
  for folder, _, names in os.walk(root):
    for name in names:
      stat = os.stat(os.path.join(folder, name))
      found[os.path.relpath(os.path.join(folder, name), root)] = (stat.st_size, stat.st_mtime_ns)
  return found


def _run(capsys, argv):
  status = predict.main(argv)
  captured = capsys.readouterr()
  return status, captured.out + captured.err


def _check_answer(status, text, output, *, video=False):
  assert 'Traceback' not in text, text[-3000:]
  assert status in ((0, 1, 2) if video else (0, 2)), (status, text[-2000:])
  errors = text.count('error: ')  # the message may follow an unfinished progress bar on its line
  assert errors <= 1, text[-2000:]
  if (
      status != 0
  ):  # one line, or every photo skipped by name (exit status 2: none could be processed)
    skipped = 'skipping ' in text or 'no hand found in ' in text
    assert errors == 1 or (skipped and not video), (status, text[-2000:])
  if not os.path.isdir(output):
    return
  if video and status == 2:  # refused: nothing written
    assert not os.listdir(output), (os.listdir(output), text[-2000:])
  names = os.listdir(output)
  assert not [n for n in names if '.tmp' in n or n.startswith('.')], names
  for name in names:
    if name.endswith('.json'):  # a JSON means its result is whole
      record = json.loads(open(os.path.join(output, name)).read())
      for hand in record['hands']:
        assert hand['obj'] in names
      assert name[: -len('.json')] + '.png' in names


def test_random_photo_folders_and_boxes_never_give_a_traceback(one_run, tmp_path, capsys):
  rng = np.random.default_rng(SEED)
  for round_ in range(ROUNDS):
    images = tmp_path / f'images{round_}'
    images.mkdir()
    for index in range(FILES_PER_ROUND):
      data, extension = _random_image(rng)
      stem = f'p{index % 40}'  # some stems repeat under other extensions
      (images / f'{stem}{extension}').write_bytes(data)
    names = sorted(os.listdir(images))
    boxes = tmp_path / f'boxes{round_}.json'
    content = _random_boxes(rng, names)
    boxes.write_bytes(content if isinstance(content, bytes) else content.encode())
    output = tmp_path / f'out{round_}'
    argv = [
        f'--workdir={one_run}',
        f'--images={images}',
        f'--output={output}',
        '--num_hypotheses=2',
        '--steps=1',
        '--overlay_size=48',
        f'--detector={"mediapipe" if round_ == 0 else "none"}',
    ]
    if round_ % 2:
      argv.append(f'--boxes={boxes}')
    before = _files(tmp_path)
    status, text = _run(capsys, argv)
    _check_answer(status, text, output)
    after = _files(tmp_path)
    outside = {k: v for k, v in after.items() if not k.startswith(f'out{round_}{os.sep}')}
    assert outside == before, 'predict wrote outside --output'


def test_random_video_folders_never_give_a_traceback(one_run, tmp_path, capsys):
  pytest.importorskip('av')
  rng = np.random.default_rng(SEED + 1)
  for number in range(VIDEO_FOLDERS):
    frames = tmp_path / f'frames{number}'
    frames.mkdir()
    size = (int(rng.integers(16, 60)), int(rng.integers(16, 60)))
    for index in range(int(rng.integers(0, 5))):
      choice = rng.integers(0, 6)
      if choice == 0:  # a frame of another size
        shape = (size[0] + int(rng.integers(1, 9)), size[1])
        data = _encoded(Image.fromarray(rng.integers(0, 256, shape + (3,), np.uint8)), 'PNG')
      elif choice == 1:
        data = rng.bytes(int(rng.integers(0, 500)))
      else:
        data = _encoded(Image.fromarray(rng.integers(0, 256, size + (3,), np.uint8)), 'PNG')
      (frames / f'f{index:03d}.png').write_bytes(data)
    output = tmp_path / f'video{number}'
    before = _files(tmp_path)
    argv = [
        f'--workdir={one_run}',
        f'--video={frames}',
        f'--output={output}',
        '--steps=1',
        '--detector=none',
    ]
    if rng.random() < 0.4:
      argv.append(f'--video_box={",".join(str(v) for v in _random_box(rng))}'.replace(' ', ''))
    status, text = _run(capsys, argv)
    _check_answer(status, text, output, video=True)
    after = _files(tmp_path)
    outside = {k: v for k, v in after.items() if not k.startswith(f'video{number}{os.sep}')}
    assert outside == before, 'predict --video wrote outside --output'
