"""Reading traced programs in tests: every equation of a function's jaxpr, nested ones included."""

from typing import Any, Callable, Iterator

import jax


def equations(fn: Callable[..., Any], *args: Any) -> Iterator[Any]:
  """Each equation of `jax.make_jaxpr(fn)(*args)`, also those inside nested jaxprs (pjit, remat,
  scan, map), in program order."""

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      yield eqn
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            yield from walk(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            yield from walk(sub)

  yield from walk(jax.make_jaxpr(fn)(*args).jaxpr)
