"""`python -m diffhand_jax.predict` end to end on a tiny trained workdir, plus its pieces."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from diffhand_jax import predict
from diffhand_jax import command_line
from diffhand_jax.inference import crops, overrides
from diffhand_jax.inference import predict as predict_lib


@pytest.fixture(scope='module')
def workdir():
  from _inference_workdir import tiny_workdir

  return tiny_workdir()[0]


def _read_obj(path):
  vertices, faces = [], []
  for line in open(path):
    if line.startswith('v '):
      vertices.append([float(v) for v in line.split()[1:]])
    elif line.startswith('f '):
      faces.append([int(v) - 1 for v in line.split()[1:]])
  return np.array(vertices), np.array(faces)


def _write_image(path, height, width, seed):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
  Image.fromarray(image).save(path)
  return image


def test_predict_folder_end_to_end(workdir, tmp_path, capsys):
  from diffhand_jax.inference import loading

  images = tmp_path / 'images'
  images.mkdir()
  square = _write_image(images / 'a_right.png', 48, 48, 0)
  _write_image(images / 'b_left.jpg', 90, 60, 1)
  _write_image(images / 'c_box.png', 40, 120, 2)
  (images / 'd_broken.jpg').write_bytes(b'this is not a jpeg')
  (images / 'notes.txt').write_text('ignored')
  (tmp_path / 'boxes.json').write_text(json.dumps({'c_box': [70, 5, 100, 35]}))
  out = tmp_path / 'out'
  status = predict.main(
      [
          f'--workdir={workdir}',
          f'--images={images}',
          f'--output={out}',
          f'--boxes={tmp_path / "boxes.json"}',
          '--left=b_left.jpg',
          '--num_hypotheses=2',
          '--steps=2',
          '--batch_size=4',
          '--overlay_size=48',
      ]
  )
  captured = capsys.readouterr()
  assert status == 0, captured.err
  assert 'd_broken.jpg' in captured.err  # named, and the rest carried on
  names = ('a_right', 'b_left', 'c_box')
  assert sorted(os.listdir(out)) == sorted(
      f'{n}.{e}' for n in names for e in ('obj', 'png', 'json')
  )

  _, _, _, topology, _ = loading.load_for_inference(workdir)
  regressor = np.asarray(topology.joint_regressor, np.float64)
  for name in names:
    record = json.loads((out / f'{name}.json').read_text())
    vertices = np.asarray(record['vertices'])
    assert vertices.shape == (778, 3) and np.asarray(record['joints']).shape == (21, 3)
    assert np.asarray(record['uncertainty']).shape == (778,)
    assert (
        np.all(np.asarray(record['uncertainty']) >= 0) and record['uncertainty_mean'] > 0
    )  # K = 2
    np.testing.assert_allclose(record['joints'], regressor @ vertices, atol=1e-5)
    obj_vertices, obj_faces = _read_obj(out / f'{name}.obj')
    np.testing.assert_allclose(obj_vertices, vertices, atol=2e-6)
    assert obj_faces.shape == np.asarray(topology.faces).shape
    overlay = np.asarray(Image.open(out / f'{name}.png'))
    assert overlay.shape == (48, 48, 3)
    assert record['settings']['hypotheses'] == 2 and record['settings']['steps'] == 2
    assert record['hand_side'] == ('left' if name == 'b_left' else 'right')
  box = json.loads((out / 'c_box.json').read_text())['crop_box']
  np.testing.assert_allclose(
      box, [85 - 19.5, 20 - 19.5, 85 + 19.5, 20 + 19.5]
  )  # 30 px × 1.3, centred
  # A square image without a box is cropped whole: the overlay is that image where no mesh is drawn.
  overlay = np.asarray(Image.open(out / 'a_right.png')).astype(int)
  unchanged = np.all(overlay == square, axis=-1)
  assert 0.05 < unchanged.mean() < 1.0  # some mesh drawn, not everywhere

  # Left hands are mirrored for the model and back on output: a mirrored copy of a_right marked left
  # (same batch position, same seed, so the same noise) gives the mirror-image mesh.
  mirrored = tmp_path / 'mirrored'
  mirrored.mkdir()
  Image.fromarray(square[:, ::-1]).save(mirrored / 'a_right.png')
  out2 = tmp_path / 'out2'
  # The same number of steps, here through the run's config (--config.model.sampling_steps) and the
  # flags of the previous call back at their defaults (no --boxes, --left).
  status = predict.main(
      [
          f'--workdir={workdir}',
          f'--images={mirrored}',
          f'--output={out2}',
          '--all_left',
          '--num_hypotheses=2',
          '--config.model.sampling_steps=2',
          '--batch_size=4',
          '--overlay_size=48',
      ]
  )
  assert status == 0
  assert json.loads((out2 / 'a_right.json').read_text())['settings']['steps'] == 2
  right = json.loads((out / 'a_right.json').read_text())
  left = json.loads((out2 / 'a_right.json').read_text())
  np.testing.assert_allclose(
      np.asarray(left['vertices']), np.asarray(right['vertices']) * [-1, 1, 1], atol=1e-5
  )
  np.testing.assert_allclose(
      np.asarray(Image.open(out2 / 'a_right.png')).astype(int), overlay[:, ::-1], atol=2
  )


def test_weak_perspective_overlay_geometry():
  rng = np.random.default_rng(3)
  vertices_model = rng.normal(0, 1.0, (50, 3))
  camera = np.array([0.35, 0.1, -0.2])
  placed, K = predict_lib.orthographic_setup(vertices_model, camera, 200)
  from diffhand_jax.geometry import render

  pixels = render.project(placed, K)
  expected = (camera[0] * vertices_model[:, :2] + camera[1:] + 1.0) * 200 / 2.0
  np.testing.assert_allclose(pixels, expected, atol=0.05)


def test_bad_inputs_are_reported_clearly(tmp_path, capsys):
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert predict.main(['--workdir=nowhere', f'--images={empty}', f'--output={tmp_path / "o"}']) == 2
  assert 'no images' in capsys.readouterr().err
  names = ['x.png']
  (tmp_path / 'bad.json').write_text('{"x.png": [1, 2, 3')
  with pytest.raises(predict_lib.InputError, match='bad.json.*not valid JSON'):
    predict_lib.load_boxes(str(tmp_path / 'bad.json'), names)
  (tmp_path / 'inverted.json').write_text('{"x": [10, 10, 5, 20]}')
  with pytest.raises(predict_lib.InputError, match="'x.png'.*x1 > x0"):
    predict_lib.load_boxes(str(tmp_path / 'inverted.json'), names)
  (tmp_path / 'left.json').write_text('{"x": true}')
  assert predict_lib.load_left(str(tmp_path / 'left.json'), names) == {'x.png': True}
  assert predict_lib.load_left('x.png,y.png', names + ['z.png']) == {'x.png': True, 'z.png': False}
  (tmp_path / 'broken.png').write_bytes(b'\x89PNG garbage')
  with pytest.raises(predict_lib.InputError, match='broken.png'):
    predict_lib.read_image(str(tmp_path / 'broken.png'))


def test_square_crops():
  np.testing.assert_allclose(crops.square_box(None, (40, 100), 1.3), [30, 0, 70, 40])
  np.testing.assert_allclose(crops.square_box([10, 20, 30, 60], (100, 100), 1.5), [-10, 10, 50, 70])
  image = np.arange(10 * 10 * 3, dtype=np.uint8).reshape(10, 10, 3)
  crop = crops.crop_box(image, [-5, 0, 5, 10], 10)  # half outside: padded black
  assert crop.shape == (10, 10, 3) and np.all(crop[:, :4] == 0)
  np.testing.assert_array_equal(crop[:, 5:], image[:, :5])


# ------------------------------------------------------------------------------------------------
# Flags: --config overrides of the run's config, usage errors
# ------------------------------------------------------------------------------------------------


def test_override_fields_are_the_sampler_and_the_dataset_and_eval_sections():
  fields = overrides.override_fields()
  assert set(fields.model) == {'sampling_steps', 'num_hypotheses', 'eta'}
  assert {'data_dir', 'name', 'eval_split', 'config_name'} <= set(fields.dataset)
  assert {'batch_size', 'aggregate'} <= set(fields.eval)
  assert set(fields) == {'model', 'dataset', 'eval'}
  assert all(value is None for section in fields.values() for value in section.values())


def test_apply_overrides_sets_only_what_was_given():
  from diffhand_jax.runs import presets

  config = presets.base_config(dataset_name='synthetic_hands', eval_split='test')
  config.model = {'sampling_steps': 10, 'eta': 0.0, 'num_hypotheses': 1, 'width': 32}
  config.dataset.tip_ids = [1, 2, 3, 4, 5]  # as config.json gives a tuple back: a list
  fields = overrides.override_fields()
  fields.model.sampling_steps = 4
  fields.dataset.data_dir = '/data'
  fields.dataset.tip_ids = (5, 4, 3, 2, 1)
  merged = overrides.apply_overrides(config, fields)
  assert merged.model.sampling_steps == 4 and merged.model.eta == 0.0 and merged.model.width == 32
  assert merged.dataset.data_dir == '/data' and merged.dataset.tip_ids == (5, 4, 3, 2, 1)
  assert merged.eval.aggregate == 'mean'
  assert config.model.sampling_steps == 10 and config.dataset.data_dir == ''  # a copy
  assert overrides.apply_overrides(config, None).to_dict() == config.to_dict()
  assert overrides.apply_overrides(config, {'eval': {'batch_size': 3}}).eval.batch_size == 3
  with pytest.raises(ValueError, match='config.model.width cannot be overridden'):
    overrides.apply_overrides(config, {'model': {'width': 64}})


def test_config_flags_parse_types_and_start_fresh_each_time(capsys):
  from absl import flags

  flag_values = flags.FlagValues()
  flags.DEFINE_integer('batch', 1, 'a plain flag beside --config', flag_values=flag_values)

  def parse(*argv):
    return command_line.parse(
        flag_values,
        list(argv),
        prog='cmd',
        config=overrides.override_fields,
        config_help=overrides.HELP,
    )

  parse(
      '--batch=3',
      '--config.model.sampling_steps=4',
      '--config.model.eta=0.5',
      '--config.dataset.data_dir=/d',
      '--config.dataset.in_memory=false',
  )
  config = flag_values.config
  assert flag_values.batch == 3
  assert (config.model.sampling_steps, config.model.eta, config.dataset.data_dir) == (4, 0.5, '/d')
  assert config.dataset.in_memory is False and config.model.num_hypotheses is None
  parse()  # nothing of the previous parse is left over
  assert flag_values.batch == 1
  assert all(value is None for section in flag_values.config.values() for value in section.values())

  with pytest.raises(command_line.Exit) as done:
    parse('--config.model.sampling_step=4')
  err = capsys.readouterr().err
  assert done.value.code == 2 and 'unknown flag --config.model.sampling_step' in err
  assert 'Did you mean "sampling_steps"' in err and 'Traceback' not in err
  with pytest.raises(command_line.Exit) as done:
    parse('--config.model.eta=fast')
  assert done.value.code == 2 and '--config.model.eta=fast' in capsys.readouterr().err


def test_command_usage_errors_exit_2_and_help_exits_0(capsys):
  assert predict.main(['--help']) == 0
  out = capsys.readouterr().out
  assert '--box_scale' in out and 'config.model.{eta, num_hypotheses, sampling_steps}' in out
  assert predict.main(['--images=x', '--output=y']) == 2  # --workdir is required
  assert '--workdir' in capsys.readouterr().err
  assert predict.main(['--workdir=w', '--images=x', '--output=y', '--config.model.width=3']) == 2
  err = capsys.readouterr().err
  assert 'unknown flag --config.model.width' in err and 'fixed by the checkpoint' in err
  assert predict.main(['--workdir=w', '--images=x', '--output=y', '--method=best']) == 2
  assert 'aligned_mean' in capsys.readouterr().err
