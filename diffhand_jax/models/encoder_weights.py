r"""Reading encoder weights: a timm or Hugging Face ViT/DeiT checkpoint as Flax encoder params.

The command line over it is `python -m diffhand_jax.convert_checkpoint`.

Inputs:
  * `.pth` / `.pt` / `.bin`: a torch checkpoint, read with `torch.load(weights_only=True)`. Wrappers such as
    {'model': ...}, {'state_dict': ...}, {'model_ema': ...} are unwrapped and 'module.' prefixes
    (DataParallel / DDP) stripped.
  * `.safetensors`: e.g. timm's Hugging Face hub files (`timm/deit3_large_patch16_224.fb_in22k_ft_in1k`).
  * Names may be timm's, the original DeiT III release's ('gamma_1'), or Hugging Face transformers'
    ViT/DeiT names (both the hub-file layout 'encoder.layer.N.attention.attention.query' and the
    transformers 5 layout 'layers.N.attention.q_proj'), which are mapped to timm's. Note transformers'
    ViT/DeiT use LayerNorm eps 1e-12 where timm (and this encoder) use 1e-6.

The output is a msgpack file (`flax.serialization.msgpack_serialize`) of
{'model_name': str, 'img_size': [H, W], 'params': encoder params}; `load_encoder_params(path)` reads the
params back (what a config's `model.encoder_init` points at), `load_encoder(path)` the module as well.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import flax.serialization
import jax
import numpy as np

from diffhand_jax.models import vit

PyTree = Any

# Wrapper keys that training scripts (timm, DeiT, MAE, ...) put around the state dict, in the order tried.
_WRAPPER_KEYS = ('state_dict_ema', 'model_ema', 'model', 'state_dict', 'module')


class CheckpointError(ValueError):
  """A checkpoint file is missing, unreadable, or does not fit the requested model."""


# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------


def _unwrap(checkpoint: Any, path: str) -> dict[str, Any]:
  """The flat {name: tensor} inside a torch checkpoint, without wrappers or 'module.' prefixes."""
  state = checkpoint
  while isinstance(state, Mapping):
    if any(hasattr(value, 'shape') for value in state.values()):
      break
    inner = next((key for key in _WRAPPER_KEYS if isinstance(state.get(key), Mapping)), None)
    if inner is None:
      raise CheckpointError(f'{path}: found no tensors; top-level keys are {sorted(state)[:20]}')
    state = state[inner]
  if not isinstance(state, Mapping):
    raise CheckpointError(
        f'{path}: expected a state dict (a mapping of names to tensors), '
        f'got {type(state).__name__}'
    )
  not_arrays = sorted(name for name, value in state.items() if not hasattr(value, 'shape'))
  if not_arrays:
    raise CheckpointError(
        f'{path}: these entries are not tensors: {", ".join(map(str, not_arrays))}'
    )
  if state and all(str(name).startswith('module.') for name in state):
    state = {str(name)[len('module.') :]: value for name, value in state.items()}
  return {str(name): value for name, value in state.items()}


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """{name: numpy array} from a `.pth`/`.pt`/`.bin` torch file or a `.safetensors` file."""
  if not os.path.isfile(path):
    raise CheckpointError(f'{path}: no such file')
  extension = os.path.splitext(path)[1].lower()
  try:
    if extension == '.safetensors':
      state = _read_safetensors(path)
    elif extension in ('.pth', '.pt', '.bin', '.ckpt'):
      import torch  # only needed for torch files

      state = torch.load(path, map_location='cpu', weights_only=True)
    else:
      raise CheckpointError(
          f'{path}: unknown checkpoint type {extension!r}; expected .pth, .pt, '
          '.bin or .safetensors'
      )
  except CheckpointError:
    raise
  except Exception as error:  # corrupt file, pickled code refused by weights_only, ...
    raise CheckpointError(
        f'{path}: cannot read it as a {extension} checkpoint ' f'({type(error).__name__}: {error})'
    ) from None
  state = _unwrap(state, path)
  return {name: vit.to_numpy(value) for name, value in state.items()}


def _read_safetensors(path: str) -> dict[str, Any]:
  try:
    from safetensors.numpy import load_file

    return load_file(path)
  except TypeError:
    # numpy has no bfloat16: read through torch instead.
    from safetensors.torch import load_file as load_torch_file

    return load_torch_file(path)


# ---------------------------------------------------------------------------------------------------------
# Hugging Face transformers names -> timm names
# ---------------------------------------------------------------------------------------------------------

_HF_GLOBAL = {
    'embeddings.cls_token': 'cls_token',
    'embeddings.distillation_token': 'dist_token',
    'embeddings.position_embeddings': 'pos_embed',
    'embeddings.patch_embeddings.projection.weight': 'patch_embed.proj.weight',
    'embeddings.patch_embeddings.projection.bias': 'patch_embed.proj.bias',
    'layernorm.weight': 'norm.weight',
    'layernorm.bias': 'norm.bias',
    # Classifier heads are renamed to timm's so that they are skipped the same way.
    'classifier.weight': 'head.weight',
    'classifier.bias': 'head.bias',
    'cls_classifier.weight': 'head.weight',
    'cls_classifier.bias': 'head.bias',
    'distillation_classifier.weight': 'head_dist.weight',
    'distillation_classifier.bias': 'head_dist.bias',
}
# Per-layer names: transformers <= 4 (and hub files) / transformers 5 -> timm.
_HF_LAYER = {
    'layernorm_before': 'norm1',
    'layernorm_after': 'norm2',
    'attention.output.dense': 'attn.proj',
    'attention.o_proj': 'attn.proj',
    'intermediate.dense': 'mlp.fc1',
    'output.dense': 'mlp.fc2',
    'mlp.fc1': 'mlp.fc1',
    'mlp.fc2': 'mlp.fc2',
}
_HF_QKV = {
    'attention.attention.query': 0,
    'attention.attention.key': 1,
    'attention.attention.value': 2,
    'attention.q_proj': 0,
    'attention.k_proj': 1,
    'attention.v_proj': 2,
}
_HF_LAYER_RE = re.compile(r'^(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$')
_HF_DROPPED = ('pooler.', 'embeddings.mask_token')  # parts of HF models the encoder has no use for


def is_hf_transformers(state_dict: Mapping[str, Any]) -> bool:
  return any(re.sub(r'^(vit|deit)\.', '', name).startswith('embeddings.') for name in state_dict)


def hf_to_timm(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Rename a transformers ViT/DeiT state dict to timm's names (q, k, v fused into qkv).

  Names it does not know are kept as they are, so that they show up as unused keys.
  """
  converted: dict[str, np.ndarray] = {}
  qkv_parts: dict[tuple[int, str], dict[int, np.ndarray]] = {}
  for name, value in state_dict.items():
    short = re.sub(r'^(vit|deit)\.', '', name)
    if short.startswith(_HF_DROPPED):
      continue
    if short in _HF_GLOBAL:
      converted[_HF_GLOBAL[short]] = value
      continue
    match = _HF_LAYER_RE.match(short)
    if match is None:
      converted[name] = value
      continue
    index, layer, kind = int(match.group(1)), match.group(2), match.group(3)
    if layer in _HF_QKV:
      qkv_parts.setdefault((index, kind), {})[_HF_QKV[layer]] = value
    elif layer in _HF_LAYER:
      converted[f'blocks.{index}.{_HF_LAYER[layer]}.{kind}'] = value
    else:
      converted[name] = value
  for (index, kind), parts in qkv_parts.items():
    if len(parts) == 3:
      converted[f'blocks.{index}.attn.qkv.{kind}'] = np.concatenate(
          [parts[0], parts[1], parts[2]], 0
      )
    else:  # incomplete: report what is there as unused, under its timm-ish name
      for part, value in parts.items():
        converted[f'blocks.{index}.attn.{"qkv"[part]}.{kind}'] = value
  return converted


# ---------------------------------------------------------------------------------------------------------
# Converting, writing, reading back
# ---------------------------------------------------------------------------------------------------------


def convert(
    model_name: str,
    input_path: str,
    output_path: str | None = None,
    *,
    img_size: int | tuple[int, int] | None = None,
) -> tuple[vit.VisionTransformer, PyTree]:
  """Read a checkpoint, map it onto `model_name` (resampling pos_embed to img_size), optionally write it.

  Returns (module, params). Raises `CheckpointError` naming the file on any problem.
  """
  state_dict = read_state_dict(input_path)
  if is_hf_transformers(state_dict):
    state_dict = hf_to_timm(state_dict)
  try:
    module = vit.create(model_name, img_size=img_size)
    params = vit.params_from_timm(module, state_dict, source=input_path)
  except vit.CheckpointMismatchError as error:
    raise CheckpointError(f'{error}\n  (converting for model {model_name!r})') from None
  if output_path is not None:
    height, width = vit.image_size_pair(module.img_size)
    record = {
        'model_name': model_name,
        'img_size': [height, width],
        'params': jax.tree_util.tree_map(np.asarray, params),
    }
    directory = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(directory, exist_ok=True)
    with open(output_path, 'wb') as file:
      file.write(flax.serialization.msgpack_serialize(record))
  return module, params


def _read_record(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    raise CheckpointError(
        f'{path}: no such file (make it with python -m diffhand_jax.convert_checkpoint)'
    )
  try:
    with open(path, 'rb') as file:
      record = flax.serialization.msgpack_restore(file.read())
  except Exception as error:
    raise CheckpointError(
        f'{path}: not a msgpack file written by convert_checkpoint '
        f'({type(error).__name__}: {error})'
    ) from None
  if not isinstance(record, dict) or not {'model_name', 'img_size', 'params'} <= set(record):
    raise CheckpointError(
        f'{path}: msgpack file lacks the model_name / img_size / params entries '
        'that convert_checkpoint writes'
    )
  return record


def load_encoder_params(path: str) -> PyTree:
  """The encoder params (a nested dict of numpy arrays) stored by `convert` / the CLI at `path`."""
  return _read_record(path)['params']


def load_encoder(path: str, **overrides: Any) -> tuple[vit.VisionTransformer, PyTree]:
  """(module, params) from a converted file; overrides (dtype, remat, ...) go to `vit.create`."""
  record = _read_record(path)
  module = vit.create(
      record['model_name'], img_size=tuple(int(s) for s in record['img_size']), **overrides
  )
  return module, record['params']


# ---------------------------------------------------------------------------------------------------------
# Pretrained weights by name: config.model.encoder_init
# ---------------------------------------------------------------------------------------------------------

# The file a timm model repository on the Hugging Face Hub holds its weights in.
HUB_FILENAME = 'model.safetensors'
CHECKPOINT_EXTENSIONS = ('.safetensors', '.pth', '.pt', '.bin', '.ckpt')
CONVERTED_EXTENSIONS = ('.msgpack',)


def is_hub_id(spec: str) -> bool:
  """'timm/deit3_large_patch16_224.fb_in22k_ft_in1k' (owner/name, not a file here) is a Hub model id."""
  if os.path.exists(os.path.expanduser(spec)) or spec.startswith(('/', '.', '~')):
    return False
  if spec.lower().endswith(CHECKPOINT_EXTENSIONS + CONVERTED_EXTENSIONS):
    return False
  return len(spec.split('/')) == 2 and all(spec.split('/'))


def _fill_cache_command(repo_id: str) -> str:
  return (
      f'on a machine with internet access and the same HF_HOME, run:\n'
      f'    hf download {repo_id} {HUB_FILENAME}\n'
      f'  (or python -c "import huggingface_hub as h; h.hf_hub_download({repo_id!r}, {HUB_FILENAME!r})")'
  )


def _hub_offline() -> bool:
  from huggingface_hub import constants  # pylint: disable=g-import-not-at-top

  return bool(constants.HF_HUB_OFFLINE)


def encoder_init_problem(spec: str | None) -> str | None:
  """Why ``spec`` (config.model.encoder_init) cannot be read here, or None. Checks without
  downloading: a file must exist; a Hub id must be in the cache when HF_HUB_OFFLINE=1."""
  if not spec:
    return None
  if is_hub_id(spec):
    import huggingface_hub  # pylint: disable=g-import-not-at-top

    cached = huggingface_hub.try_to_load_from_cache(spec, HUB_FILENAME)
    if isinstance(cached, str) and os.path.isfile(cached):
      return None
    if _hub_offline():
      return (
          f'config.model.encoder_init = {spec!r}: {HUB_FILENAME} of that Hub model is not in the '
          f'Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 '
          f'forbids downloading it; {_fill_cache_command(spec)}'
      )
    return None
  path = os.path.expanduser(spec)
  if not os.path.isfile(path):
    return (
        f'config.model.encoder_init = {spec!r}: no such file (give a Hugging Face Hub id such as '
        "'timm/deit3_large_patch16_224.fb_in22k_ft_in1k', a .safetensors/.pth/.bin checkpoint, a "
        ".msgpack from python -m diffhand_jax.convert_checkpoint, or '' for random weights)"
    )
  return None


def resolve_encoder_init(spec: str) -> str:
  """The local file behind ``spec``: the file itself, or the Hub file fetched into (or found in) the
  standard Hugging Face cache, which honours HF_HOME and HF_HUB_OFFLINE."""
  if not is_hub_id(spec):
    path = os.path.expanduser(spec)
    if not os.path.isfile(path):
      raise CheckpointError(encoder_init_problem(spec) or f'{spec}: no such file')
    return path
  import huggingface_hub  # pylint: disable=g-import-not-at-top

  try:
    return huggingface_hub.hf_hub_download(spec, HUB_FILENAME)
  except Exception as error:  # pylint: disable=broad-except - offline, no such repo, network errors
    raise CheckpointError(
        f'config.model.encoder_init = {spec!r}: cannot get {HUB_FILENAME} of that Hub model '
        f'({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}); '
        f'{_fill_cache_command(spec)}'
    ) from None


def load_pretrained_encoder(
    spec: str, model_name: str, img_size: int | tuple[int, int], **overrides: Any
) -> PyTree:
  """The encoder params (numpy) of ``spec`` for the encoder ``model_name`` at ``img_size``: a Hub id, a
  timm/HF checkpoint file (mapped to this encoder, position embedding resampled to ``img_size``), or a
  file written by `convert` (used as it is). Read eagerly, on the host, never inside jit."""
  path = resolve_encoder_init(spec)
  if path.lower().endswith(CONVERTED_EXTENSIONS):
    return load_encoder_params(path)
  state_dict = read_state_dict(path)
  if is_hf_transformers(state_dict):
    state_dict = hf_to_timm(state_dict)
  module = vit.create(model_name, img_size=img_size, **overrides)
  try:
    params = vit.params_from_timm(
        module, state_dict, source=f'{spec} ({path})' if spec != path else path
    )
  except vit.CheckpointMismatchError as error:
    raise CheckpointError(f'{error}\n  (config.model.encoder = {model_name!r})') from None
  return jax.tree_util.tree_map(np.asarray, params)
