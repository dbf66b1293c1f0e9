"""LQR closed forms against each other and against Monte Carlo rollouts (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import lqr as lqr_lib
from mbpo.unroll import rollout, sample_noise

pytestmark = pytest.mark.usefixtures("x64")
GAMMA = 0.95
K_TEST = np.array([[1.0, 1.5]])


def _monte_carlo_returns(task, K, horizon, num, policy_std, seed=0):
    K = jnp.asarray(K)

    def one(key):
        noise = sample_noise(task, jax.random.fold_in(key, 1), horizon, (task.action_size,))
        _, traj = rollout(task, lambda s, eps: -K @ s + policy_std * eps, task.reset(key), noise)
        return jnp.sum(GAMMA ** jnp.arange(horizon) * traj.reward)

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), num)))


@pytest.mark.parametrize("policy_std", [0.0, 0.3])
def test_finite_horizon_return_matches_monte_carlo(policy_std):
    task = envs.make("lqr")
    returns = _monte_carlo_returns(task, K_TEST, horizon=60, num=4000, policy_std=policy_std)
    exact = float(
        lqr_lib.expected_return(task, jnp.asarray(K_TEST), GAMMA, horizon=60, policy_std=policy_std)
    )
    se = returns.std(ddof=1) / np.sqrt(returns.size)
    assert abs(returns.mean() - exact) < 4 * se, (returns.mean(), exact, se)


@pytest.mark.parametrize("policy_std", [0.0, 0.3])
def test_infinite_horizon_return_is_the_limit_of_finite_horizons(policy_std):
    task = envs.make("lqr")
    K = jnp.asarray(K_TEST)
    infinite = lqr_lib.expected_return(task, K, GAMMA, policy_std=policy_std)
    finite = lqr_lib.expected_return(task, K, GAMMA, horizon=2000, policy_std=policy_std)
    np.testing.assert_allclose(finite, infinite, rtol=1e-9)


@pytest.mark.parametrize("policy_std", [0.0, 0.3])
def test_closed_form_gradient_equals_autodiff_of_closed_form_return(policy_std):
    task = envs.make("lqr")
    K = jnp.asarray(K_TEST)
    auto = jax.grad(lambda k: lqr_lib.expected_return(task, k, GAMMA, policy_std=policy_std))(K)
    np.testing.assert_allclose(
        lqr_lib.return_gradient(task, K, GAMMA, policy_std=policy_std), auto, rtol=1e-8
    )


def test_riccati_gain_beats_nearby_gains_and_is_stationary():
    task = envs.make("lqr")
    K_star, P_star = lqr_lib.riccati(task, GAMMA)
    J_star = lqr_lib.expected_return(task, K_star, GAMMA)
    np.testing.assert_allclose(lqr_lib.value_matrix(task, K_star, GAMMA), P_star, rtol=1e-8)
    assert np.abs(lqr_lib.return_gradient(task, K_star, GAMMA)).max() < 1e-8
    rng = np.random.default_rng(0)
    for _ in range(20):
        delta = 0.05 * rng.standard_normal(K_star.shape)
        assert lqr_lib.expected_return(task, K_star + delta, GAMMA) < J_star


def test_q_value_is_consistent_with_value():
    """V(s) = E_{eps}[Q(s, -K s + sigma eps)], and Q satisfies its Bellman equation on average."""
    task = envs.make("lqr")
    K, sigma = jnp.asarray(K_TEST), 0.3
    s = jnp.array([0.7, -0.4])
    # a = -K s + sigma eps with scalar eps: E over eps by Gauss-Hermite quadrature (exact for
    # quadratics).
    nodes, weights = np.polynomial.hermite_e.hermegauss(5)
    weights = weights / weights.sum()
    q = jax.vmap(
        lambda e: lqr_lib.q_value(task, K, GAMMA, s, -K @ s + sigma * jnp.atleast_1d(e), sigma)
    )(nodes)
    np.testing.assert_allclose(
        np.sum(weights * q), lqr_lib.value(task, K, GAMMA, s, sigma), rtol=1e-10
    )
