"""The inference core (inference/pipeline.py): hands from an image array in memory, its options and
how every command builds them from its flags."""

import dataclasses
import json
import os

from absl import flags
import numpy as np
import pytest
from PIL import Image

from diffhand_jax import command_line
from diffhand_jax.inference import io, loading, pipeline, predict, sampling, submission, video


@pytest.fixture(scope='module')
def opened():
  from _inference_workdir import tiny_workdir

  return sampling.SamplerCache(loading.load_trained(tiny_workdir()[0]))


def _image(height, width, seed):
  return np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_reconstruct_in_memory_is_what_predict_writes(opened, tmp_path, monkeypatch):
  """The same photo through `reconstruct` (an array, nothing on disk) and through `predict_folder`
  (files): the same hands, to the JSON's rounding; the core writes no file anywhere."""
  image = _image(72, 96, 0)
  options = pipeline.Options(detector='none', num_hypotheses=2, steps=2, seed=3)
  empty = tmp_path / 'cwd'
  empty.mkdir()
  monkeypatch.chdir(empty)
  monkeypatch.setenv('TMPDIR', str(empty))
  hands = pipeline.reconstruct(
      opened, image, options, boxes=[[10, 8, 50, 60]], left=[True], focal=90
  )
  assert os.listdir(empty) == []
  assert len(hands) == 1 and hands[0].side == 'left' and hands[0].crop.box_source == 'boxes'
  assert hands[0].crop.side_source == 'left flag' and hands[0].mano is None

  folder = tmp_path / 'photos'
  folder.mkdir()
  Image.fromarray(image).save(folder / 'p.png')
  (tmp_path / 'boxes.json').write_text(json.dumps({'p': [10, 8, 50, 60]}))
  predict.predict_folder(
      None,
      str(folder),
      str(tmp_path / 'out'),
      options,
      boxes=str(tmp_path / 'boxes.json'),
      all_left=True,
      focal=90.0,
      progress=False,
      samplers=opened,
  )
  (written,) = json.loads((tmp_path / 'out' / 'p.json').read_text())['hands']
  hand = hands[0]
  for key, value in (
      ('vertices_camera', hand.vertices_camera),
      ('joints', hand.joints),
      ('root', hand.root),
      ('crop_box', hand.crop.crop_box),
      ('vertex_uncertainty', hand.vertex_uncertainty),
  ):
    np.testing.assert_allclose(value, written[key], atol=1e-6, err_msg=key)
  assert written['uncertainty'] == hands[0].uncertainty


def test_a_photo_that_cannot_be_used_is_named_and_the_others_go_on(opened):
  photos = [
      pipeline.Photo(_image(8, 40, 1), name='thin.png'),
      pipeline.Photo(_image(64, 64, 2), name='far.png', boxes=[[100, 100, 120, 120]]),
      pipeline.Photo(_image(64, 64, 3), name='good.png'),
  ]
  options = pipeline.Options(detector='none', num_hypotheses=1, steps=1)
  thin, far, good = pipeline.reconstruct_photos(opened, photos, options)
  assert thin.error.startswith('thin.png: 40×8 pixels is too small') and not thin.hands
  assert 'far.png: the box' in far.error and 'lies outside' in far.error
  assert good.error is None and len(good.hands) == 1 and good.focal_source == 'default'
  assert good.focal == pytest.approx(np.hypot(64, 64))
  with pytest.raises(io.InputError, match='too small'):
    pipeline.reconstruct(opened, photos[0].image, options)


def test_the_fit_refuses_before_sampling_without_hand_model_files(opened, tmp_path, monkeypatch):
  config = opened.run.config.copy_and_resolve_references()
  config.dataset.hand_model = 'mano'
  config.dataset.mano_dir = str(tmp_path)
  run = dataclasses.replace(opened.run, config=config)
  cache = sampling.SamplerCache(run)
  monkeypatch.setattr(sampling.Sampler, 'predict', lambda *a, **k: pytest.fail('sampled'))
  options = pipeline.Options(detector='none', fit_mano=True)
  with pytest.raises(
      pipeline.HandModelUnavailable,
      match='--fit_mano and --refine=landmarks need the hand model: .*MANO_RIGHT.pkl',
  ):
    pipeline.reconstruct(cache, _image(64, 64, 4), options)


@pytest.mark.parametrize(
    'change, flag',
    [
        (dict(box_scale=0.0), '--box_scale'),
        (dict(num_hypotheses=0), '--num_hypotheses'),
        (dict(batch_size=0), '--batch_size'),
        (dict(steps=0), '--steps'),
        (dict(method='median'), '--method'),
    ],
)
def test_options_name_the_flag_of_a_bad_value(change, flag):
  with pytest.raises(io.InputError, match=flag):
    dataclasses.replace(pipeline.DEFAULTS, **change).check()


def test_every_command_builds_its_options_from_its_flags():
  """command_line.inference_options: each Options field from the flag of its name, the TTA flags
  into a TTAConfig, the command's base for fields it has no flag for, and fixed values last."""
  values = flags.FlagValues()
  command_line.define_sampling_flags(values, num_hypotheses=None)
  flags.DEFINE_float('box_scale', 1.3, '', flag_values=values)
  values(['prog', '--method=medoid', '--seed=7', '--tta', '--tta_angles=-5,5', '--box_scale=1.1'])
  options = command_line.inference_options(values, submission.SUBMISSION_DEFAULTS)
  assert options.method == 'medoid' and options.seed == 7 and options.box_scale == 1.1
  assert options.tta.angles_deg == (-5.0, 5.0) and options.tta.scales == (0.9, 1.0, 1.1)
  # No flag for the batch size or the steps: the base's (submission: the run's config decides).
  assert options.num_hypotheses is None and options.batch_size is None and options.steps is None
  fixed = command_line.inference_options(values, video.VIDEO_DEFAULTS, num_hypotheses=1)
  assert fixed.num_hypotheses == 1 and fixed.detector == 'none' and fixed.method == 'medoid'
  values.unparse_flags()
  values(['prog'])  # --tta off
  assert command_line.inference_options(values).tta is None
