"""A batched Levenberg–Marquardt solver for small nonlinear least-squares problems, in JAX.

`levenberg_marquardt(residual_fn, x0, num_iterations=...)` minimises |r(x)|² for each row of x0 (B, P)
independently: one `vmap` over the batch, one `lax.scan` over the iterations, so the whole solve is a
single jitted program. Each iteration forms the Jacobian by forward-mode differentiation (`jax.jacfwd`,
P tangents: cheap for the few dozen parameters of a hand model), solves the damped normal equations
(JᵀJ + μ·diag(JᵀJ)) δ = −Jᵀr (Marquardt's scaling, so the parameters' units do not matter), and keeps
the step only if it lowers the cost; μ shrinks after a kept step and grows after a refused one.

`mano.fit` (MANO parameters from a mesh, `fitting.py` beside this file) is built on it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def levenberg_marquardt(
    residual_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x0: jax.Array,
    data: jax.Array,
    *,
    num_iterations: int,
    damping: float = 1e-3,
    min_damping: float = 1e-9,
    max_damping: float = 1e6,
) -> tuple[jax.Array, jax.Array]:
  """Minimises |residual_fn(x, data_b)|² over x for every row b, starting at x0 (B, P).

  residual_fn(x (P,), data (...)) -> (R,) for one problem; `data` (B, ...) is what each problem is fitted
  to. Traceable (call it under `jit`; num_iterations is then static). Returns (x (B, P), cost (B,) =
  |r|² at x).
  """

  def solve(x_start: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    def with_aux(x):
      r = residual_fn(x, target)
      return r, r

    def cost_of(x):
      r = residual_fn(x, target)
      return jnp.sum(r * r)

    def step(carry, _):
      x, mu, cost = carry
      jacobian, r = jax.jacfwd(with_aux, has_aux=True)(x)
      normal = jacobian.T @ jacobian
      gradient = jacobian.T @ r
      diagonal = jnp.diag(normal)
      scale = jnp.maximum(diagonal, 1e-12 * jnp.max(diagonal) + 1e-30)
      delta = -jnp.linalg.solve(normal + mu * jnp.diag(scale), gradient)
      candidate = x + delta
      new_cost = cost_of(candidate)
      better = jnp.isfinite(new_cost) & (new_cost < cost)
      x = jnp.where(better, candidate, x)
      cost = jnp.where(better, new_cost, cost)
      mu = jnp.clip(jnp.where(better, mu * 0.3, mu * 4.0), min_damping, max_damping)
      return (x, mu, cost), None

    start = (x_start, jnp.asarray(damping, x_start.dtype), cost_of(x_start))
    (x, _, cost), _ = jax.lax.scan(step, start, None, length=num_iterations)
    return x, cost

  return jax.vmap(solve)(x0, data)
