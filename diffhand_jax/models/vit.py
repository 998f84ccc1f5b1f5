"""Vision Transformer image encoder E (docs/design.md §4), with timm weight import (docs/design.md §8).

The module follows timm's `VisionTransformer` (timm 1.0) exactly where pretrained weights depend on it:

* patch embedding: a conv with kernel = stride = patch size (computed here as patchify + matmul, which is
  the same linear map and faster on CPU);
* a class token (and, for distilled DeiT, a distillation token right after it);
* a learned absolute position embedding, added to all tokens (DeiT / ViT) or only to the patch tokens
  (DeiT III, timm's `no_embed_class=True`);
* pre-LN blocks: x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x))), with qkv bias, exact (erf) GELU, MLP
  ratio 4 and optional LayerScale (DeiT III);
* a final LayerNorm. Every LayerNorm uses eps = 1e-6 as timm's ViT does.

`module.apply({'params': params}, images)` takes images float32 (B, H, W, 3), NHWC and already normalised,
and returns `(features (B, P, C), embedding (B, C))`, equal to timm's `forward_features(x)[:, 1:]` and
`[:, 0]`. For distilled DeiT the features exclude both the class and the distillation token, and the
embedding is the class token.

Position embeddings for another input size are resampled once, when the weights are converted
(`from_timm(..., img_size=256)`), the way timm does when it loads pretrained weights into a model made at
another size: bicubic with antialias, align_corners=False. Torch's antialiased bicubic is not the plain
a=-0.75 bicubic: it uses the PIL-style cubic kernel (a=-0.5) and, at the borders, drops taps that fall
outside the grid and renormalises the rest. `resample_pos_embed` implements exactly that in numpy.

Three options make the same network the backbone of transformers' DPT (models/midas.py), whose ViT is
transformers' own rather than timm's:

* `layer_norm_eps`: transformers' ViTs use 1e-12 where timm uses 1e-6;
* `pos_embed_resize='bilinear'`: the position embedding stays at its `img_size` grid and is resized to
  each input's grid in the forward pass, as transformers' DPT does (bilinear, align_corners=False, no
  antialias; the identity at the native size), so one module takes any input size;
* `out_indices`: the call returns the hidden states (B, 1 + P, C), class token first, after those blocks
  (no final LayerNorm), instead of (features, embedding).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax.models import attention

# Raised by `params_from_timm` and `from_timm` (re-exported: users catch vit.CheckpointMismatchError).
from diffhand_jax.models import checkpoint_errors
from diffhand_jax.models.checkpoint_errors import CheckpointMismatchError  # noqa: F401 - re-exported

Dtype = Any
PyTree = Any

_LAYER_NORM_EPS = 1e-6  # timm's ViT: partial(nn.LayerNorm, eps=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Registry of timm configurations
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Architecture of one timm ViT variant (the arguments its timm entry point passes)."""

  patch_size: int
  embed_dim: int
  depth: int
  num_heads: int
  img_size: int = 224  # the native (pretraining) resolution
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  init_values: float | None = None  # LayerScale init; None = no LayerScale
  no_embed_class: bool = False  # True: position embedding covers the patch tokens only (DeiT III)
  distilled: bool = False  # True: a distillation token follows the class token (DeiT distilled)


def _deit3(**kwargs: Any) -> ViTConfig:
  return ViTConfig(no_embed_class=True, init_values=1e-6, **kwargs)


# Settings copied from timm's entry points in timm/models/deit.py and vision_transformer.py.
VIT_CONFIGS: dict[str, ViTConfig] = {
    'deit_tiny_patch16_224': ViTConfig(16, 192, 12, 3),
    'deit_small_patch16_224': ViTConfig(16, 384, 12, 6),
    'deit_base_patch16_224': ViTConfig(16, 768, 12, 12),
    'deit_base_patch16_384': ViTConfig(16, 768, 12, 12, img_size=384),
    'deit_tiny_distilled_patch16_224': ViTConfig(16, 192, 12, 3, distilled=True),
    'deit_small_distilled_patch16_224': ViTConfig(16, 384, 12, 6, distilled=True),
    'deit_base_distilled_patch16_224': ViTConfig(16, 768, 12, 12, distilled=True),
    'deit_base_distilled_patch16_384': ViTConfig(16, 768, 12, 12, img_size=384, distilled=True),
    'deit3_small_patch16_224': _deit3(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    'deit3_small_patch16_384': _deit3(
        patch_size=16, embed_dim=384, depth=12, num_heads=6, img_size=384
    ),
    'deit3_medium_patch16_224': _deit3(patch_size=16, embed_dim=512, depth=12, num_heads=8),
    'deit3_base_patch16_224': _deit3(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    'deit3_base_patch16_384': _deit3(
        patch_size=16, embed_dim=768, depth=12, num_heads=12, img_size=384
    ),
    'deit3_large_patch16_224': _deit3(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    'deit3_large_patch16_384': _deit3(
        patch_size=16, embed_dim=1024, depth=24, num_heads=16, img_size=384
    ),
    'deit3_huge_patch14_224': _deit3(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
    'vit_tiny_patch16_224': ViTConfig(16, 192, 12, 3),
    'vit_small_patch16_224': ViTConfig(16, 384, 12, 6),
    'vit_base_patch16_224': ViTConfig(16, 768, 12, 12),
    'vit_large_patch16_224': ViTConfig(16, 1024, 24, 16),
}


def get_config(model_name: str) -> ViTConfig:
  """The `ViTConfig` registered under a timm model name (pretrained tags like '.fb_in1k' are ignored)."""
  base_name = model_name.split('.', 1)[0]
  if base_name not in VIT_CONFIGS:
    raise ValueError(
        f'unknown ViT model {model_name!r}; known models: {", ".join(sorted(VIT_CONFIGS))}'
    )
  return VIT_CONFIGS[base_name]


def image_size_pair(size: int | Sequence[int]) -> tuple[int, int]:
  if isinstance(size, (int, np.integer)):
    return int(size), int(size)
  height, width = size
  return int(height), int(width)


# ---------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------

_dense_init = nn.initializers.truncated_normal(
    stddev=0.02
)  # timm's init_weights_vit_timm for Linear


class PatchEmbed(nn.Module):
  """Non-overlapping patch projection, the same linear map as timm's Conv2d(kernel=stride=patch).

  The kernel is stored as (p, p, in_chans, C), i.e. a Flax conv kernel (HWIO), whichever way it is
  computed: 'matmul' patchifies with a reshape and does one matmul (faster on CPU), 'conv' calls XLA's
  convolution.
  """

  patch_size: int
  embed_dim: int
  impl: str = 'matmul'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images (B, H, W, c) -> patch tokens (B, H//p * W//p, C), row-major over the patch grid.

    Rows and columns past the last whole patch are ignored, as torch's strided conv ignores them.
    """
    batch, height, width, chans = images.shape
    p = self.patch_size
    images = images[:, : height // p * p, : width // p * p]
    kernel = self.param(
        'kernel', nn.initializers.lecun_normal(), (p, p, chans, self.embed_dim), self.param_dtype
    )
    bias = self.param('bias', nn.initializers.zeros, (self.embed_dim,), self.param_dtype)
    images, kernel, bias = nn.dtypes.promote_dtype(images, kernel, bias, dtype=self.dtype)
    grid_h, grid_w = height // p, width // p
    if self.impl == 'matmul':
      patches = images.reshape(batch, grid_h, p, grid_w, p, chans)
      patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid_h * grid_w, p * p * chans)
      tokens = patches @ kernel.reshape(p * p * chans, self.embed_dim)
    elif self.impl == 'conv':
      tokens = jax.lax.conv_general_dilated(
          images,
          kernel,
          window_strides=(p, p),
          padding='VALID',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      )
      tokens = tokens.reshape(batch, grid_h * grid_w, self.embed_dim)
    else:
      raise ValueError(f"PatchEmbed.impl must be 'matmul' or 'conv', got {self.impl!r}")
    return tokens + bias


class Attention(nn.Module):
  """timm's multi-head self-attention: fused qkv Linear (with bias), softmax(q k^T / sqrt(d)) v, proj.

  The attention core is `attention.dot_product_attention` (the logits scaled in float32 after the
  q k^T matmul; timm scales q before it, which differs only in rounding).
  """

  num_heads: int
  qkv_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, N, C) -> (B, N, C)."""
    batch, tokens, width = x.shape
    head_dim = width // self.num_heads
    dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_dense_init)
    qkv = nn.Dense(3 * width, use_bias=self.qkv_bias, name='qkv', **dense)(x)
    # timm's layout of the fused projection: (3, heads, head_dim) along the output features.
    qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, h, d) each
    # cuDNN's fused kernel on a GPU in bfloat16, XLA elsewhere; the softmax in float32 either way.
    attended = attention.dot_product_attention(query, key, value)
    return nn.Dense(width, name='proj', **dense)(attended.reshape(batch, tokens, width))


class Mlp(nn.Module):
  """fc1 -> exact GELU (torch nn.GELU) -> fc2."""

  hidden_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, N, C) -> (B, N, C)."""
    dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=_dense_init)
    hidden = nn.gelu(nn.Dense(self.hidden_dim, name='fc1', **dense)(x), approximate=False)
    return nn.Dense(x.shape[-1], name='fc2', **dense)(hidden)


class LayerScale(nn.Module):
  """Per-channel scale gamma, initialised to `init_values` (DeiT III)."""

  init_values: float
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gamma = self.param(
        'gamma', nn.initializers.constant(self.init_values), (x.shape[-1],), self.param_dtype
    )
    return x * gamma.astype(x.dtype)


def _layer_norm(
    name: str, dtype: Dtype, param_dtype: Dtype, eps: float = _LAYER_NORM_EPS
) -> nn.LayerNorm:
  # use_fast_variance=False: E[(x - mean)^2] as torch computes it, not E[x^2] - mean^2.
  return nn.LayerNorm(
      epsilon=eps,
      use_fast_variance=False,
      dtype=dtype,
      param_dtype=param_dtype,
      name=name,
  )


class Block(nn.Module):
  """Pre-LN transformer block: x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x)))."""

  num_heads: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  init_values: float | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  layer_norm_eps: float = _LAYER_NORM_EPS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, N, C) -> (B, N, C)."""
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    eps = self.layer_norm_eps
    branch = Attention(self.num_heads, self.qkv_bias, name='attn', **dtypes)(
        _layer_norm('norm1', eps=eps, **dtypes)(x)
    )
    if self.init_values is not None:
      branch = LayerScale(self.init_values, self.param_dtype, name='ls1')(branch)
    x = x + branch
    branch = Mlp(int(x.shape[-1] * self.mlp_ratio), name='mlp', **dtypes)(
        _layer_norm('norm2', eps=eps, **dtypes)(x)
    )
    if self.init_values is not None:
      branch = LayerScale(self.init_values, self.param_dtype, name='ls2')(branch)
    return x + branch


class VisionTransformer(nn.Module):
  """timm-compatible ViT / DeiT / DeiT III encoder.

  Attributes:
    img_size: input (H, W) (or one int for square inputs) that the position embedding is made for.
    patch_size, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: as timm.
    init_values: LayerScale init value, or None for no LayerScale.
    no_embed_class: position embedding only on the patch tokens (DeiT III).
    distilled: add timm's DeiT distillation token (excluded from the features).
    patch_embed_impl: 'matmul' (default, faster on CPU) or 'conv'; same parameters either way.
    remat: rematerialise each block in the backward pass (saves activation memory when training).
    dtype: compute dtype (e.g. jnp.bfloat16); param_dtype: parameter dtype. Both default to float32.
    layer_norm_eps: every LayerNorm's epsilon (timm 1e-6; transformers' ViTs 1e-12).
    pos_embed_resize: None (the input must be img_size) or 'bilinear' (any input size: the embedding,
      stored for img_size, is resized to the input's patch grid in the forward pass, as transformers'
      DPT does).
    out_indices: None, or the blocks (0-based) whose outputs (B, num_prefix_tokens + P, C) the call
      returns, in order, without the final LayerNorm (which is then not built).
  """

  img_size: int | tuple[int, int] = 224
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  init_values: float | None = None
  no_embed_class: bool = False
  distilled: bool = False
  patch_embed_impl: str = 'matmul'
  remat: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  layer_norm_eps: float = _LAYER_NORM_EPS
  pos_embed_resize: str | None = None
  out_indices: tuple[int, ...] | None = None

  @property
  def grid_size(self) -> tuple[int, int]:
    height, width = image_size_pair(self.img_size)
    return height // self.patch_size, width // self.patch_size

  @property
  def num_patches(self) -> int:
    grid_h, grid_w = self.grid_size
    return grid_h * grid_w

  @property
  def num_prefix_tokens(self) -> int:
    return 2 if self.distilled else 1

  @nn.compact
  def __call__(self, images: jax.Array) -> Any:
    """images float32 (B, H, W, 3), normalised -> (features (B, P, C), embedding (B, C)), or with
    out_indices the list of those blocks' hidden states, each (B, num_prefix_tokens + P, C)."""
    chex.assert_rank(images, 4)
    height, width = image_size_pair(self.img_size)
    if self.pos_embed_resize not in (None, 'bilinear'):
      raise ValueError(
          f"VisionTransformer.pos_embed_resize must be None or 'bilinear', got "
          f'{self.pos_embed_resize!r}'
      )
    if self.pos_embed_resize is not None:
      if images.shape[1] < self.patch_size or images.shape[2] < self.patch_size:
        raise ValueError(
            f'images of shape {images.shape} are smaller than one {self.patch_size}x'
            f'{self.patch_size} patch'
        )
    elif images.shape[1:3] != (height, width):
      raise ValueError(
          f'VisionTransformer was built for {height}x{width} images (img_size={self.img_size}) but '
          f'got images of shape {images.shape}; expected (B, {height}, {width}, C). Convert the '
          f'weights for that size with from_timm(..., img_size=...).'
      )
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(
          f'img_size {height}x{width} is not a multiple of patch_size {self.patch_size}'
      )
    batch = images.shape[0]
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)

    tokens = PatchEmbed(
        self.patch_size, self.embed_dim, self.patch_embed_impl, name='patch_embed', **dtypes
    )(images)
    prefix = [
        self.param(
            'cls_token', nn.initializers.normal(1e-6), (1, 1, self.embed_dim), self.param_dtype
        )
    ]
    if self.distilled:
      prefix.append(
          self.param(
              'dist_token',
              nn.initializers.truncated_normal(0.02),
              (1, 1, self.embed_dim),
              self.param_dtype,
          )
      )
    num_pos = self.num_patches + (0 if self.no_embed_class else self.num_prefix_tokens)
    pos_embed = self.param(
        'pos_embed',
        nn.initializers.truncated_normal(0.02),
        (1, num_pos, self.embed_dim),
        self.param_dtype,
    )
    prefix = [
        jnp.broadcast_to(token, (batch, 1, self.embed_dim)).astype(tokens.dtype) for token in prefix
    ]
    if self.pos_embed_resize is not None:
      input_grid = (images.shape[1] // self.patch_size, images.shape[2] // self.patch_size)
      pos_embed = _resize_pos_embed_bilinear(
          pos_embed,
          self.grid_size,
          input_grid,
          num_prefix_tokens=0 if self.no_embed_class else self.num_prefix_tokens,
      )
    pos_embed = pos_embed.astype(tokens.dtype)
    if self.no_embed_class:  # DeiT III: add to the patches, then prepend the tokens
      x = jnp.concatenate(prefix + [tokens + pos_embed], axis=1)
    else:  # DeiT / ViT: prepend the tokens, then add to all
      x = jnp.concatenate(prefix + [tokens], axis=1) + pos_embed

    block_cls = nn.remat(Block) if self.remat else Block
    if self.out_indices is not None and not all(0 <= i < self.depth for i in self.out_indices):
      raise ValueError(f'out_indices {self.out_indices} must lie in [0, depth={self.depth})')
    hidden_states = []
    last = self.depth if self.out_indices is None else max(self.out_indices, default=-1) + 1
    for index in range(last):  # blocks after the last one asked for would be computed for nothing
      x = block_cls(
          self.num_heads,
          self.mlp_ratio,
          self.qkv_bias,
          self.init_values,
          name=f'blocks_{index}',
          layer_norm_eps=self.layer_norm_eps,
          **dtypes,
      )(x)
      hidden_states.append(x)
    if self.out_indices is not None:
      return [hidden_states[i] for i in self.out_indices]
    x = _layer_norm('norm', eps=self.layer_norm_eps, **dtypes)(x)
    return x[:, self.num_prefix_tokens :], x[:, 0]


def _resize_pos_embed_bilinear(
    pos_embed: jax.Array,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    *,
    num_prefix_tokens: int,
) -> jax.Array:
  """(1, prefix + gh*gw, C) -> (1, prefix + new_gh*new_gw, C), torch's bilinear (align_corners=False)."""
  if tuple(old_grid) == tuple(new_grid):
    return pos_embed
  prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
  grid = grid.reshape(old_grid[0], old_grid[1], -1)
  rows = jnp.asarray(bilinear_matrix(old_grid[0], new_grid[0]), grid.dtype)
  cols = jnp.asarray(bilinear_matrix(old_grid[1], new_grid[1]), grid.dtype)
  resized = jnp.einsum('ih,jw,hwc->ijc', rows, cols, grid)
  return jnp.concatenate([prefix, resized.reshape(1, new_grid[0] * new_grid[1], -1)], axis=1)


def create(
    model_name: str, img_size: int | tuple[int, int] | None = None, **overrides: Any
) -> VisionTransformer:
  """A `VisionTransformer` with the architecture of timm's `model_name`, for random init or import.

  Args:
    model_name: a key of `VIT_CONFIGS`, e.g. 'deit3_large_patch16_224'.
    img_size: input size (int or (H, W)); None = the model's native size.
    **overrides: any other `VisionTransformer` field (dtype, param_dtype, remat, depth, ...).
  """
  config = get_config(model_name)
  fields = dataclasses.asdict(config)
  native_size = fields.pop('img_size')
  fields.update(overrides)
  return VisionTransformer(img_size=native_size if img_size is None else img_size, **fields)


def init_params(
    module: VisionTransformer, key: jax.Array, img_size: int | tuple[int, int] | None = None
) -> PyTree:
  """Randomly initialised params (timm-like init) for `module`, built for its own img_size."""
  height, width = image_size_pair(module.img_size if img_size is None else img_size)
  images = jnp.zeros((1, height, width, 3), jnp.float32)
  return jax.jit(module.init)(key, images)['params']


# ---------------------------------------------------------------------------------------------------------
# Position-embedding resampling (torch's F.interpolate(mode='bicubic', antialias=True), in numpy)
# ---------------------------------------------------------------------------------------------------------


def _aa_cubic(x: np.ndarray) -> np.ndarray:
  """PIL / torch-antialias cubic kernel, a = -0.5."""
  a = -0.5
  x = np.abs(x)
  near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
  far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
  return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def antialias_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float64 matrix of torch's antialiased bicubic resize (align_corners=False).

  Mirrors ATen's `_compute_indices_min_size_weights_aa`: the kernel support widens by the scale when
  downsampling, taps outside [0, in_size) are dropped and each row is renormalised to sum to 1.
  """
  scale = in_size / out_size
  support = 2.0 * scale if scale >= 1.0 else 2.0
  inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
  matrix = np.zeros((out_size, in_size), np.float64)
  for out_index in range(out_size):
    center = scale * (out_index + 0.5)
    first = max(int(center - support + 0.5), 0)
    stop = min(int(center + support + 0.5), in_size)
    taps = np.arange(first, stop)
    weights = _aa_cubic((taps - center + 0.5) * inv_scale)
    total = weights.sum()
    matrix[out_index, first:stop] = weights / total if total != 0 else weights
  return matrix


def bilinear_taps(
    in_size: int, out_size: int, align_corners: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """torch's bilinear resize along one axis (no antialias): (low, high, weight), each (out_size,).

  Output i is (1 - weight[i]) * x[low[i]] + weight[i] * x[high[i]]. As ATen's `upsample_bilinear2d` with
  an output size, the source coordinate is (i + 0.5) * in/out - 0.5 clamped at 0 (align_corners=False)
  or i * (in-1)/(out-1) (align_corners=True).
  """
  out_index = np.arange(out_size, dtype=np.float64)
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    source = out_index * scale
  else:
    source = np.maximum((out_index + 0.5) * in_size / out_size - 0.5, 0.0)
  low = np.minimum(source.astype(np.int64), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  return low, high, source - low


def bilinear_matrix(in_size: int, out_size: int, align_corners: bool = False) -> np.ndarray:
  """(out_size, in_size) float64 matrix of `bilinear_taps`' resize."""
  low, high, weight = bilinear_taps(in_size, out_size, align_corners)
  matrix = np.zeros((out_size, in_size), np.float64)
  np.add.at(matrix, (np.arange(out_size), low), 1.0 - weight)
  np.add.at(matrix, (np.arange(out_size), high), weight)
  return matrix


def resample_pos_embed(
    pos_embed: np.ndarray,
    new_grid: tuple[int, int],
    *,
    num_prefix_tokens: int,
    old_grid: tuple[int, int] | None = None,
) -> np.ndarray:
  """Resample a timm position embedding to another patch grid, as timm's `resample_abs_pos_embed`.

  Args:
    pos_embed: (1, num_prefix_tokens + gh * gw, C); the prefix rows (class / distillation token) are
      kept as they are.
    new_grid: (new_gh, new_gw).
    num_prefix_tokens: rows at the start that are not on the grid (0 for DeiT III).
    old_grid: (gh, gw); None = square.
  Returns:
    (1, num_prefix_tokens + new_gh * new_gw, C), the dtype of `pos_embed`.
  """
  pos_embed = np.asarray(pos_embed)
  if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
    raise ValueError(f'pos_embed must have shape (1, N, C), got {pos_embed.shape}')
  prefix, grid_rows = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
  num_grid = grid_rows.shape[1]
  if old_grid is None:
    side = math.isqrt(num_grid)
    if side * side != num_grid:
      raise ValueError(
          f'pos_embed has {num_grid} grid positions, which is not a square grid; ' 'pass old_grid'
      )
    old_grid = (side, side)
  if old_grid[0] * old_grid[1] != num_grid:
    raise ValueError(
        f'old_grid {old_grid} does not hold the {num_grid} grid positions of pos_embed'
    )
  if tuple(old_grid) == tuple(new_grid):
    return pos_embed
  grid = grid_rows.reshape(old_grid[0], old_grid[1], -1).astype(np.float64)
  rows = antialias_bicubic_matrix(old_grid[0], new_grid[0])
  cols = antialias_bicubic_matrix(old_grid[1], new_grid[1])
  resized = np.einsum('ih,jw,hwc->ijc', rows, cols, grid)
  resized = resized.reshape(1, new_grid[0] * new_grid[1], -1).astype(pos_embed.dtype)
  return np.concatenate([prefix, resized], axis=1)


# ---------------------------------------------------------------------------------------------------------
# timm state-dict import
# ---------------------------------------------------------------------------------------------------------

# Classifier weights that a timm checkpoint carries but the encoder does not use; they are skipped.
IGNORED_TIMM_KEYS = ('head.weight', 'head.bias', 'head_dist.weight', 'head_dist.bias')


def to_numpy(value: Any) -> np.ndarray:
  """A numpy array from a numpy array or a torch tensor (bfloat16 tensors become float32)."""
  if isinstance(value, np.ndarray):
    return value
  if hasattr(value, 'detach'):  # a torch tensor; torch is not imported here
    tensor = value.detach().cpu()
    if tensor.dtype.is_floating_point and tensor.dtype.itemsize < 4:  # numpy has no bfloat16
      tensor = tensor.float()
    return tensor.numpy()
  return np.asarray(value)


def _timm_key_map(
    module: VisionTransformer,
) -> dict[str, tuple[tuple[str, ...], tuple[int, ...] | None]]:
  """timm name -> (Flax param path, axis permutation from the torch layout to the Flax one, or None)."""
  same = None
  linear = (1, 0)  # torch Linear (out, in) -> Flax Dense (in, out)
  conv = (2, 3, 1, 0)  # torch Conv2d (O, I, kh, kw) -> Flax (kh, kw, I, O)
  key_map = {
      'cls_token': (('cls_token',), same),
      'pos_embed': (('pos_embed',), same),
      'patch_embed.proj.weight': (('patch_embed', 'kernel'), conv),
      'patch_embed.proj.bias': (('patch_embed', 'bias'), same),
  }
  if module.out_indices is None:  # else the final LayerNorm is not built
    key_map['norm.weight'] = (('norm', 'scale'), same)
    key_map['norm.bias'] = (('norm', 'bias'), same)
  num_blocks = (
      module.depth if module.out_indices is None else max(module.out_indices, default=-1) + 1
  )
  if module.distilled:
    key_map['dist_token'] = (('dist_token',), same)
  for index in range(num_blocks):
    src, dst = f'blocks.{index}.', f'blocks_{index}'
    for norm in ('norm1', 'norm2'):
      key_map[f'{src}{norm}.weight'] = ((dst, norm, 'scale'), same)
      key_map[f'{src}{norm}.bias'] = ((dst, norm, 'bias'), same)
    for parent, layer in (('attn', 'qkv'), ('attn', 'proj'), ('mlp', 'fc1'), ('mlp', 'fc2')):
      key_map[f'{src}{parent}.{layer}.weight'] = ((dst, parent, layer, 'kernel'), linear)
      if layer != 'qkv' or module.qkv_bias:
        key_map[f'{src}{parent}.{layer}.bias'] = ((dst, parent, layer, 'bias'), same)
    if module.init_values is not None:
      key_map[f'{src}ls1.gamma'] = ((dst, 'ls1', 'gamma'), same)
      key_map[f'{src}ls2.gamma'] = ((dst, 'ls2', 'gamma'), same)
  return key_map


def _rename_legacy_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Original DeiT III checkpoints name LayerScale 'blocks.i.gamma_1'; timm calls it 'blocks.i.ls1.gamma'."""
  return {
      re.sub(r'\.gamma_([12])$', r'.ls\1.gamma', name): value for name, value in state_dict.items()
  }


def params_from_timm(
    module: VisionTransformer, state_dict: Mapping[str, Any], *, source: str = 'state dict'
) -> PyTree:
  """Flax params for `module` from a timm state dict, resampling the position embedding if needed.

  Raises `CheckpointMismatchError` naming `source` and listing every missing, unused and mis-shaped key.
  """
  state_dict = _rename_legacy_keys(state_dict)
  key_map = _timm_key_map(module)
  missing = sorted(set(key_map) - set(state_dict))
  unused = sorted(set(state_dict) - set(key_map) - set(IGNORED_TIMM_KEYS))
  expected_shapes = jax.tree_util.tree_map(
      lambda leaf: leaf.shape,
      jax.eval_shape(
          module.init, jax.random.PRNGKey(0), jnp.zeros((1, *image_size_pair(module.img_size), 3))
      )['params'],
  )

  params: dict[str, Any] = {}
  mismatched = []
  for timm_name, (path, permutation) in key_map.items():
    if timm_name not in state_dict:
      continue
    array = to_numpy(state_dict[timm_name])
    expected = expected_shapes
    for part in path:
      expected = expected[part]
    if permutation is not None:
      if array.ndim != len(permutation):
        mismatched.append(
            f'{timm_name}: checkpoint {tuple(array.shape)}, model '
            f'{tuple(expected[i] for i in np.argsort(permutation))}'
        )
        continue
      array = array.transpose(permutation)
    if (
        timm_name == 'pos_embed'
        and array.ndim == 3
        and array.shape[0] == 1
        and array.shape[2] == expected[2]
        and array.shape[1] != expected[1]
    ):
      prefix_rows = 0 if module.no_embed_class else module.num_prefix_tokens
      try:
        array = resample_pos_embed(array, module.grid_size, num_prefix_tokens=prefix_rows)
      except ValueError as error:
        mismatched.append(f'pos_embed: {error}')
        continue
    if tuple(array.shape) != tuple(expected):
      # Both shapes in timm's (torch) layout, as the user knows them.
      checkpoint_shape, model_shape = tuple(array.shape), tuple(expected)
      if permutation is not None:
        inverse = np.argsort(permutation)
        checkpoint_shape = tuple(checkpoint_shape[i] for i in inverse)
        model_shape = tuple(model_shape[i] for i in inverse)
      mismatched.append(f'{timm_name}: checkpoint {checkpoint_shape}, model {model_shape}')
      continue
    node = params
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = jnp.asarray(array, dtype=module.param_dtype)

  checkpoint_errors.raise_if_mismatched(
      f'{source} does not fit this VisionTransformer (depth={module.depth}, '
      f'embed_dim={module.embed_dim}, layer_scale={module.init_values is not None}, '
      f'distilled={module.distilled}):',
      missing,
      unused,
      mismatched,
  )
  return params


def from_timm(
    model_name: str,
    state_dict: Mapping[str, Any],
    *,
    img_size: int | tuple[int, int] | None = None,
    **overrides: Any,
) -> tuple[VisionTransformer, PyTree]:
  """A module and its params from a timm state dict (docs/design.md §8).

  Args:
    model_name: timm model name, e.g. 'deit3_large_patch16_224' (see `VIT_CONFIGS`).
    state_dict: {timm parameter name: numpy array or torch tensor}. The classifier ('head.*',
      'head_dist.*') is skipped; original DeiT III names ('gamma_1') are accepted.
    img_size: input size for the returned module; None = the model's native size. The position
      embedding is resampled to that grid as timm does (bicubic, antialias, align_corners=False).
    **overrides: other `VisionTransformer` fields (dtype, param_dtype, remat, patch_embed_impl).
  Returns:
    (module, params) with `module.apply({'params': params}, images)` -> (features, embedding), where
    images is float32 (B, H, W, 3) and the outputs equal timm's forward_features(x)[:, 1:] and [:, 0].
  """
  module = create(model_name, img_size=img_size, **overrides)
  params = params_from_timm(module, state_dict, source=f'state dict for {model_name!r}')
  return module, params
