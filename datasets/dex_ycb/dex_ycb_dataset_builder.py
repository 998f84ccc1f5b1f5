"""`tfds build datasets/dex_ycb`: the builder lives in the package, diffhand_jax/data/builders/dex_ycb/.

This file only makes the builder findable by the tfds command line from a checkout; the repository's
datasets/ folder is not a Python package and is not installed.
"""

from diffhand_jax.data.builders.dex_ycb.dex_ycb_dataset_builder import Builder  # noqa: F401
