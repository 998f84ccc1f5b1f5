"""Test-wide settings: CPU only, and quiet TensorFlow."""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')  # torch and TF are reference/IO only here

import tempfile  # noqa: E402

import jax  # noqa: E402

# Many tests build the same small programs again (a fresh jit per training run); a persistent
# compilation cache, private to this test session, turns those repeats into cache hits.
jax.config.update('jax_compilation_cache_dir', tempfile.mkdtemp(prefix='diffhand_jax_cache_'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
