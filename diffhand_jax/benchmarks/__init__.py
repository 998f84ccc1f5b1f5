"""Benchmarks run through ``python -m diffhand_jax.bench NAME``; each module has ``main(argv)``."""
