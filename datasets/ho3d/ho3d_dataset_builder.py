"""`tfds build datasets/ho3d`: the builder lives in the package, diffhand_jax/data/builders/ho3d/.

This file only makes the builder findable by the tfds command line from a checkout; the repository's
datasets/ folder is not a Python package and is not installed.
"""

from diffhand_jax.data.builders.ho3d.ho3d_dataset_builder import Builder  # noqa: F401
