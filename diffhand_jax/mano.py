"""MANO hand model in JAX: the public face of `diffhand_jax.geometry.mano` (docs/design.md §8).

The code lives in diffhand_jax/geometry/mano/ (loading and safe unpickling, the forward layer, poses,
fitting); this module re-exports its public names so that ``from diffhand_jax import mano`` keeps
working: ``mano.load``, ``mano.forward``, ``mano.fit``, ``mano.ManoModel``, ...
"""

from diffhand_jax.geometry.mano import *  # noqa: F403 - exactly the package's public names
from diffhand_jax.geometry.mano import __all__  # noqa: F401 - and the same list for `import *`
