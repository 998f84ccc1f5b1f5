"""MiDaS v3 (DPT) monocular depth estimator in Flax, from transformers' `DPTForDepthEstimation` weights.

The architecture of the Hub model `Intel/dpt-large` ("DPT-Large, also known as MiDaS 3.0"; Ranftl et al.
2021, *Vision Transformers for Dense Prediction*), as transformers implements it (docs/design.md §4):

* backbone: the project's ViT (models/vit.py) with transformers' LayerNorm epsilon, its position embedding
  resized bilinearly to each input's patch grid in the forward pass, returning the hidden states (class
  token first, no final LayerNorm) after the blocks `backbone_out_indices`;
* reassemble: per stage, the readout ('project': concat the class token to every patch token, Linear +
  GELU; 'add'; 'ignore'), a 1x1 conv to `neck_hidden_sizes[i]` channels, then a resize by
  `reassemble_factors[i]` (a transposed conv with kernel = stride = factor for factor > 1, nothing for 1,
  a stride-1/factor 3x3 conv below 1);
* neck: a 3x3 conv (no bias) per stage to `fusion_hidden_size`, then fusion from the coarsest stage:
  hidden += residual_unit(stage) (the stage resized bilinearly to the hidden map when their shapes
  differ), residual_unit, x2 bilinear upsampling (align_corners=True), 1x1 conv;
* head: 3x3 conv to F/2, x2 bilinear upsampling (align_corners=True), 3x3 conv to 32, ReLU, 1x1 conv to 1,
  ReLU.

`module.apply({'params': params}, pixels)` takes pixels float32 (B, H, W, 3), NHWC, normalised as
transformers' `DPTImageProcessor` does for `Intel/dpt-large` ((x / 255 - 0.5) / 0.5, so in [-1, 1]), and
returns `predicted_depth` (B, H', W'): relative inverse depth (larger = nearer), at 16 patch-grid cells per
patch (H' = 16 * (H // patch_size): the input size for patch 16). Any input size works as it does in
transformers (square inputs are what transformers accepts; this module takes any).

`from_transformers(config_dict, state_dict)` builds the module from a transformers `DPTConfig` dict (the
Hub's config.json) and converts the state dict; `load(init)` reads both from a Hub id through the Hugging
Face cache, a local directory or a weights file.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax.models import checkpoint_errors, pretrained, vit
from diffhand_jax.models.checkpoint_errors import CheckpointError, CheckpointMismatchError

PyTree = Any
Dtype = Any

# The default estimator, as config.depth.estimator_init names it.
DEFAULT_HUB_ID = 'Intel/dpt-large'
# How the Hub's image processor normalises pixels for Intel/dpt-large: rescale 1/255, then (x - 0.5) / 0.5.
PIXEL_MEAN = (0.5, 0.5, 0.5)
PIXEL_STD = (0.5, 0.5, 0.5)
CONFIG_FILENAME = 'config.json'
# The architecture fields of the Hub's config.json for Intel/dpt-large (DPT-Large, MiDaS 3.0), for
# benchmarks and random-weight plumbing where the file itself is not at hand.
DPT_LARGE_CONFIG = {
    'model_type': 'dpt',
    'architectures': ['DPTForDepthEstimation'],
    'hidden_size': 1024,
    'num_hidden_layers': 24,
    'num_attention_heads': 16,
    'intermediate_size': 4096,
    'hidden_act': 'gelu',
    'layer_norm_eps': 1e-12,
    'image_size': 384,
    'patch_size': 16,
    'num_channels': 3,
    'qkv_bias': True,
    'is_hybrid': False,
    'backbone_out_indices': [5, 11, 17, 23],
    'readout_type': 'project',
    'reassemble_factors': [4, 2, 1, 0.5],
    'neck_hidden_sizes': [256, 512, 1024, 1024],
    'fusion_hidden_size': 256,
    'head_in_index': -1,
    'use_batch_norm_in_fusion_residual': False,
    'add_projection': False,
}
# transformers' DPTConfig defaults, for fields a config.json leaves out: DPT-Base's sizes.
_DPT_CONFIG_DEFAULTS = {
    **DPT_LARGE_CONFIG,
    'hidden_size': 768,
    'num_hidden_layers': 12,
    'num_attention_heads': 12,
    'intermediate_size': 3072,
    'backbone_out_indices': [2, 5, 8, 11],
    'neck_hidden_sizes': [96, 192, 384, 768],
    'use_bias_in_fusion_residual': None,
}
# The weight files of a transformers repository, in the order tried.
WEIGHT_FILENAMES = ('model.safetensors', 'pytorch_model.bin')


# ---------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------


def resize_bilinear(x: jax.Array, size: tuple[int, int], *, align_corners: bool) -> jax.Array:
  """x (B, H, W, C) -> (B, size[0], size[1], C), torch's F.interpolate(mode='bilinear') (no antialias).

  Each axis mixes two gathered rows (`vit.bilinear_taps`): memory-bound, where a dense resize matrix
  would cost as much as a conv at DPT's head.
  """
  for axis, out_size in ((1, size[0]), (2, size[1])):
    if x.shape[axis] == out_size:
      continue
    low, high, weight = vit.bilinear_taps(x.shape[axis], out_size, align_corners)
    shape = [1, 1, 1, 1]
    shape[axis] = out_size
    weight = jnp.asarray(weight.reshape(shape), x.dtype)
    x = jnp.take(x, low, axis=axis) * (1 - weight) + jnp.take(x, high, axis=axis) * weight
  return x


def _conv(features: int, kernel: int, name: str, *, stride: int = 1, use_bias: bool = True, **kw):
  """torch's Conv2d(kernel, stride, padding=kernel // 2) as a Flax conv (NHWC, HWIO kernel)."""
  pad = kernel // 2
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      use_bias=use_bias,
      name=name,
      **kw,
  )


class PatchUpsample(nn.Module):
  """torch's ConvTranspose2d(C, C, kernel=f, stride=f, padding=0): each pixel becomes an f x f block.

  The blocks do not overlap, so it is one matmul and a reshape. The kernel is (C_in, f, f, C_out).
  """

  features: int
  factor: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, H, W, C_in) -> (B, f*H, f*W, C_out)."""
    batch, height, width, chans = x.shape
    f = self.factor
    kernel = self.param(
        'kernel', nn.initializers.lecun_normal(), (chans, f, f, self.features), jnp.float32
    )
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    blocks = jnp.einsum('bhwc,cijo->bhiwjo', x, kernel)
    return blocks.reshape(batch, height * f, width * f, self.features) + bias


class ResidualUnit(nn.Module):
  """DPT's pre-activation residual unit: x + conv(relu(conv(relu(x))))."""

  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(use_bias=self.use_bias, dtype=self.dtype)
    y = _conv(self.features, 3, 'convolution1', **kw)(nn.relu(x))
    y = _conv(self.features, 3, 'convolution2', **kw)(nn.relu(y))
    return x + y


class FusionLayer(nn.Module):
  """One feature-fusion step: (hidden (B, h, w, F), stage (B, h', w', F) or None) -> (B, 2h, 2w, F)."""

  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, hidden: jax.Array, residual: jax.Array | None = None) -> jax.Array:
    unit = dict(use_bias=self.use_bias, dtype=self.dtype)
    if residual is not None:
      residual = resize_bilinear(residual, hidden.shape[1:3], align_corners=False)
      hidden = hidden + ResidualUnit(self.features, name='residual_layer1', **unit)(residual)
    hidden = ResidualUnit(self.features, name='residual_layer2', **unit)(hidden)
    hidden = resize_bilinear(hidden, (2 * hidden.shape[1], 2 * hidden.shape[2]), align_corners=True)
    return nn.Conv(self.features, (1, 1), name='projection', dtype=self.dtype)(hidden)


class DPT(nn.Module):
  """DPT depth estimator (transformers' `DPTForDepthEstimation` with a ViT backbone).

  Attributes:
    image_size: (H, W) the position embedding is stored for (config.json's image_size).
    patch_size, hidden_size, num_hidden_layers, num_attention_heads, mlp_ratio, qkv_bias,
      layer_norm_eps: the ViT backbone.
    backbone_out_indices: the blocks whose hidden states feed the neck.
    readout_type: 'project', 'add' or 'ignore'.
    reassemble_factors, neck_hidden_sizes, fusion_hidden_size: the neck.
    use_bias_in_fusion_residual: the residual units' convs have biases.
    head_in_index: which fusion output the head reads (-1: the finest).
    add_projection: a 3x3 conv + ReLU before the head.
    dtype: compute dtype (params stay float32).
  """

  image_size: tuple[int, int] = (384, 384)
  patch_size: int = 16
  hidden_size: int = 1024
  num_hidden_layers: int = 24
  num_attention_heads: int = 16
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-12
  backbone_out_indices: tuple[int, ...] = (5, 11, 17, 23)
  readout_type: str = 'project'
  reassemble_factors: tuple[float, ...] = (4, 2, 1, 0.5)
  neck_hidden_sizes: tuple[int, ...] = (256, 512, 1024, 1024)
  fusion_hidden_size: int = 256
  use_bias_in_fusion_residual: bool = True
  head_in_index: int = -1
  add_projection: bool = False
  dtype: Dtype = jnp.float32

  def backbone(self, **kw: Any) -> vit.VisionTransformer:
    """The ViT backbone (kw: name=, or parent=None for an unbound copy)."""
    return vit.VisionTransformer(
        img_size=self.image_size,
        patch_size=self.patch_size,
        embed_dim=self.hidden_size,
        depth=self.num_hidden_layers,
        num_heads=self.num_attention_heads,
        mlp_ratio=self.mlp_ratio,
        qkv_bias=self.qkv_bias,
        layer_norm_eps=self.layer_norm_eps,
        pos_embed_resize='bilinear',
        out_indices=tuple(self.backbone_out_indices),
        dtype=self.dtype,
        **kw,
    )

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    """pixels float32 (B, H, W, 3), normalised ((x/255 - 0.5) / 0.5) -> predicted_depth (B, H', W')."""
    chex.assert_rank(pixels, 4)
    if pixels.shape[-1] != 3:
      raise ValueError(f'DPT takes RGB pixels (B, H, W, 3), got shape {pixels.shape}')
    grid = (pixels.shape[1] // self.patch_size, pixels.shape[2] // self.patch_size)
    hidden_states = self.backbone(name='backbone')(pixels)

    stages = []
    for i, (tokens, factor) in enumerate(zip(hidden_states, self.reassemble_factors)):
      cls_token, tokens = tokens[:, :1], tokens[:, 1:]
      if self.readout_type == 'project':
        readout = jnp.broadcast_to(cls_token, tokens.shape)
        tokens = nn.Dense(self.hidden_size, name=f'readout_project_{i}', dtype=self.dtype)(
            jnp.concatenate([tokens, readout], axis=-1)
        )
        tokens = nn.gelu(tokens, approximate=False)
      elif self.readout_type == 'add':
        tokens = tokens + cls_token
      x = tokens.reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[-1])
      channels = self.neck_hidden_sizes[i]
      x = nn.Conv(channels, (1, 1), name=f'reassemble_projection_{i}', dtype=self.dtype)(x)
      if factor > 1:
        x = PatchUpsample(channels, int(factor), self.dtype, name=f'reassemble_resize_{i}')(x)
      elif factor < 1:
        x = _conv(
            channels,
            3,
            f'reassemble_resize_{i}',
            stride=int(1 / factor),
            dtype=self.dtype,
        )(x)
      x = _conv(self.fusion_hidden_size, 3, f'neck_conv_{i}', use_bias=False, dtype=self.dtype)(x)
      stages.append(x)

    fused, outputs = None, []
    for i, stage in enumerate(stages[::-1]):
      layer = FusionLayer(
          self.fusion_hidden_size,
          self.use_bias_in_fusion_residual,
          self.dtype,
          name=f'fusion_{i}',
      )
      fused = layer(stage) if fused is None else layer(fused, stage)
      outputs.append(fused)

    x = outputs[self.head_in_index]
    if self.add_projection:
      x = nn.relu(_conv(256, 3, 'head_projection', dtype=self.dtype)(x))
    x = _conv(self.fusion_hidden_size // 2, 3, 'head_conv_0', dtype=self.dtype)(x)
    x = resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners=True)
    x = nn.relu(_conv(32, 3, 'head_conv_2', dtype=self.dtype)(x))
    x = nn.relu(nn.Conv(1, (1, 1), name='head_conv_4', dtype=self.dtype)(x))
    return x[..., 0].astype(jnp.float32)


# ---------------------------------------------------------------------------------------------------------
# transformers config -> module
# ---------------------------------------------------------------------------------------------------------


def _refuse(field: str, value: Any, why: str) -> CheckpointError:
  return CheckpointError(f'DPT config field {field} = {value!r}: {why}')


def module_from_config(config: Mapping[str, Any], **overrides: Any) -> DPT:
  """The `DPT` a transformers `DPTConfig` dict (config.json) describes; refuses what it does not build.

  overrides: other `DPT` fields (dtype).
  """
  config = dict(config)
  get = lambda key: _DPT_CONFIG_DEFAULTS[key] if config.get(key) is None else config[key]
  model_type = config.get('model_type', 'dpt')
  if model_type != 'dpt':
    raise _refuse('model_type', model_type, "only 'dpt' (DPT with a ViT backbone) is implemented")
  if get('is_hybrid'):
    raise _refuse('is_hybrid', True, 'hybrid DPT (a BiT backbone) is not implemented')
  for field in ('backbone_config', 'backbone'):
    if config.get(field):
      kind = (
          config[field].get('model_type') if isinstance(config[field], Mapping) else config[field]
      )
      raise _refuse(
          field, kind, 'DPT with another backbone (BEiT, Dinov2, Swin...) is not implemented'
      )
  architectures = config.get('architectures') or ['DPTForDepthEstimation']
  if 'DPTForDepthEstimation' not in architectures:
    raise _refuse('architectures', architectures, 'only DPTForDepthEstimation is implemented')
  if get('hidden_act') != 'gelu':
    raise _refuse('hidden_act', get('hidden_act'), "only 'gelu' (exact) is implemented")
  if get('num_channels') != 3:
    raise _refuse('num_channels', get('num_channels'), 'only RGB (3) is implemented')
  if get('use_batch_norm_in_fusion_residual'):
    raise _refuse(
        'use_batch_norm_in_fusion_residual', True, 'BatchNorm in fusion is not implemented'
    )
  readout = get('readout_type')
  if readout not in ('project', 'add', 'ignore'):
    raise _refuse('readout_type', readout, "expected 'project', 'add' or 'ignore'")
  hidden, intermediate = int(get('hidden_size')), int(get('intermediate_size'))
  mlp_ratio = intermediate / hidden
  if int(hidden * mlp_ratio) != intermediate:
    raise _refuse('intermediate_size', intermediate, f'not representable with hidden_size {hidden}')
  patch = get('patch_size')
  if not isinstance(patch, int):
    if len(set(patch)) != 1:
      raise _refuse('patch_size', patch, 'only square patches are implemented')
    patch = patch[0]
  layers = int(get('num_hidden_layers'))
  indices = tuple(int(i) for i in get('backbone_out_indices'))
  if not all(0 <= i < layers for i in indices):
    raise _refuse('backbone_out_indices', list(indices), f'must lie in [0, {layers})')
  neck = tuple(int(n) for n in get('neck_hidden_sizes'))
  factors = tuple(get('reassemble_factors'))
  if not len(indices) == len(neck) == len(factors):
    raise _refuse(
        'neck_hidden_sizes',
        list(neck),
        'backbone_out_indices, neck_hidden_sizes and '
        'reassemble_factors must have the same length',
    )
  for factor in factors:
    if not (factor >= 1 and float(factor).is_integer()) and not (
        0 < factor < 1 and float(1 / factor).is_integer()
    ):
      raise _refuse('reassemble_factors', list(factors), 'each must be an integer or 1/integer')
  fusion = int(get('fusion_hidden_size'))
  if get('add_projection') and fusion != 256:
    raise _refuse('add_projection', True, 'transformers builds it for fusion_hidden_size 256 only')
  bias = get('use_bias_in_fusion_residual')
  fields = dict(
      image_size=vit.image_size_pair(get('image_size')),
      patch_size=int(patch),
      hidden_size=hidden,
      num_hidden_layers=layers,
      num_attention_heads=int(get('num_attention_heads')),
      mlp_ratio=mlp_ratio,
      qkv_bias=bool(get('qkv_bias')),
      layer_norm_eps=float(get('layer_norm_eps')),
      backbone_out_indices=indices,
      readout_type=readout,
      reassemble_factors=factors,
      neck_hidden_sizes=neck,
      fusion_hidden_size=fusion,
      use_bias_in_fusion_residual=True if bias is None else bool(bias),
      head_in_index=int(get('head_in_index')),
      add_projection=bool(get('add_projection')),
  )
  fields.update(overrides)
  return DPT(**fields)


# ---------------------------------------------------------------------------------------------------------
# transformers state dict -> params
# ---------------------------------------------------------------------------------------------------------

_LINEAR = (1, 0)  # torch Linear (out, in) -> Flax Dense (in, out)
_CONV = (2, 3, 1, 0)  # torch Conv2d (O, I, kh, kw) -> Flax (kh, kw, I, O)
_CONV_TRANSPOSE = (
    0,
    2,
    3,
    1,
)  # torch ConvTranspose2d (I, O, kh, kw) -> PatchUpsample (I, kh, kw, O)


def _neck_key_map(module: DPT) -> dict[str, tuple[tuple[str, ...], tuple[int, ...] | None]]:
  """transformers name (without 'dpt.') -> (Flax path, torch-to-Flax axis permutation or None)."""
  key_map = {}

  def add(torch_prefix, path, permutation, bias=True):
    key_map[f'{torch_prefix}.weight'] = ((*path, 'kernel'), permutation)
    if bias:
      key_map[f'{torch_prefix}.bias'] = ((*path, 'bias'), None)

  for i, factor in enumerate(module.reassemble_factors):
    if module.readout_type == 'project':
      add(f'neck.reassemble_stage.readout_projects.{i}.0', (f'readout_project_{i}',), _LINEAR)
    stage = f'neck.reassemble_stage.layers.{i}'
    add(f'{stage}.projection', (f'reassemble_projection_{i}',), _CONV)
    if factor > 1:
      add(f'{stage}.resize', (f'reassemble_resize_{i}',), _CONV_TRANSPOSE)
    elif factor < 1:
      add(f'{stage}.resize', (f'reassemble_resize_{i}',), _CONV)
    add(f'neck.convs.{i}', (f'neck_conv_{i}',), _CONV, bias=False)
  for i in range(len(module.neck_hidden_sizes)):
    layer = f'neck.fusion_stage.layers.{i}'
    add(f'{layer}.projection', (f'fusion_{i}', 'projection'), _CONV)
    # The first fusion layer has no stage to add: its residual_layer1 is never called.
    for unit in ('residual_layer1', 'residual_layer2') if i else ('residual_layer2',):
      for conv in ('convolution1', 'convolution2'):
        add(
            f'{layer}.{unit}.{conv}',
            (f'fusion_{i}', unit, conv),
            _CONV,
            bias=module.use_bias_in_fusion_residual,
        )
  if module.add_projection:
    add('head.projection', ('head_projection',), _CONV)
  for index in (0, 2, 4):
    add(f'head.head.{index}', (f'head_conv_{index}',), _CONV)
  return key_map


def _never_used(name: str, module: DPT) -> bool:
  """Arrays of a DPTForDepthEstimation checkpoint that its depth forward pass never reads."""
  if name.startswith(('layernorm.', 'pooler.', 'embeddings.mask_token')):
    return True  # DPT's depth path reads hidden states before the final LayerNorm
  if name.startswith('neck.fusion_stage.layers.0.residual_layer1.'):
    return True
  if name.startswith('encoder.layer.'):
    return int(name.split('.')[2]) > max(module.backbone_out_indices)  # blocks after the last used
  return False


def params_from_transformers(
    module: DPT, state_dict: Mapping[str, Any], *, source: str = 'state dict'
) -> PyTree:
  """Flax params for `module` from a transformers `DPTForDepthEstimation` state dict.

  Raises `CheckpointMismatchError` naming `source` and listing every missing, unused and mis-shaped key
  (backbone keys under timm's names, which models/vit.py reads).
  """
  state_dict = {name.removeprefix('dpt.'): value for name, value in state_dict.items()}
  state_dict = {name: value for name, value in state_dict.items() if not _never_used(name, module)}
  backbone_names = [name for name in state_dict if name.startswith(('embeddings.', 'encoder.'))]
  backbone_state = pretrained.hf_to_timm({name: state_dict[name] for name in backbone_names})
  backbone = module.backbone(parent=None)
  try:
    backbone_params = vit.params_from_timm(backbone, backbone_state, source=f'{source} (backbone)')
  except CheckpointMismatchError as error:
    raise CheckpointMismatchError(f'{error}\n  (the DPT backbone, in timm names)') from None

  shapes = jax.eval_shape(
      module.init, jax.random.PRNGKey(0), jnp.zeros((1, *module.image_size, 3), jnp.float32)
  )['params']
  key_map = _neck_key_map(module)
  rest = {name: value for name, value in state_dict.items() if name not in backbone_names}
  missing = sorted(set(key_map) - set(rest))
  unused = sorted(set(rest) - set(key_map))
  mismatched = []
  params: dict[str, Any] = {'backbone': backbone_params}
  for name, (path, permutation) in key_map.items():
    if name not in rest:
      continue
    array = vit.to_numpy(rest[name])
    expected = shapes
    for part in path:
      expected = expected[part]
    expected = tuple(expected.shape)
    torch_shape = (
        expected if permutation is None else tuple(expected[i] for i in np.argsort(permutation))
    )
    if tuple(array.shape) != torch_shape:
      mismatched.append(f'{name}: checkpoint {tuple(array.shape)}, model {torch_shape}')
      continue
    if permutation is not None:
      array = array.transpose(permutation)
    node = params
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = jnp.asarray(array, jnp.float32)
  checkpoint_errors.raise_if_mismatched(
      f'{source} does not fit this DPT (hidden_size={module.hidden_size}, '
      f'neck_hidden_sizes={list(module.neck_hidden_sizes)}, '
      f'fusion_hidden_size={module.fusion_hidden_size}):',
      missing,
      unused,
      mismatched,
  )
  return params


def from_transformers(
    config_dict: Mapping[str, Any],
    state_dict: Mapping[str, Any],
    *,
    source: str = 'state dict',
    **overrides: Any,
) -> tuple[DPT, PyTree]:
  """(module, params) from a transformers `DPTConfig` dict and a `DPTForDepthEstimation` state dict.

  Args:
    config_dict: config.json of the Hub repository (or `DPTConfig(...).to_dict()`).
    state_dict: {transformers parameter name: numpy array or torch tensor}.
    source: how error messages name the weights.
    **overrides: other `DPT` fields (dtype).
  Returns:
    (module, params): `module.apply({'params': params}, pixels)` -> predicted_depth (B, H', W'), equal to
    transformers' `DPTForDepthEstimation(pixels NCHW).predicted_depth`.
  Raises:
    CheckpointError for a config this module does not implement (naming the field);
    CheckpointMismatchError when the state dict does not fit the config.
  """
  module = module_from_config(config_dict, **overrides)
  return module, params_from_transformers(module, state_dict, source=source)


# ---------------------------------------------------------------------------------------------------------
# Loading: a Hub id through the HF cache, a directory, or a weights file
# ---------------------------------------------------------------------------------------------------------


def _fill_cache_command(repo_id: str) -> str:
  return (
      'on a machine with internet access and the same HF_HOME, run:\n'
      f'    huggingface-cli download {repo_id} {CONFIG_FILENAME} {WEIGHT_FILENAMES[0]}\n'
      f'  (or hf download {repo_id} {CONFIG_FILENAME} {WEIGHT_FILENAMES[0]})'
  )


def _hub_files(repo_id: str) -> tuple[str, str]:
  """(config.json, weights file) of a Hub repository, from the HF cache (or downloaded when online)."""
  # pylint: disable-next=g-import-not-at-top - heavyweight: only for Hub ids
  import huggingface_hub
  from huggingface_hub.errors import EntryNotFoundError  # pylint: disable=g-import-not-at-top

  found = {}
  for filename in (CONFIG_FILENAME, *WEIGHT_FILENAMES):
    cached = huggingface_hub.try_to_load_from_cache(repo_id, filename)
    if isinstance(cached, str) and os.path.isfile(cached):
      found[filename] = cached
  weights = next((found[name] for name in WEIGHT_FILENAMES if name in found), None)
  if CONFIG_FILENAME in found and weights is not None:
    return found[CONFIG_FILENAME], weights
  if huggingface_hub.constants.HF_HUB_OFFLINE:
    absent = [CONFIG_FILENAME] if CONFIG_FILENAME not in found else []
    absent += [] if weights else [' or '.join(WEIGHT_FILENAMES)]
    raise CheckpointError(
        f'depth estimator {repo_id!r}: {" and ".join(absent)} of that Hub model not in the Hugging '
        f'Face cache ({huggingface_hub.constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids '
        f'downloading; {_fill_cache_command(repo_id)}'
    )
  try:
    config_path = found.get(CONFIG_FILENAME) or huggingface_hub.hf_hub_download(
        repo_id, CONFIG_FILENAME
    )
    if weights is None:
      try:
        weights = huggingface_hub.hf_hub_download(repo_id, WEIGHT_FILENAMES[0])
      except EntryNotFoundError:  # an older repository: torch weights only
        weights = huggingface_hub.hf_hub_download(repo_id, WEIGHT_FILENAMES[1])
  except Exception as error:  # pylint: disable=broad-except - offline, no such repo, network errors
    first_line = str(error).splitlines()[0] if str(error) else ''
    raise CheckpointError(
        f'depth estimator {repo_id!r}: cannot get it from the Hub ({type(error).__name__}: '
        f'{first_line}); {_fill_cache_command(repo_id)}'
    ) from None
  return config_path, weights


def _local_files(path: str) -> tuple[str, str]:
  """(config.json, weights file) of a local directory, or of a weights file with config.json beside it."""
  if os.path.isdir(path):
    weights = next(
        (
            os.path.join(path, name)
            for name in WEIGHT_FILENAMES
            if os.path.isfile(os.path.join(path, name))
        ),
        None,
    )
    if weights is None:
      raise CheckpointError(
          f'{path}: holds neither {" nor ".join(WEIGHT_FILENAMES)} (a transformers DPT directory, '
          f'as save_pretrained writes it, is expected)'
      )
    directory = path
  elif os.path.isfile(path):
    weights, directory = path, os.path.dirname(os.path.abspath(path))
  else:
    raise CheckpointError(
        f'{path}: no such file or directory (give a Hub id such as {DEFAULT_HUB_ID!r}, a directory '
        f'with {CONFIG_FILENAME} and {WEIGHT_FILENAMES[0]}, or such a weights file)'
    )
  config_path = os.path.join(directory, CONFIG_FILENAME)
  if not os.path.isfile(config_path):
    raise CheckpointError(f'{weights}: no {CONFIG_FILENAME} beside it, to say which DPT it is')
  return config_path, weights


def source_problem(init: str | None, *, field: str = 'depth.estimator_init') -> str | None:
  """Why the estimator `init` cannot be read here, or None; checks without downloading or reading."""
  if not init:
    return None
  try:
    if pretrained.is_hub_id(init) and not os.path.exists(init):
      import huggingface_hub  # pylint: disable=g-import-not-at-top

      if not huggingface_hub.constants.HF_HUB_OFFLINE:
        return None  # it may be downloaded
      _hub_files(init)
    else:
      _local_files(os.path.expanduser(init))
  except CheckpointError as error:
    return f'config.{field} = {init!r}: {error}'
  return None


def read_config(path: str) -> dict[str, Any]:
  """config.json as a dict; a clear error naming the file when it is not a JSON object."""
  try:
    with open(path) as file:
      config = json.load(file)
  except (OSError, ValueError) as error:
    raise CheckpointError(f'{path}: cannot read it as JSON ({error})') from None
  if not isinstance(config, dict):
    raise CheckpointError(
        f'{path}: expected a JSON object (a DPTConfig), got {type(config).__name__}'
    )
  return config


def load(init: str = DEFAULT_HUB_ID, **overrides: Any) -> tuple[DPT, PyTree]:
  """(module, params) of the depth estimator `init` names, read on the host once (never inside jit).

  Args:
    init: a Hugging Face Hub id (default 'Intel/dpt-large'): config.json and model.safetensors (or
      pytorch_model.bin) from the standard HF cache (honouring HF_HOME and HF_HUB_OFFLINE), downloaded
      when online and absent; or a local directory holding those files (save_pretrained's layout); or a
      weights file with config.json beside it.
    **overrides: other `DPT` fields (dtype).
  Raises:
    CheckpointError naming the repository or file, and for a Hub id not cached offline, the command that
    fills the cache.
  """
  if not init:
    raise CheckpointError(f'no depth estimator named (give a Hub id such as {DEFAULT_HUB_ID!r})')
  expanded = os.path.expanduser(init)
  if pretrained.is_hub_id(init) and not os.path.exists(expanded):
    config_path, weights = _hub_files(init)
    source = f'{init} ({weights})'
  else:
    config_path, weights = _local_files(expanded)
    source = weights
  config = read_config(config_path)
  state_dict = pretrained.read_state_dict(weights)
  try:
    return from_transformers(config, state_dict, source=source, **overrides)
  except CheckpointMismatchError as error:
    raise CheckpointError(str(error)) from None


def normalize(images_uint8: jax.Array | np.ndarray) -> jax.Array:
  """RGB uint8 (or 0-255 float) images (B, H, W, 3) -> DPT's input, (x / 255 - mean) / std."""
  x = jnp.asarray(images_uint8, jnp.float32) / 255.0
  return (x - jnp.asarray(PIXEL_MEAN, jnp.float32)) / jnp.asarray(PIXEL_STD, jnp.float32)


def renormalize(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """Images normalised as (x / 255 - mean) / std (e.g. the model's ImageNet statistics), (B, H, W, 3)
  -> DPT's input, the same pixels normalised with `PIXEL_MEAN` / `PIXEL_STD`. Traceable (inside jit).
  """
  chex.assert_rank(images, 4)
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
  unit = images.astype(jnp.float32) * std + mean  # back to [0, 1]
  return (unit - jnp.asarray(PIXEL_MEAN, jnp.float32)) / jnp.asarray(PIXEL_STD, jnp.float32)


def init_random(
    config_dict: Mapping[str, Any], key: jax.Array, **overrides: Any
) -> tuple[DPT, PyTree]:
  """(module, params) with random params (for benchmarks and plumbing tests), as Flax initialises."""
  module = module_from_config(config_dict, **overrides)
  pixels = jnp.zeros((1, *module.image_size, 3), jnp.float32)
  return module, jax.jit(module.init)(key, pixels)['params']
