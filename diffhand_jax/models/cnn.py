"""A small convolutional image encoder with the ViT's output contract, for CPU-sized models.

The paper uses either a ViT (DeiT) or a CNN (HRNet-W64) as its image encoder E. This is a compact
ResNet-style CNN in the same role: it returns the feature map I_F as tokens (B, P, C) (one per cell of the
final grid, P = (H/2^S)·(W/2^S) for S stride-2 stages) and the embedding I_E (B, C) by global average
pooling. Convolutions learn far faster than a ViT from scratch on a few thousand images, which is what the
synthetic CPU demo needs; it is not a stand-in for HRNet's accuracy.
"""

from __future__ import annotations

from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

CNN_CONFIGS = {
    # name: (stage widths, residual blocks per stage)
    'cnn_small': ((32, 64, 128), 1),
    'cnn_base': ((64, 128, 256), 2),
}


class ResidualBlock(nn.Module):
  """Two 3x3 convolutions with GroupNorm and a skip connection (pre-activation)."""

  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.gelu(nn.GroupNorm(num_groups=8, dtype=self.dtype)(x), approximate=False)
    y = nn.Conv(self.width, (3, 3), dtype=self.dtype)(y)
    y = nn.gelu(nn.GroupNorm(num_groups=8, dtype=self.dtype)(y), approximate=False)
    y = nn.Conv(self.width, (3, 3), dtype=self.dtype, kernel_init=nn.initializers.zeros)(y)
    return x + y


class ConvEncoder(nn.Module):
  """images (B, H, W, 3) → (features (B, P, C), embedding (B, C)), C = the last stage's width."""

  widths: Sequence[int] = (32, 64, 128)
  blocks_per_stage: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    chex.assert_rank(images, 4)
    chex.assert_axis_dimension(images, 3, 3)
    x = images.astype(self.dtype)
    for width in self.widths:
      x = nn.Conv(width, (3, 3), strides=(2, 2), dtype=self.dtype)(x)  # downsample, then refine
      for _ in range(self.blocks_per_stage):
        x = ResidualBlock(width, dtype=self.dtype)(x)
    x = nn.LayerNorm(dtype=self.dtype)(x)
    batch, height, width, channels = x.shape
    features = x.reshape(batch, height * width, channels)
    embedding = nn.Dense(channels, dtype=self.dtype)(features.mean(axis=1))
    return features.astype(jnp.float32), embedding.astype(jnp.float32)


def create(model_name: str, img_size: Any = None, **overrides: Any) -> ConvEncoder:
  """A `ConvEncoder` by name (`CNN_CONFIGS`); ``img_size`` is accepted for symmetry with the ViT (a CNN
  takes any size); overrides set `widths`, `blocks_per_stage` or `dtype`."""
  del img_size
  if model_name not in CNN_CONFIGS:
    raise ValueError(f'unknown CNN encoder {model_name!r}; choose one of {sorted(CNN_CONFIGS)}')
  widths, blocks = CNN_CONFIGS[model_name]
  fields = {'widths': tuple(widths), 'blocks_per_stage': blocks}
  fields.update({k: (tuple(v) if k == 'widths' else v) for k, v in overrides.items()})
  return ConvEncoder(**fields)
