"""Checkpoint conversion: torch / safetensors / Hugging Face files -> msgpack -> params, and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
timm = pytest.importorskip('timm')
from safetensors.torch import save_file  # noqa: E402

from diffhand_jax import convert_checkpoint  # noqa: E402
from diffhand_jax.models import pretrained, vit  # noqa: E402

NAME = 'deit_tiny_patch16_224'


@pytest.fixture(scope='module')
def timm_state_dict():
  torch.manual_seed(0)
  return timm.create_model(NAME, pretrained=False).state_dict()


def _assert_same_params(actual, expected):
  assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
  jax.tree_util.tree_map(
      lambda a, e: np.testing.assert_array_equal(np.asarray(a), np.asarray(e)), actual, expected
  )


def test_pth_round_trip_through_the_command_line(tmp_path, timm_state_dict, capsys):
  # A training checkpoint as DeiT / DDP write it: wrapped in {'model': ...}, names prefixed 'module.'.
  wrapped = {
      'model': {f'module.{key}': value for key, value in timm_state_dict.items()},
      'epoch': 3,
  }
  checkpoint = tmp_path / 'deit.pth'
  torch.save(wrapped, checkpoint)
  output = tmp_path / 'out' / 'deit.msgpack'
  status = convert_checkpoint.main(
      [f'--model={NAME}', f'--input={checkpoint}', f'--output={output}']
  )
  assert status == 0, capsys.readouterr().err
  _, expected = vit.from_timm(NAME, timm_state_dict)
  _assert_same_params(pretrained.load_encoder_params(str(output)), expected)
  module, params = pretrained.load_encoder(str(output))
  assert module.img_size == (224, 224) and module.depth == 12


def test_safetensors_round_trip_resamples_to_img_size(tmp_path, timm_state_dict):
  checkpoint = tmp_path / 'model.safetensors'
  save_file({key: value.contiguous() for key, value in timm_state_dict.items()}, str(checkpoint))
  output = tmp_path / 'deit_256.msgpack'
  status = convert_checkpoint.main(
      [f'--model={NAME}', f'--input={checkpoint}', f'--output={output}', '--img_size=256']
  )
  assert status == 0
  params = pretrained.load_encoder_params(str(output))
  assert params['pos_embed'].shape == (1, 1 + 16 * 16, 192)
  _, expected = vit.from_timm(NAME, timm_state_dict, img_size=256)
  _assert_same_params(params, expected)
  module, _ = pretrained.load_encoder(str(output))
  assert module.grid_size == (16, 16)


def test_unused_and_missing_keys_name_the_file(tmp_path, timm_state_dict):
  state = dict(timm_state_dict)
  del state['blocks.11.mlp.fc2.bias']
  state['blocks.0.attn.rel_pos'] = torch.zeros(3)
  checkpoint = tmp_path / 'broken.pth'
  torch.save(state, checkpoint)
  with pytest.raises(pretrained.CheckpointError) as error:
    pretrained.convert(NAME, str(checkpoint))
  message = str(error.value)
  assert str(checkpoint) in message
  assert 'missing keys (1): blocks.11.mlp.fc2.bias' in message
  assert 'unused keys (1): blocks.0.attn.rel_pos' in message


def test_wrong_model_lists_shape_mismatches(tmp_path, timm_state_dict, capsys):
  checkpoint = tmp_path / 'tiny.pth'
  torch.save(timm_state_dict, checkpoint)
  status = convert_checkpoint.main(
      [
          '--model=deit_small_patch16_224',
          f'--input={checkpoint}',
          f'--output={tmp_path / "x.msgpack"}',
      ]
  )
  assert status == 1
  err = capsys.readouterr().err
  assert str(checkpoint) in err and 'shape mismatches' in err and 'patch_embed.proj.weight' in err
  assert not (tmp_path / 'x.msgpack').exists()


def test_missing_and_unreadable_files_are_clear_errors(tmp_path):
  with pytest.raises(pretrained.CheckpointError, match='no such file'):
    pretrained.convert(NAME, str(tmp_path / 'absent.pth'))
  garbage = tmp_path / 'garbage.pth'
  garbage.write_bytes(b'not a checkpoint at all')
  with pytest.raises(pretrained.CheckpointError, match='cannot read') as error:
    pretrained.convert(NAME, str(garbage))
  assert str(garbage) in str(error.value)
  with pytest.raises(pretrained.CheckpointError, match='no such file'):
    pretrained.load_encoder_params(str(tmp_path / 'absent.msgpack'))
  with pytest.raises(pretrained.CheckpointError, match='not a msgpack file'):
    pretrained.load_encoder_params(str(garbage))
  not_a_tensor_dict = tmp_path / 'list.pth'
  torch.save({'weights': [1, 2, 3]}, not_a_tensor_dict)
  with pytest.raises(pretrained.CheckpointError, match='found no tensors'):
    pretrained.convert(NAME, str(not_a_tensor_dict))


def test_hugging_face_transformers_deit_matches_transformers_forward(tmp_path):
  """A random transformers DeiT (distilled, deit-tiny sizes), saved both as the hub writes it
  (save_pretrained: 'encoder.layer.N.attention.attention.query') and as transformers 5 names it in
  memory ('layers.N.attention.q_proj'); both convert to params whose outputs match transformers'."""
  transformers = pytest.importorskip('transformers')
  # layer_norm_eps as timm's (transformers defaults to 1e-12), so the outputs can be compared exactly.
  config = transformers.DeiTConfig(
      hidden_size=192,
      num_hidden_layers=12,
      num_attention_heads=3,
      intermediate_size=768,
      image_size=64,
      patch_size=16,
      layer_norm_eps=1e-6,
  )
  torch.manual_seed(0)
  hf_model = transformers.DeiTModel(config, add_pooling_layer=False).eval()
  with torch.no_grad():
    for name, param in hf_model.named_parameters():
      if 'token' in name or 'layernorm' in name:
        param.normal_(0.0, 0.5)
  hf_model.save_pretrained(tmp_path / 'hub')
  torch.save(hf_model.state_dict(), tmp_path / 'in_memory_names.bin')
  images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    hidden = hf_model(pixel_values=images).last_hidden_state.numpy()

  apply = None
  for checkpoint in (tmp_path / 'hub' / 'model.safetensors', tmp_path / 'in_memory_names.bin'):
    module, variables = pretrained.convert(
        'deit_tiny_distilled_patch16_224', str(checkpoint), img_size=64
    )
    apply = apply or jax.jit(module.apply)
    features, embedding = apply(variables, jnp.asarray(images.numpy().transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(features), hidden[:, 2:], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(embedding), hidden[:, 0], atol=1e-4, rtol=0)
