"""The install creates no top-level `datasets` or `configs` module: Hugging Face's `datasets` (which
transformers and many users' environments import) still imports beside diffhand-jax, from outside the
repository and from its root alike."""

import os
import pathlib
import shutil
import subprocess
import sys
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
