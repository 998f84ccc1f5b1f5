"""Every training config has the keys docs/design.md §8 promises, and its epochs → steps arithmetic holds."""

import os

from absl import flags
import ml_collections
import pytest

from diffhand_jax import command_line
from diffhand_jax.models import diffhand
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


# ----- every field overridable on the command line (issue #32, item 6) -------------------------------

CONFIG_FILES = sorted(
    os.path.splitext(name)[0] for name in os.listdir(run_config.CONFIGS_DIR) if name.endswith('.py')
)


def _leaves(config: ml_collections.ConfigDict, prefix: str = ''):
  """(dotted path, value, declared type) of every leaf; a placeholder's type is the one it declares."""
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value, config.get_type(key)


def _another_value(value, field_type):
  """A value of `field_type` that differs from `value` (None for a type no override can carry)."""
  if field_type is bool:
    return True if value is None else not value
  if field_type is int:
    return (value or 0) + 3
  if field_type is float:
    return (value or 0.0) + 0.5
  if field_type is str:
    return (value or '') + 'x'
  if field_type is tuple:
    if value is None:
      return (1, 2, 3)
    return tuple(_another_value(item, type(item)) for item in value)
  return None


def _as_argument(value) -> str:
  if isinstance(value, bool):
    return str(value).lower()
  return value if isinstance(value, str) else repr(value)


def test_the_walk_covers_configs_and_placeholders():
  assert set(CONFIG_FILES) >= {'synthetic', 'freihand', 'ho3d', 'dexycb'}
  leaves = {
      path: field_type for path, _, field_type in _leaves(run_config.config_file('synthetic'))
  }
  assert leaves['model.encoder_overrides.embed_dim'] is int  # a placeholder, not a plain None
  assert leaves['dataset.tip_ids'] is tuple and leaves['sharding_rules'] is tuple


@pytest.mark.parametrize('name', CONFIG_FILES)
def test_every_config_field_is_overridable_on_the_command_line(name):
  # `--config.<path>=<a value of its type>` parses for every leaf, and sets it; a field set to a plain
  # None (type NoneType) cannot be overridden and fails here.
  path = os.path.join(run_config.CONFIGS_DIR, f'{name}.py')
  failures = []
  for field, value, field_type in _leaves(run_config.config_file(name)):
    new = _another_value(value, field_type)
    if new is None:
      failures.append(
          f'{field}: {value!r} has type {field_type.__name__}, which no override can set'
      )
      continue
    flag_values = flags.FlagValues()
    argv = [f'--config={path}', f'--config.{field}={_as_argument(new)}']
    try:
      command_line.parse(flag_values, argv, prog='test', config_file=True)
    except command_line.Exit:
      failures.append(f'{field}: {argv[1]} does not parse')
      continue
    parsed = flag_values.config
    for part in field.split('.'):
      parsed = parsed[part]
    if parsed != new:
      failures.append(f'{field}: {argv[1]} gave {parsed!r}')
  assert not failures, '\n'.join(failures)


def test_unset_encoder_overrides_change_nothing():
  # The placeholders read as None: the named model's own values are kept.
  config = run_config.config_file('synthetic')
  assert diffhand.encoder_overrides(config.model) == {}
  config.model.encoder_overrides.embed_dim = 192
  assert diffhand.encoder_overrides(config.model) == {'embed_dim': 192}


def test_dexycb_trains_the_papers_hrnet_w64_from_imagenet_weights_at_256():
  from diffhand_jax.models import diffhand, pretrained

  config = run_config.config_file('dexycb')
  assert config.model.encoder == 'hrnet_w64' and config.model.img_size == 256
  assert config.model.encoder_init == 'timm/hrnet_w64.ms_in1k'
  assert diffhand.encoder_family(config.model.encoder) == 'hrnet'
  assert pretrained.family_of(config.model.encoder).title == 'HRNet'
  assert pretrained.config_problems(config) == []
  assert config.batch_norm.statistics == 'synchronised' and not config.batch_norm.freeze
