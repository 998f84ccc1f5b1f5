"""TFDS dataset builders of diffhand-jax, one folder each (the `tfds new` layout)."""
