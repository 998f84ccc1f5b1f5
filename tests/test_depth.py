"""The depth condition (issue #33): one normalisation for metric and estimated depth, depth fed through
the input pipeline with exactly the RGB's crop, rotation, scale and flip (and through input workers
bit for bit), the estimator's maps stored and read back, and a depth model started from an RGB
model's weights predicting exactly what the RGB model predicts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffhand_jax.data import depth as depth_lib, input_pipeline

AUGMENT = {'scale_range': (0.8, 1.25), 'max_rotation': 0.7, 'max_translation': 0.1}


def test_metric_and_inverse_depth_normalise_to_the_same_map():
  rng = np.random.default_rng(0)
  z = rng.uniform(0.3, 0.9, (2, 6, 7)).astype(np.float32)  # metres
  z[0, 0, :3] = 0.0  # no reading there
  from_metric = depth_lib.normalise_metric(z)
  # An estimator's relative inverse depth: a/z + b for an unknown scale a > 0 and shift b.
  estimated = 3.7 / np.where(z > 0, z, 1.0) + 12.0
  from_inverse = depth_lib.normalise_inverse(estimated)
  valid = z > 0
  # By hand: (1/z − min 1/z) / (max 1/z − min 1/z) over the valid pixels.
  inverse = np.where(valid, 1.0 / np.where(valid, z, 1.0), np.nan)
  low = np.nanmin(inverse, axis=(1, 2), keepdims=True)
  high = np.nanmax(inverse, axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(from_metric[valid], ((inverse - low) / (high - low))[valid], atol=1e-6)
  assert np.all(from_metric[~valid] == 0)
  np.testing.assert_allclose(from_inverse[1], from_metric[1], atol=2e-5)  # the unit never matters
  np.testing.assert_allclose(depth_lib.normalise_metric(z * 1000.0), from_metric, atol=1e-6)
  # The same in jax (inference normalises inside the compiled call).
  np.testing.assert_allclose(
      np.asarray(jax.jit(lambda d: depth_lib.normalise_inverse(d, jnp))(estimated)),
      from_inverse,
      atol=1e-6,
  )


def _pattern(size: int) -> np.ndarray:
  """(size, size) uint8 levels 0..255: a gradient with a sharp-edged disc and a bar, so a shift of one
  pixel between two warped copies shows."""
  y, x = np.mgrid[:size, :size].astype(np.float64)
  levels = 60.0 + 100.0 * x / (size - 1)
  levels[(x - 0.6 * size) ** 2 + (y - 0.4 * size) ** 2 < (0.2 * size) ** 2] = 255.0
  levels[int(0.7 * size) : int(0.8 * size), 3 : size // 2] = 0.0
  return levels.astype(np.uint8)


def _examples(count: int, size: int = 40) -> dict[str, np.ndarray]:
  """Frames whose RGB shows the level p of every pixel and whose metric depth is 1 / (0.5 + p/255):
  normalised, the depth is p / 255 again."""
  rng = np.random.default_rng(3)
  levels = np.stack([np.roll(_pattern(size), shift, axis=1) for shift in range(count)])
  depth = (1.0 / (0.5 + levels.astype(np.float32) / 255.0)).astype(np.float32)
  K = np.tile(np.array([[50.0, 0, 19.5], [0, 50.0, 19.5], [0, 0, 1]], np.float32), (count, 1, 1))
  joints = rng.normal([0, 0, 0.5], 0.02, (count, 21, 3)).astype(np.float32)
  vertices = rng.normal([0, 0, 0.5], 0.02, (count, 778, 3)).astype(np.float32)
  return {
      'image': np.repeat(levels[..., None], 3, axis=-1),
      'depth': depth,
      'K': K,
      'joints_3d': joints,
      'vertices_3d': vertices,
      'has_3d': np.ones(count, bool),
      'hand_side': np.array(['right', 'left', 'left', 'right'][:count]),
      'bbox': np.tile(np.array([[8.0, 6.0, 30.0, 31.0]], np.float32), (count, 1)),
  }


def _levels(batch) -> np.ndarray:
  """The RGB levels back from the normalised image (B, S, S): channel 0, un-normalised."""
  image = batch['image'][..., 0] * input_pipeline.IMAGENET_STD[0] + input_pipeline.IMAGENET_MEAN[0]
  return image * 255.0


@pytest.mark.parametrize('crop_margin', [0.3, None])
def test_depth_and_rgb_line_up_pixel_for_pixel_after_augmentation(crop_margin):
  raw = _examples(4)
  rngs = [np.random.default_rng([7, i]) for i in range(4)]
  batch = input_pipeline.prepare_batch(
      raw,
      vertex_scale=0.1,
      image_size=24,
      crop_margin=crop_margin,
      rngs=rngs,
      augment=AUGMENT,
      depth_source='dataset',
  )
  assert batch['depth'].shape == (4, 24, 24) and batch['depth'].dtype == np.float32
  levels = _levels(batch)
  # The same bilinear map of the same levels: they differ only by the uint8 rounding of the image.
  np.testing.assert_allclose(batch['depth'] * 255.0, levels, atol=1.01)
  # The test can fail: the depth one pixel off, or left unflipped for a left hand, is far from the RGB.
  assert np.abs(np.roll(batch['depth'], 1, axis=2) * 255.0 - levels).max() > 50
  unflipped = input_pipeline.prepare_batch(
      dict(raw, hand_side=np.array(['right'] * 4)),
      vertex_scale=0.1,
      image_size=24,
      crop_margin=crop_margin,
      rngs=[np.random.default_rng([7, i]) for i in range(4)],
      augment=AUGMENT,
      depth_source='dataset',
  )
  assert np.abs(unflipped['depth'][1] * 255.0 - levels[1]).max() > 50


def test_the_whole_frame_resized_keeps_depth_and_rgb_aligned():
  batch = input_pipeline.prepare_batch(
      _examples(2), vertex_scale=0.1, image_size=20, depth_source='dataset'
  )
  np.testing.assert_allclose(batch['depth'] * 255.0, _levels(batch), atol=1.01)


def test_stored_maps_read_back_by_example_index(tmp_path):
  maps = np.random.default_rng(0).uniform(0, 1, (7, 5, 6)).astype(np.float32)
  directory = str(tmp_path / 'depth' / 'train')
  depth_lib.write_meta(directory, {'num_examples': 7, 'shard_size': 3, 'estimator': 'test'})
  for start, stop in depth_lib.shard_ranges(7, 3)[:2]:
    depth_lib.write_shard(directory, start, stop, maps[start:stop])
  with pytest.raises(FileNotFoundError, match=r'rows_00000006_00000007\.npy: missing .*rerun'):
    depth_lib.StoredDepth(directory)
  assert depth_lib.missing_shards(directory, 7, 3) == [(6, 7)]
  depth_lib.write_shard(directory, 6, 7, maps[6:])
  stored = depth_lib.StoredDepth(directory)
  np.testing.assert_allclose(stored.read([6, 0, 4, 4]), maps[[6, 0, 4, 4]], atol=0.5 / 65535)
  with pytest.raises(FileNotFoundError, match='estimate_depth'):
    depth_lib.StoredDepth(str(tmp_path / 'nothing'))


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """synthetic_hands/tiny (6 examples, with its rendered metric depth) as ArrayRecord, streamed."""
  from diffhand_jax.data import splits

  root = tmp_path_factory.mktemp('depth')
  config = {'name': 'synthetic_hands', 'config_name': 'tiny', 'data_dir': str(root / 'tfds')}
  return splits.SplitSource(
      splits.get_builder(config), 'train', features=input_pipeline.splits.FEATURES + ('depth',)
  )


@pytest.mark.parametrize(
    'depth_source', [pytest.param('dataset', marks=pytest.mark.slow), 'estimator']
)
def test_depth_batches_are_bit_identical_with_input_workers(source, depth_source, tmp_path):
  if depth_source == 'estimator':  # maps stored beside the data, read by index in each worker
    directory = str(tmp_path / 'depth')
    size = source.read([0], ['image'])['image'].shape[1]
    maps = np.random.default_rng(1).uniform(0, 1, (source.num_examples, size, size))
    depth_lib.write_meta(directory, {'num_examples': source.num_examples, 'shard_size': 4})
    for start, stop in depth_lib.shard_ranges(source.num_examples, 4):
      depth_lib.write_shard(directory, start, stop, maps[start:stop])
    source = depth_lib.attach(source, depth_lib.StoredDepth(directory))
  options = dict(
      batch_size=4,
      seed=5,
      vertex_scale=0.1,
      image_size=24,
      crop_margin=0.2,
      augment=AUGMENT,
      depth_source=depth_source,
  )
  expected = [input_pipeline.train_batch(source, step, **options) for step in range(3)]
  with input_pipeline.train_batches(source, start_step=0, num_workers=2, **options) as batches:
    got = [next(batches) for _ in range(3)]
  for first, second in zip(expected, got):
    assert first.keys() == second.keys() and 'depth' in first
    for key in first:
      np.testing.assert_array_equal(first[key], second[key], err_msg=key)
  assert np.ptp(expected[0]['depth']) > 0.5  # real maps, not an empty column


def test_a_depth_model_from_rgb_weights_predicts_what_the_rgb_model_predicts():
  """`state.with_variables` copies every RGB param; the depth block's zero projection adds exactly 0."""
  from diffhand_jax.models import diffhand
  from diffhand_jax.runs import model_presets, state as state_lib

  config = model_presets.get_model_config('tiny')
  config.img_size = 32
  rgb = diffhand.build_model(config)
  config.use_depth = True
  model = diffhand.build_model(config)
  params = diffhand.init(model, jax.random.key(2), 32)
  # RGB params of other values: the same tree without the block (one init compiled, not two).
  rgb_params = jax.tree_util.tree_map(lambda p: p + 0.01 * jnp.cos(p), params)
  rgb_params = {name: value for name, value in rgb_params.items() if name != 'depth_block'}
  state = state_lib.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state={}, ema_params={}, rng=jnp.zeros(2)
  )
  shardings = jax.tree_util.tree_map(
      lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), state
  )
  moved = state_lib.with_variables(
      state, {'params': jax.tree_util.tree_map(np.asarray, rgb_params)}, shardings
  )
  images = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
  depth = jax.random.uniform(jax.random.key(4), (2, 32, 32))
  key = jax.random.key(5)
  expected = diffhand.make_reconstruct_fn(rgb, num_steps=1, num_hypotheses=2)(
      rgb_params, images, key
  )
  got = diffhand.make_reconstruct_fn(model, num_steps=1, num_hypotheses=2)(
      moved.params, images, key, depth=depth
  )
  for name in expected:
    np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]), err_msg=name)
  # The depth block is there and its inner weights are not zero: it can learn.
  assert np.abs(np.asarray(moved.params['depth_block']['conv_in']['kernel'])).max() > 0
  config.width = 64  # another decoder: refused, naming the leaves
  other = state.replace(params=diffhand.param_shapes(diffhand.build_model(config), 32))
  with pytest.raises(ValueError, match=r'init_from.*decoder.*shape'):
    state_lib.with_variables(other, {'params': rgb_params}, shardings.replace(params=None))


def test_init_from_refuses_its_own_workdir_and_a_run_without_checkpoints(tmp_path):
  from diffhand_jax.runs import init_from, run_config

  config = run_config.config_file('synthetic')
  config.model.use_depth = True
  config.init_from = str(tmp_path / 'rgb')
  assert 'own --workdir' in init_from.init_from_problem(config, str(tmp_path / 'rgb'))
  assert 'no checkpoint' in init_from.init_from_problem(config, str(tmp_path / 'depth'))
  config.init_from = None
  assert init_from.init_from_problem(config, str(tmp_path / 'depth')) is None


def test_the_table_6_stages_are_the_rgb_run_and_a_fine_tune_from_it(tmp_path):
  from diffhand_jax.runs import run_config
  from diffhand_jax.training import depth_table

  config = run_config.config_file('freihand_depth')
  rgb, depth = depth_table.stage_configs(config, str(tmp_path))
  assert not rgb.model.use_depth and rgb.init_from is None
  assert rgb.num_train_steps == config.num_train_steps  # the paper's 100 epochs
  assert depth.model.use_depth and depth.init_from == str(tmp_path / 'rgb')
  # 10 epochs of FreiHAND's 130,240 images at batch 64, by hand.
  assert depth.num_train_steps == -(-10 * 130240 // 64) == config.depth.finetune_steps
  rows = {'rgb': {'pa_mpvpe': 7.0, 'mpvpe': 14.0, 'pa_mpjpe': 6.0, 'mpjpe': 13.0}}
  rows['depth'] = {'pa_mpvpe': 6.9, 'mpvpe': 13.5, 'pa_mpjpe': 5.9, 'mpjpe': None}
  lines = depth_table.table(rows, 'freihand').splitlines()
  assert lines[2] == '| RGB | 7.00 | 14.00 | 6.00 | 13.00 |  |  |'
  assert lines[3] == '| RGB + depth | 6.90 | 13.50 | 5.90 | server | +0.50 | +0.1 |'
