"""Every training config has the keys DESIGN §8 promises, and its epochs → steps arithmetic holds."""

import importlib

import pytest

REQUIRED = ('seed', 'batch_size', 'num_train_steps', 'log_every_steps', 'eval_every_steps',
            'checkpoint_every_steps', 'mesh', 'model', 'dataset')


@pytest.mark.parametrize('name', ['synthetic', 'freihand', 'ho3d', 'dexycb'])
def test_config_has_the_promised_keys(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  for key in REQUIRED:
    assert key in config, f'configs/{name}.py lacks {key}'
  assert 'name' in config.dataset and 'data_dir' in config.dataset
  assert config.model.img_size in (64, 224, 256)


@pytest.mark.parametrize('name', ['freihand', 'ho3d', 'dexycb'])
def test_steps_follow_epochs_and_batch(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  examples = config.dataset.num_train_examples
  assert config.num_train_steps == -(-config.epochs * examples // config.batch_size)
  config.batch_size = 128  # an override on the command line recomputes the steps
  assert config.num_train_steps == -(-config.epochs * examples // 128)
