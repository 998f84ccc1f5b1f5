"""The install creates no top-level `datasets` or `configs` module: Hugging Face's `datasets` (which
transformers and many users' environments import) still imports beside diffhand-jax, from outside the
repository and from its root alike."""

import importlib
from importlib import metadata
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

_PROBE = """
import importlib.util, os, sys
import datasets
import diffhand_jax
from diffhand_jax.data import input_pipeline
from diffhand_jax.runs import run_config
assert hasattr(datasets, "load_dataset"), datasets.__file__
assert "site-packages" in datasets.__file__, datasets.__file__
if sys.argv[1] == "outside":
  assert importlib.util.find_spec("configs") is None, importlib.util.find_spec("configs")
print(datasets.__file__)
"""


@pytest.mark.parametrize('where', ['outside', 'repository_root'])
def test_hugging_face_datasets_imports_beside_diffhand_jax(tmp_path, where):
  cwd = tmp_path if where == 'outside' else ROOT
  env = dict(os.environ, PYTHONPATH='')
  result = subprocess.run(
      [sys.executable, '-c', _PROBE, where],
      cwd=cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'site-packages' in result.stdout


def test_the_wheel_holds_only_the_package(tmp_path):
  """A regular (non-editable) install's files: the wheel built from this checkout."""
  # A copy of the checkout: an in-tree build would leave build/ and *.egg-info in the repository.
  source = tmp_path / 'source'
  shutil.copytree(
      ROOT,
      source,
      ignore=shutil.ignore_patterns(
          '.git',
          '.ci',
          '.venv',
          'venv',
          'build',
          'runs',
          '*.egg-info',
          '__pycache__',
          'bench_results',
      ),
  )
  result = subprocess.run(
      [
          sys.executable,
          '-m',
          'pip',
          'wheel',
          '--no-deps',
          '--no-build-isolation',
          '--quiet',
          '--wheel-dir',
          str(tmp_path),
          str(source),
      ],
      cwd=tmp_path,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  (wheel,) = tmp_path.glob('diffhand_jax-*.whl')
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
  tops = {name.split('/')[0] for name in names if not name.split('/')[0].endswith('.dist-info')}
  assert tops == {'diffhand_jax'}, sorted(tops)
  # The TFDS builders travel with their README, citations and checksums (TFDS reads them beside the code).
  for name in ('freihand', 'ho3d', 'dex_ycb', 'synthetic_hands'):
    folder = f'diffhand_jax/data/builders/{name}/'
    assert {
        folder + f
        for f in (f'{name}_dataset_builder.py', 'README.md', 'CITATIONS.bib', 'checksums.tsv')
    } <= set(names), name
  assert 'diffhand_jax/assets/procedural_hand.npz' in names
  # The hand detector's models travel with their licence and provenance (no download at run time).
  for name in (
      'palm_detection_full.tflite',
      'hand_landmark_full.tflite',
      'LICENSE',
      'PROVENANCE.md',
  ):
    assert f'diffhand_jax/assets/detector/{name}' in names, name


def _declared_scripts() -> dict[str, str]:
  with open(ROOT / 'pyproject.toml', 'rb') as f:
    return tomllib.load(f)['project']['scripts']


def test_every_console_script_runs_its_command():
  """Each command of [project.scripts] is installed and answers --help as its `python -m` form does
  (exit status 0, the module's own usage text)."""
  declared = _declared_scripts()
  assert {'diffhand-train', 'diffhand-predict', 'diffhand-app'} <= set(declared)
  installed = {
      entry.name: entry.value
      for entry in metadata.entry_points(group='console_scripts')
      if entry.name.startswith('diffhand-')
  }
  if not installed:
    pytest.skip('the installed metadata predates [project.scripts]: run `pip install -e .` again')
  assert installed == declared
  scripts = pathlib.Path(sysconfig.get_path('scripts'))
  running = {}
  for name in declared:
    executable = shutil.which(name) or str(scripts / name)
    running[name] = subprocess.Popen(
        [executable, '--help'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
  for name, process in running.items():
    out, err = process.communicate(timeout=300)
    module = declared[name].split(':')[0]
    assert process.returncode == 0, f'{name} --help: {err[-2000:]}'
    usage = importlib.import_module(module).__doc__.strip().splitlines()[0]
    assert usage in out, f'{name} --help printed {out[:300]!r}'
