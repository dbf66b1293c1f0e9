"""Off-policy SVG(n) from replay with inferred noise (SVG(1)-ER): on data from the current policy it
is the on-policy SVG(n) gradient; off-policy segments get truncated importance weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo import estimators
from mbpo.critics import QCritic
from mbpo.dynamics import from_function
from mbpo.policies import GaussianPolicy, TanhGaussianPolicy
from mbpo.replay import Segment
from mbpo.unroll import RolloutNoise

BATCH = 16


def _toy_dynamics():
    """s' = s + 0.1 tanh(A s + B a) + 0.05 xi: nonlinear, additive Gaussian noise (xi inferable),
    cheap to compile (the ODE tasks work the same but compile for minutes in float64 here)."""
    a_mat, b_mat = (
        jnp.array([[0.0, 1.0, 0.2], [-1.0, 0.1, 0.0], [0.3, 0.0, -0.5]]),
        jnp.array([[0.0], [1.0], [0.5]]),
    )

    def mean(s, a):
        return s + 0.1 * jnp.tanh(a_mat @ s + b_mat @ a)

    return from_function(
        lambda s, a, xi: mean(s, a) + 0.05 * xi,
        lambda s, a, s_next: -jnp.sum(s_next**2) - 0.1 * jnp.sum(a**2),
        lambda key: jax.random.normal(key, (3,)),
        action_size=1,
        noise_shape=(3,),
        action_low=-2.0,
        action_high=2.0,
        infer_noise=lambda s, a, s_next: (s_next - mean(s, a)) / 0.05,
    )


def _setup(policy_cls, n, seed=0):
    dynamics = _toy_dynamics()
    policy = policy_cls.for_dynamics(dynamics, hidden=(16,))
    params = policy.init(jax.random.key(seed))
    critic = QCritic(3, 1, hidden=(16,))
    q = lambda s, a: critic.min_q(critic.init(jax.random.key(seed + 1)), s, a)
    k_s, k_eps, k_xi, k_last = jax.random.split(jax.random.key(seed + 2), 4)
    starts = jax.vmap(dynamics.reset)(jax.random.split(k_s, BATCH))
    eps = jax.random.normal(k_eps, (BATCH, n, 1))
    xi = jax.vmap(jax.vmap(dynamics.sample_noise))(jax.random.split(k_xi, (BATCH, n)))
    return dynamics, policy, params, q, starts, eps, xi, k_last


def _record(dynamics, policy, params, starts, eps, xi):
    """Runs the behaviour policy ``params`` and stores the segments as a replay buffer would."""

    def one(s0, e, x):
        def body(s, noise):
            a = policy.sample(params, s.obs, noise[0])
            s_next = dynamics.step(s, a, noise[1])
            return s_next, (s_next, a, policy.log_prob(params, s.obs, a))

        _, (states, actions, log_mu) = jax.lax.scan(body, s0, (e, x))
        states = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), s0, states)
        return Segment(state=states, action=actions, log_prob=log_mu)

    return jax.vmap(one)(starts, eps, xi)


@pytest.mark.parametrize("policy_cls", [GaussianPolicy, TanhGaussianPolicy])
@pytest.mark.parametrize("n", [1, 3])
def test_replay_gradient_equals_on_policy_gradient_on_current_data(x64, policy_cls, n):
    dynamics, policy, params, q, starts, eps, xi, k_last = _setup(policy_cls, n)
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    segments = _record(dynamics, policy, params, starts, eps, xi)
    estimator = estimators.svg(n)
    eps_n = jax.random.normal(
        k_last, (BATCH, 1, 1), jnp.float64
    )  # what replay_surrogate draws from k_last

    def on_policy(w):
        noise = RolloutNoise(eps=jnp.concatenate([eps, eps_n], 1), xi=xi)
        return estimators.surrogate(
            estimator, dynamics, lambda o, e: policy.sample(w, o, e), starts, noise, gamma=0.9, q=q
        )[0]

    def off_policy(w):
        return estimators.replay_surrogate(
            estimator, dynamics, policy, w, segments, k_last, gamma=0.9, q=q
        )

    (value, info), grad = jax.jit(jax.value_and_grad(off_policy, has_aux=True))(params)
    on_value, on_grad = jax.jit(jax.value_and_grad(on_policy))(params)
    np.testing.assert_allclose(info["eps"], eps, atol=1e-8)
    np.testing.assert_allclose(info["xi"], xi, atol=1e-7)
    np.testing.assert_allclose(float(info["weight"]), 1.0, rtol=1e-9)
    # Equal in exact arithmetic; the two programs' float64 values differ by up to 4e-9 relative
    # under the suite's compiler settings (LLVM O0, tests/conftest.py) and by nothing at XLA's
    # defaults (measured for both n and both policies).
    np.testing.assert_allclose(value, on_value, rtol=1e-8)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), grad, on_grad)


def test_off_policy_segments_get_truncated_importance_weights(x64):
    dynamics, policy, params, q, starts, eps, xi, key = _setup(GaussianPolicy, 1)
    behaviour = policy.init(jax.random.key(7))  # another policy collected the data
    segments = _record(dynamics, policy, behaviour, starts, eps, xi)
    _, info = estimators.replay_surrogate(
        estimators.svg(1), dynamics, policy, params, segments, key, gamma=0.9, q=q, max_weight=1.5
    )
    log_ratio = (
        jax.vmap(policy.log_prob, in_axes=(None, 0, 0))(
            params, segments.state.obs[:, 0], segments.action[:, 0]
        )
        - segments.log_prob[:, 0]
    )
    np.testing.assert_allclose(
        float(info["weight"]), float(jnp.mean(jnp.minimum(1.5, jnp.exp(log_ratio)))), rtol=1e-9
    )
    assert float(info["weight"]) < 1.5
    # The inferred eps reproduce the stored actions under the current policy.
    actions = jax.vmap(policy.sample, in_axes=(None, 0, 0))(
        params, segments.state.obs[:, 0], info["eps"][:, 0]
    )
    np.testing.assert_allclose(actions, segments.action[:, 0], atol=1e-9)


def test_horizon_must_match_the_segments():
    dynamics, policy, params, q, starts, eps, xi, key = _setup(GaussianPolicy, 2)
    segments = _record(dynamics, policy, params, starts, eps, xi)
    with pytest.raises(ValueError, match="svg\\(1\\) does not match segments of 2 steps"):
        estimators.replay_surrogate(
            estimators.svg(1), dynamics, policy, params, segments, key, gamma=0.9, q=q
        )
