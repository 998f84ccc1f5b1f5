"""`tfds build datasets/freihand`: the builder lives in the package, diffhand_jax/data/builders/freihand/.

The tfds command line wants a builder class defined in this file, so this is a subclass that changes
nothing; its README, citations and checksums are the package's. The repository's datasets/ folder is not a
Python package and is not installed.
"""

from diffhand_jax.data.builders.freihand import freihand_dataset_builder as _impl


class Builder(_impl.Builder):
  """The freihand builder of diffhand_jax.data.builders.freihand."""

  pkg_dir_path = _impl.Builder._get_pkg_dir_path()  # pylint: disable=protected-access
