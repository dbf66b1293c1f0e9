"""Policies: the action box, noise inference, densities and parameter gradients (float64)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.scipy.stats import norm

import envs
from mbpo.policies import DeterministicPolicy, GaussianPolicy, TanhGaussianPolicy
from tests.conftest import central_difference

pytestmark = pytest.mark.usefixtures("x64")
OBS_SIZE = 3
HIDDEN = (8,)
LOW, HIGH = (-1.0, 0.0), (1.0, 4.0)  # centre (0, 2), half-width (1, 2): c and h both matter
INF = (-math.inf, -math.inf), (math.inf, math.inf)

BOUNDED = {
    "deterministic": DeterministicPolicy(OBS_SIZE, 2, LOW, HIGH, hidden=HIDDEN),
    "gaussian": GaussianPolicy(OBS_SIZE, 2, LOW, HIGH, hidden=HIDDEN),
    "gaussian_state_std": GaussianPolicy(
        OBS_SIZE, 2, LOW, HIGH, hidden=HIDDEN, state_dependent_std=True
    ),
    "tanh_gaussian": TanhGaussianPolicy(OBS_SIZE, 2, LOW, HIGH, hidden=HIDDEN),
}
UNBOUNDED = {
    "gaussian": GaussianPolicy(OBS_SIZE, 2, *INF, hidden=HIDDEN),
    "gaussian_state_std": GaussianPolicy(
        OBS_SIZE, 2, *INF, hidden=HIDDEN, state_dependent_std=True
    ),
}


def _init(policy, seed):
    """float64 parameters (flax initializes float32 even with x64 enabled)."""
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), policy.init(jax.random.key(seed)))


def _obs(seed, scale=1.0, shape=()):
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=(*shape, OBS_SIZE)))


def _eps(policy, seed, scale=1.0, shape=()):
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=(*shape, *policy.eps_shape)))


@pytest.mark.parametrize("name", ["deterministic", "tanh_gaussian"])
def test_bounded_policies_act_inside_the_box(name):
    policy = BOUNDED[name]
    params = _init(policy, 0)
    # Large observations saturate the squashing; huge noise gives tanh(u) = +-1 exactly in float64.
    obs = jnp.concatenate([_obs(1, shape=(5,)), _obs(2, 1e3, shape=(5,))])
    eps = jnp.concatenate([_eps(policy, 3, shape=(5,)), _eps(policy, 4, 1e6, shape=(5,))])
    every_pair = jax.vmap(jax.vmap(policy.sample, (None, None, 0)), (None, 0, None))
    a = np.asarray(every_pair(params, obs, eps))
    assert np.all(a >= np.array(LOW)) and np.all(a <= np.array(HIGH)), a
    if name == "tanh_gaussian":
        obs = _obs(0)
        edge = policy.sample(params, obs, jnp.full(2, 1e6))
        np.testing.assert_allclose(edge, HIGH)
        assert np.isfinite(policy.log_prob(params, obs, edge))


@pytest.mark.parametrize("state_dependent_std", [False, True])
def test_gaussian_mean_is_squashed_into_a_bounded_box(state_dependent_std):
    policy = GaussianPolicy(
        OBS_SIZE, 2, LOW, HIGH, hidden=HIDDEN, state_dependent_std=state_dependent_std
    )
    params = _init(policy, 0)
    mean = np.asarray(policy.mean(params, _obs(0, 1e3)))
    assert np.all(mean >= np.array(LOW)) and np.all(mean <= np.array(HIGH)), mean
    eps = _eps(policy, 1)
    np.testing.assert_allclose(
        policy.sample(params, _obs(2), eps),
        policy.mean(params, _obs(2)) + policy.std(params, _obs(2)) * eps,
        rtol=1e-12,
    )


@pytest.mark.parametrize(
    "policy",
    [
        UNBOUNDED["gaussian"],
        UNBOUNDED["gaussian_state_std"],
        BOUNDED["gaussian"],
        BOUNDED["gaussian_state_std"],
        BOUNDED["tanh_gaussian"],
    ],
    ids=[
        "gaussian",
        "gaussian_state_std",
        "gaussian_bounded_mean",
        "gaussian_state_std_bounded_mean",
        "tanh_gaussian",
    ],
)
def test_noise_from_action_inverts_sample(policy):
    params = _init(policy, 0)
    for seed in range(5):
        obs, eps = (
            _obs(seed),
            jnp.clip(_eps(policy, seed + 10, 1.5), -3.0, 3.0),
        )  # moderate: no saturation
        recovered = policy.noise_from_action(params, obs, policy.sample(params, obs, eps))
        np.testing.assert_allclose(recovered, eps, atol=1e-8)


def test_deterministic_policy_has_no_noise():
    policy = BOUNDED["deterministic"]
    params = _init(policy, 0)
    obs = _obs(0)
    assert policy.eps_shape == (0,)
    np.testing.assert_array_equal(
        policy.sample(params, obs, jnp.zeros(0)), policy.mean(params, obs)
    )
    assert policy.noise_from_action(params, obs, policy.mean(params, obs)).shape == (0,)
    with pytest.raises(NotImplementedError, match="no density"):
        policy.log_prob(params, obs, policy.mean(params, obs))


def _one_d(cls, low, high, **kwargs):
    return cls(OBS_SIZE, 1, (low,), (high,), hidden=HIDDEN, **kwargs)


@pytest.mark.parametrize(
    "policy, lo, hi",
    [
        (_one_d(GaussianPolicy, -math.inf, math.inf), None, None),
        (_one_d(GaussianPolicy, -1.0, 1.0, state_dependent_std=True), None, None),
        (_one_d(TanhGaussianPolicy, -2.0, 3.0), -2.0, 3.0),
    ],
    ids=["gaussian", "gaussian_bounded_mean", "tanh_gaussian"],
)
def test_density_integrates_to_one(policy, lo, hi):
    params = _init(policy, 3)
    obs = _obs(4)
    if lo is None:  # a Gaussian over R: 12 standard deviations either side of the mean
        mean, std = float(policy.mean(params, obs)[0]), float(policy.std(params, obs)[0])
        lo, hi = mean - 12 * std, mean + 12 * std
    grid = np.linspace(lo, hi, 200_001)[1:-1]
    log_density = jax.vmap(lambda a: policy.log_prob(params, obs, a[None]))
    density = np.exp(np.asarray(log_density(jnp.asarray(grid))))
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)


def test_tanh_gaussian_log_prob_is_the_change_of_variables_formula():
    """log pi(a|s) = log N(u; mu, sigma^2) - sum_i log(h_i (1 - y_i^2)), y = (a - c) / h, u =
    atanh(y)."""
    policy = BOUNDED["tanh_gaussian"]
    params = _init(policy, 0)
    c, h = (np.array(HIGH) + np.array(LOW)) / 2, (np.array(HIGH) - np.array(LOW)) / 2
    for seed in range(4):
        obs = _obs(seed)
        mu = np.arctanh((np.asarray(policy.mean(params, obs)) - c) / h)
        std = np.asarray(policy.std(params, obs))
        a = np.asarray(policy.sample(params, obs, _eps(policy, seed + 10, 2.0)))
        y = (a - c) / h
        u = np.arctanh(y)
        want = np.sum(
            -0.5 * ((u - mu) / std) ** 2
            - np.log(std)
            - 0.5 * np.log(2 * np.pi)
            - np.log(h * (1 - y**2))
        )
        np.testing.assert_allclose(policy.log_prob(params, obs, jnp.asarray(a)), want, rtol=1e-10)


@pytest.mark.parametrize("name", ["gaussian", "gaussian_state_std", "tanh_gaussian"])
def test_log_prob_is_the_noise_density_over_the_jacobian(name):
    """a = g(eps) is a bijection, so log pi(g(eps)) = log N(eps; 0, I) - log |det dg/deps|."""
    policy = BOUNDED[name]
    params = _init(policy, 1)
    obs, eps = _obs(5), _eps(policy, 6)
    jac = jax.jacfwd(lambda e: policy.sample(params, obs, e))(eps)
    want = jnp.sum(norm.logpdf(eps)) - jnp.linalg.slogdet(jac)[1]
    np.testing.assert_allclose(
        policy.log_prob(params, obs, policy.sample(params, obs, eps)), want, rtol=1e-10
    )


@pytest.mark.parametrize("name", list(BOUNDED))
def test_sample_gradient_matches_finite_differences(name):
    policy = BOUNDED[name]
    params = _init(policy, 2)
    obs, eps = _obs(7), _eps(policy, 8)
    flat, unravel = ravel_pytree(params)
    coords = np.random.default_rng(0).choice(flat.size, size=6, replace=False)
    if "log_std" in params:  # always include the std parameters
        coords = np.concatenate([coords, [flat.size - 2, flat.size - 1]])

    def sample_at(values):
        return policy.sample(unravel(flat.at[coords].set(values)), obs, eps)

    got = np.asarray(jax.jacobian(lambda f: policy.sample(unravel(f), obs, eps))(flat))[:, coords]
    want = central_difference(sample_at, np.asarray(flat[coords]))
    assert np.abs(want).max() > 1e-3  # the check is informative
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_tanh_gaussian_needs_finite_bounds():
    with pytest.raises(ValueError, match="finite action bounds.*inf"):
        TanhGaussianPolicy(OBS_SIZE, 1, (-math.inf,), (math.inf,))
    with pytest.raises(ValueError, match="finite action bounds.*inf"):
        TanhGaussianPolicy(OBS_SIZE, 2, (-1.0, -1.0), (1.0, math.inf))


@pytest.mark.parametrize("cls", [DeterministicPolicy, GaussianPolicy, TanhGaussianPolicy])
def test_bad_configuration_raises(cls):
    with pytest.raises(ValueError, match="unknown activation 'sigmoidish'"):
        cls(OBS_SIZE, 1, (-1.0,), (1.0,), activation="sigmoidish")
    with pytest.raises(
        ValueError, match=r"action bounds must have 2 entries, got \(-1.0,\), \(1.0,\)"
    ):
        cls(OBS_SIZE, 2, (-1.0,), (1.0,))
    with pytest.raises(ValueError, match="must have 1 entries"):
        cls(OBS_SIZE, 1, (-1.0, -1.0), (1.0, 1.0))
    with pytest.raises(ValueError, match="low < high"):
        cls(OBS_SIZE, 1, (1.0,), (-1.0,))


def test_for_dynamics_takes_the_action_bounds_of_the_task():
    task = envs.make("pendulum")
    for cls in (DeterministicPolicy, GaussianPolicy, TanhGaussianPolicy):
        policy = cls.for_dynamics(task, hidden=HIDDEN)
        assert (policy.action_low, policy.action_high) == ((-2.0,), (2.0,))
        assert (policy.observation_size, policy.action_size) == (3, 1)
        assert policy.hidden == HIDDEN
