"""HRNet image encoder E, the paper's second encoder (HRNet-W64 for DexYCB), with timm weight import.

The module follows timm's `HighResolutionNet` (timm 1.0, `timm.models.hrnet`) with its classification
head (`head='classification'`), up to the end of `forward_features`:

* stem: two 3x3 stride-2 convolutions (stem width, then 64 channels), each with BatchNorm and ReLU;
* stage 1 (`layer1`): ResNet bottleneck blocks (or basic blocks) at 1/4 of the input;
* stages 2 to 4: each starts with a transition that adapts the existing branches' widths and adds a branch
  at half the resolution (3x3 stride-2 conv from the last branch), then runs `num_modules` multi-resolution
  modules. A module runs `num_blocks` basic blocks on every branch, then fuses: output branch i is
  ReLU(sum over j of f_ij(x_j)), where f_ii is the identity, f_ij for j > i is a 1x1 conv + BN and a
  nearest-neighbour upsampling by 2^(j-i), and f_ij for j < i is i-j 3x3 stride-2 conv + BN steps (ReLU
  between them, not after the last);
* the classification neck: an "incre" bottleneck per branch (to 128, 256, 512, 1024 channels), then from the
  highest resolution down: y = incre_i(x_i) + downsamp_{i-1}(y) (3x3 stride-2 conv with bias, BN, ReLU),
  and a final 1x1 conv (with bias) + BN + ReLU to 2048 channels at 1/32 of the input.

Convolutions pad as torch does (explicit symmetric padding k//2, never 'SAME', which pads stride-2 convs
asymmetrically). Every BatchNorm has eps 1e-5 and torch's momentum 0.1 (Flax's momentum 0.9); in training
Flax updates the running variance with the biased batch variance where torch uses the unbiased one.

Variables: `{'params': ..., 'batch_stats': ...}`. `module.apply(variables, images)` runs in inference mode
(running statistics); `module.apply(variables, images, train=True, mutable=['batch_stats'])` normalises
with the batch's statistics and returns the updated ones as well.

The variable tree mirrors timm's parameter names: a Flax path joined with '.' and with every '_<digits>'
written '.<digits>' is timm's module name (e.g. `stage2_0/branches_1_0/conv1/kernel` is
`stage2.0.branches.1.0.conv1.weight`); `from_timm` derives its name map from that rule.

images: float32 (B, H, W, 3), NHWC, normalised as timm expects (ImageNet mean and std); H and W multiples
of 32. Returns (features, embedding): I_F (B, H/32 * W/32, 2048), row-major over the grid, or
(B, H/32, W/32, 2048) with `keep_grid=True`, equal to timm's `forward_features(x)` (NCHW there); and
I_E (B, 2048), the mean of I_F over the grid, equal to timm's global average pool.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Raised by `variables_from_timm` and `from_timm`, as for the ViT.
from diffhand_jax.models import checkpoint_errors
from diffhand_jax.models.checkpoint_errors import CheckpointMismatchError  # noqa: F401 - hrnet.CheckpointMismatchError
from diffhand_jax.models.vit import to_numpy

Dtype = Any
PyTree = Any

_BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default, which timm's HRNet keeps
_BN_MOMENTUM = 0.9  # Flax's convention for torch's momentum=0.1
_HEAD_CHANNELS = (32, 64, 128, 256)  # the incre bottlenecks' widths (x4 on output)
NUM_FEATURES = 2048  # channels of the classification neck's output
_EXPANSION = {'BASIC': 1, 'BOTTLENECK': 4}


# ---------------------------------------------------------------------------------------------------------
# Registry of timm configurations
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StageConfig:
  """One stage of timm's `cfg_cls` entry: `num_modules` modules of `num_branches` branches."""

  num_modules: int
  block: str  # 'BASIC' or 'BOTTLENECK'
  num_blocks: tuple[int, ...]  # blocks per branch
  num_channels: tuple[int, ...]  # per branch, before the block's expansion

  @property
  def num_branches(self) -> int:
    return len(self.num_channels)


@dataclasses.dataclass(frozen=True)
class HRNetConfig:
  """Architecture of one timm HRNet variant (its `cfg_cls` entry)."""

  stem_width: int
  stages: tuple[StageConfig, StageConfig, StageConfig, StageConfig]


def _standard(width: int, stage1_blocks: int = 4, stage1_width: int = 64) -> HRNetConfig:
  """hrnet_w18 ... hrnet_w64: 4 blocks per branch; 1, 4 and 3 modules in stages 2 to 4."""
  return HRNetConfig(
      stem_width=64,
      stages=(
          StageConfig(1, 'BOTTLENECK', (stage1_blocks,), (stage1_width,)),
          StageConfig(1, 'BASIC', (4,) * 2, (width, 2 * width)),
          StageConfig(4, 'BASIC', (4,) * 3, (width, 2 * width, 4 * width)),
          StageConfig(3, 'BASIC', (4,) * 4, (width, 2 * width, 4 * width, 8 * width)),
      ),
  )


# Settings copied from timm's `cfg_cls` in timm/models/hrnet.py.
HRNET_CONFIGS: dict[str, HRNetConfig] = {
    'hrnet_w18_small': HRNetConfig(
        stem_width=64,
        stages=(
            StageConfig(1, 'BOTTLENECK', (1,), (32,)),
            StageConfig(1, 'BASIC', (2,) * 2, (16, 32)),
            StageConfig(1, 'BASIC', (2,) * 3, (16, 32, 64)),
            StageConfig(1, 'BASIC', (2,) * 4, (16, 32, 64, 128)),
        ),
    ),
    'hrnet_w18_small_v2': HRNetConfig(
        stem_width=64,
        stages=(
            StageConfig(1, 'BOTTLENECK', (2,), (64,)),
            StageConfig(1, 'BASIC', (2,) * 2, (18, 36)),
            StageConfig(3, 'BASIC', (2,) * 3, (18, 36, 72)),
            StageConfig(2, 'BASIC', (2,) * 4, (18, 36, 72, 144)),
        ),
    ),
    **{f'hrnet_w{width}': _standard(width) for width in (18, 30, 32, 40, 44, 48, 64)},
}


def get_config(model_name: str) -> HRNetConfig:
  """The `HRNetConfig` registered under a timm model name (pretrained tags like '.ms_in1k' are ignored)."""
  base_name = model_name.split('.', 1)[0]
  if base_name not in HRNET_CONFIGS:
    raise ValueError(
        f'unknown HRNet model {model_name!r}; known models: {", ".join(sorted(HRNET_CONFIGS))}'
    )
  return HRNET_CONFIGS[base_name]


def is_hrnet(model_name: str) -> bool:
  return model_name.split('.', 1)[0] in HRNET_CONFIGS


# ---------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------

# timm's init_weights: kaiming normal, fan_out, for ReLU.
_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class _Layers(nn.Module):
  """Shared fields and the conv / BN factories (torch padding, timm init, torch BN eps and momentum)."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def conv(
      self, features: int, kernel: int, stride: int = 1, *, bias: bool = False, name: str
  ) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=bias,
        kernel_init=_conv_init,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=name,
    )

  def norm(self, train: bool, *, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=_BN_MOMENTUM,
        epsilon=_BN_EPS,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=name,
    )

  def conv_bn(
      self,
      x: jax.Array,
      train: bool,
      features: int,
      kernel: int,
      stride: int,
      conv_name: str,
      norm_name: str,
      *,
      relu: bool,
      bias: bool = False,
  ) -> jax.Array:
    x = self.conv(features, kernel, stride, bias=bias, name=conv_name)(x)
    x = self.norm(train, name=norm_name)(x)
    return nn.relu(x) if relu else x


class BasicBlock(_Layers):
  """timm's ResNet BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), two 3x3 convs."""

  planes: int = 64
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x (B, H, W, C_in) -> (B, H/stride, W/stride, planes)."""
    y = self.conv_bn(x, train, self.planes, 3, self.stride, 'conv1', 'bn1', relu=True)
    y = self.conv_bn(y, train, self.planes, 3, 1, 'conv2', 'bn2', relu=False)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = self.conv_bn(
          x, train, self.planes, 1, self.stride, 'downsample_0', 'downsample_1', relu=False
      )
    return nn.relu(y + x)


class Bottleneck(_Layers):
  """timm's ResNet Bottleneck: 1x1 (planes), 3x3 (planes, stride), 1x1 (4 planes), each conv + BN,
  ReLU between, then ReLU(y + shortcut(x))."""

  planes: int = 64
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x (B, H, W, C_in) -> (B, H/stride, W/stride, 4 planes)."""
    out = 4 * self.planes
    y = self.conv_bn(x, train, self.planes, 1, 1, 'conv1', 'bn1', relu=True)
    y = self.conv_bn(y, train, self.planes, 3, self.stride, 'conv2', 'bn2', relu=True)
    y = self.conv_bn(y, train, out, 1, 1, 'conv3', 'bn3', relu=False)
    if self.stride != 1 or x.shape[-1] != out:
      x = self.conv_bn(x, train, out, 1, self.stride, 'downsample_0', 'downsample_1', relu=False)
    return nn.relu(y + x)


_BLOCKS = {'BASIC': BasicBlock, 'BOTTLENECK': Bottleneck}


def _upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
  """torch's nn.Upsample(scale_factor=factor, mode='nearest') for an integer factor, NHWC."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


class HighResolutionModule(_Layers):
  """One multi-resolution module: `num_blocks[i]` blocks on branch i, then the all-to-all fusion."""

  block: str = 'BASIC'
  num_blocks: Sequence[int] = (4, 4)
  num_channels: Sequence[int] = (18, 36)

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], train: bool = False) -> list[jax.Array]:
    """xs: one (B, H/2^i, W/2^i, C_i) per branch i -> the same shapes, fused."""
    block_type = _BLOCKS[self.block]
    widths = [channels * _EXPANSION[self.block] for channels in self.num_channels]
    branches = []
    for i, x in enumerate(xs):
      for j in range(self.num_blocks[i]):
        x = block_type(
            planes=self.num_channels[i],
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=f'branches_{i}_{j}',
        )(x, train)
      branches.append(x)
    if len(branches) == 1:
      return branches

    fused = []
    for i in range(len(branches)):
      total = None
      for j, x in enumerate(branches):
        prefix = f'fuse_layers_{i}_{j}'
        if j > i:  # lower resolution: 1x1 conv to C_i, BN, nearest upsampling
          y = self.conv_bn(x, train, widths[i], 1, 1, f'{prefix}_0', f'{prefix}_1', relu=False)
          y = _upsample_nearest(y, 2 ** (j - i))
        elif j == i:
          y = x
        else:  # higher resolution: i - j strided 3x3 convs, ReLU between them
          y = x
          for k in range(i - j):
            last = k == i - j - 1
            y = self.conv_bn(
                y,
                train,
                widths[i] if last else widths[j],
                3,
                2,
                f'{prefix}_{k}_0',
                f'{prefix}_{k}_1',
                relu=not last,
            )
        total = y if total is None else total + y
      fused.append(nn.relu(total))
    return fused


class HRNet(_Layers):
  """timm's HighResolutionNet up to the end of `forward_features` (module docstring)."""

  stem_width: int = 64
  stages: Sequence[StageConfig] = HRNET_CONFIGS['hrnet_w18_small'].stages
  head_conv_bias: bool = True  # timm's default; the neck's downsamp and final convs have biases
  keep_grid: bool = False  # features as (B, h, w, C) instead of (B, h*w, C)

  @property
  def num_features(self) -> int:
    return NUM_FEATURES

  def _transition(
      self, index: int, xs: Sequence[jax.Array], widths: Sequence[int], train: bool
  ) -> list[jax.Array]:
    """timm's transition{index}: widths[i] channels per branch, one branch more at half the resolution.

    As in timm's `stages`, a branch whose width changes and every new branch read the *last* branch
    (`t(yl[-1])`); only stage 2's transition (one input) changes a width in timm's configs.
    """
    previous = [x.shape[-1] for x in xs]
    out = []
    for i, width in enumerate(widths):
      prefix = f'transition{index}_{i}'
      if i < len(xs):
        if width == previous[i]:
          out.append(xs[i])
        else:
          out.append(
              self.conv_bn(xs[-1], train, width, 3, 1, f'{prefix}_0', f'{prefix}_1', relu=True)
          )
      else:
        y = xs[-1]
        steps = i + 1 - len(xs)
        for k in range(steps):
          channels = width if k == steps - 1 else previous[-1]
          y = self.conv_bn(
              y, train, channels, 3, 2, f'{prefix}_{k}_0', f'{prefix}_{k}_1', relu=True
          )
        out.append(y)
    return out

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """images (B, H, W, 3), H and W multiples of 32 -> (features (B, H/32·W/32, 2048), or
    (B, H/32, W/32, 2048) with keep_grid, and embedding (B, 2048)), float32."""
    chex.assert_rank(images, 4)
    chex.assert_axis_dimension(images, 3, 3)
    batch, height, width, _ = images.shape
    if height % 32 or width % 32:
      raise ValueError(
          f'HRNet needs a height and width that are multiples of 32, got {height}x{width}'
      )
    x = images.astype(self.dtype)
    x = self.conv_bn(x, train, self.stem_width, 3, 2, 'conv1', 'bn1', relu=True)
    x = self.conv_bn(x, train, 64, 3, 2, 'conv2', 'bn2', relu=True)

    stage1 = self.stages[0]
    block_type = _BLOCKS[stage1.block]
    for j in range(stage1.num_blocks[0]):
      x = block_type(
          planes=stage1.num_channels[0],
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f'layer1_{j}',
      )(x, train)

    xs = [x]
    for index, stage in enumerate(self.stages[1:], start=1):
      widths = [channels * _EXPANSION[stage.block] for channels in stage.num_channels]
      xs = self._transition(index, xs, widths, train)
      for m in range(stage.num_modules):
        xs = HighResolutionModule(
            block=stage.block,
            num_blocks=tuple(stage.num_blocks),
            num_channels=tuple(stage.num_channels),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=f'stage{index + 1}_{m}',
        )(xs, train)

    # Classification neck: incre per branch, strided merges from the highest resolution down, final 1x1.
    y = None
    for i, x in enumerate(xs):
      x = Bottleneck(
          planes=_HEAD_CHANNELS[i],
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f'incre_modules_{i}_0',
      )(x, train)
      if y is not None:
        prefix = f'downsamp_modules_{i - 1}'
        y = self.conv_bn(
            y,
            train,
            4 * _HEAD_CHANNELS[i],
            3,
            2,
            f'{prefix}_0',
            f'{prefix}_1',
            relu=True,
            bias=self.head_conv_bias,
        )
        x = x + y
      y = x
    y = self.conv_bn(
        y,
        train,
        NUM_FEATURES,
        1,
        1,
        'final_layer_0',
        'final_layer_1',
        relu=True,
        bias=self.head_conv_bias,
    )
    chex.assert_shape(y, (batch, height // 32, width // 32, NUM_FEATURES))
    y = y.astype(jnp.float32)
    embedding = y.mean(axis=(1, 2))
    features = y if self.keep_grid else y.reshape(batch, -1, NUM_FEATURES)
    return features, embedding


def create(model_name: str, img_size: Any = None, **overrides: Any) -> HRNet:
  """An `HRNet` with the architecture of timm's `model_name` (a key of `HRNET_CONFIGS`).

  `img_size` is accepted for symmetry with the ViT (HRNet takes any multiple of 32); overrides set any
  other `HRNet` field (dtype, param_dtype, keep_grid, head_conv_bias, stages, stem_width).
  """
  del img_size
  config = get_config(model_name)
  fields = {'stem_width': config.stem_width, 'stages': config.stages}
  fields.update(overrides)
  return HRNet(**fields)


def init_variables(module: HRNet, key: jax.Array, img_size: int | tuple[int, int] = 224) -> PyTree:
  """Randomly initialised {'params', 'batch_stats'} (timm's init: kaiming fan-out convs, BN 1 and 0)."""
  height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
  return jax.jit(module.init)(key, jnp.zeros((1, height, width, 3), jnp.float32))


# ---------------------------------------------------------------------------------------------------------
# timm state-dict import
# ---------------------------------------------------------------------------------------------------------

# The classifier that timm's checkpoints carry and the encoder does not use; skipped.
IGNORED_TIMM_KEYS = ('classifier.weight', 'classifier.bias')

# Flax leaf -> (timm leaf, axis permutation from torch's layout to Flax's, or None).
_LEAF_NAMES = {
    ('params', 'kernel'): ('weight', (2, 3, 1, 0)),  # Conv2d (O, I, kh, kw) -> (kh, kw, I, O)
    ('params', 'bias'): ('bias', None),  # conv or BN bias
    ('params', 'scale'): ('weight', None),  # BN weight
    ('batch_stats', 'mean'): ('running_mean', None),
    ('batch_stats', 'var'): ('running_var', None),
}


def timm_name(collection: str, path: Sequence[str]) -> str:
  """timm's state-dict name of the Flax variable `path` in `collection` (the module docstring's rule)."""
  module_path = re.sub(r'_(\d+)', r'.\1', '.'.join(path[:-1]))
  leaf, _ = _LEAF_NAMES[(collection, path[-1])]
  return f'{module_path}.{leaf}'


def _key_map(
    module: HRNet,
) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...] | None, tuple[int, ...]]]:
  """timm name -> (collection, Flax path, permutation, Flax shape), for every variable of `module`."""
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  key_map = {}
  for collection in ('params', 'batch_stats'):
    flat = jax.tree_util.tree_flatten_with_path(shapes[collection])[0]
    for key_path, leaf in flat:
      path = tuple(entry.key for entry in key_path)
      name = timm_name(collection, path)
      if name in key_map:
        raise AssertionError(f'two Flax variables map to timm name {name!r}')
      key_map[name] = (collection, path, _LEAF_NAMES[(collection, path[-1])][1], leaf.shape)
  return key_map


def variables_from_timm(
    module: HRNet, state_dict: Mapping[str, Any], *, source: str = 'state dict'
) -> PyTree:
  """{'params', 'batch_stats'} for `module` from a timm `HighResolutionNet` state dict.

  'num_batches_tracked' counters and the classifier are skipped. Raises `CheckpointMismatchError` naming
  `source` and listing every missing, unused and mis-shaped key.
  """
  key_map = _key_map(module)
  names = {
      name
      for name in state_dict
      if not name.endswith('.num_batches_tracked') and name not in IGNORED_TIMM_KEYS
  }
  missing = sorted(set(key_map) - names)
  unused = sorted(names - set(key_map))
  mismatched = []
  variables: dict[str, Any] = {'params': {}, 'batch_stats': {}}
  for name, (collection, path, permutation, shape) in key_map.items():
    if name not in names:
      continue
    array = to_numpy(state_dict[name])
    torch_shape = shape if permutation is None else tuple(shape[i] for i in np.argsort(permutation))
    if tuple(array.shape) != tuple(torch_shape):
      mismatched.append(f'{name}: checkpoint {tuple(array.shape)}, model {tuple(torch_shape)}')
      continue
    if permutation is not None:
      array = array.transpose(permutation)
    node = variables[collection]
    for part in path[:-1]:
      node = node.setdefault(part, {})
    # A copy: numpy views of torch tensors share their memory, and jnp.asarray may alias numpy's.
    node[path[-1]] = jnp.asarray(np.array(array, dtype=module.param_dtype, copy=True))
  checkpoint_errors.raise_if_mismatched(
      f'{source} does not fit this HRNet (stem_width={module.stem_width}, branch widths '
      f'{tuple(module.stages[-1].num_channels)}, head_conv_bias={module.head_conv_bias}):',
      missing,
      unused,
      mismatched,
  )
  return variables


def from_timm(
    model_name: str, state_dict: Mapping[str, Any], **overrides: Any
) -> tuple[HRNet, PyTree]:
  """A module and its variables from a timm state dict.

  Args:
    model_name: timm model name, e.g. 'hrnet_w64' or 'hrnet_w64.ms_in1k' (see `HRNET_CONFIGS`).
    state_dict: {timm name: numpy array or torch tensor}, e.g. `timm_model.state_dict()` or the Hub's
      `model.safetensors`. The classifier and 'num_batches_tracked' are skipped.
    **overrides: other `HRNet` fields (dtype, param_dtype, keep_grid, head_conv_bias).
  Returns:
    (module, {'params': ..., 'batch_stats': ...}); `module.apply(variables, images)` -> (features,
    embedding) equal to timm's forward_features (flattened over the grid) and its global average pool.
  """
  module = create(model_name, **overrides)
  variables = variables_from_timm(module, state_dict, source=f'state dict for {model_name!r}')
  return module, variables
