"""A tiny trained workdir shared by the inference tests (test_predict.py, test_submission.py,
test_hypotheses.py): trained once per pytest process, 4 steps on synthetic_hands/tiny, as
tests/test_train.py does it."""

import atexit
import functools
import os
import shutil
import tempfile


def tiny_config(data_dir):
  from diffhand_jax.runs import model_presets, run_config

  config = run_config.config_file('synthetic')
  config.dataset.config_name = 'tiny'
  config.dataset.data_dir = str(data_dir)
  config.model = model_presets.get_model_config('tiny')
  config.loss.lambda_orientation = 0.0  # the tiny model has no orientation head
  config.model.img_size = 32
  config.model.sampling_steps = 2
  config.batch_size = 2
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 2
  config.eval.batch_size = 3
  config.eval.num_export = 0
  return config


def write_tiny_config_file(path, data_dir, **overrides) -> str:
  """A config file for main (``--config=PATH``): the tiny run, with ``overrides`` set in order."""
  tests = os.path.dirname(os.path.abspath(__file__))
  lines = [
      'import sys',
      f'sys.path.insert(0, {tests!r})',
      'from _inference_workdir import tiny_config',
      'def get_config():',
      f'  config = tiny_config({str(data_dir)!r})',
  ]
  lines += [f'  config.{key} = {value!r}' for key, value in overrides.items()]
  with open(path, 'w') as f:
    f.write('\n'.join(lines + ['  return config', '']))
  return str(path)


@functools.cache
def tiny_workdir() -> tuple[str, str]:
  """(workdir, tfds data_dir) of a 4-step run; removed when the process exits."""
  from diffhand_jax.training import train

  base = tempfile.mkdtemp(prefix='diffhand_inference_tests_')
  atexit.register(shutil.rmtree, base, True)
  data_dir = os.path.join(base, 'tfds')
  workdir = os.path.join(base, 'run')
  train.train_and_evaluate(tiny_config(data_dir), workdir)
  return workdir, data_dir
