"""A depth-conditioned run at inference: its estimator (`runs/depth_estimator.py`) runs on each crop inside
the same compiled call as `diffhand.reconstruct`, so callers pass images only (docs/design.md §8).

  fn = make_reconstruct_fn(model, estimator, num_steps=...)   # fn(params, images, key, noise=None,
                                                              #    batch_stats=None)
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from diffhand_jax.models import diffhand
from diffhand_jax.runs import depth_estimator
from diffhand_jax.runs.depth_estimator import Estimator, estimate, estimator_problem, load_estimator

__all__ = ['Estimator', 'estimate', 'estimator_problem', 'load_estimator', 'make_reconstruct_fn']


def reconstruct(
    model: diffhand.DiffHand,
    estimator: Estimator | None,
    params: Any,
    images: jax.Array,
    key: jax.Array,
    *,
    estimator_params: Any = None,
    **kwargs: Any,
) -> dict[str, jax.Array]:
  """`diffhand.reconstruct`, with the depth estimated from ``images`` first for a use_depth model."""
  depth = None
  if model.use_depth:
    if estimator is None:
      raise ValueError(
          'this run is depth-conditioned (config.model.use_depth) but no depth estimator was loaded'
      )
    depth = depth_estimator.estimate(estimator, images, estimator_params)
  return diffhand.reconstruct(model, params, images, key, depth=depth, **kwargs)


def make_reconstruct_fn(
    model: diffhand.DiffHand,
    estimator: Estimator | None,
    *,
    num_steps: int = 10,
    num_hypotheses: int = 1,
    eta: float = 0.0,
    schedule: Any = None,
):
  """`diffhand.make_reconstruct_fn`'s ``fn(params, images, key, noise=None, batch_stats=None)``; for a
  depth model the estimator runs on the images inside the same compiled call (its params an argument,
  not a constant). The user passes only images."""
  if not model.use_depth:
    return diffhand.make_reconstruct_fn(
        model, num_steps=num_steps, num_hypotheses=num_hypotheses, eta=eta, schedule=schedule
    )
  jitted = jax.jit(
      functools.partial(
          reconstruct,
          model,
          estimator,
          num_steps=num_steps,
          num_hypotheses=num_hypotheses,
          eta=eta,
          schedule=schedule,
      )
  )

  def fn(params, images, key, noise=None, batch_stats=None):
    return jitted(
        params,
        images,
        key,
        estimator_params=estimator.params,
        noise=noise,
        batch_stats=batch_stats,
    )

  return fn
