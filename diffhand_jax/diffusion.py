"""Cosine-schedule Gaussian diffusion with x̂_0 prediction and a one-scan DDIM sampler.

Everything here follows docs/design.md §3 to the equation:

* ``cosine_schedule``: ᾱ(t) = cos²(((t/T) + s)/(1 + s)·π/2), β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), max_beta),
  ᾱ_t = ∏_{i≤t}(1 − β_i).
* ``q_sample``: x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε.
* ``ddim_timesteps``: "trailing" spacing τ_i = round((S − i)·T/S) − 1, then τ_S = −1 with ᾱ_{−1} := 1.
* ``ddim_sample``: each step predicts x̂_0, recovers ε̂ and moves to the next listed timestep.
* ``ddim_sample_from``: a warm start (img2img / SDEdit): a guess of x_0 noised to τ_{S−k} with
  ``q_sample``, then the last k = int(S·strength) steps of ``ddim_sample``.

The sampler is a single ``lax.scan``; it works under ``jit`` and ``vmap`` and with any denoiser callable
``denoise_fn(x_t, t) -> x0_hat``. Nothing here knows about hands: the model closes over its (already
encoded) image condition when it builds ``denoise_fn``.

Arguments are checked where their values are known when the function is called (Python numbers,
numpy arrays, concrete jax arrays): η must lie in [0, 1] and ``q_sample``'s t in [0, T), else
ValueError. Traced values (under ``jit``) are not checked, so the jitted path is what it was; there
``q_sample`` clamps t by JAX's indexing rule. NaN inputs: ``check_finite=True`` checks the inputs and
the result and raises FloatingPointError naming the array (under ``jit`` it adds a ``checkify.check``:
wrap the function in ``jax.experimental.checkify.checkify`` to get the error). The default,
``check_finite=False``, adds nothing. ``jax.config.update('jax_debug_nans', True)`` is the global
alternative: JAX then stops at the first operation that makes a NaN.
"""

from __future__ import annotations

from typing import Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


@flax.struct.dataclass
class Schedule:
  """A discrete noise schedule; a pytree, so it can be passed through ``jit``.

  Attributes:
    betas: float32 (T,), β_t.
    alphas_cumprod: float32 (T,), ᾱ_t = ∏_{i≤t}(1 − β_i).
  """

  betas: jax.Array
  alphas_cumprod: jax.Array

  @property
  def num_timesteps(self) -> int:
    return int(self.betas.shape[0])


def _cosine_alpha_bar(fraction: np.ndarray, s: float) -> np.ndarray:
  return np.cos((fraction + s) / (1.0 + s) * np.pi / 2.0) ** 2


def cosine_schedule(
    num_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> Schedule:
  """The cosine schedule of Nichol & Dhariwal (2021), as diffusers' ``squaredcos_cap_v2``.

  Args:
    num_timesteps: T, the number of training timesteps.
    s: the small offset that keeps β_0 away from zero.
    max_beta: the cap on β that avoids a singularity at t = T.

  Returns:
    A ``Schedule`` with float32 ``betas`` and ``alphas_cumprod`` of shape (T,).
  """
  if int(num_timesteps) != num_timesteps or num_timesteps < 1:
    raise ValueError(f'num_timesteps must be a positive integer, got {num_timesteps!r}')
  if not 0.0 < max_beta < 1.0:
    raise ValueError(f'max_beta must lie in (0, 1), got {max_beta!r}')
  steps = np.arange(num_timesteps, dtype=np.float64)
  ratio = _cosine_alpha_bar((steps + 1) / num_timesteps, s) / _cosine_alpha_bar(
      steps / num_timesteps, s
  )
  betas = np.minimum(1.0 - ratio, max_beta).astype(np.float32)
  # The cumulative product runs in float32, as the reference implementation does.
  alphas_cumprod = np.cumprod(1.0 - betas, dtype=np.float32)
  return Schedule(betas=jnp.asarray(betas), alphas_cumprod=jnp.asarray(alphas_cumprod))


def _broadcast_over_trailing(per_example: jax.Array, like: jax.Array) -> jax.Array:
  """Reshapes a (B,) array to (B, 1, ..., 1) so it broadcasts against ``like`` (B, ...)."""
  return per_example.reshape(per_example.shape + (1,) * (like.ndim - per_example.ndim))


def q_sample(
    schedule: Schedule,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    *,
    check_finite: bool = False,
) -> jax.Array:
  """Draws x_t ~ q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I).

  Args:
    schedule: the noise schedule.
    x0: clean samples (B, ...).
    t: int32 (B,), timesteps in [0, T); ValueError outside it when t is not traced.
    noise: ε with the shape of ``x0``.
    check_finite: FloatingPointError when x0 or noise holds NaN or inf (see the module docstring).

  Returns:
    x_t with the shape and dtype of ``x0``.
  """
  chex.assert_equal_shape((x0, noise))
  chex.assert_shape(t, (x0.shape[0],))
  _check_timesteps('q_sample', t, schedule.num_timesteps)
  _check_finite('q_sample', check_finite, x0=x0, noise=noise)
  alpha_bar = _broadcast_over_trailing(schedule.alphas_cumprod[t], x0).astype(x0.dtype)
  return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """The "trailing" DDIM timesteps, ending with −1 (where ᾱ := 1).

  Args:
    num_timesteps: T.
    num_steps: S, with 1 ≤ S ≤ T.

  Returns:
    int32 (S + 1,), e.g. [999, 899, ..., 99, -1] for T = 1000 and S = 10.
  """
  if int(num_steps) != num_steps or not 1 <= num_steps <= num_timesteps:
    raise ValueError(
        f'num_steps must be an integer in [1, num_timesteps={num_timesteps}], got {num_steps!r}'
    )
  i = np.arange(num_steps, dtype=np.float64)
  listed = np.round((num_steps - i) * num_timesteps / num_steps).astype(np.int64) - 1
  return np.concatenate([listed, [-1]]).astype(np.int32)


def _alpha_bar_or_one(schedule: Schedule, t: jax.Array) -> jax.Array:
  """ᾱ_t, with ᾱ_{−1} := 1."""
  return jnp.where(t >= 0, schedule.alphas_cumprod[jnp.maximum(t, 0)], 1.0)


def _concrete(value) -> np.ndarray | None:
  """`value` as a numpy array when it is known now (not traced), else None."""
  if isinstance(value, jax.core.Tracer):
    return None
  try:
    return np.asarray(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def _check_eta(name: str, eta) -> None:
  value = _concrete(eta)
  if value is not None and not (value.ndim == 0 and 0.0 <= float(value) <= 1.0):
    raise ValueError(f'{name}: eta must lie in [0, 1], got {eta!r}')


def _check_timesteps(name: str, t, num_timesteps: int) -> None:
  value = _concrete(t)
  if value is not None and value.size and (value.min() < 0 or value.max() >= num_timesteps):
    raise ValueError(
        f'{name}: t must lie in [0, {num_timesteps}), got values from {value.min()} to {value.max()}'
    )


def _check_finite(name: str, check: bool, **arrays) -> None:
  """FloatingPointError naming the first array that holds NaN or inf (a checkify.check if traced)."""
  if not check:
    return
  for label, array in arrays.items():
    message = f'{name}: {label} holds NaN or inf'
    value = _concrete(array)
    if value is None:
      checkify.check(jnp.all(jnp.isfinite(array)), message)
    elif not np.all(np.isfinite(value)):
      raise FloatingPointError(message)


def _is_concrete_zero(eta) -> bool:
  try:
    return float(eta) == 0.0
  except (TypeError, jax.errors.ConcretizationTypeError):
    return False


def ddim_sample(
    denoise_fn: DenoiseFn,
    x_T: jax.Array,
    schedule: Schedule,
    *,
    num_steps: int = 10,
    eta: float | jax.Array = 0.0,
    key: jax.Array | None = None,
    return_trajectory: bool = False,
    check_finite: bool = False,
):
  """Runs DDIM from x_T to x_0 in one ``lax.scan``.

  Step i goes from τ_i to τ_{i+1} (see ``ddim_timesteps``) and computes
    ε̂ = (x_t − √ᾱ_t x̂_0)/√(1 − ᾱ_t),
    σ = η √((1 − ᾱ_t/ᾱ_next)(1 − ᾱ_next)/(1 − ᾱ_t)),
    x_next = √ᾱ_next x̂_0 + √(1 − ᾱ_next − σ²) ε̂ + σ z.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> x0_hat`` with x_t of the shape of ``x_T`` and t int32 (B,).
      Close over anything else (parameters, an encoded image); it is traced once, not once per step.
    x_T: the starting noise (B, ...), any trailing shape.
    schedule: the training noise schedule (its T sets the timestep grid).
    num_steps: S, a Python int.
    eta: η in [0, 1] (ValueError outside it, unless traced); 0 gives the deterministic sampler. Any
      non-zero (or traced) η needs ``key``.
    key: PRNG key for the noise z, one fresh draw per step.
    return_trajectory: also return every state.
    check_finite: FloatingPointError when x_T or the result holds NaN or inf (under ``jit``, a
      ``checkify.check``; see the module docstring). Off by default: nothing is added.

  Returns:
    x_0 with the shape of ``x_T``; with ``return_trajectory``, ``(x_0, trajectory)`` where trajectory has
    shape (S + 1, *x_T.shape) and holds x_T followed by each step's x_next.
  """
  if x_T.ndim < 1:
    raise ValueError(f'x_T must have a leading batch axis, got shape {x_T.shape}')
  _check_eta('ddim_sample', eta)
  _check_key('ddim_sample', eta, key)
  _check_finite('ddim_sample', check_finite, x_T=x_T)
  timesteps = ddim_timesteps(schedule.num_timesteps, num_steps)
  out = _ddim_scan(denoise_fn, x_T, schedule, timesteps, eta, key, return_trajectory)
  _check_finite('ddim_sample', check_finite, result=out[0] if return_trajectory else out)
  return out


def warm_start_steps(num_steps: int, strength: float) -> int:
  """k, the number of DDIM steps a warm start of ``strength`` runs: int(S·strength), at least 1.

  diffusers' img2img takes int(S·strength) steps too (and runs none when that is 0; here it is 1).
  """
  try:
    strength = float(strength)
  except (TypeError, jax.errors.ConcretizationTypeError):
    raise ValueError(
        'strength sets how many steps run (the length of the scan), so it must be a Python float, '
        f'not {type(strength).__name__}'
    ) from None
  if int(num_steps) != num_steps or num_steps < 1:
    raise ValueError(f'num_steps must be a positive integer, got {num_steps!r}')
  if not 0.0 < strength <= 1.0:
    raise ValueError(f'strength must lie in (0, 1], got {strength!r}')
  return max(1, min(int(num_steps * strength), int(num_steps)))


def ddim_sample_from(
    denoise_fn: DenoiseFn,
    x0_guess: jax.Array,
    schedule: Schedule,
    *,
    strength: float,
    noise: jax.Array,
    num_steps: int = 10,
    eta: float | jax.Array = 0.0,
    key: jax.Array | None = None,
    return_trajectory: bool = False,
    check_finite: bool = False,
):
  """DDIM warm-started from a guess of x_0: the img2img (SDEdit) convention of diffusers.

  With S = ``num_steps`` and k = ``warm_start_steps(S, strength)``, the guess is noised to τ_{S−k} of
  the trailing grid (``ddim_timesteps``), x = q_sample(x0_guess, τ_{S−k}, noise), and the last k steps
  of ``ddim_sample`` run from there, in one ``lax.scan``. strength = 1 starts at τ_0 = T − 1, where
  √ᾱ is about 5e-5 for the cosine schedule, so it nearly equals ``ddim_sample`` from x_T = noise.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> x0_hat``, as for ``ddim_sample``.
    x0_guess: the guess (B, ...), e.g. the previous video frame's mesh.
    schedule: the training noise schedule.
    strength: a Python float in (0, 1]: the fraction of the S steps that run (and how much noise is
      added: more strength, less of the guess survives).
    noise: ε with the shape of ``x0_guess``, used to noise the guess.
    num_steps: S, a Python int; the grid is that of ``ddim_sample`` with S steps.
    eta, key: as for ``ddim_sample``; with η > 0, k fresh draws from ``key``.
    return_trajectory: also return every state.
    check_finite: as for ``ddim_sample``, of x0_guess, noise and the result.

  Returns:
    x_0 with the shape of ``x0_guess``; with ``return_trajectory``, ``(x_0, trajectory)``, trajectory
    (k + 1, *x0_guess.shape): the noised guess followed by each step's x_next.
  """
  if x0_guess.ndim < 1:
    raise ValueError(f'x0_guess must have a leading batch axis, got shape {x0_guess.shape}')
  _check_eta('ddim_sample_from', eta)
  _check_key('ddim_sample_from', eta, key)
  _check_finite('ddim_sample_from', check_finite, x0_guess=x0_guess, noise=noise)
  k = warm_start_steps(num_steps, strength)
  timesteps = ddim_timesteps(schedule.num_timesteps, num_steps)[num_steps - k :]
  t_start = jnp.full((x0_guess.shape[0],), int(timesteps[0]), jnp.int32)
  x_start = q_sample(schedule, x0_guess, t_start, noise.astype(x0_guess.dtype))
  out = _ddim_scan(denoise_fn, x_start, schedule, timesteps, eta, key, return_trajectory)
  _check_finite('ddim_sample_from', check_finite, result=out[0] if return_trajectory else out)
  return out


def _check_key(name: str, eta, key) -> None:
  if key is None and not _is_concrete_zero(eta):
    raise ValueError(
        f'{name}: eta={eta!r} draws fresh noise at every step, so it needs key=; '
        'pass a jax.random key (or use eta=0 for the deterministic sampler)'
    )


def _ddim_scan(denoise_fn, x_start, schedule, timesteps, eta, key, return_trajectory):
  """The DDIM steps τ_i → τ_{i+1} along ``timesteps`` (numpy int32, ending with −1), one scan."""
  num_steps = len(timesteps) - 1
  batch = x_start.shape[0]
  stochastic = key is not None
  step_keys = (
      jax.random.split(key, num_steps) if stochastic else jnp.zeros((num_steps,), jnp.uint32)
  )

  def step(x_t, scanned):
    t_now, t_next, step_key = scanned
    alpha_now = _alpha_bar_or_one(schedule, t_now).astype(x_t.dtype)
    alpha_next = _alpha_bar_or_one(schedule, t_next).astype(x_t.dtype)
    x0_hat = denoise_fn(x_t, jnp.full((batch,), t_now, jnp.int32))
    chex.assert_equal_shape((x0_hat, x_t))
    x0_hat = x0_hat.astype(x_t.dtype)
    eps_hat = (x_t - jnp.sqrt(alpha_now) * x0_hat) / jnp.sqrt(1.0 - alpha_now)
    sigma = jnp.asarray(eta, x_t.dtype) * jnp.sqrt(
        (1.0 - alpha_now / alpha_next) * (1.0 - alpha_next) / (1.0 - alpha_now)
    )
    # Clamped: at the last step 1 − ᾱ_next − σ² is 0 and rounding may make it a hair negative.
    direction = jnp.sqrt(jnp.maximum(1.0 - alpha_next - sigma**2, 0.0))
    x_next = jnp.sqrt(alpha_next) * x0_hat + direction * eps_hat
    if stochastic:
      x_next = x_next + sigma * jax.random.normal(step_key, x_t.shape, x_t.dtype)
    return x_next, (x_next if return_trajectory else None)

  scanned = (jnp.asarray(timesteps[:-1]), jnp.asarray(timesteps[1:]), step_keys)
  x0, states = jax.lax.scan(step, x_start, scanned)
  if return_trajectory:
    return x0, jnp.concatenate([x_start[None], states], axis=0)
  return x0
