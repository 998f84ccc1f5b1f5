"""`tfds build datasets/synthetic_hands`: the builder lives in the package, diffhand_jax/data/builders/synthetic_hands/.

This file only makes the builder findable by the tfds command line from a checkout; the repository's
datasets/ folder is not a Python package and is not installed.
"""

from diffhand_jax.data.builders.synthetic_hands.synthetic_hands_dataset_builder import Builder  # noqa: F401
