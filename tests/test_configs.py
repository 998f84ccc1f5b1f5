"""Every training config has the keys docs/design.md §8 promises, and its epochs → steps arithmetic holds."""

import pytest

from diffhand_jax.runs import run_config

REQUIRED = (
    'seed',
    'batch_size',
    'num_train_steps',
    'log_every_steps',
    'eval_every_steps',
    'checkpoint_every_steps',
    'mesh',
    'model',
    'dataset',
)


@pytest.mark.parametrize('name', ['synthetic', 'freihand', 'ho3d', 'dexycb'])
def test_config_has_the_promised_keys(name):
  config = run_config.config_file(name)
  for key in REQUIRED:
    assert key in config, f'configs/{name}.py lacks {key}'
  assert 'name' in config.dataset and 'data_dir' in config.dataset
  assert config.model.img_size in (64, 224, 256)


@pytest.mark.parametrize('name', ['freihand', 'ho3d', 'dexycb'])
def test_steps_follow_epochs_and_batch(name):
  config = run_config.config_file(name)
  examples = config.dataset.num_train_examples
  assert config.num_train_steps == -(-config.epochs * examples // config.batch_size)
  config.batch_size = 128  # an override on the command line recomputes the steps
  assert config.num_train_steps == -(-config.epochs * examples // 128)
