"""The paper's job end to end, as a researcher runs it, on the FreiHAND fixture with the model shrunk on the
command line: `tfds build`, then `main --config=configs/freihand.py` from a pretrained timm-format file,
its encoder at step 0 equal to the file; the file deleted, then resume, evaluate, the submission and
`predict`, none of which opens it again; then the same start from a Hugging Face Hub id, offline, through a
cache this test lays out itself."""

import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
safetensors_torch = pytest.importorskip('safetensors.torch')

from diffhand_jax import main as main_command  # noqa: E402
from diffhand_jax import predict as predict_command  # noqa: E402
from diffhand_jax import submission as submission_command  # noqa: E402
from diffhand_jax.data import fixtures  # noqa: E402
from diffhand_jax.inference import loading  # noqa: E402
from diffhand_jax.models import pretrained  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENCODER = 'deit_tiny_patch16_224'
SHRINK = {'embed_dim': 32, 'depth': 2, 'num_heads': 2}
HUB_ID = 'timm/deit_tiny_for_tests.fixture'


def _shrunk_freihand(workdir, data_dir, encoder_init, steps):
  """main's command line: configs/freihand.py, the model shrunk to seconds on a CPU."""
  return [
      f'--config={os.path.join(REPO, "configs", "freihand.py")}',
      f'--workdir={workdir}',
      f'--config.dataset.data_dir={data_dir}',
      f'--config.model.encoder_init={encoder_init}',
      f'--config.model.encoder={ENCODER}',
      *[f'--config.model.encoder_overrides.{k}={v}' for k, v in SHRINK.items()],
      '--config.model.img_size=32',
      '--config.model.width=32',
      '--config.model.num_heads=2',
      '--config.model.num_blocks=1',
      '--config.model.sampling_steps=2',
      '--config.batch_size=2',
      f'--config.num_train_steps={steps}',
      '--config.log_every_steps=1',
      '--config.eval_every_steps=1000',
      '--config.checkpoint_every_steps=1',
      '--config.eval.batch_size=2',
      '--config.eval.num_export=0',
  ]


def _timm_file(path):
  """A small random timm ViT saved as timm saves it (its state dict in a .safetensors file)."""
  torch.manual_seed(0)
  model = timm.create_model(ENCODER, pretrained=False, num_classes=0, **SHRINK)
  state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
  safetensors_torch.save_file(state, str(path))
  return {name: tensor.numpy() for name, tensor in state.items()}


def _assert_encoder_is_the_file(params, state_dict):
  """The Flax encoder's leaves against the timm tensors they come from (kernels are transposed)."""
  encoder = params['encoder']
  np.testing.assert_array_equal(np.asarray(encoder['cls_token']), state_dict['cls_token'])
  np.testing.assert_array_equal(np.asarray(encoder['norm']['scale']), state_dict['norm.weight'])
  block = encoder['blocks_1']
  np.testing.assert_array_equal(
      np.asarray(block['mlp']['fc2']['bias']), state_dict['blocks.1.mlp.fc2.bias']
  )
  np.testing.assert_array_equal(
      np.asarray(block['mlp']['fc1']['kernel']), state_dict['blocks.1.mlp.fc1.weight'].T
  )


@pytest.fixture(scope='module')
def freihand(tmp_path_factory):
  """The FreiHAND fixture, built by the tfds command line into a data dir; MANO stand-ins."""
  root = tmp_path_factory.mktemp('freihand_e2e')
  mano_dir = fixtures.write_mano_standins(str(root / 'mano'))
  fixtures.make_freihand(str(root / 'freihand'), mano_dir, num_train=3, num_eval=2)
  tfds_cli = os.path.join(os.path.dirname(sys.executable), 'tfds')
  env = dict(os.environ, DIFFHAND_MANO_DIR=mano_dir, TF_CPP_MIN_LOG_LEVEL='2')
  result = subprocess.run(
      [
          tfds_cli,
          'build',
          'datasets/freihand',
          f'--manual_dir={root / "freihand"}',
          f'--data_dir={root / "tfds"}',
          '--file_format=array_record',
      ],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return {'root': root, 'mano_dir': mano_dir, 'data_dir': str(root / 'tfds')}


def test_train_from_a_timm_file_delete_it_resume_evaluate_submit_predict(
    freihand, tmp_path, monkeypatch, capsys
):
  monkeypatch.setenv('DIFFHAND_MANO_DIR', freihand['mano_dir'])
  weights = tmp_path / 'deit_tiny_random.safetensors'
  state_dict = _timm_file(weights)
  workdir = tmp_path / 'run'

  # Step 0: the encoder is the file (the position embedding resampled 224 -> 32 px is the one exception).
  assert main_command.main(_shrunk_freihand(workdir, freihand['data_dir'], weights, steps=0)) == 0
  run = loading.load_trained(str(workdir))
  assert run.step == 0
  _assert_encoder_is_the_file(run.params, state_dict)

  # Nothing after the start opens the file again: resume, evaluate, submit and predict without it.
  weights.unlink()
  assert main_command.main(_shrunk_freihand(workdir, freihand['data_dir'], weights, steps=2)) == 0
  out = capsys.readouterr().out
  assert 'resumed from step 0' in out and 'step 2/2' in out
  evaluate = _shrunk_freihand(workdir, freihand['data_dir'], weights, steps=2) + [
      '--config.mode=evaluate'
  ]
  assert main_command.main(evaluate) == 0
  assert loading.load_trained(str(workdir)).step == 2

  prediction = tmp_path / 'pred.zip'
  assert (
      submission_command.main(
          [
              f'--workdir={workdir}',
              '--benchmark=freihand',
              f'--output={prediction}',
              f'--config.dataset.data_dir={freihand["data_dir"]}',
          ]
      )
      == 0
  )
  with zipfile.ZipFile(prediction) as archive:
    assert archive.namelist() == ['pred.json']

  images = freihand['root'] / 'freihand' / 'evaluation' / 'rgb'
  output = tmp_path / 'predicted'
  # The fixture's frames are crops around the hand already: no detection, the centred square.
  status = predict_command.main(
      [
          f'--workdir={workdir}',
          f'--images={images}',
          f'--output={output}',
          '--num_hypotheses=2',
          '--detector=none',
      ]
  )
  assert status == 0
  assert {f'{name[:-4]}.json' for name in os.listdir(images)} <= set(os.listdir(output))


def _hub_cache(hf_home, repo_id, weights):
  """The standard Hugging Face cache layout of one file of one repository, as hf_hub_download leaves it."""
  revision = 'a' * 40
  repo_dir = os.path.join(hf_home, 'hub', 'models--' + repo_id.replace('/', '--'))
  snapshot = os.path.join(repo_dir, 'snapshots', revision)
  os.makedirs(snapshot)
  os.makedirs(os.path.join(repo_dir, 'refs'))
  with open(os.path.join(repo_dir, 'refs', 'main'), 'w') as f:
    f.write(revision)
  shutil.copy(weights, os.path.join(snapshot, pretrained.HUB_FILENAME))


def test_start_from_a_hub_id_offline_through_the_cache(freihand, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv('DIFFHAND_MANO_DIR', freihand['mano_dir'])
  state_dict = _timm_file(tmp_path / 'weights.safetensors')
  hf_home = str(tmp_path / 'hf_home')
  _hub_cache(hf_home, HUB_ID, tmp_path / 'weights.safetensors')
  # HF_HOME and HF_HUB_OFFLINE as a cluster node sets them, read by huggingface_hub in a fresh process.
  env = dict(os.environ, HF_HOME=hf_home, HF_HUB_OFFLINE='1')
  probe = 'from diffhand_jax.models import pretrained as w; ' f'print(w.resolve({HUB_ID!r}))'
  found = subprocess.run(
      [sys.executable, '-c', probe], env=env, capture_output=True, text=True, timeout=120
  )
  assert found.returncode == 0, found.stderr[-2000:]
  assert found.stdout.strip().startswith(os.path.join(hf_home, 'hub'))

  # The whole start, in this process, with the same settings.
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', os.path.join(hf_home, 'hub'))
  workdir = tmp_path / 'run'
  assert main_command.main(_shrunk_freihand(workdir, freihand['data_dir'], HUB_ID, steps=0)) == 0
  _assert_encoder_is_the_file(loading.load_trained(str(workdir)).params, state_dict)

  # A repository that is not in the cache: one message naming it, the file and the command to fill it.
  status = main_command.main(
      _shrunk_freihand(tmp_path / 'other', freihand['data_dir'], 'timm/not_cached', steps=0)
  )
  err = capsys.readouterr().err
  assert (
      status == 2
      and 'timm/not_cached' in err
      and 'model.safetensors' in err
      and 'hf download' in err
  )
  assert 'Traceback' not in err and not (tmp_path / 'other').exists()
