"""The diffusion core against diffusers' DDIMScheduler, closed forms, and invariances."""

import diffusers
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from diffhand_jax import diffusion

T = 1000


def _reference_scheduler(num_steps: int) -> diffusers.DDIMScheduler:
  scheduler = diffusers.DDIMScheduler(
      num_train_timesteps=T,
      beta_schedule='squaredcos_cap_v2',
      prediction_type='sample',
      timestep_spacing='trailing',
      set_alpha_to_one=True,
      clip_sample=False,
  )
  scheduler.set_timesteps(num_steps)
  return scheduler


# A denoiser that is nonlinear in both x_t and t, written once per framework.
def _denoiser_jax(x, t):
  phase = jnp.sin(t.astype(jnp.float32) / 97.0).reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.tanh(0.7 * x + phase) + 0.05 * x * x


def _denoiser_torch(x, t):
  phase = torch.sin(torch.tensor(float(t) / 97.0, dtype=torch.float32))
  return torch.tanh(0.7 * x + phase) + 0.05 * x * x


def test_schedule_matches_diffusers():
  schedule = diffusion.cosine_schedule(T)
  reference = _reference_scheduler(10)
  np.testing.assert_allclose(schedule.betas, reference.betas.numpy(), atol=1e-6, rtol=0)
  np.testing.assert_allclose(
      schedule.alphas_cumprod, reference.alphas_cumprod.numpy(), atol=1e-6, rtol=0
  )
  assert schedule.betas.dtype == jnp.float32 and schedule.betas.shape == (T,)


def test_schedule_closed_form_endpoints():
  # Worked by hand: β_0 = 1 − cos²((1/T + s)/(1 + s)·π/2)/cos²(s/(1 + s)·π/2); β is capped at the end.
  s = 0.008
  beta0 = 1 - np.cos((1 / T + s) / (1 + s) * np.pi / 2) ** 2 / np.cos(s / (1 + s) * np.pi / 2) ** 2
  schedule = diffusion.cosine_schedule(T)
  np.testing.assert_allclose(schedule.betas[0], beta0, rtol=1e-5)
  assert float(schedule.betas[-1]) == pytest.approx(0.999)
  assert np.all(np.diff(np.asarray(schedule.alphas_cumprod)) < 0)


@pytest.mark.parametrize('num_steps', [1, 2, 3, 7, 10, 50, 1000])
def test_timesteps_match_diffusers_trailing(num_steps):
  ours = diffusion.ddim_timesteps(T, num_steps)
  reference = _reference_scheduler(num_steps).timesteps.numpy()
  assert ours.dtype == np.int32 and ours.shape == (num_steps + 1,)
  np.testing.assert_array_equal(ours[:-1], reference)
  assert ours[-1] == -1


def test_timesteps_by_hand():
  np.testing.assert_array_equal(
      diffusion.ddim_timesteps(1000, 10), [999, 899, 799, 699, 599, 499, 399, 299, 199, 99, -1]
  )
  np.testing.assert_array_equal(
      diffusion.ddim_timesteps(10, 4), [9, 7, 4, 1, -1]
  )  # round(7.5)=8, round(2.5)=2 (numpy's round-half-even)
  with pytest.raises(ValueError, match='num_steps'):
    diffusion.ddim_timesteps(10, 11)
  with pytest.raises(ValueError, match='num_steps'):
    diffusion.ddim_timesteps(10, 0)


@pytest.mark.parametrize('num_steps', [1, 2, 10, 50])
def test_trajectory_matches_diffusers(num_steps):
  rng = np.random.default_rng(num_steps)
  x_T = rng.standard_normal((3, 17, 3)).astype(np.float32)
  schedule = diffusion.cosine_schedule(T)
  x0, trajectory = jax.jit(
      lambda x: diffusion.ddim_sample(
          _denoiser_jax, x, schedule, num_steps=num_steps, return_trajectory=True
      )
  )(x_T)
  assert trajectory.shape == (num_steps + 1,) + x_T.shape

  scheduler = _reference_scheduler(num_steps)
  sample = torch.from_numpy(x_T)
  expected = [sample.numpy()]
  for t in scheduler.timesteps:
    x0_hat = _denoiser_torch(sample, int(t))
    sample = scheduler.step(x0_hat, t, sample, eta=0.0).prev_sample
    expected.append(sample.numpy())
  np.testing.assert_allclose(np.asarray(trajectory), np.stack(expected), atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(x0), expected[-1], atol=1e-5, rtol=0)


def test_single_step_by_hand():
  # One DDIM step from τ_0 = 999 to −1 with η = 0 returns x̂_0 exactly (ᾱ_{−1} = 1).
  schedule = diffusion.cosine_schedule(T)
  x_T = jnp.ones((2, 5))
  x0 = diffusion.ddim_sample(lambda x, t: 0.5 * x + 1.0, x_T, schedule, num_steps=1)
  np.testing.assert_allclose(np.asarray(x0), 1.5, rtol=1e-6)


def test_q_sample_marginal_moments():
  """Mean √ᾱ_t·x_0 and variance 1 − ᾱ_t, over 200k draws with a fixed seed.

  Tolerance: 5 standard errors. For the mean the standard error is √((1 − ᾱ)/n); for the variance it is
  (1 − ᾱ)√(2/(n − 1)) for Gaussian samples.
  """
  schedule = diffusion.cosine_schedule(T)
  n = 200_000
  timesteps = jnp.array([0, 250, 500, 999], jnp.int32)
  x0_values = jnp.array([1.5, -0.7, 2.0, 0.3])
  x0 = jnp.broadcast_to(x0_values[:, None], (4, n))
  noise = jax.random.normal(jax.random.PRNGKey(0), (4, n))
  x_t = np.asarray(diffusion.q_sample(schedule, x0, timesteps, noise), np.float64)
  alpha_bar = np.asarray(schedule.alphas_cumprod)[np.asarray(timesteps)].astype(np.float64)
  expected_mean = np.sqrt(alpha_bar) * np.asarray(x0_values)
  expected_var = 1.0 - alpha_bar
  mean_se = np.sqrt(expected_var / n)
  var_se = expected_var * np.sqrt(2.0 / (n - 1))
  assert np.all(np.abs(x_t.mean(axis=1) - expected_mean) < 5 * mean_se)
  assert np.all(np.abs(x_t.var(axis=1, ddof=1) - expected_var) < 5 * var_se)


def test_q_sample_trailing_shapes():
  schedule = diffusion.cosine_schedule(T)
  for shape in [(4, 778, 3), (4, 21, 3), (4, 7)]:
    x0 = jnp.ones(shape)
    t = jnp.array([0, 1, 500, 999], jnp.int32)
    x_t = diffusion.q_sample(schedule, x0, t, jnp.zeros(shape))
    np.testing.assert_allclose(
        np.asarray(x_t).reshape(4, -1)[:, 0],
        np.sqrt(np.asarray(schedule.alphas_cumprod)[[0, 1, 500, 999]]),
        rtol=1e-6,
    )


@pytest.mark.parametrize('shape', [(2, 778, 3), (2, 21, 3), (2, 9)])
def test_trailing_shapes_and_determinism(shape):
  schedule = diffusion.cosine_schedule(T)
  x_T = jax.random.normal(jax.random.PRNGKey(1), shape)
  sample = jax.jit(lambda x: diffusion.ddim_sample(_denoiser_jax, x, schedule, num_steps=4))
  first, second = sample(x_T), sample(x_T)
  assert first.shape == shape
  np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def test_eta_needs_key_and_uses_it():
  schedule = diffusion.cosine_schedule(T)
  x_T = jax.random.normal(jax.random.PRNGKey(2), (2, 21, 3))
  with pytest.raises(ValueError, match='needs key'):
    diffusion.ddim_sample(_denoiser_jax, x_T, schedule, num_steps=5, eta=0.5)
  sample = jax.jit(
      lambda x, k: diffusion.ddim_sample(_denoiser_jax, x, schedule, num_steps=5, eta=0.5, key=k)
  )
  a = sample(x_T, jax.random.PRNGKey(10))
  b = sample(x_T, jax.random.PRNGKey(10))
  c = sample(x_T, jax.random.PRNGKey(11))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.max(np.abs(np.asarray(a) - np.asarray(c))) > 1e-3
  deterministic = diffusion.ddim_sample(_denoiser_jax, x_T, schedule, num_steps=5)
  assert np.max(np.abs(np.asarray(a) - np.asarray(deterministic))) > 1e-3


def test_eta_matches_diffusers_with_the_same_noise():
  """With η > 0, each step equals diffusers' step given the same z (variance_noise)."""
  num_steps, eta = 5, 0.8
  schedule = diffusion.cosine_schedule(T)
  x_T = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
  key = jax.random.PRNGKey(3)
  _, trajectory = diffusion.ddim_sample(
      _denoiser_jax,
      jnp.asarray(x_T),
      schedule,
      num_steps=num_steps,
      eta=eta,
      key=key,
      return_trajectory=True,
  )
  step_noise = [np.array(jax.random.normal(k, x_T.shape)) for k in jax.random.split(key, num_steps)]
  scheduler = _reference_scheduler(num_steps)
  sample = torch.from_numpy(x_T)
  for i, t in enumerate(scheduler.timesteps):
    x0_hat = _denoiser_torch(sample, int(t))
    sample = scheduler.step(
        x0_hat, t, sample, eta=eta, variance_noise=torch.from_numpy(step_noise[i])
    ).prev_sample
    np.testing.assert_allclose(np.asarray(trajectory[i + 1]), sample.numpy(), atol=1e-5, rtol=0)


def test_vmap_over_hypotheses_equals_loop():
  schedule = diffusion.cosine_schedule(T)
  num_hypotheses = 3
  x_T = jax.random.normal(jax.random.PRNGKey(4), (num_hypotheses, 2, 21, 3))
  keys = jax.random.split(jax.random.PRNGKey(5), num_hypotheses)
  run = lambda x, k: diffusion.ddim_sample(_denoiser_jax, x, schedule, num_steps=6, eta=0.3, key=k)
  batched = jax.jit(jax.vmap(run))(x_T, keys)
  looped = np.stack([np.asarray(jax.jit(run)(x_T[k], keys[k])) for k in range(num_hypotheses)])
  np.testing.assert_allclose(np.asarray(batched), looped, atol=1e-6, rtol=0)


def _count_primitives(jaxpr, name):
  """Counts a primitive in a jaxpr and in every sub-jaxpr (scan bodies, pjit calls, ...)."""
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == name
    for param in eqn.params.values():
      for inner in (param if isinstance(param, (list, tuple)) else [param]):
        inner = getattr(inner, 'jaxpr', inner)  # ClosedJaxpr -> Jaxpr
        if hasattr(inner, 'eqns'):
          count += _count_primitives(inner, name)
  return count


def test_one_loop_not_unrolled():
  schedule = diffusion.cosine_schedule(T)
  x_T = jnp.zeros((2, 21, 3))
  sample = lambda x: diffusion.ddim_sample(_denoiser_jax, x, schedule, num_steps=10)
  jaxpr = jax.make_jaxpr(sample)(x_T).jaxpr
  assert _count_primitives(jaxpr, 'scan') == 1
  # The denoiser has one tanh: it must appear once in the program, not once per step.
  assert _count_primitives(jaxpr, 'tanh') == 1
  hlo = jax.jit(sample).lower(x_T).compile().as_text()
  assert hlo.count('tanh(') == 1
  assert ' while(' in hlo


def test_gradient_through_sampler_matches_finite_differences():
  with jax.enable_x64(True):
    schedule = diffusion.cosine_schedule(T)
    schedule = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), schedule)
    x_T = jax.random.normal(jax.random.PRNGKey(6), (2, 5), jnp.float64)
    target = jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float64).reshape(2, 5)

    def objective(weight):
      denoise = lambda x, t: jnp.tanh(weight * x) + 0.01 * t[:, None].astype(x.dtype) / T
      x0 = diffusion.ddim_sample(denoise, x_T, schedule, num_steps=5, eta=0.0)
      return jnp.sum((x0 - target) ** 2)

    weight = jnp.float64(0.8)
    analytic = jax.grad(objective)(weight)
    h = 1e-6
    numeric = (objective(weight + h) - objective(weight - h)) / (2 * h)
    assert abs(float(analytic)) > 1e-3
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Warm start (ddim_sample_from): the img2img convention of diffusers
# ------------------------------------------------------------------------------------------------


def _reference_img2img(num_steps, strength, guess, noise, eta=0.0, step_noise=None):
  """diffusers' img2img stepping (StableDiffusionImg2ImgPipeline.get_timesteps and prepare_latents):
  the last int(S·strength) timesteps, the guess noised to the first of them with add_noise."""
  scheduler = _reference_scheduler(num_steps)
  init_timestep = min(int(num_steps * strength), num_steps)
  t_start = max(num_steps - init_timestep, 0)
  timesteps = scheduler.timesteps[t_start * scheduler.order :]
  sample = scheduler.add_noise(torch.from_numpy(guess), torch.from_numpy(noise), timesteps[:1])
  states = [sample.numpy()]
  for i, t in enumerate(timesteps):
    x0_hat = _denoiser_torch(sample, int(t))
    variance_noise = None if step_noise is None else torch.from_numpy(step_noise[i])
    sample = scheduler.step(x0_hat, t, sample, eta=eta, variance_noise=variance_noise).prev_sample
    states.append(sample.numpy())
  return np.stack(states)


@pytest.mark.parametrize(
    'num_steps, strength', [(10, 0.3), (10, 0.5), (10, 0.75), (10, 1.0), (20, 0.42), (50, 0.5)]
)
def test_warm_start_matches_diffusers_img2img(num_steps, strength):
  rng = np.random.default_rng(int(num_steps * 100 * strength))
  guess = rng.standard_normal((3, 17, 3)).astype(np.float32)
  noise = rng.standard_normal((3, 17, 3)).astype(np.float32)
  schedule = diffusion.cosine_schedule(T)
  x0, trajectory = jax.jit(
      lambda g, n: diffusion.ddim_sample_from(
          _denoiser_jax,
          g,
          schedule,
          strength=strength,
          noise=n,
          num_steps=num_steps,
          return_trajectory=True,
      )
  )(guess, noise)
  expected = _reference_img2img(num_steps, strength, guess, noise)
  assert trajectory.shape == expected.shape  # k + 1 states: the noised guess, then each step
  assert len(expected) - 1 == diffusion.warm_start_steps(num_steps, strength)
  np.testing.assert_allclose(np.asarray(trajectory), expected, atol=1e-5, rtol=0)
  np.testing.assert_allclose(np.asarray(x0), expected[-1], atol=1e-5, rtol=0)


def test_warm_start_with_eta_matches_diffusers_with_the_same_noise():
  num_steps, strength, eta = 10, 0.6, 0.8
  rng = np.random.default_rng(7)
  guess = rng.standard_normal((2, 6)).astype(np.float32)
  noise = rng.standard_normal((2, 6)).astype(np.float32)
  key = jax.random.PRNGKey(8)
  k = diffusion.warm_start_steps(num_steps, strength)
  _, trajectory = diffusion.ddim_sample_from(
      _denoiser_jax,
      jnp.asarray(guess),
      diffusion.cosine_schedule(T),
      strength=strength,
      noise=jnp.asarray(noise),
      num_steps=num_steps,
      eta=eta,
      key=key,
      return_trajectory=True,
  )
  step_noise = [np.array(jax.random.normal(s, guess.shape)) for s in jax.random.split(key, k)]
  expected = _reference_img2img(num_steps, strength, guess, noise, eta=eta, step_noise=step_noise)
  np.testing.assert_allclose(np.asarray(trajectory), expected, atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match='needs key'):
    diffusion.ddim_sample_from(
        _denoiser_jax, jnp.asarray(guess), diffusion.cosine_schedule(T), strength=0.5,
        noise=jnp.asarray(noise), eta=0.5,
    )  # fmt: skip


def test_warm_start_strength_one_nearly_equals_ddim_sample():
  """strength = 1 starts at τ_0 = T − 1 from √ᾱ_{T−1}·guess + √(1 − ᾱ_{T−1})·x_T, where ddim_sample
  starts from x_T. In float32 √(1 − ᾱ_{T−1}) rounds to 1 (ᾱ_{T−1} ≈ 2.4e-9), so the start moves by
  √ᾱ_{T−1}·guess, at most shift = √ᾱ_{T−1}·max|guess| (about 5e-5 times the guess). That shift is the
  tolerance, at the start and, since these samplers do not amplify it, at the end."""
  schedule = diffusion.cosine_schedule(T)
  rng = np.random.default_rng(3)
  x_T = jnp.asarray(rng.standard_normal((3, 17, 3)).astype(np.float32))
  guess = jnp.asarray((3.0 * rng.standard_normal((3, 17, 3))).astype(np.float32))
  shift = float(np.sqrt(np.float64(schedule.alphas_cumprod[T - 1]))) * float(
      jnp.max(jnp.abs(guess))
  )
  assert shift < 1e-3  # the guess barely survives the noising at τ_0
  rounding = 1e-6  # float32 rounding of values of order 1
  for num_steps in (1, 10, 50):
    cold = diffusion.ddim_sample(_denoiser_jax, x_T, schedule, num_steps=num_steps)
    warm, trajectory = diffusion.ddim_sample_from(
        _denoiser_jax,
        guess,
        schedule,
        strength=1.0,
        noise=x_T,
        num_steps=num_steps,
        return_trajectory=True,
    )
    assert trajectory.shape == (num_steps + 1,) + x_T.shape
    assert float(jnp.max(jnp.abs(trajectory[0] - x_T))) <= shift + rounding
    assert float(jnp.max(jnp.abs(warm - cold))) <= shift + rounding
    # A zero guess leaves the start at x_T exactly, and then every step is ddim_sample's.
    zero = diffusion.ddim_sample_from(
        _denoiser_jax, jnp.zeros_like(guess), schedule, strength=1.0, noise=x_T, num_steps=num_steps
    )
    np.testing.assert_array_equal(np.asarray(zero), np.asarray(cold))
  # The tolerance is tight: other noise moves the result by far more than the shift.
  other = diffusion.ddim_sample_from(
      _denoiser_jax, guess, schedule, strength=1.0, noise=-x_T, num_steps=10
  )
  assert float(jnp.max(jnp.abs(other - cold))) > 100 * shift


def test_warm_start_steps_and_single_step_by_hand():
  # k = int(S·strength), at least 1 (diffusers would run none below 1/S).
  assert [diffusion.warm_start_steps(10, s) for s in (1.0, 0.5, 0.3, 0.29, 0.05)] == [
      10,
      5,
      3,
      2,
      1,
  ]
  assert diffusion.warm_start_steps(4, 0.6) == 2
  for bad in (0.0, -0.2, 1.5):
    with pytest.raises(ValueError, match='strength'):
      diffusion.warm_start_steps(10, bad)
  # One step: the guess noised to τ_9 = 99 with zero noise is √ᾱ_99·guess, and the step to −1 returns
  # x̂_0 exactly (ᾱ_{−1} = 1); this denoiser reports the timestep it was given.
  schedule = diffusion.cosine_schedule(T)
  guess = jnp.full((2, 5), 2.0)
  denoise = lambda x, t: 0.5 * x + t[:, None].astype(x.dtype) / 1000.0
  x0 = diffusion.ddim_sample_from(
      denoise, guess, schedule, strength=0.05, noise=jnp.zeros_like(guess), num_steps=10
  )
  alpha_99 = float(schedule.alphas_cumprod[99])
  np.testing.assert_allclose(np.asarray(x0), 0.5 * np.sqrt(alpha_99) * 2.0 + 0.099, rtol=1e-6)


def test_warm_start_under_jit_and_vmap_is_one_scan():
  schedule = diffusion.cosine_schedule(T)
  guesses = jax.random.normal(jax.random.PRNGKey(4), (3, 2, 21, 3))
  noises = jax.random.normal(jax.random.PRNGKey(5), (3, 2, 21, 3))
  run = lambda g, n: diffusion.ddim_sample_from(
      _denoiser_jax, g, schedule, strength=0.4, noise=n, num_steps=10
  )
  batched = jax.jit(jax.vmap(run))(guesses, noises)
  looped = np.stack([np.asarray(jax.jit(run)(guesses[i], noises[i])) for i in range(3)])
  np.testing.assert_allclose(np.asarray(batched), looped, atol=1e-6, rtol=0)
  jaxpr = jax.make_jaxpr(run)(guesses[0], noises[0]).jaxpr
  assert _count_primitives(jaxpr, 'scan') == 1 and _count_primitives(jaxpr, 'tanh') == 1
  with pytest.raises(ValueError, match='Python float'):
    jax.jit(
        lambda s: diffusion.ddim_sample_from(
            _denoiser_jax, guesses[0], schedule, strength=s, noise=noises[0]
        )
    )(0.5)


# ----- issue #36: arguments checked where they can be, NaN inputs found on request ----------------------------


@pytest.mark.parametrize('eta', [-0.1, 1.5, float('nan'), float('inf')])
def test_eta_outside_zero_one_is_refused_eagerly(eta):
  schedule = diffusion.cosine_schedule(T)
  x = jnp.zeros((2, 5, 3))
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match=r'eta must lie in \[0, 1\]'):
    diffusion.ddim_sample(_denoiser_jax, x, schedule, num_steps=4, eta=eta, key=key)
  with pytest.raises(ValueError, match=r'eta must lie in \[0, 1\]'):
    diffusion.ddim_sample_from(
        _denoiser_jax, x, schedule, strength=0.5, noise=x, num_steps=4, eta=eta, key=key
    )
  # Under jit a traced η cannot be checked: the fast path stays as it was.
  traced = jax.jit(
      lambda e: diffusion.ddim_sample(_denoiser_jax, x, schedule, num_steps=4, eta=e, key=key)
  )
  assert traced(0.5).shape == x.shape


@pytest.mark.parametrize('t', [-1, T, T + 5])
def test_q_sample_refuses_timesteps_outside_the_schedule(t):
  schedule = diffusion.cosine_schedule(T)
  x0 = jnp.ones((2, 3))
  with pytest.raises(ValueError, match=r't must lie in \[0, 1000\)'):
    diffusion.q_sample(schedule, x0, np.array([0, t], np.int32), x0)
  with pytest.raises(ValueError, match=r't must lie in \[0, 1000\)'):
    diffusion.q_sample(schedule, x0, jnp.array([t, 3], jnp.int32), x0)
  # Traced timesteps (the training step) are not checked: no host transfer in the jitted path.
  jitted = jax.jit(lambda t: diffusion.q_sample(schedule, x0, t, x0))
  assert jitted(jnp.array([0, 999], jnp.int32)).shape == x0.shape


def test_check_finite_finds_nan_inputs_and_the_default_path_is_unchanged():
  from jax.experimental import checkify

  schedule = diffusion.cosine_schedule(T)
  x = np.zeros((2, 5, 3), np.float32)
  x[1, 2, 0] = np.nan
  x = jnp.asarray(x)
  # Default: as before, NaN in, NaN out, and nothing checked.
  assert np.isnan(np.asarray(diffusion.ddim_sample(_denoiser_jax, x, schedule, num_steps=3))).any()
  with pytest.raises(FloatingPointError, match='ddim_sample: x_T holds NaN or inf'):
    diffusion.ddim_sample(_denoiser_jax, x, schedule, num_steps=3, check_finite=True)
  with pytest.raises(FloatingPointError, match='ddim_sample_from: x0_guess holds NaN or inf'):
    diffusion.ddim_sample_from(
        _denoiser_jax, x, schedule, strength=0.5, noise=jnp.zeros_like(x), check_finite=True
    )
  with pytest.raises(FloatingPointError, match='q_sample: noise holds NaN or inf'):
    diffusion.q_sample(schedule, jnp.zeros((2, 5, 3)), jnp.array([1, 2]), x, check_finite=True)
  # Under jit: checkify reports it.
  checked = jax.jit(
      checkify.checkify(
          lambda x: diffusion.ddim_sample(
              _denoiser_jax, x, schedule, num_steps=3, check_finite=True
          )
      )
  )
  error, _ = checked(x)
  assert 'x_T holds NaN or inf' in str(error.get())
  error, out = checked(jnp.zeros_like(x))
  assert error.get() is None and np.all(np.isfinite(np.asarray(out)))
  # A denoiser that returns NaN is found too (the result is checked).
  with pytest.raises(FloatingPointError, match='ddim_sample: result holds NaN or inf'):
    diffusion.ddim_sample(
        lambda x_t, t: x_t * jnp.nan, jnp.zeros_like(x), schedule, num_steps=3, check_finite=True
    )
