"""Issue #36: `predict`'s inputs are checked where they enter and its outputs never clobber an input, each
other, or leave a result half-written: photo modes (16-bit and the rest), --boxes values and files, video
frames of differing sizes, the output folder (the inputs' own, unwritable, a disk that fills up), photos
that share a stem, and at most one decoded photo alive at a time."""

import errno
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from diffhand_jax import predict
from diffhand_jax.inference import io


@pytest.fixture(scope='module')
def workdir():
  from _inference_workdir import tiny_workdir

  return tiny_workdir()[0]


def write_png16(path, array):
  """uint16 (H, W) grey, (H, W, 2) grey + alpha, (H, W, 3) RGB or (H, W, 4) RGBA as a 16-bit PNG."""
  a = np.asarray(array, np.uint16)
  if a.ndim == 2:
    a = a[..., None]
  height, width, channels = a.shape
  colour = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
  raw = b''.join(b'\x00' + a[y].astype('>u2').tobytes() for y in range(height))

  def chunk(kind, data):
    return (
        struct.pack('>I', len(data))
        + kind
        + data
        + struct.pack('>I', zlib.crc32(kind + data) & 0xFFFFFFFF)
    )

  header = struct.pack('>IIBBBBB', width, height, 16, colour, 0, 0, 0)
  png = b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(raw))
  with open(path, 'wb') as f:
    f.write(png + chunk(b'IEND', b''))


RAMP = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)


# ----- photo modes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'channels',
    [
        RAMP[..., None],
        np.stack([RAMP, RAMP], -1),
        np.stack([RAMP, RAMP // 2, 65535 - RAMP], -1),
        np.stack([RAMP, RAMP // 2, 65535 - RAMP, RAMP], -1),
    ],
    ids=['grey', 'grey_alpha', 'rgb', 'rgba'],
)
def test_16_bit_pngs_are_scaled_to_8_bits_not_clipped(tmp_path, channels):
  path = tmp_path / 'deep.png'
  write_png16(path, channels)
  image = io.read_image(str(path))
  assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
  colour = channels[..., :3] if channels.shape[-1] >= 3 else channels[..., :1].repeat(3, -1)
  np.testing.assert_allclose(image, np.round(colour / 257.0), atol=1)


@pytest.mark.parametrize('mode', ['P', 'LA', 'RGBA', 'CMYK', '1', 'F', 'I', 'I;16', 'I;16B', 'L'])
def test_every_pil_mode_reads_as_the_same_picture(tmp_path, mode):
  grey = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (48, 1))
  picture = Image.fromarray(grey).convert('RGB')
  if mode == '1':
    picture = Image.fromarray(np.where(grey > 127, 255, 0).astype(np.uint8)).convert('1')
    expected = np.where(grey > 127, 255, 0)
  elif mode == 'I;16B':  # 16-bit values of the same picture, big-endian (TIFF)
    deep = grey.astype(np.uint16) * 257
    picture = Image.frombytes('I;16B', (64, 48), deep.astype('>u2').tobytes())
    expected = grey
  elif mode in ('I', 'I;16'):
    picture = Image.fromarray((grey.astype(np.uint16) * 257).astype(np.uint16)).convert(mode)
    expected = grey
  elif mode == 'F':  # floats in [0, 1], as float TIFFs hold them
    picture = Image.fromarray(grey.astype(np.float32) / 255.0, mode='F')
    expected = grey
  elif mode == 'P':
    picture = picture.convert('P', palette=Image.Palette.ADAPTIVE, colors=256)
    expected = grey
  else:
    picture = picture.convert(mode)
    expected = grey
  path = tmp_path / ('photo.tiff' if mode in ('F', 'CMYK', 'I', 'I;16B') else 'photo.png')
  picture.save(path)
  image = io.read_image(str(path))
  assert image.dtype == np.uint8 and image.shape == (48, 64, 3)
  np.testing.assert_allclose(image[..., 0], expected, atol=2, err_msg=Image.open(path).mode)


def test_a_float_photo_with_nan_reads_without_nan_and_scaled(tmp_path):
  values = np.linspace(-3.0, 1000.0, 48 * 64, dtype=np.float32).reshape(48, 64)
  values[0, 0] = np.nan
  path = tmp_path / 'float.tiff'
  Image.fromarray(values, mode='F').save(path)
  image = io.read_image(str(path))
  assert image.dtype == np.uint8 and image[..., 0].max() == 255 and image[..., 0].min() == 0
  assert image[-1, -1, 0] == 255 and image[0, 1, 0] == 0  # min-max scaled, nothing clipped
  middle = values[24, 32]
  assert abs(int(image[24, 32, 0]) - (middle + 3.0) / 1003.0 * 255.0) <= 1  # not clipped at 255


# ----- --boxes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'box', [[0, 0, 1e308, 1e308], [-1e308, -1e308, 10, 10], [0, 0, 'nan', 10], [0, 0, 'inf', 5]]
)
def test_boxes_must_be_finite_and_of_photo_scale(tmp_path, box):
  path = tmp_path / 'boxes.json'
  path.write_text(json.dumps({'a.png': [float(v) for v in box]}).replace('Infinity', '1e999'))
  with pytest.raises(io.InputError, match="the box of 'a.png'"):
    io.load_boxes(str(path), ['a.png'])


def test_boxes_naming_a_folder_is_one_line(tmp_path):
  with pytest.raises(io.InputError, match='--boxes file .* is a folder'):
    io.load_boxes(str(tmp_path), ['a.png'])


def test_boxes_far_larger_than_the_photo_are_refused_without_allocating_them(tmp_path, capsys):
  """A box that overlaps the photo but is millions of pixels wide would make a crop of terabytes."""
  from diffhand_jax.inference import pipeline

  photo = pipeline.Photo(np.zeros((64, 64, 3), np.uint8), name='a.png', boxes=[[0, 0, 1e6, 1e6]])
  with pytest.raises(io.InputError, match='a.png: the box .* is more than'):
    pipeline.find_hands(photo.image, photo, pipeline.DEFAULTS, None)


def test_predict_with_huge_boxes_exits_2_in_one_line(workdir, tmp_path, capsys):
  images = tmp_path / 'images'
  images.mkdir()
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(images / 'a.png')
  boxes = tmp_path / 'boxes.json'
  boxes.write_text('{"a.png": [-1e308, -1e308, 1e308, 1e308]}')
  status = predict.main(
      [
          f'--workdir={workdir}',
          f'--images={images}',
          f'--boxes={boxes}',
          f'--output={tmp_path / "o"}',
      ]
  )
  err = capsys.readouterr().err
  assert status == 2 and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
  status = predict.main(
      [
          f'--workdir={workdir}',
          f'--images={images}',
          f'--boxes={tmp_path}',
          f'--output={tmp_path / "o"}',
      ]
  )
  err = capsys.readouterr().err
  assert status == 2 and 'is a folder' in err and len(err.strip().splitlines()) == 1, err
  assert not (tmp_path / 'o').exists()


# ----- video frames ---------------------------------------------------------------------------------------


def test_frames_of_differing_sizes_are_refused_by_name_before_anything_is_written(
    workdir, tmp_path, capsys
):
  pytest.importorskip('av')
  frames = tmp_path / 'frames'
  frames.mkdir()
  for index in range(4):
    size = (48, 64) if index != 2 else (40, 64)
    Image.fromarray(np.full(size + (3,), 40 * index, np.uint8)).save(frames / f'f{index}.png')
  out = tmp_path / 'out'
  status = predict.main([f'--workdir={workdir}', f'--video={frames}', f'--output={out}'])
  err = capsys.readouterr().err
  assert status == 2, err
  assert 'f2.png' in err and '64×40' in err and '64×48' in err and 'Traceback' not in err
  assert len(err.strip().splitlines()) == 1, err
  assert not out.exists()


@pytest.mark.parametrize('eta', ['1.5', '-0.2', 'nan'])
def test_eta_outside_zero_one_is_one_line_before_the_run_is_opened(tmp_path, capsys, eta):
  images = tmp_path / 'images'
  images.mkdir()
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(images / 'a.png')
  status = predict.main(
      [
          f'--workdir={tmp_path / "no_run"}',
          f'--images={images}',
          f'--output={tmp_path / "o"}',
          f'--eta={eta}',
      ]
  )
  err = capsys.readouterr().err
  assert status == 2 and '--eta must lie in [0, 1]' in err and len(err.strip().splitlines()) == 1


# ----- outputs never clobber inputs or each other ---------------------------------------------------------


def _lines(err):
  """stderr's lines without the progress bar (its lines hold a carriage return)."""
  return [line for line in err.split('\n') if line.strip() and '\r' not in line]


def _photos(folder, names, size=(64, 64)):
  folder.mkdir(exist_ok=True)
  rng = np.random.default_rng(len(names))
  for name in names:
    Image.fromarray(rng.integers(0, 255, size + (3,), np.uint8)).save(folder / name)
  return {name: (folder / name).read_bytes() for name in names}


def _predict(capsys, workdir, images, output, *extra):
  status = predict.main(
      [
          f'--workdir={workdir}',
          f'--images={images}',
          f'--output={output}',
          '--detector=none',
          '--num_hypotheses=1',
          '--steps=1',
          '--overlay_size=64',
          *extra,
      ]
  )
  return status, capsys.readouterr().err


def test_an_output_that_is_the_photos_folder_is_refused_before_the_run_is_opened(tmp_path, capsys):
  images = tmp_path / 'images'
  before = _photos(images, ['photo.png', 'b.jpg'])
  # The workdir holds no run: the refusal comes first, before anything is opened or computed.
  for output in (images, tmp_path / 'images' / '.' / ''):
    status, err = _predict(capsys, tmp_path / 'no_run', images, output)
    assert status == 2 and 'holds the input photos' in err and len(err.strip().splitlines()) == 1
  assert {n: (images / n).read_bytes() for n in before} == before
  assert sorted(os.listdir(images)) == sorted(before)
  # --boxes (or --left) inside --output: refused too (a photo named boxes.png would overwrite it).
  boxes = tmp_path / 'out' / 'boxes.json'
  boxes.parent.mkdir()
  boxes.write_text('{}')
  status, err = _predict(capsys, tmp_path / 'no_run', images, tmp_path / 'out', f'--boxes={boxes}')
  assert status == 2 and 'holds the --boxes file' in err and boxes.read_text() == '{}'


def test_photos_that_share_a_stem_get_distinct_results(workdir, tmp_path, capsys):
  images = tmp_path / 'images'
  _photos(images, ['a.jpg', 'a.png', 'a.bmp', 'b.png'])
  status, err = _predict(capsys, workdir, images, tmp_path / 'out')
  assert status == 0, err
  assert sorted(os.listdir(tmp_path / 'out')) == sorted(
      [
          f'{stem}{suffix}'
          for stem in ('a_bmp', 'a_jpg', 'a_png')
          for suffix in ('.json', '.png', '_hand0.obj')
      ]
      + ['b.json', 'b.png', 'b_hand0.obj']  # a stem of its own keeps its name
  )
  for stem, name in (('a_jpg', 'a.jpg'), ('a_png', 'a.png'), ('a_bmp', 'a.bmp'), ('b', 'b.png')):
    record = json.loads((tmp_path / 'out' / f'{stem}.json').read_text())
    assert record['image'] == name and record['hands'][0]['obj'] == f'{stem}_hand0.obj'


def test_output_names_are_unique_whatever_the_names():
  from diffhand_jax.inference import predict as predict_lib

  names = ['a.jpg', 'A.png', 'a_jpg.png', 'b.png', 'c.JPG', 'c.jpg']
  stems = predict_lib.output_stems(names)
  assert stems['b.png'] == 'b'
  assert len({s.lower() for s in stems.values()}) == len(names), stems


def test_an_output_that_cannot_be_written_is_refused_before_the_run_is_opened(
    tmp_path, capsys, monkeypatch
):
  images = tmp_path / 'images'
  _photos(images, ['a.png'])
  blocker = tmp_path / 'a_file'
  blocker.write_text('mine')
  status, err = _predict(capsys, tmp_path / 'no_run', images, blocker / 'sub')
  assert status == 2 and 'cannot write to --output' in err and len(err.strip().splitlines()) == 1
  assert blocker.read_text() == 'mine'
  # A read-only folder (simulated: root may write anywhere).
  real_open = os.open

  def read_only(path, flags, *args, **kwargs):
    if str(path).startswith(str(tmp_path / 'ro')) and flags & os.O_CREAT:
      raise PermissionError(errno.EACCES, 'Permission denied', str(path))
    return real_open(path, flags, *args, **kwargs)

  (tmp_path / 'ro').mkdir()
  monkeypatch.setattr(os, 'open', read_only)
  status, err = _predict(capsys, tmp_path / 'no_run', images, tmp_path / 'ro')
  assert status == 2 and 'cannot write to --output' in err and 'Permission denied' in err, err
  assert len(err.strip().splitlines()) == 1 and os.listdir(tmp_path / 'ro') == []


def test_a_disk_that_fills_up_names_the_photo_and_keeps_what_is_whole(
    workdir, tmp_path, capsys, monkeypatch
):
  from diffhand_jax.geometry import mesh_io

  images = tmp_path / 'images'
  _photos(images, ['a.png', 'b.png', 'c.png'])
  real = mesh_io.write_image
  calls = []

  def full_disk(path, image, *args, **kwargs):
    calls.append(path)
    if len(calls) == 2:  # b.png's overlay: its OBJ is written, its JSON not yet
      with open(path, 'wb') as f:
        f.write(b'half')
      raise OSError(errno.ENOSPC, 'No space left on device')
    return real(path, image, *args, **kwargs)

  monkeypatch.setattr(mesh_io, 'write_image', full_disk)
  out = tmp_path / 'out'
  status, err = _predict(capsys, workdir, images, out)
  assert status == 2 and 'Traceback' not in err
  lines = _lines(err)
  assert len(lines) == 1 and 'b.png' in lines[0] and 'No space left on device' in lines[0], err
  assert 'a.png' in lines[0]  # what was done
  assert sorted(os.listdir(out)) == ['a.json', 'a.png', 'a_hand0.obj']  # whole, nothing of b half


def test_video_outputs_are_checked_too(workdir, tmp_path, capsys, monkeypatch):
  pytest.importorskip('av')
  frames = tmp_path / 'frames'
  before = _photos(frames, [f'f{i}.png' for i in range(3)])
  status = predict.main(
      [f'--workdir={tmp_path / "no_run"}', f'--video={frames}', f'--output={frames}']
  )
  err = capsys.readouterr().err
  assert status == 2 and 'holds the input' in err and len(err.strip().splitlines()) == 1, err
  assert {n: (frames / n).read_bytes() for n in before} == before
  blocker = tmp_path / 'a_file'
  blocker.write_text('mine')
  status = predict.main(
      [f'--workdir={tmp_path / "no_run"}', f'--video={frames}', f'--output={blocker / "x"}']
  )
  err = capsys.readouterr().err
  assert status == 2 and 'cannot write to --output' in err and len(err.strip().splitlines()) == 1

  def full_disk(path, arrays):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(io, 'write_npz', full_disk)
  status = predict.main(
      [f'--workdir={workdir}', f'--video={frames}', f'--output={tmp_path / "v"}', '--detector=none']
  )
  err = capsys.readouterr().err
  assert status == 2 and 'No space left on device' in err and 'Traceback' not in err
  assert len(_lines(err)) == 1, err


# ----- memory ------------------------------------------------------------------------------------------------


def test_at_most_one_decoded_photo_is_alive_at_a_time(workdir, tmp_path, capsys, monkeypatch):
  import gc
  import weakref

  from diffhand_jax.inference import predict as predict_lib

  images = tmp_path / 'images'
  _photos(images, [f'p{i}.png' for i in range(6)])
  real = io.read_image
  decoded, most = [], [0]

  def tracked(path):
    image = real(path)
    gc.collect()
    most[0] = max(most[0], sum(ref() is not None for ref in decoded) + 1)
    decoded.append(weakref.ref(image))
    return image

  monkeypatch.setattr(io, 'read_image', tracked)
  result = predict_lib.predict_folder(
      workdir,
      str(images),
      str(tmp_path / 'out'),
      predict_lib.pipeline.Options(detector='none', num_hypotheses=1, steps=1, batch_size=2),
      progress=False,
  )
  assert len(result['written']) == 6
  assert most[0] <= 2, most  # one being read while at most one other is still referenced


def test_a_run_that_cannot_be_opened_leaves_no_output_folder(tmp_path, capsys):
  images = tmp_path / 'images'
  _photos(images, ['a.png'])
  status, err = _predict(capsys, tmp_path / 'no_run', images, tmp_path / 'new' / 'out')
  assert status == 2 and 'config.json does not exist' in err
  assert not (tmp_path / 'new' / 'out').exists()


def test_a_video_box_far_larger_than_the_frame_is_one_line(workdir, tmp_path, capsys):
  pytest.importorskip('av')
  frames = tmp_path / 'frames'
  _photos(frames, ['f0.png', 'f1.png'], size=(32, 32))
  status = predict.main(
      [
          f'--workdir={workdir}',
          f'--video={frames}',
          f'--output={tmp_path / "out"}',
          '--video_box=0,0,400,400',
          '--steps=1',
      ]
  )
  err = capsys.readouterr().err
  assert status == 2 and 'is more than 4 times frame 0 (32×32 pixels)' in err, err
  assert len(_lines(err)) == 1 and 'Traceback' not in err
