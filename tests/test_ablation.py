"""The ablation driver: Table 4's and Table 5's variants, the prerequisite check of every variant before
compute, and a reduced Table 5 trained end to end (slow)."""

import json
import os

import pytest

from diffhand_jax import ablation as ablation_command
from diffhand_jax.models import diffhand, hrnet, vit
from diffhand_jax.runs import run_config
from diffhand_jax.training import ablation


def test_table4_variants_set_decoder_and_diffusion_only():
  base = run_config.config_file('freihand')
  configs = ablation.variant_configs(base, table=4)
  assert list(configs) == [name for name, _, _ in ablation.TABLE4_VARIANTS]
  for name, decoder, use_diffusion in ablation.TABLE4_VARIANTS:
    changed = configs[name]
    assert (changed.model.decoder, changed.model.diffusion) == (decoder, use_diffusion)
    changed.model.decoder, changed.model.diffusion = base.model.decoder, base.model.diffusion
    assert changed.to_dict() == base.to_dict()  # nothing else differs


def test_table5_variants_are_the_papers_two_encoders_with_their_weights():
  base = run_config.config_file('dexycb')
  configs = ablation.variant_configs(base, table=5)
  assert {n: (c.model.encoder, c.model.encoder_init) for n, c in configs.items()} == {
      'deit_large': ('deit3_large_patch16_224', 'timm/deit3_large_patch16_224.fb_in22k_ft_in1k'),
      'hrnet_w64': ('hrnet_w64', 'timm/hrnet_w64.ms_in1k'),
  }
  assert isinstance(
      diffhand.build_model(configs['deit_large'].model).encoder, vit.VisionTransformer
  )
  assert isinstance(diffhand.build_model(configs['hrnet_w64'].model).encoder, hrnet.HRNet)
  assert (
      configs['hrnet_w64'].model.img_size == base.model.img_size == 256
  )  # the dataset's size stays


def test_reduced_table5_encoders_build_and_start_from_random_weights():
  base = run_config.config_file('synthetic')
  configs = ablation.variant_configs(base, table=5, reduced_encoders=True)
  vit_encoder = diffhand.build_model(configs['deit_reduced'].model).encoder
  assert (vit_encoder.embed_dim, vit_encoder.depth, vit_encoder.patch_size) == (128, 4, 8)
  hrnet_encoder = diffhand.build_model(configs['hrnet_w18_small'].model).encoder
  assert hrnet_encoder.stages == hrnet.HRNET_CONFIGS['hrnet_w18_small'].stages
  assert all(c.model.encoder_init == '' for c in configs.values())
  with pytest.raises(ValueError, match='--table=5'):
    ablation.variant_configs(base, table=4, reduced_encoders=True)


def test_table5_markdown_puts_the_papers_figures_beside_ours():
  rows = {
      name: {'pa_mpvpe': 1.0 + i, 'mpvpe': 2.0, 'pa_mpjpe': 3.0, 'mpjpe': 4.0}
      for i, name in enumerate(('hrnet_w64', 'deit_large'))
  }
  lines = ablation.table(rows, 5, 'freihand').splitlines()
  assert lines[2].startswith('| deit_large | 2.00 | 2.00 | 3.00 | 4.00 |')  # the paper's row order
  assert 'E_PV 6.48 / E_V 13.16' in lines[2]
  assert lines[3].startswith('| hrnet_w64 | 1.00 |')


def test_every_variants_missing_weights_are_named_once_before_any_compute(
    tmp_path, monkeypatch, capsys
):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  # huggingface_hub reads these once, when first imported
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_OFFLINE', True)
  monkeypatch.setattr('huggingface_hub.constants.HF_HUB_CACHE', str(tmp_path / 'hub'))
  workdir = tmp_path / 'table5'
  code = ablation_command.main(
      ['--table=5', '--config=configs/freihand.py', f'--workdir={workdir}']
  )
  assert code == 2
  err = capsys.readouterr().err
  assert 'variant deit_large: config.model.encoder_init' in err
  assert 'variant hrnet_w64: config.model.encoder_init' in err
  assert 'hf download timm/hrnet_w64.ms_in1k' in err
  assert err.count('  - variant ') == 2  # the problems both share (the dataset) are listed once
  assert not workdir.exists()


@pytest.mark.slow
def test_reduced_table5_trains_both_encoders_and_writes_the_table(tmp_path):
  from _inference_workdir import tiny_config

  config = tiny_config(tmp_path / 'tfds')
  config.model.img_size = 64  # HRNet wants a multiple of 32
  config.num_train_steps = 2
  config.eval_every_steps = 2
  config.eval.max_examples = 3
  summary = ablation.run_ablation(config, str(tmp_path / 'run'), 5, reduced_encoders=True)
  stored = json.loads((tmp_path / 'run' / 'ablation.json').read_text())
  assert stored['table'] == summary['table'] and stored['table_number'] == 5
  assert set(stored['results']) == {'deit_reduced', 'hrnet_w18_small'}
  assert all(row['step'] == 2 for row in stored['results'].values())
  assert os.path.isdir(tmp_path / 'run' / 'hrnet_w18_small' / 'checkpoints')
  assert '| hrnet_w18_small |' in summary['table']
