r"""Pretrained weights: the one place where weights trained elsewhere are named, checked, read and put
into a model's params.

A config names them in `config.model.encoder_init` (for the image encoder E), in one of four forms:

  * a Hugging Face Hub model id, 'timm/<name>.<tag>': its weights file is fetched into (or found in) the
    standard Hugging Face cache, which honours HF_HOME and HF_HUB_OFFLINE;
  * a local timm / Hugging Face checkpoint (.safetensors, .pth, .pt, .bin, .ckpt), mapped onto the network;
  * a .msgpack file written by `python -m diffhand_jax.convert_checkpoint` (`convert`), used as it is;
  * '' or None: random weights.

Networks read pretrained weights by family (`FAMILIES`, keyed by `diffhand.encoder_family`): a `Family`
says which file of a Hub repository holds the weights, how to build the network, and how a state dict
becomes its variables. The ViT/DeiT encoders (models/vit.py) and the HRNets (models/hrnet.py, whose
variables hold BatchNorm statistics as well as params) are the entries; an estimator configured by another field (the depth estimator's
`config.depth.estimator_init`) reuses `source_problem`, `resolve` and `read_state_dict` with its own
field and Hub file, and adds its lines to `config_problems` and `source_problems`.

The steps of a run, each one function:
  config_problems(config)    sources named for networks that no family reads (checked with the fields)
  source_problems(config)    sources that cannot be read here: no such file, or a Hub id that is not
                             cached while HF_HUB_OFFLINE=1 (checked before compute, downloading nothing)
  encoder_variables(config)  the encoder's variables (numpy): {'params': ..., 'batch_stats': ...} from
                             its source ('batch_stats' {} for a ViT), read on the host, never in jit
  with_encoder(params, encoder_params, shardings)   one collection (params, or batch_stats) with the
                             encoder's placed in, each device its shard

Files (`read_state_dict`):
  * `.pth` / `.pt` / `.bin` / `.ckpt`: a torch checkpoint, read with `torch.load(weights_only=True)`.
    Wrappers such as {'model': ...}, {'state_dict': ...}, {'model_ema': ...} are unwrapped and 'module.'
    prefixes (DataParallel / DDP) stripped.
  * `.safetensors`: e.g. timm's Hugging Face Hub files (`timm/deit3_large_patch16_224.fb_in22k_ft_in1k`).
  * For ViTs, names may be timm's, the original DeiT III release's ('gamma_1'), or Hugging Face
    transformers' ViT/DeiT names (both the hub-file layout 'encoder.layer.N.attention.attention.query' and
    the transformers 5 layout 'layers.N.attention.q_proj'), which are mapped to timm's. Note transformers'
    ViT/DeiT use LayerNorm eps 1e-12 where timm (and this encoder) use 1e-6.

A converted file is a msgpack (`flax.serialization.msgpack_serialize`) of
{'model_name': str, 'img_size': [H, W], 'params': encoder params} and, for an encoder with BatchNorm,
'batch_stats'; `load_encoder_params(path)` reads the params back, `load_encoder_variables(path)` both
collections, `load_encoder(path)` the module and the params.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import flax.serialization
import jax
import ml_collections
import numpy as np
import safetensors.numpy

from diffhand_jax.models import diffhand, hrnet, vit
from diffhand_jax.models.checkpoint_errors import CheckpointError, CheckpointMismatchError

PyTree = Any

# The config field that names the encoder's pretrained weights, as messages spell it.
ENCODER_FIELD = 'model.encoder_init'
# The file a timm model repository on the Hugging Face Hub holds its weights in.
HUB_FILENAME = 'model.safetensors'
CHECKPOINT_EXTENSIONS = ('.safetensors', '.pth', '.pt', '.bin', '.ckpt')
CONVERTED_EXTENSIONS = ('.msgpack',)

# ---------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------

# Wrapper keys that training scripts (timm, DeiT, MAE, ...) put around the state dict, in the order tried.
_WRAPPER_KEYS = ('state_dict_ema', 'model_ema', 'model', 'state_dict', 'module')


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
      import torch  # pylint: disable=g-import-not-at-top - heavyweight, and only for torch files

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
    return safetensors.numpy.load_file(path)
  except TypeError:
    # numpy has no bfloat16: read through torch instead (heavyweight, so only then).
    from safetensors.torch import load_file as load_torch_file  # pylint: disable=g-import-not-at-top

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
# Families: the networks that read pretrained weights
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Family:
  """How the networks of one family read pretrained weights.

  title: how messages name the family ('ViT').
  hub_filename: the file of a Hub model repository that holds the weights.
  create: (model_name, img_size=..., **fields) -> the network module, as random init builds it.
  variables_from_state_dict: (module, state dict as `read_state_dict` gives it, how messages name the
    file) -> the module's variables, {'params': ...} and, with BatchNorm, 'batch_stats'; raises
    `CheckpointMismatchError` listing what does not fit.
  """

  title: str
  hub_filename: str
  create: Callable[..., nn.Module]
  variables_from_state_dict: Callable[[nn.Module, Mapping[str, np.ndarray], str], PyTree]


def _vit_variables(
    module: vit.VisionTransformer, state_dict: Mapping[str, np.ndarray], source: str
) -> PyTree:
  """ViT params from timm names, the original DeiT III release's, or transformers' (renamed first)."""
  if is_hf_transformers(state_dict):
    state_dict = hf_to_timm(state_dict)
  return {'params': vit.params_from_timm(module, state_dict, source=source)}


def _hrnet_variables(
    module: hrnet.HRNet, state_dict: Mapping[str, np.ndarray], source: str
) -> PyTree:
  """HRNet params and BatchNorm statistics from timm names."""
  return hrnet.variables_from_timm(module, state_dict, source=source)


# Family name (`diffhand.encoder_family`) -> how its networks read pretrained weights.
FAMILIES: dict[str, Family] = {
    'vit': Family(
        title='ViT',
        hub_filename=HUB_FILENAME,
        create=vit.create,
        variables_from_state_dict=_vit_variables,
    ),
    # timm's Hub repositories ('timm/hrnet_w64.ms_in1k') hold the weights in the same file.
    'hrnet': Family(
        title='HRNet',
        hub_filename=HUB_FILENAME,
        create=hrnet.create,
        variables_from_state_dict=_hrnet_variables,
    ),
}


def family_of(model_name: str) -> Family | None:
  """The family that reads pretrained weights for the network `model_name`; None when none does."""
  return FAMILIES.get(diffhand.encoder_family(model_name))


def _family_or_error(model_name: str) -> Family:
  family = family_of(model_name)
  if family is None:
    raise CheckpointError(
        f'{model_name!r}: pretrained weights load into {_family_titles()} encoders only'
    )
  return family


def _family_titles() -> str:
  return ' and '.join(family.title for family in FAMILIES.values())


# ---------------------------------------------------------------------------------------------------------
# Converted files: convert_checkpoint's output
# ---------------------------------------------------------------------------------------------------------


def convert(
    model_name: str,
    input_path: str,
    output_path: str | None = None,
    *,
    img_size: int | tuple[int, int] | None = None,
) -> tuple[nn.Module, PyTree]:
  """Read a checkpoint, map it onto `model_name` (resampling a ViT's pos_embed to img_size), optionally
  write it.

  Returns (module, variables): {'params': ...} and, for an encoder with BatchNorm, 'batch_stats'.
  Raises `CheckpointError` naming the file on any problem.
  """
  state_dict = read_state_dict(input_path)
  family = _family_or_error(model_name)
  try:
    module = family.create(model_name, img_size=img_size)
    variables = family.variables_from_state_dict(module, state_dict, input_path)
  except CheckpointMismatchError as error:
    raise CheckpointError(f'{error}\n  (converting for model {model_name!r})') from None
  if output_path is not None:
    # An HRNet takes any multiple of 32 and has no img_size of its own: record the one asked for.
    height, width = vit.image_size_pair(getattr(module, 'img_size', img_size or 224))
    record = {
        'model_name': model_name,
        'img_size': [height, width],
        **jax.tree_util.tree_map(np.asarray, variables),
    }
    directory = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(directory, exist_ok=True)
    with open(output_path, 'wb') as file:
      file.write(flax.serialization.msgpack_serialize(record))
  return module, variables


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


def load_encoder_variables(path: str) -> dict[str, PyTree]:
  """{'params': ..., 'batch_stats': ...} stored at `path` ('batch_stats' {} for an encoder without
  BatchNorm, or a file written before HRNets)."""
  record = _read_record(path)
  return {'params': record['params'], 'batch_stats': record.get('batch_stats') or {}}


def load_encoder(path: str, **overrides: Any) -> tuple[nn.Module, PyTree]:
  """(module, params) from a converted file; overrides (dtype, remat, ...) go to the family's `create`."""
  record = _read_record(path)
  module = _family_or_error(record['model_name']).create(
      record['model_name'], img_size=tuple(int(s) for s in record['img_size']), **overrides
  )
  return module, record['params']


# ---------------------------------------------------------------------------------------------------------
# Sources: a Hub id, a file, or ''
# ---------------------------------------------------------------------------------------------------------


def is_hub_id(spec: str) -> bool:
  """'timm/deit3_large_patch16_224.fb_in22k_ft_in1k' (owner/name, not a file here) is a Hub model id."""
  if os.path.exists(os.path.expanduser(spec)) or spec.startswith(('/', '.', '~')):
    return False
  if spec.lower().endswith(CHECKPOINT_EXTENSIONS + CONVERTED_EXTENSIONS):
    return False
  return len(spec.split('/')) == 2 and all(spec.split('/'))


def _fill_cache_command(repo_id: str, filename: str) -> str:
  return (
      f'on a machine with internet access and the same HF_HOME, run:\n'
      f'    hf download {repo_id} {filename}\n'
      f'  (or python -c "import huggingface_hub as h; h.hf_hub_download({repo_id!r}, {filename!r})")'
  )


def source_problem(
    spec: str | None, *, field: str = ENCODER_FIELD, hub_filename: str = HUB_FILENAME
) -> str | None:
  """Why ``spec`` (the value of config.<field>) cannot be read here, or None. Checks without
  downloading: a file must exist; a Hub id must be in the cache when HF_HUB_OFFLINE=1."""
  if not spec:
    return None
  if is_hub_id(spec):
    # Heavyweight, and its constants read HF_HOME when first imported: only for Hub ids.
    import huggingface_hub  # pylint: disable=g-import-not-at-top

    cached = huggingface_hub.try_to_load_from_cache(spec, hub_filename)
    if isinstance(cached, str) and os.path.isfile(cached):
      return None
    if huggingface_hub.constants.HF_HUB_OFFLINE:
      return (
          f'config.{field} = {spec!r}: {hub_filename} of that Hub model is not in the '
          f'Hugging Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 '
          f'forbids downloading it; {_fill_cache_command(spec, hub_filename)}'
      )
    return None
  path = os.path.expanduser(spec)
  if not os.path.isfile(path):
    return (
        f'config.{field} = {spec!r}: no such file (give a Hugging Face Hub id such as '
        "'timm/deit3_large_patch16_224.fb_in22k_ft_in1k', a .safetensors/.pth/.bin checkpoint, a "
        ".msgpack from python -m diffhand_jax.convert_checkpoint, or '' for random weights)"
    )
  return None


def resolve(spec: str, *, field: str = ENCODER_FIELD, hub_filename: str = HUB_FILENAME) -> str:
  """The local file behind ``spec``: the file itself, or the Hub file fetched into (or found in) the
  standard Hugging Face cache, which honours HF_HOME and HF_HUB_OFFLINE."""
  if not is_hub_id(spec):
    path = os.path.expanduser(spec)
    if not os.path.isfile(path):
      problem = source_problem(spec, field=field, hub_filename=hub_filename)
      raise CheckpointError(problem or f'{spec}: no such file')
    return path
  import huggingface_hub  # pylint: disable=g-import-not-at-top - heavyweight: only for Hub ids

  try:
    return huggingface_hub.hf_hub_download(spec, hub_filename)
  except Exception as error:  # pylint: disable=broad-except - offline, no such repo, network errors
    raise CheckpointError(
        f'config.{field} = {spec!r}: cannot get {hub_filename} of that Hub model '
        f'({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}); '
        f'{_fill_cache_command(spec, hub_filename)}'
    ) from None


# ---------------------------------------------------------------------------------------------------------
# A run's pretrained weights: checked before compute, read on the host, placed into the params
# ---------------------------------------------------------------------------------------------------------


def config_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The pretrained sources ``config`` names for networks that no family reads; [] when none."""
  spec = config.model.get('encoder_init')
  if spec and family_of(str(config.model.get('encoder'))) is None:
    return [
        f'config.{ENCODER_FIELD} = {spec!r}: pretrained weights load into {_family_titles()} '
        "encoders only; use ''"
    ]
  return []


def source_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The pretrained sources of ``config`` that cannot be read here (see `source_problem`)."""
  family = family_of(config.model.encoder)
  hub_filename = family.hub_filename if family is not None else HUB_FILENAME
  problem = source_problem(config.model.get('encoder_init'), hub_filename=hub_filename)
  return [problem] if problem else []


def encoder_variables(config: ml_collections.ConfigDict) -> dict[str, PyTree] | None:
  """The encoder variables (numpy) that config.model.encoder_init names, for the encoder config.model
  describes at config.model.img_size: {'params': ..., 'batch_stats': ...} ('batch_stats' {} for an
  encoder without BatchNorm), or None for random init. A checkpoint file is mapped onto the encoder (a
  ViT's position embedding resampled to img_size); a converted file is used as it is. Read eagerly, on
  the host, never inside jit."""
  model_config = config.model
  spec = model_config.get('encoder_init')
  if not spec:
    return None
  family = family_of(model_config.encoder)
  if family is None:
    raise CheckpointError(
        f'config.{ENCODER_FIELD} = {spec!r}: pretrained weights load into {_family_titles()} '
        f'encoders only, and config.model.encoder is {model_config.encoder!r}; '
        "use --config.model.encoder_init=''"
    )
  path = resolve(spec, hub_filename=family.hub_filename)
  if path.lower().endswith(CONVERTED_EXTENSIONS):
    return load_encoder_variables(path)
  state_dict = read_state_dict(path)
  fields = diffhand.encoder_overrides(model_config)
  fields.pop('dtype', None)  # the params are float32 whatever the compute dtype
  module = family.create(model_config.encoder, img_size=model_config.img_size, **fields)
  try:
    variables = family.variables_from_state_dict(
        module, state_dict, f'{spec} ({path})' if spec != path else path
    )
  except CheckpointMismatchError as error:
    raise CheckpointError(f'{error}\n  (config.model.encoder = {model_config.encoder!r})') from None
  variables = {'batch_stats': {}, **variables}
  return jax.tree_util.tree_map(np.asarray, variables)


def params_problems(expected: PyTree, loaded: PyTree, *, limit: int = 20) -> list[str]:
  """How ``loaded`` params differ from ``expected`` (arrays or shape structs): missing, unused and
  mis-shaped names; [] when they fit."""
  expected = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), expected)
  got = jax.tree_util.tree_map(lambda a: tuple(np.shape(a)), loaded)
  if (
      jax.tree_util.tree_structure(expected) == jax.tree_util.tree_structure(got)
      and expected == got
  ):
    return []
  flat_expected = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  flat_got = dict(jax.tree_util.tree_flatten_with_path(got)[0])
  problems = [f'missing {jax.tree_util.keystr(k)}' for k in flat_expected if k not in flat_got]
  problems += [f'unused {jax.tree_util.keystr(k)}' for k in flat_got if k not in flat_expected]
  problems += [
      f'{jax.tree_util.keystr(k)}: checkpoint {flat_got[k]} vs model {v}'
      for k, v in flat_expected.items()
      if k in flat_got and flat_got[k] != v
  ]
  return problems[:limit]


def with_encoder(params: PyTree, encoder_params: PyTree, shardings: PyTree) -> PyTree:
  """``params`` (one collection of the model's variables, jax arrays: its params or its batch_stats)
  with params['encoder'] replaced by ``encoder_params`` (numpy, read on the host), placed with
  ``shardings`` (a tree like ``params``): each device receives only its shard. Raises ValueError when
  names or shapes differ."""
  problems = params_problems(params['encoder'], encoder_params)
  if problems:
    raise ValueError(
        'the pretrained encoder does not fit the configured encoder: ' + '; '.join(problems)
    )

  def place(leaf, value, sharding):
    value = np.asarray(value, dtype=leaf.dtype)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  encoder = jax.tree_util.tree_map(place, params['encoder'], encoder_params, shardings['encoder'])
  return dict(params, encoder=encoder)
