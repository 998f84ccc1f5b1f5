"""The attention core shared by the ViT and the decoder (diffhand_jax/models/attention.py): each
implementation against jax.nn.dot_product_attention and a float64 reference, the softmax in float32
under bfloat16, the choice of cuDNN's kernel, and the decoder's flax attention unchanged in float32.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _jaxpr
from diffhand_jax.models import attention


def _qkv(dtype=jnp.float32, batch=2, queries=5, keys=7, heads=3, head_dim=8, scale=1.0):
  rng = np.random.default_rng(0)
  shapes = ((batch, queries, heads, head_dim), (batch, keys, heads, head_dim))
  q, k, v = (rng.normal(0.0, scale, shapes[min(i, 1)]) for i in range(3))
  return tuple(jnp.asarray(x, dtype) for x in (q, k, v))


def _reference(q, k, v):
  """softmax(q kᵀ / √d) v in float64 numpy, (B, T, h, d)."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum('bthd,bshd->bhts', q, k) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum('bhts,bshd->bthd', weights, v)


def _program(implementation, q, k, v) -> str:
  """The jaxpr that dot_product_attention traces to with ``implementation``, as text."""
  fn = lambda q, k, v: attention.dot_product_attention(q, k, v, implementation=implementation)
  return str(jax.make_jaxpr(fn)(q, k, v))


@pytest.mark.parametrize('implementation', [None, 'heads_major', 'xla', 'sliced'])
def test_float32_attention_equals_the_float64_reference(monkeypatch, implementation):
  monkeypatch.setattr(attention, '_platform', lambda: 'cpu')
  q, k, v = _qkv()
  out = jax.jit(
      lambda q, k, v: attention.dot_product_attention(q, k, v, implementation=implementation)
  )(q, k, v)
  assert out.shape == q.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), _reference(q, k, v), atol=1e-6)
  # The core asked for is the one that ran: the three trace to three different programs (the sliced
  # one maps over the B·heads slices), and the default, on a CPU with few probabilities, is the
  # heads-major core's.
  ran = _program(implementation, q, k, v)
  programs = {name: _program(name, q, k, v) for name in ('heads_major', 'xla', 'sliced')}
  expected = implementation or 'heads_major'
  assert [name for name, program in programs.items() if program == ran] == [expected]
  assert ('scan[' in ran) == (expected == 'sliced')


@pytest.mark.parametrize('implementation', ['heads_major', 'sliced'])
def test_cpu_cores_equal_jax_nn_dot_product_attention_and_its_gradients(implementation):
  q, k, v = _qkv(scale=2.0)
  ours = lambda q, k, v: attention.dot_product_attention(q, k, v, implementation=implementation)
  theirs = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation='xla')
  np.testing.assert_allclose(ours(q, k, v), theirs(q, k, v), atol=1e-6)
  loss = lambda fn: lambda *args: jnp.sum(jnp.sin(fn(*args)))
  grads_ours = jax.grad(loss(ours), argnums=(0, 1, 2))(q, k, v)
  grads_theirs = jax.grad(loss(theirs), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(grads_ours, grads_theirs):
    np.testing.assert_allclose(a, b, atol=1e-5)


def _exp_dtypes(fn, *args):
  """The dtypes of every exp in fn's jaxpr, also inside nested ones (the sliced core's map and
  remat)."""
  return {
      eqn.outvars[0].aval.dtype
      for eqn in _jaxpr.equations(fn, *args)
      if eqn.primitive.name == 'exp'
  }


@pytest.mark.parametrize('implementation', ['heads_major', 'xla', 'sliced'])
def test_bfloat16_attention_takes_its_softmax_in_float32(implementation):
  """Logits far apart (scale 6): a softmax in bfloat16 loses the small weights; ours keeps the error
  to bfloat16's rounding of the inputs and output."""
  q, k, v = _qkv(jnp.bfloat16, keys=64, head_dim=16, scale=6.0)
  fn = lambda q, k, v: attention.dot_product_attention(q, k, v, implementation=implementation)
  assert _exp_dtypes(fn, q, k, v) == {jnp.dtype(jnp.float32)}
  out = fn(q, k, v)
  assert out.dtype == jnp.bfloat16
  error = np.abs(np.asarray(out, np.float64) - _reference(q, k, v)).max()
  bf16_softmax = nn.dot_product_attention(q, k, v)  # flax's default: softmax in the input dtype
  assert _exp_dtypes(nn.dot_product_attention, q, k, v) == {jnp.dtype(jnp.bfloat16)}
  bf16_error = np.abs(np.asarray(bf16_softmax, np.float64) - _reference(q, k, v)).max()
  assert error < 0.05 and error < bf16_error


@pytest.mark.parametrize(
    'platform, dtype, head_dim, expected',
    [
        ('cpu', jnp.bfloat16, 64, 'heads_major'),
        ('cpu', jnp.float32, 64, 'heads_major'),
        ('cuda', jnp.bfloat16, 64, 'cudnn'),
        ('cuda', jnp.float16, 128, 'cudnn'),
        ('cuda', jnp.float32, 64, 'xla'),  # cuDNN's fused kernel is half precision only
        ('cuda', jnp.bfloat16, 12, 'xla'),  # head size not a multiple of 8
        ('cuda', jnp.bfloat16, 256, 'xla'),  # above 128
        ('rocm', jnp.bfloat16, 64, 'xla'),
        ('tpu', jnp.bfloat16, 64, 'xla'),
    ],
)
def test_cudnn_is_chosen_only_where_its_kernel_applies(
    monkeypatch, platform, dtype, head_dim, expected
):
  monkeypatch.setattr(attention, '_platform', lambda: platform)
  assert attention.default_implementation(dtype, head_dim) == expected


@pytest.mark.parametrize(
    'probabilities_shape, expected',
    [
        ((0, 0, 0, 0), 'heads_major'),
        ((8, 2, 195, 195), 'heads_major'),  # few probabilities
        ((80, 2, 195, 195), 'heads_major'),  # many, but in small slices
        ((8, 2, 400, 400), 'sliced'),
        ((80, 2, 778, 778), 'sliced'),
    ],
)
def test_a_cpu_takes_large_attention_one_slice_at_a_time(
    monkeypatch, probabilities_shape, expected
):
  monkeypatch.setattr(attention, '_platform', lambda: 'cpu')
  assert attention.default_implementation(jnp.float32, 16, probabilities_shape) == expected


def test_the_default_passes_the_probabilities_shape(monkeypatch):
  """dot_product_attention gives the (B, heads, T, S) shape of its probabilities."""
  seen = []
  monkeypatch.setattr(
      attention,
      'default_implementation',
      lambda dtype, head_dim, shape: seen.append(shape) or 'heads_major',
  )
  attention.dot_product_attention(*_qkv(batch=2, queries=5, keys=7, heads=3))
  assert seen == [(2, 3, 5, 7)]


def test_a_refused_cudnn_kernel_falls_back_to_xla(monkeypatch):
  """On this CPU jax refuses implementation='cudnn' ('cuDNN is not detected') while tracing: the
  default then runs XLA's core; asking for cuDNN by name still fails loudly."""
  monkeypatch.setattr(attention, '_platform', lambda: 'cuda')
  q, k, v = _qkv(jnp.bfloat16, head_dim=16)
  out = jax.jit(attention.dot_product_attention)(q, k, v)
  expected = jax.nn.dot_product_attention(q, k, v, implementation='xla')
  np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))
  with pytest.raises(RuntimeError, match='cuDNN'):
    attention.dot_product_attention(q, k, v, implementation='cudnn')


def test_bad_arguments_name_the_file():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match='attention.py: implementation'):
    attention.dot_product_attention(q, k, v, implementation='flash')
  with pytest.raises(ValueError, match=r'attention.py: expected query \(B, T, heads, d\)'):
    attention.dot_product_attention(q[0], k[0], v[0])
  with pytest.raises(ValueError, match='attention.py: attention masks'):
    attention.flax_attention_fn(q, k, v, mask=jnp.ones((2, 3, 5, 7), bool))


def test_flax_attention_with_our_core_keeps_its_params_and_float32_outputs():
  """The decoder's nn.MultiHeadDotProductAttention with attention_fn=flax_attention_fn: the same
  parameters as flax's default attention (checkpoints still load), and the same outputs in float32.
  """
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 32))
  context = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 32))
  default = nn.MultiHeadDotProductAttention(num_heads=4, deterministic=True)
  ours = nn.MultiHeadDotProductAttention(
      num_heads=4, deterministic=True, attention_fn=attention.flax_attention_fn
  )
  params = default.init(jax.random.PRNGKey(2), x, context)
  assert jax.tree_util.tree_structure(
      ours.init(jax.random.PRNGKey(2), x, context)
  ) == jax.tree_util.tree_structure(params)
  np.testing.assert_allclose(
      ours.apply(params, x, context), default.apply(params, x, context), atol=1e-5
  )


@pytest.mark.skipif(attention._platform() != 'cuda', reason='cuDNN attention needs an NVIDIA GPU')
@pytest.mark.parametrize('dtype', [jnp.bfloat16, jnp.float16])
def test_cudnn_kernel_equals_xla_on_a_gpu(dtype):
  """Where cuDNN's kernel runs (ViT-L's shapes: 197 tokens, 16 heads of 64), it is the default and
  agrees with XLA's core to the dtype's rounding, forward and backward."""
  q, k, v = _qkv(dtype, batch=4, queries=197, keys=197, heads=16, head_dim=64)
  assert attention.default_implementation(dtype, 64) == 'cudnn'
  results = {}
  for implementation in ('cudnn', 'xla'):
    fn = lambda q, k, v, i=implementation: attention.dot_product_attention(
        q, k, v, implementation=i
    )
    _, grads = jax.jit(
        jax.value_and_grad(lambda *a, fn=fn: jnp.sum(fn(*a).astype(jnp.float32) ** 2), (0, 1, 2))
    )(q, k, v)
    results[implementation] = (fn(q, k, v), grads)
  np.testing.assert_allclose(
      np.asarray(results['cudnn'][0], np.float32),
      np.asarray(results['xla'][0], np.float32),
      atol=2e-2,
  )
  for a, b in zip(results['cudnn'][1], results['xla'][1]):
    scale = float(jnp.abs(b.astype(jnp.float32)).max())
    np.testing.assert_allclose(
        np.asarray(a, np.float32), np.asarray(b, np.float32), atol=3e-2 * scale
    )
