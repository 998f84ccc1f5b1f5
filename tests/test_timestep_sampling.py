"""Tests of losses.sample_timesteps (config.loss.timestep_sampling): the paper's uniform draw is unchanged,
and the 'power' draw has the moments and tail its formula gives."""

import jax
import ml_collections
import numpy as np
import pytest

from diffhand_jax import diffusion
from diffhand_jax.training import losses, step as step_lib

T = 1000
NUM_SAMPLES = 200_000


def _exact_moments(num_timesteps: int, power: float) -> tuple[float, float]:
  """Mean and variance of s = T − 1 − t for t = T − 1 − ⌊T·u^power⌋, u ~ U[0, 1), from the tail sums
  E[s] = Σ_{j≥1} P(s ≥ j) and E[s²] = Σ_{j≥1} (2j − 1) P(s ≥ j), with P(s ≥ j) = 1 − (j/T)^(1/power).
  """
  j = np.arange(1, num_timesteps, dtype=np.float64)
  tail = 1.0 - (j / num_timesteps) ** (1.0 / power)
  mean = tail.sum()
  second = ((2 * j - 1) * tail).sum()
  return mean, second - mean**2


def test_uniform_is_exactly_the_papers_randint():
  key = jax.random.PRNGKey(3)
  got = losses.sample_timesteps(key, 64, T, 'uniform')
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.random.randint(key, (64,), 0, T)))


@pytest.mark.parametrize('power', [1.0, 2.0, 3.0])
def test_power_sampling_moments_match_the_formula(power):
  t = np.asarray(losses.sample_timesteps(jax.random.PRNGKey(0), NUM_SAMPLES, T, 'power', power))
  assert t.dtype == np.int32 and t.min() >= 0 and t.max() <= T - 1
  steps_from_top = (T - 1 - t).astype(np.float64)
  mean, variance = _exact_moments(T, power)
  # Within 5 standard errors of the exact mean; the variance within 3 %.
  assert abs(steps_from_top.mean() - mean) < 5 * np.sqrt(variance / NUM_SAMPLES)
  assert steps_from_top.var() == pytest.approx(variance, rel=0.03)


def test_power_one_is_uniform_in_distribution():
  mean, variance = _exact_moments(T, 1.0)
  assert mean == pytest.approx((T - 1) / 2)
  assert variance == pytest.approx((T**2 - 1) / 12)


def test_power_two_tail():
  """P(t ≥ 900) = P(T·u² < 100) = √0.1 ≈ 0.316 for power 2 (uniform: 0.1)."""
  t = np.asarray(losses.sample_timesteps(jax.random.PRNGKey(1), NUM_SAMPLES, T, 'power', 2.0))
  expected = np.sqrt(0.1)
  assert np.mean(t >= 900) == pytest.approx(
      expected, abs=5 * np.sqrt(expected * (1 - expected) / NUM_SAMPLES)
  )


def test_bad_options_name_the_config_field():
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match='timestep_sampling'):
    losses.sample_timesteps(key, 4, T, 'cosine')
  with pytest.raises(ValueError, match='timestep_power'):
    losses.sample_timesteps(key, 4, T, 'power', 0.0)


def test_train_step_draws_its_timesteps_from_the_config():
  config = ml_collections.ConfigDict(
      {
          'model': {'diffusion': True, 'regression_timestep': 0},
          'loss': {'timestep_sampling': 'power', 'timestep_power': 2.0},
      }
  )
  x0 = np.zeros((2048, 4, 3), np.float32)
  key = jax.random.PRNGKey(5)
  t, _ = step_lib.noised_inputs(key, x0, diffusion.cosine_schedule(T), config)
  t_key, _ = jax.random.split(key)
  np.testing.assert_array_equal(
      np.asarray(t), np.asarray(losses.sample_timesteps(t_key, 2048, T, 'power', 2.0))
  )
  assert np.mean(np.asarray(t) >= 900) > 0.25  # uniform would give 0.1


def test_top_fraction_moves_that_share_to_the_last_step_and_leaves_the_rest_alone():
  key = jax.random.PRNGKey(3)
  for method, power in (('uniform', 1.0), ('power', 2.0)):
    base = np.asarray(losses.sample_timesteps(key, 100_000, 1000, method, power))
    np.testing.assert_array_equal(
        base, np.asarray(losses.sample_timesteps(key, 100_000, 1000, method, power, 0.0))
    )
    mixed = np.asarray(losses.sample_timesteps(key, 100_000, 1000, method, power, 0.25))
    moved = mixed != base
    assert np.all(mixed[moved] == 999)
    # P(t = T-1) = q + (1 - q) P_base(t = T-1): 3 standard errors of 100k Bernoulli draws.
    expected = 0.25 + 0.75 * np.mean(base == 999)
    assert abs(np.mean(mixed == 999) - expected) < 3 * np.sqrt(expected * (1 - expected) / 1e5)
  assert np.all(np.asarray(losses.sample_timesteps(key, 64, 1000, 'uniform', 1.0, 1.0)) == 999)
  with pytest.raises(ValueError, match='top_fraction'):
    losses.sample_timesteps(key, 8, 1000, 'uniform', 1.0, 1.5)
