"""Network modules of diffhand-jax (Flax Linen)."""
