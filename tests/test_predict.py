"""`python -m diffhand_jax.predict` end to end on a tiny trained workdir, plus its pieces."""

import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from diffhand_jax import predict
from diffhand_jax import command_line
from diffhand_jax.inference import crops, full_frame, io, overrides, pipeline
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


def _opened(dataset_config):
  """A SamplerCache of a stand-in run that has only a dataset config (no model is needed)."""
  from types import SimpleNamespace

  from diffhand_jax.inference import sampling

  return sampling.SamplerCache(
      SimpleNamespace(config=ml_collections.ConfigDict({'dataset': dataset_config}))
  )


def _json(path):
  return json.loads(path.read_text())


def test_predict_finds_every_hand_and_places_it_in_the_photo(workdir, tmp_path, capsys):
  """Whole frames: the detector's hands (box, side, score), one .obj per hand in the photo's camera,
  one overlay, one JSON with a list of hands and their MANO parameters; photos without hands and
  unreadable ones are named and skipped."""
  from diffhand_jax import mano
  from diffhand_jax.data import synthetic_frames as sf
  from diffhand_jax.inference import detection, loading

  images = tmp_path / 'images'
  images.mkdir()
  # Backs of the hands: the detector's sides are right for them (tests/test_detection.py).
  frame = sf.render_frame(
      [
          sf.FrameHand('right', (0.3, 0.5), 0.45, 'flat', back=True, skin=1.0),
          sf.FrameHand('left', (0.72, 0.5), 0.45, 'relaxed', back=True, skin=2.5),
      ],
      (240, 320),
      seed=5,
  )
  Image.fromarray(frame['image']).save(images / 'two.png')
  Image.fromarray(np.full((60, 80, 3), 90, np.uint8)).save(images / 'empty.png')
  (images / 'broken.jpg').write_bytes(b'this is not a jpeg')
  out = tmp_path / 'out'
  status = predict.main(
      [
          f'--workdir={workdir}',
          f'--images={images}',
          f'--output={out}',
          '--num_hypotheses=2',
          '--steps=2',
          '--batch_size=4',
          '--overlay_size=160',
          '--fit_mano',
      ]
  )
  err = capsys.readouterr().err
  assert status == 0, err
  assert 'broken.jpg' in err and 'no hand found in' in err and 'empty.png' in err
  assert sorted(os.listdir(out)) == ['two.json', 'two.png', 'two_hand0.obj', 'two_hand1.obj']

  regressor = np.asarray(loading.load_trained(workdir).topology.joint_regressor, np.float64)
  record = _json(out / 'two.json')
  assert record['image_size'] == [240, 320] and record['focal_source'] == 'default'
  assert record['focal_length'] == pytest.approx(400.0)  # the diagonal of 240 × 320
  K = np.asarray(record['K'])
  hands = record['hands']
  assert len(hands) == 2
  for truth in frame['hands']:
    hand = max(hands, key=lambda h: detection.box_iou(np.asarray(h['box']), truth['box']))
    assert detection.box_iou(np.asarray(hand['box']), truth['box']) > 0.6
    assert hand['hand_side'] == truth['side'] and hand['side_source'] == 'detector'
    assert hand['box_source'] == 'detector' and 0.5 <= hand['score'] <= 1.0
    vertices, joints = np.asarray(hand['vertices']), np.asarray(hand['joints'])
    assert vertices.shape == (778, 3)
    # Two hypotheses from different noise: a real spread, one number plus its per-vertex form.
    per_vertex = np.asarray(hand['vertex_uncertainty'])
    assert isinstance(hand['uncertainty'], float) and hand['uncertainty'] > 0
    assert per_vertex.shape == (778,) and np.all(per_vertex > 0)  # every vertex differs
    # The per-vertex form is a root-mean-square over hypotheses, the number a mean: never above it.
    assert hand['uncertainty'] <= per_vertex.mean() + 1e-6
    # With K = 2 the two aligned hypotheses lie equally far from their mean at every vertex, so the
    # root-mean-square of the two distances is their mean: the forms agree to the JSON's rounding (1 µm).
    assert hand['uncertainty'] == pytest.approx(per_vertex.mean(), abs=2e-6)
    # Two hypotheses from different noise are turned against each other by some angle (degrees).
    assert 0 < hand['orientation_uncertainty_deg'] <= 180 and 'uncertainty_mean' not in hand
    np.testing.assert_allclose(joints, regressor @ vertices, atol=1e-5)
    root = np.asarray(hand['root'])
    np.testing.assert_allclose(hand['vertices_camera'], vertices + root, atol=2e-6)
    np.testing.assert_allclose(hand['joints_camera'], joints + root, atol=2e-6)
    obj_vertices, obj_faces = _read_obj(out / hand['obj'])
    np.testing.assert_allclose(obj_vertices, hand['vertices_camera'], atol=2e-6)
    # The hand's crop is the square around its box.
    box = np.asarray(hand['box'])
    np.testing.assert_allclose(hand['crop_box'], crops.square_box(box, (240, 320), 1.3), atol=1e-5)
    # MANO parameters of the hand's own side that reproduce the camera-frame mesh (up to the fit's error).
    params = hand['mano']
    model = mano.load_procedural(hand['hand_side'])
    assert params['hand_model'] == f"mano.load_procedural('{hand['hand_side']}')"
    fitted = np.asarray(
        mano.forward(
            model,
            np.asarray(params['pose'])[None],
            np.asarray(params['betas'])[None],
            flat_hand_mean=params['flat_hand_mean'],
            trans=np.asarray(params['trans'])[None],
        )[0][0]
    )
    distance = np.linalg.norm(fitted - np.asarray(hand['vertices_camera']), axis=1).mean()
    # predict refines detected hands by default: the parameters are then the refined mesh itself, and
    # 'error' is its root-relative distance to the network's mesh, kept under 'network'.
    assert hand['mesh'] == 'refined' and hand['placement'] == 'landmarks'
    assert distance < 1e-5
    wrist_relative = lambda v: np.asarray(v) - regressor[0] @ np.asarray(v)
    shape_change = wrist_relative(hand['vertices_camera']) - wrist_relative(
        hand['network']['vertices_camera']
    )
    assert np.linalg.norm(shape_change, axis=1).mean() == pytest.approx(params['error'], abs=1e-5)
    assert params['reprojection_error_px'] == hand['reprojection_error_px']
    assert hand['reprojection_error_px'] < hand['network']['reprojection_error_px']
  overlay = np.asarray(Image.open(out / 'two.png'))
  assert overlay.shape == (120, 160, 3)
  assert record['settings']['color_by_uncertainty'] is False
  assert np.abs(K[:2, 2] - [159.5, 119.5]).max() < 1e-9


def test_predict_boxes_and_left_override_the_detector(workdir, tmp_path, capsys):
  images = tmp_path / 'images'
  images.mkdir()
  square = _write_image(images / 'a_right.png', 48, 48, 0)
  _write_image(images / 'b_left.jpg', 90, 60, 1)
  _write_image(images / 'c_box.png', 40, 120, 2)
  (tmp_path / 'boxes.json').write_text(json.dumps({'c_box': [[70, 5, 100, 35], [10, 5, 40, 35]]}))
  (tmp_path / 'left.json').write_text(json.dumps({'b_left.jpg': True, 'c_box': [False, True]}))
  out = tmp_path / 'out'
  args = [
      '--num_hypotheses=2',
      '--steps=2',
      '--batch_size=4',
      '--overlay_size=0',
      '--detector=none',
  ]
  status = predict.main(
      [
          f'--workdir={workdir}',
          f'--images={images}',
          f'--output={out}',
          f'--boxes={tmp_path / "boxes.json"}',
          f'--left={tmp_path / "left.json"}',
          '--focal=100',
          *args,
      ]
  )
  assert status == 0, capsys.readouterr().err
  sides = {
      name: [h['hand_side'] for h in _json(out / f'{name}.json')['hands']]
      for name in ('a_right', 'b_left', 'c_box')
  }
  assert sides == {'a_right': ['right'], 'b_left': ['left'], 'c_box': ['right', 'left']}
  boxes = _json(out / 'c_box.json')['hands']
  assert [h['box_source'] for h in boxes] == ['boxes', 'boxes']
  # 30 px × 1.3, centred on each box.
  np.testing.assert_allclose(boxes[0]['crop_box'], [85 - 19.5, 20 - 19.5, 85 + 19.5, 20 + 19.5])
  np.testing.assert_allclose(boxes[1]['crop_box'], [25 - 19.5, 20 - 19.5, 25 + 19.5, 20 + 19.5])
  record = _json(out / 'a_right.json')
  assert record['focal_source'] == 'flag' and record['focal_length'] == 100.0
  assert record['hands'][0]['box'] is None and record['hands'][0]['box_source'] == 'whole image'
  # The whole square image, at its own size: the overlay is that image where no mesh is drawn.
  overlay = np.asarray(Image.open(out / 'a_right.png')).astype(int)
  assert overlay.shape == (48, 48, 3)
  unchanged = np.all(overlay == square, axis=-1)
  assert 0.05 < unchanged.mean() <= 1.0

  # Left hands are mirrored for the model and back on output: a mirrored copy of a_right marked left
  # (same batch position, same seed, so the same noise) gives the mirror-image mesh.
  mirrored = tmp_path / 'mirrored'
  mirrored.mkdir()
  Image.fromarray(square[:, ::-1]).save(mirrored / 'a_right.png')
  out2 = tmp_path / 'out2'
  # The same number of steps, here through the run's config (--config.model.sampling_steps).
  status = predict.main(
      [
          f'--workdir={workdir}',
          f'--images={mirrored}',
          f'--output={out2}',
          '--all_left',
          '--num_hypotheses=2',
          '--config.model.sampling_steps=2',
          '--batch_size=4',
          '--detector=none',
          '--focal=100',
      ]
  )
  assert status == 0
  left = _json(out2 / 'a_right.json')
  assert left['settings']['steps'] == 2
  right, left = record['hands'][0], left['hands'][0]
  assert left['hand_side'] == 'left'
  np.testing.assert_allclose(
      np.asarray(left['vertices']), np.asarray(right['vertices']) * [-1, 1, 1], atol=1e-5
  )
  # In the camera frame too: the photo mirrored about its centre column, which is the principal point.
  np.testing.assert_allclose(
      np.asarray(left['vertices_camera']),
      np.asarray(right['vertices_camera']) * [-1, 1, 1],
      atol=1e-5,
  )


def test_color_by_uncertainty_recolours_the_hand_and_nothing_else(workdir, tmp_path, capsys):
  """The same photo, seed and hypotheses with and without --color_by_uncertainty: the same meshes, so
  the overlays differ exactly where the hand is drawn."""
  from diffhand_jax.geometry import render

  images = tmp_path / 'images'
  images.mkdir()
  photo = _write_image(images / 'hand.png', 64, 64, 4)
  args = [
      f'--workdir={workdir}',
      f'--images={images}',
      '--num_hypotheses=3',
      '--steps=2',
      '--detector=none',
      '--overlay_size=0',
      '--focal=100',
  ]
  assert predict.main(args + [f'--output={tmp_path / "plain"}']) == 0, capsys.readouterr().err
  assert predict.main(args + [f'--output={tmp_path / "c"}', '--color_by_uncertainty']) == 0
  plain = np.asarray(Image.open(tmp_path / 'plain' / 'hand.png')).astype(int)
  coloured = np.asarray(Image.open(tmp_path / 'c' / 'hand.png')).astype(int)
  record = _json(tmp_path / 'c' / 'hand.json')
  assert record['settings']['color_by_uncertainty'] is True
  hand = record['hands'][0]
  assert (
      hand['vertices_camera']
      == _json(tmp_path / 'plain' / 'hand.json')['hands'][0]['vertices_camera']
  )
  _, faces = _read_obj(tmp_path / 'c' / hand['obj'])
  vertices, K = np.asarray(hand['vertices_camera']), np.asarray(record['K'])
  drawn = render.rasterize(vertices, faces, K, (64, 64))['mask']
  # The conservative footprint: the JSON's rounded vertices may move an edge pixel's centre.
  footprint = render.coverage_mask(vertices, faces, K, (64, 64))
  changed = np.any(coloured != plain, -1)
  assert drawn.sum() > 20 and not np.any(changed & ~footprint)
  assert changed[drawn].mean() > 0.5
  np.testing.assert_array_equal(coloured[~footprint], photo[~footprint])


def test_a_run_opened_once_predicts_what_opening_the_workdir_does(workdir, tmp_path):
  """The web app opens the run once (`SamplerCache`) and reuses one compiled sampler per setting."""
  from diffhand_jax.inference import loading, sampling

  images = tmp_path / 'images'
  images.mkdir()
  _write_image(images / 'hand.png', 64, 64, 5)
  sampler = pipeline.Options(num_hypotheses=2, steps=2, detector='none')
  options = dict(overlay_size=0, focal=100.0, progress=False)
  predict_lib.predict_folder(workdir, str(images), str(tmp_path / 'own'), sampler, **options)
  cache = sampling.SamplerCache(loading.load_trained(workdir))
  for name in ('first', 'second'):
    predict_lib.predict_folder(
        'unread', str(images), str(tmp_path / name), sampler, samplers=cache, **options
    )
  own = _json(tmp_path / 'own' / 'hand.json')['hands'][0]['vertices_camera']
  for name in ('first', 'second'):
    assert _json(tmp_path / name / 'hand.json')['hands'][0]['vertices_camera'] == own
  same = dict(num_steps=2, num_hypotheses=2, eta=0.0, batch_size=8)
  assert cache.get(**same) is cache.get(**same)
  assert cache.get(**same) is not cache.get(**dict(same, num_steps=3))
  with pytest.raises(ValueError, match='overrides'):
    predict_lib.predict_folder(
        workdir,
        str(images),
        str(tmp_path / 'x'),
        sampler,
        samplers=cache,
        overrides={'model': {}},
        **options,
    )


def test_hand_uncertainty_is_articulation_not_orientation():
  """Hand-made hypotheses: identical ones have no uncertainty; ones that differ only by a rotation have
  no articulation uncertainty, only an orientation one (2θ/3 for turns of -θ, 0, +θ about one axis).
  """
  from scipy.spatial.transform import Rotation

  rng = np.random.default_rng(0)
  mesh = rng.normal(0, 0.03, (778, 3))
  same = pipeline.hand_uncertainty(np.stack([mesh] * 3)[None])
  single = pipeline.hand_uncertainty(mesh[None, None])
  for result in (same, single):
    assert result['uncertainty'] == [0.0] and result['orientation_uncertainty_deg'] == [0.0]
    np.testing.assert_allclose(result['vertex_uncertainty'], np.zeros((1, 778)), atol=1e-12)
  turns = Rotation.from_rotvec(np.outer([-30.0, 0.0, 30.0], [0.0, 0.6, 0.8]), degrees=True)
  turned = pipeline.hand_uncertainty(np.stack([mesh @ m.T for m in turns.as_matrix()])[None])
  assert turned['uncertainty'] == [0.0]
  assert turned['orientation_uncertainty_deg'] == [pytest.approx(20.0, abs=1e-3)]
  np.testing.assert_allclose(turned['vertex_uncertainty'], 0.0, atol=1e-9)
  # A shape change shows up in `uncertainty`: a 5 mm bump on every vertex of one hypothesis.
  bumped = np.stack([mesh, mesh + rng.normal(0, 0.005, mesh.shape)])[None]
  assert pipeline.hand_uncertainty(bumped)['uncertainty'][0] > 0.001


def test_photos_without_any_hand_exit_2(workdir, tmp_path, capsys):
  images = tmp_path / 'images'
  images.mkdir()
  Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(images / 'wall.png')
  status = predict.main(
      [f'--workdir={workdir}', f'--images={images}', f'--output={tmp_path / "o"}']
  )
  assert status == 2  # nothing could be processed
  assert 'wall.png' in capsys.readouterr().err


def test_weak_perspective_overlay_geometry():
  rng = np.random.default_rng(3)
  vertices_model = rng.normal(0, 1.0, (50, 3))
  camera = np.array([0.35, 0.1, -0.2])
  placed, K = full_frame.orthographic_setup(vertices_model, camera, 200)
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
  with pytest.raises(io.InputError, match='bad.json.*not valid JSON'):
    io.load_boxes(str(tmp_path / 'bad.json'), names)
  (tmp_path / 'inverted.json').write_text('{"x": [10, 10, 5, 20]}')
  with pytest.raises(io.InputError, match="'x.png'.*x1 > x0"):
    io.load_boxes(str(tmp_path / 'inverted.json'), names)
  (tmp_path / 'two.json').write_text('{"x": [[0, 0, 5, 5], [10, 10, 20, 30]]}')
  assert io.load_boxes(str(tmp_path / 'two.json'), names) == {
      'x.png': [[0, 0, 5, 5], [10, 10, 20, 30]]
  }
  (tmp_path / 'one.json').write_text('{"x.png": [0, 0, 5, 5]}')
  assert io.load_boxes(str(tmp_path / 'one.json'), names) == {'x.png': [[0, 0, 5, 5]]}
  (tmp_path / 'left.json').write_text('{"x": true}')
  assert io.load_left(str(tmp_path / 'left.json'), names) == {'x.png': True}
  assert io.load_left('x.png,y.png', names + ['z.png']) == {'x.png': True, 'z.png': False}
  with pytest.raises(
      io.InputError, match='--fit_mano and --refine=landmarks need the hand model: .*MANO_LEFT.pkl'
  ):
    pipeline.hand_models(_opened({'hand_model': 'mano', 'mano_dir': str(tmp_path)}), ['left'])
  (tmp_path / 'broken.png').write_bytes(b'\x89PNG garbage')
  with pytest.raises(io.InputError, match='broken.png'):
    io.read_image(str(tmp_path / 'broken.png'))


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
