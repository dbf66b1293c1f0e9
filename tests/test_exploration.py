"""Ornstein-Uhlenbeck exploration (Euler-Maruyama) and TD3's clipped target smoothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo.exploration import OrnsteinUhlenbeck, perturb, smoothed_target_action


def test_ou_step_is_euler_maruyama():
    ou = OrnsteinUhlenbeck(theta=0.5, sigma=0.3, dt=0.1, mu=0.2)
    n, eps = jnp.array([1.0, -2.0]), jnp.array([0.5, -1.0])
    expected = n + 0.5 * (0.2 - n) * 0.1 + 0.3 * np.sqrt(0.1) * eps
    np.testing.assert_allclose(ou.step(n, eps), expected, rtol=1e-6)


def test_ou_stationary_moments_and_correlation():
    """The discretized chain is AR(1): N' = (1 - theta dt) N + sigma sqrt(dt) eps, with stationary
    variance sigma^2 dt / (1 - (1 - theta dt)^2) and lag-1 correlation 1 - theta dt."""
    ou = OrnsteinUhlenbeck(theta=0.15, sigma=0.2, dt=0.05)
    chains, steps = 4000, 600  # 600 steps: (1 - theta dt)^600 = 0.011 of the start remains
    eps = jax.random.normal(jax.random.key(0), (steps, chains))
    _, path = jax.lax.scan(lambda n, e: (ou.step(n, e),) * 2, jnp.zeros(chains), eps)
    last, before = np.asarray(path[-1]), np.asarray(path[-2])
    rho = 1 - ou.theta * ou.dt
    variance = ou.sigma**2 * ou.dt / (1 - rho**2)
    # Start from 0 (not stationary): variance after k steps is variance (1 - rho^(2k)).
    variance *= 1 - rho ** (2 * steps)
    se = variance * np.sqrt(2 / chains)  # standard error of a sample variance
    assert abs(last.var() - variance) < 4 * se
    assert abs(np.corrcoef(last, before)[0, 1] - rho) < 4 * (1 - rho**2) / np.sqrt(chains)
    assert abs(ou.stationary_std - 0.2 / np.sqrt(0.3)) < 1e-12


def test_ou_bad_parameters_are_named():
    with pytest.raises(ValueError, match="theta=0"):
        OrnsteinUhlenbeck(theta=0.0)


def test_perturb_scales_by_half_width_and_clips():
    low, high = jnp.array([-2.0, 0.0]), jnp.array([2.0, 1.0])
    np.testing.assert_allclose(
        perturb(jnp.array([0.0, 0.5]), jnp.array([0.25, 0.2]), low, high), [0.5, 0.6], rtol=1e-6
    )
    np.testing.assert_allclose(
        perturb(jnp.array([1.9, 0.5]), jnp.array([1.0, -3.0]), low, high), [2.0, 0.0]
    )


def test_target_smoothing_respects_its_clip_and_the_box():
    low, high = -jnp.ones(3), jnp.ones(3)
    a = jnp.array([0.0, 0.9, -0.2])
    eps = jax.random.normal(jax.random.key(0), (10_000, 3)) * 5.0
    smoothed = jax.vmap(lambda e: smoothed_target_action(a, e, low, high, std=0.2, clip=0.5))(eps)
    noise = smoothed - a
    # Half-width 1: the noise is within [-0.5, 0.5], and the action stays in the box.
    assert float(jnp.max(jnp.abs(noise))) <= 0.5 + 1e-6
    assert float(smoothed.max()) <= 1.0 and float(smoothed.min()) >= -1.0
    # Large noise is clipped (not resampled): many draws sit exactly on the clip.
    assert float(jnp.mean(jnp.isclose(jnp.abs(noise[:, 0]), 0.5))) > 0.5
    # Small noise passes unchanged: std * eps.
    small = smoothed_target_action(a, jnp.array([0.1, -0.2, 0.3]), low, high, std=0.2, clip=0.5)
    np.testing.assert_allclose(small - a, [0.02, -0.04, 0.06], rtol=1e-5)
