"""Scaled dot-product attention, the one core that the ViT encoder and the decoder share.

:func:`dot_product_attention` is ``softmax(q kᵀ / √d) v`` with JAX's numerics (those of
``jax.nn.dot_product_attention``): the logits accumulate in float32 and are scaled there, the softmax is
taken in float32, also under a bfloat16 compute dtype, and the probabilities are cast back to the
inputs' dtype for the second matmul. Where it runs:

* an NVIDIA GPU, bfloat16 or float16, a head size cuDNN takes (a multiple of 8, at most 128):
  ``jax.nn.dot_product_attention(implementation='cudnn')``, cuDNN's fused (flash) kernel, which never
  materialises the (B, heads, N, N) probabilities. (JAX's automatic choice is XLA on every platform
  for now, so the kernel is asked for by name.)
* a CPU: the same math written heads-major, (B, heads, N, d), which XLA's CPU compiler turns into two
  plain batched matmuls. ``jax.nn.dot_product_attention``'s XLA lowering adds a copy of the (B, heads,
  N, N) probabilities and costs about 40% more on this core on CPU (measured; docs/performance.md).
  With 2²¹ probabilities or more, in slices of at least 256² (the decoder's full-resolution block, 778 ×
  778), one (batch, head) slice at a time under ``lax.map``, recomputed in the backward pass ('sliced'):
  3× faster there, forward and backward, because each slice's probabilities stay in cache.
* anything else (TPU, a GPU in float32, other head sizes): ``jax.nn.dot_product_attention``'s XLA
  implementation.

``implementation`` forces one ('cudnn', 'xla', 'heads_major' or 'sliced'); the tests check each against the
others.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = (None, 'cudnn', 'xla', 'heads_major', 'sliced')
# cuDNN's fused attention: half-precision inputs, head size a multiple of 8 up to 128 on every GPU it
# supports (Hopper and later take up to 256; 128 keeps one rule for all).
_CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
_CUDNN_MAX_HEAD_DIM = 128
# On a CPU, with many attention probabilities (B · heads · T · S, from 8 MiB in float32) in large slices
# (T · S, from 256²), one slice at a time beats the batched matmuls, which stream the whole tensor through
# memory several times. Measured on a 2-core AMD EPYC (32 MiB L3) with `bench attention`: 8 × 2 heads
# × 778², forward and backward, 36 ms against 99; 80 × 2 × 300², forward, 23 against 98. With small
# slices the forward pass loses: 80 × 2 × 195², 11.1 against 10.0 (docs/performance.md).
_SLICED_MIN_PROBABILITIES = 2**21
_SLICED_MIN_SLICE = 2**16


def _platform() -> str:
  """'cuda' for an NVIDIA GPU, else the platform of the default device ('cpu', 'tpu', 'rocm', ...)."""
  device = jax.devices()[0]
  if device.platform == 'gpu':
    return 'rocm' if 'rocm' in device.client.platform_version.lower() else 'cuda'
  return device.platform


def default_implementation(dtype, head_dim: int, probabilities_shape=(0, 0, 0, 0)) -> str:
  """What :func:`dot_product_attention` runs by default for ``dtype`` and ``head_dim`` on this machine,
  with attention probabilities of ``probabilities_shape`` (B, heads, T, S)."""
  platform = _platform()
  if platform == 'cpu':
    batch, heads, tokens, keys = probabilities_shape
    large = batch * heads * tokens * keys >= _SLICED_MIN_PROBABILITIES
    return 'sliced' if large and tokens * keys >= _SLICED_MIN_SLICE else 'heads_major'
  if (
      platform == 'cuda'
      and jnp.dtype(dtype) in _CUDNN_DTYPES
      and head_dim % 8 == 0
      and head_dim <= _CUDNN_MAX_HEAD_DIM
  ):
    return 'cudnn'
  return 'xla'


def _attend(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """jax.nn.dot_product_attention's XLA math, heads-major: query (..., T, d), key and value (..., S, d) →
  (..., T, d). Logits and softmax in float32, the second matmul in the inputs' dtype."""
  logits = jnp.matmul(query, jnp.swapaxes(key, -1, -2), preferred_element_type=jnp.float32)
  logits = logits * jnp.float32(query.shape[-1] ** -0.5)  # (..., T, S) float32
  probabilities = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
  return jnp.matmul(probabilities, value)


def _heads_major(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """:func:`_attend` on the whole (B, heads, N, d) batch at once."""
  query, key, value = (x.transpose(0, 2, 1, 3) for x in (query, key, value))  # (B, h, N, d)
  return _attend(query, key, value).transpose(0, 2, 1, 3)  # (B, T, h, d)


def _sliced(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """The same math, one (batch, head) slice at a time (lax.map), each slice rematerialised in the
  backward pass: the (T, S) probabilities of one slice stay in cache instead of the whole (B, heads, T,
  S) tensor going through memory several times."""
  batch, tokens, heads, head_dim = query.shape

  def slices(x):  # (B, N, h, d) → (B·h, N, d)
    return x.transpose(0, 2, 1, 3).reshape(batch * heads, x.shape[1], head_dim)

  one = jax.checkpoint(lambda operands: _attend(*operands))  # one (T, d), (S, d), (S, d) slice
  out = jax.lax.map(one, (slices(query), slices(key), slices(value)))  # (B·h, T, d)
  return out.reshape(batch, heads, tokens, head_dim).transpose(0, 2, 1, 3)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    implementation: str | None = None,
) -> jax.Array:
  """Multi-head attention core: query (B, T, heads, d), key and value (B, S, heads, d) → (B, T, heads, d),
  in the inputs' dtype.

  ``implementation``: None picks :func:`default_implementation`; 'cudnn', 'xla', 'heads_major' or
  'sliced' force one. Should cuDNN refuse the shapes while tracing (an older GPU, say), the default
  falls back to XLA.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
        f'diffhand_jax/models/attention.py: implementation must be one of {IMPLEMENTATIONS}, '
        f'got {implementation!r}'
    )
  if query.ndim != 4 or key.shape != value.shape or query.shape[::2] != key.shape[::2]:
    raise ValueError(
        f'diffhand_jax/models/attention.py: expected query (B, T, heads, d) and key, value '
        f'(B, S, heads, d); got {query.shape}, {key.shape}, {value.shape}'
    )
  probabilities_shape = (query.shape[0], query.shape[2], query.shape[1], key.shape[1])
  chosen = implementation or default_implementation(
      query.dtype, query.shape[-1], probabilities_shape
  )
  if chosen == 'heads_major':
    return _heads_major(query, key, value)
  if chosen == 'sliced':
    return _sliced(query, key, value)
  if chosen == 'cudnn' and implementation is None:
    try:
      return jax.nn.dot_product_attention(query, key, value, implementation='cudnn')
    except (NotImplementedError, RuntimeError, ValueError):  # cuDNN refused: XLA's core instead
      chosen = 'xla'
  return jax.nn.dot_product_attention(query, key, value, implementation=chosen)


def flax_attention_fn(query, key, value, mask=None, dropout_rate=0.0, deterministic=True):
  """:func:`dot_product_attention` as the ``attention_fn`` of ``flax.linen.MultiHeadDotProductAttention``
  (which passes only the keywords named here). The decoder uses no mask and no dropout."""
  if mask is not None:
    raise ValueError('diffhand_jax/models/attention.py: attention masks are not supported')
  if dropout_rate and not deterministic:
    raise ValueError('diffhand_jax/models/attention.py: attention dropout is not supported')
  return dot_product_attention(query, key, value)
