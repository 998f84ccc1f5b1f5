"""The cross-modality decoder f_θ(x_t, t, I) of DiffHand (docs/design.md §4; paper §3.3, Fig. 3).

Inputs, in model space (docs/design.md §2):
  x_t               (B, N, 3)  noisy vertices
  t                 (B,)       int32 timesteps
  image_features    (B, P, C)  I_F, the encoder's patch tokens
  image_embedding   (B, C)     I_E, the encoder's class token
Output: x̂_0 (B, N, 3), float32.

Structure of `CrossModalityDecoder`:

  h   = Linear(3→D)(x_t) + vertex position embedding (N, D)
  E_g = Linear(C→D)(I_E) + MLP(sinusoidal(t))                 (B, D)
  tok = LN(Linear(C→D)(I_F))                                   (B, P, D), shared by all blocks
  repeat num_blocks times:
    h = VertexBlock(h)   U shape: N → N/4 → N/16 (FPS gathers), an AttentionBlock after each
                         downsampling, learned linear maps over the point axis back up
                         (N/16 → N/4 → N) with lateral residuals from the same level
    h = FeatureBlock(h)  XCiT cross-covariance attention over channels + MLP (or 'mlp' / 'none')
  x̂_0 = Linear(D→3)(LN(h))

Choices the paper leaves open (all switchable):
  * No attention block at full resolution by default (`full_res_attention=False`): the paper and its
    Fig. 3(a) place attention blocks "after each downsampling" only; full resolution is handled by the
    feature block. Setting it True adds one AttentionBlock on the N points before downsampling.
  * The timestep embedding lives here (not in the model), so the decoder alone is f_θ(x_t, t, I).
  * I_F is projected C→D once per call and layer-normalised; every cross-attention reads that.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffhand_jax.geometry import mano, topology
from diffhand_jax.models import attention

_FILE = "diffhand_jax/models/decoder.py"

FEATURE_BLOCKS = ("channel_attention", "mlp", "none")
DECODERS = ("cross_modality", "vanilla")


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Transformer-style timestep embedding: (B,) → (B, dim) float32, [cos | sin] halves."""
  half = dim // 2
  frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = t.astype(jnp.float32)[:, None] * frequencies[None, :]
  embedding = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
  if dim % 2:  # keep the requested width for odd dims
    embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
  return embedding


class Mlp(nn.Module):
  """Dense → GELU → Dense; (..., D) → (..., out_dim or D)."""

  hidden_dim: int
  out_dim: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_dim = self.out_dim or x.shape[-1]
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1")(x)
    x = nn.gelu(x, approximate=False)
    return nn.Dense(out_dim, dtype=self.dtype, name="fc2")(x)


class GlobalEmbedding(nn.Module):
  """E_g = Linear(I_E) + E_t with E_t = MLP(sinusoidal(t)) (paper §3.4 "Training"). → (B, D)."""

  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image_embedding: jax.Array, t: jax.Array) -> jax.Array:
    timestep = sinusoidal_embedding(t, self.width)
    timestep = Mlp(4 * self.width, self.width, dtype=self.dtype, name="timestep_mlp")(timestep)
    image = nn.Dense(self.width, dtype=self.dtype, name="image_proj")(image_embedding)
    return image + timestep


class AttentionBlock(nn.Module):
  """Fig. 3(c): pre-LN self-attention (+ Linear(E_g), Eq. 8), cross-attention to I_F, MLP.

  Both attentions are flax's MultiHeadDotProductAttention (its q/k/v/out projections and parameter
  names) around `attention.dot_product_attention` (cuDNN's fused kernel on a GPU in bfloat16; the
  softmax in float32 under any compute dtype).

  points (B, M, D), global_embedding (B, D), image_tokens (B, P, D) or None → (B, M, D).
  With image_tokens None the cross-attention is skipped (used only by the vanilla variant).
  """

  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, points: jax.Array, global_embedding: jax.Array | None, image_tokens: jax.Array | None
  ) -> jax.Array:
    width = points.shape[-1]
    y = nn.LayerNorm(dtype=self.dtype, name="norm_self")(points)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads,
        dtype=self.dtype,
        deterministic=True,
        attention_fn=attention.flax_attention_fn,
        name="self_attention",
    )(y, y)
    if global_embedding is not None:
      # Eq. 8: Y = softmax(QK^T/√d)V + Linear(E_g), broadcast over the points.
      y = y + nn.Dense(width, dtype=self.dtype, name="global_proj")(global_embedding)[:, None, :]
    points = points + y
    if image_tokens is not None:
      y = nn.LayerNorm(dtype=self.dtype, name="norm_cross")(points)
      y = nn.MultiHeadDotProductAttention(
          num_heads=self.num_heads,
          dtype=self.dtype,
          deterministic=True,
          attention_fn=attention.flax_attention_fn,
          name="cross_attention",
      )(y, image_tokens)
      points = points + y
    y = nn.LayerNorm(dtype=self.dtype, name="norm_mlp")(points)
    return points + Mlp(int(width * self.mlp_ratio), dtype=self.dtype, name="mlp")(y)


class PointUpsample(nn.Module):
  """A learned linear map over the point axis: (B, M_in, D) → (B, M_out, D).

  out[b, o, :] = Σ_i W[o, i] · in[b, i, :] + bias[o]. This is the paper's "MLP used to increase the point
  cardinality" applied to the transposed features; W is shared across channels.

  With ``init_neighbours`` = (idx (M_out, k), weights (M_out, k)) as nested tuples, W starts as that
  geometric interpolation (each fine point mixes its k nearest coarse points on the template) instead of
  a random dense mix; it is still a free, learned matrix. A random start makes every fine vertex a blend
  of the whole hand, which the network must first unlearn.
  """

  out_points: int
  dtype: Any = jnp.float32
  init_neighbours: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_points = x.shape[-2]
    if self.init_neighbours is None:
      kernel_init = nn.initializers.normal(stddev=1.0 / math.sqrt(in_points))
    else:
      kernel_init = _interpolation_init(self.init_neighbours)
    kernel = self.param("kernel", kernel_init, (self.out_points, in_points))
    bias = self.param("bias", nn.initializers.zeros, (self.out_points, 1))
    kernel, bias, x = nn.dtypes.promote_dtype(kernel, bias, x, dtype=self.dtype)
    return jnp.einsum("oi,bid->bod", kernel, x) + bias


def _interpolation_init(neighbours: Any):
  idx, weights = (np.asarray(a) for a in neighbours)

  def init(key, shape, dtype=jnp.float32):
    del key
    if idx.shape[0] != shape[0] or idx.max() >= shape[1]:
      raise ValueError(f"{_FILE}: upsampling init of {idx.shape} does not fit a {shape} kernel.")
    dense = np.zeros(shape, np.float32)
    np.add.at(
        dense, (np.repeat(np.arange(shape[0]), idx.shape[1]), idx.reshape(-1)), weights.reshape(-1)
    )
    return jnp.asarray(dense, dtype)

  return init


def upsampling_neighbours(template_vertices: np.ndarray, fps_indices, k: int = 3):
  """Per level of the U shape, the (idx, weights) nested tuples that initialise its upsampling map:
  level k+1 → level k by inverse-distance interpolation over the template's points."""
  points = [np.asarray(template_vertices, np.float64)]
  for indices in fps_indices:
    points.append(points[-1][np.asarray(indices)])
  out = []
  for level in range(len(fps_indices)):
    idx, weights = topology.upsample_neighbours(
        points[level + 1], points[level], k=min(k, len(points[level + 1]))
    )
    out.append((tuple(map(tuple, idx.tolist())), tuple(map(tuple, weights.tolist()))))
  return tuple(out)


def check_fps_indices(fps_indices: Sequence[Sequence[int]], num_vertices: int) -> None:
  """Raises ValueError unless level k's indices are distinct and index level k-1's points."""
  if len(fps_indices) == 0:
    raise ValueError(f"{_FILE}: fps_indices is empty; the U shape needs at least one level.")
  previous = num_vertices
  for level, indices in enumerate(fps_indices):
    array = np.asarray(indices)
    if array.ndim != 1 or array.size == 0:
      raise ValueError(
          f"{_FILE}: fps_indices[{level}] must be a non-empty 1-D index list, "
          f"got shape {array.shape}."
      )
    if array.min() < 0 or array.max() >= previous:
      raise ValueError(
          f"{_FILE}: fps_indices[{level}] indexes {previous} points of the level above "
          f"but holds values in [{array.min()}, {array.max()}]."
      )
    if len(np.unique(array)) != array.size:
      raise ValueError(f"{_FILE}: fps_indices[{level}] repeats indices.")
    previous = array.size


class VertexBlock(nn.Module):
  """Fig. 3(a): the U shape over the mesh. (B, N, D) → (B, N, D).

  fps_indices[k] gathers level k+1 from level k (N → N/4 → N/16). After each gather an AttentionBlock
  runs; on the way back each coarser level is layer-normalised, mapped up by PointUpsample and added to
  the same level's features from the way down (the lateral residual).
  """

  fps_indices: tuple[tuple[int, ...], ...]
  num_heads: int
  mlp_ratio: float = 4.0
  full_res_attention: bool = False
  dtype: Any = jnp.float32
  upsample_init: Any = None  # per level, see `upsampling_neighbours`; None = random init

  @nn.compact
  def __call__(
      self, h: jax.Array, global_embedding: jax.Array, image_tokens: jax.Array
  ) -> jax.Array:
    if self.full_res_attention:
      h = AttentionBlock(self.num_heads, self.mlp_ratio, self.dtype, name="attention_full")(
          h, global_embedding, image_tokens
      )
    levels = [h]
    for k, indices in enumerate(self.fps_indices):
      coarse = jnp.take(levels[-1], jnp.asarray(indices, dtype=jnp.int32), axis=1)
      coarse = AttentionBlock(
          self.num_heads, self.mlp_ratio, self.dtype, name=f"attention_down{k + 1}"
      )(coarse, global_embedding, image_tokens)
      levels.append(coarse)
    up = levels[-1]
    for k in reversed(range(len(self.fps_indices))):
      skip = levels[k]
      up = nn.LayerNorm(dtype=self.dtype, name=f"norm_up{k + 1}")(up)
      neighbours = None if self.upsample_init is None else self.upsample_init[k]
      up = skip + PointUpsample(skip.shape[1], self.dtype, neighbours, name=f"upsample{k + 1}")(up)
    return up


class ChannelAttention(nn.Module):
  """XCiT cross-covariance attention: attention over channels, not points. (B, N, D) → (B, N, D).

  Per head, q and k (B, h, d, N) are L2-normalised along the points, A = softmax(τ_h · q kᵀ) is (d × d),
  and the output is A v. The cost is linear in N.
  """

  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, points, width = x.shape
    if width % self.num_heads:
      raise ValueError(f"{_FILE}: width {width} is not divisible by num_heads {self.num_heads}.")
    head_dim = width // self.num_heads
    qkv = nn.Dense(3 * width, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(batch, points, 3, self.num_heads, head_dim).transpose(2, 0, 3, 4, 1)
    q, k, v = qkv[0], qkv[1], qkv[2]  # (B, h, d, N)
    q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-6)
    k = k / jnp.maximum(jnp.linalg.norm(k, axis=-1, keepdims=True), 1e-6)
    temperature = self.param("temperature", nn.initializers.ones, (self.num_heads, 1, 1))
    logits = jnp.einsum("bhdn,bhen->bhde", q, k) * temperature.astype(q.dtype)
    attention = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhde,bhen->bhdn", attention, v)
    out = out.transpose(0, 3, 1, 2).reshape(batch, points, width)
    return nn.Dense(width, dtype=self.dtype, name="proj")(out)


class FeatureBlock(nn.Module):
  """Fig. 3(b): correlation in feature space. kind 'channel_attention' | 'mlp' | 'none'. (B,N,D) → (B,N,D)."""

  kind: str = "channel_attention"
  num_heads: int = 8
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    if self.kind not in FEATURE_BLOCKS:
      raise ValueError(
          f"{_FILE}: feature_block must be one of {FEATURE_BLOCKS}, got {self.kind!r}."
      )
    if self.kind == "none":
      return h
    if self.kind == "channel_attention":
      y = nn.LayerNorm(dtype=self.dtype, name="norm_xca")(h)
      h = h + ChannelAttention(self.num_heads, self.dtype, name="channel_attention")(y)
    y = nn.LayerNorm(dtype=self.dtype, name="norm_mlp")(h)
    return h + Mlp(int(h.shape[-1] * self.mlp_ratio), dtype=self.dtype, name="mlp")(y)


class _VertexInput(nn.Module):
  """Linear(3→D)(x_t) + a learned per-vertex position embedding. (B, N, 3) → (B, N, D)."""

  num_vertices: int
  width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_t: jax.Array) -> jax.Array:
    position = self.param(
        "position", nn.initializers.normal(stddev=0.02), (self.num_vertices, self.width)
    )
    h = nn.Dense(self.width, dtype=self.dtype, name="proj")(x_t)
    return h + position.astype(h.dtype)[None]


class _Head(nn.Module):
  """LN + Linear(D→3); float32 out. (B, N, D) → (B, N, 3)."""

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    h = nn.LayerNorm(dtype=jnp.float32, name="norm")(h.astype(jnp.float32))
    return nn.Dense(3, dtype=jnp.float32, name="proj")(h)


def _check_inputs(num_vertices: int, x_t, t, image_features, image_embedding) -> None:
  batch = x_t.shape[0]
  chex.assert_rank([x_t, t, image_features, image_embedding], [3, 1, 3, 2])
  chex.assert_shape(x_t, (batch, num_vertices, 3))
  chex.assert_shape(t, (batch,))
  chex.assert_equal_shape_prefix([x_t, image_features, image_embedding], 1)
  chex.assert_equal(image_features.shape[-1], image_embedding.shape[-1])


class CrossModalityDecoder(nn.Module):
  """f_θ(x_t, t, I): see the module docstring. __call__ → x̂_0 (B, N, 3) float32."""

  num_vertices: int
  fps_indices: tuple[tuple[int, ...], ...]
  width: int = 256
  num_blocks: int = 3
  num_heads: int = 8
  mlp_ratio: float = 4.0
  feature_block: str = "channel_attention"
  full_res_attention: bool = False
  dtype: Any = jnp.float32
  upsample_init: Any = (
      None  # see `upsampling_neighbours`; None = random init of the upsampling maps
  )

  @nn.compact
  def __call__(
      self, x_t: jax.Array, t: jax.Array, image_features: jax.Array, image_embedding: jax.Array
  ) -> jax.Array:
    _check_inputs(self.num_vertices, x_t, t, image_features, image_embedding)
    check_fps_indices(self.fps_indices, self.num_vertices)
    if self.width % self.num_heads:
      raise ValueError(
          f"{_FILE}: width {self.width} is not divisible by num_heads {self.num_heads}."
      )
    h = _VertexInput(self.num_vertices, self.width, self.dtype, name="vertex_embedding")(x_t)
    global_embedding = GlobalEmbedding(self.width, self.dtype, name="global_embedding")(
        image_embedding, t
    )
    tokens = nn.Dense(self.width, dtype=self.dtype, name="image_proj")(image_features)
    tokens = nn.LayerNorm(dtype=self.dtype, name="image_norm")(tokens)
    for i in range(self.num_blocks):
      h = VertexBlock(
          self.fps_indices,
          self.num_heads,
          self.mlp_ratio,
          self.full_res_attention,
          self.dtype,
          self.upsample_init,
          name=f"vertex_block{i}",
      )(h, global_embedding, tokens)
      h = FeatureBlock(
          self.feature_block, self.num_heads, self.mlp_ratio, self.dtype, name=f"feature_block{i}"
      )(h)
    x0_hat = _Head(name="head")(h)
    chex.assert_shape(x0_hat, x_t.shape)
    return x0_hat


class VanillaDecoder(nn.Module):
  """The ablation's "vanilla self-attention module" (paper, "Network variants"; Table 4).

  Self-attention layers over h = Linear(3→D)(x_t) + position embedding + E_g: no U shape, no feature
  block and no cross-attention, so the image reaches it only through I_E inside E_g. image_features
  is accepted (and ignored) so that both decoders share one signature. → x̂_0 (B, N, 3) float32.
  """

  num_vertices: int
  width: int = 256
  depth: int = 6
  num_heads: int = 8
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(
      self, x_t: jax.Array, t: jax.Array, image_features: jax.Array, image_embedding: jax.Array
  ) -> jax.Array:
    _check_inputs(self.num_vertices, x_t, t, image_features, image_embedding)
    h = _VertexInput(self.num_vertices, self.width, self.dtype, name="vertex_embedding")(x_t)
    global_embedding = GlobalEmbedding(self.width, self.dtype, name="global_embedding")(
        image_embedding, t
    )
    h = h + global_embedding[:, None, :]
    for i in range(self.depth):
      h = AttentionBlock(self.num_heads, self.mlp_ratio, self.dtype, name=f"layer{i}")(
          h, None, None
      )
    return _Head(name="head")(h)


# XLA options that make a one-off program (such as parameter init) compile about 3x faster on CPU; init
# runs once, so its speed does not matter, while its compile time dominates small-model start-up.
_FAST_COMPILE_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


def jit_init(module: nn.Module, key: jax.Array, *args: Any, **kwargs: Any) -> Any:
  """`module.init(key, *args, **kwargs)` compiled once, with a cheap compile on CPU.

  Under an outer transformation (jit, eval_shape) it simply traces `module.init`: the outer program
  is compiled as a whole.
  """
  if any(
      isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((key, args, kwargs))
  ):
    return module.init(key, *args, **kwargs)
  lowered = jax.jit(module.init).lower(key, *args, **kwargs)
  if jax.default_backend() == "cpu":
    try:
      return lowered.compile(compiler_options=_FAST_COMPILE_OPTIONS)(key, *args, **kwargs)
    except Exception:  # an XLA without these options: fall back to the default compile
      pass
  return lowered.compile()(key, *args, **kwargs)


def _as_index_tuples(levels: Sequence[Any]) -> tuple[tuple[int, ...], ...]:
  return tuple(tuple(int(i) for i in np.asarray(level).reshape(-1)) for level in levels)


def build_decoder(
    config: Any, template_vertices: np.ndarray | None = None, dtype: Any = jnp.float32
) -> nn.Module:
  """The decoder that `config` (a model config, see diffhand_jax/runs/model_presets.py) asks for.

  template_vertices (N, 3): the mesh the FPS indices are computed on (topology.fps_hierarchy with
  config.fps_sizes); None means MANO's procedural template (N = 778). Only the cross-modality decoder
  needs it.
  """
  kind = config.decoder
  if kind not in DECODERS:
    raise ValueError(f"{_FILE}: config.decoder must be one of {DECODERS}, got {kind!r}.")
  num_vertices = int(config.num_vertices)
  if kind == "vanilla":
    depth = config.get("vanilla_depth", None) or 2 * int(config.num_blocks)
    return VanillaDecoder(
        num_vertices=num_vertices,
        width=int(config.width),
        depth=int(depth),
        num_heads=int(config.num_heads),
        mlp_ratio=float(config.mlp_ratio),
        dtype=dtype,
    )
  if template_vertices is None:
    template_vertices = np.asarray(mano.load_procedural().v_template)
  template_vertices = np.asarray(template_vertices, dtype=np.float32)
  if template_vertices.shape != (num_vertices, 3):
    raise ValueError(
        f"{_FILE}: template_vertices has shape {template_vertices.shape}, but "
        f"config.num_vertices = {num_vertices} needs ({num_vertices}, 3)."
    )
  fps_indices = _as_index_tuples(
      topology.fps_hierarchy(template_vertices, sizes=tuple(int(s) for s in config.fps_sizes))
  )
  upsample_init = None
  if config.get("upsample_init", "interpolation") == "interpolation":
    upsample_init = upsampling_neighbours(template_vertices, fps_indices)
  return CrossModalityDecoder(
      num_vertices=num_vertices,
      fps_indices=fps_indices,
      width=int(config.width),
      num_blocks=int(config.num_blocks),
      num_heads=int(config.num_heads),
      mlp_ratio=float(config.mlp_ratio),
      feature_block=str(config.feature_block),
      full_res_attention=bool(config.get("full_res_attention", False)),
      dtype=dtype,
      upsample_init=upsample_init,
  )
