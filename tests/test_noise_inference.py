"""Noise inference: eps and xi recovered from replayed transitions, batched (float64)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from mbpo.dynamics import from_function
from mbpo.flows import FlowPolicy
from mbpo.noise_inference import infer_dynamics_noise, infer_policy_noise, infer_transition_noise
from mbpo.policies import DeterministicPolicy, GaussianPolicy, TanhGaussianPolicy
from tests.test_flows import init_f64, residual_dynamics

pytestmark = pytest.mark.usefixtures("x64")
OBS_SIZE = 3
LOW, HIGH = (-1.0, 0.0), (1.0, 4.0)
BATCH = (4, 3)  # two leading axes: a (time, batch) slab of a replay buffer
# Each test program runs once: compiling it unoptimized halves the time to compile.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

POLICIES = {
    "deterministic": DeterministicPolicy(OBS_SIZE, 2, LOW, HIGH, hidden=(8,)),
    "gaussian": GaussianPolicy(
        OBS_SIZE, 2, (-math.inf,) * 2, (math.inf,) * 2, hidden=(8,), state_dependent_std=True
    ),
    "tanh_gaussian": TanhGaussianPolicy(OBS_SIZE, 2, LOW, HIGH, hidden=(8,)),
    "flow": FlowPolicy(
        OBS_SIZE, 2, LOW, HIGH, hidden=(8,), kinds=("spline", "coupling"), init_scale=1.0
    ),
}


def _normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape))


@pytest.mark.parametrize("name", list(POLICIES))
def test_policy_noise_is_recovered_from_sampled_actions(name):
    policy = POLICIES[name]
    params = init_f64(policy, 0)
    obs = _normal(1, (*BATCH, OBS_SIZE))
    eps = jnp.clip(_normal(2, (*BATCH, *policy.eps_shape), 1.5), -3.0, 3.0)  # no saturation of tanh
    action = _jit(jax.vmap(jax.vmap(policy.sample, (None, 0, 0)), (None, 0, 0)))(params, obs, eps)
    recovered = _jit(infer_policy_noise, static_argnums=0)(policy, params, obs, action)
    assert recovered.shape == eps.shape == (*BATCH, *policy.eps_shape)
    np.testing.assert_allclose(recovered, eps, atol=1e-8)


def test_policy_noise_of_one_unbatched_transition():
    policy = POLICIES["gaussian"]
    params = init_f64(policy, 0)
    obs, eps = _normal(1, (OBS_SIZE,)), _normal(2, (2,))
    action = policy.sample(params, obs, eps)
    np.testing.assert_allclose(infer_policy_noise(policy, params, obs, action), eps, atol=1e-10)
    # eps = (a - d(s; w)) / sigma(s; w), the equation of the reference text.
    want = (action - policy.mean(params, obs)) / policy.std(params, obs)
    np.testing.assert_allclose(infer_policy_noise(policy, params, obs, action), want, rtol=1e-12)


DYNAMICS = {
    "flow_dynamics": residual_dynamics,
    "pendulum": lambda: envs.make("pendulum", noise_std=0.1),
}


def _transitions(dynamics, seed):
    """A BATCH of (s, a, xi, s') from ``dynamics``, every leaf with leading axes BATCH."""
    key_s, key_xi = jax.random.split(jax.random.key(seed))
    states = _jit(jax.vmap(dynamics.reset))(jax.random.split(key_s, math.prod(BATCH)))
    low, high = dynamics.action_bounds
    action = jnp.asarray(
        np.random.default_rng(seed).uniform(low, high, (math.prod(BATCH), dynamics.action_size))
    )
    xi = jax.random.normal(key_xi, (math.prod(BATCH), *dynamics.noise_shape))
    next_states = _jit(jax.vmap(type(dynamics).step, (None, 0, 0, 0)))(dynamics, states, action, xi)
    return jax.tree.map(
        lambda v: v.reshape(*BATCH, *v.shape[1:]), (states, action, xi, next_states)
    )


@pytest.mark.parametrize("name", list(DYNAMICS))
def test_dynamics_noise_is_recovered_from_observed_transitions(name):
    dynamics = DYNAMICS[name]()
    state, action, xi, next_state = _transitions(dynamics, 0)
    recovered = _jit(infer_dynamics_noise)(dynamics, state, action, next_state)
    assert recovered.shape == (*BATCH, *dynamics.noise_shape)
    np.testing.assert_allclose(recovered, xi, atol=1e-8)


def test_transition_noise_is_both_noises():
    dynamics = residual_dynamics()
    policy = FlowPolicy.for_dynamics(dynamics, hidden=(8,), init_scale=1.0)
    params = init_f64(policy, 1)
    state, _, xi, _ = _transitions(dynamics, 1)
    eps = _normal(3, (*BATCH, 1))
    action = _jit(jax.vmap(jax.vmap(policy.sample, (None, 0, 0)), (None, 0, 0)))(
        params, state.obs, eps
    )
    next_state = _jit(jax.vmap(jax.vmap(type(dynamics).step, (None, 0, 0, 0)), (None, 0, 0, 0)))(
        dynamics, state, action, xi
    )
    noise = _jit(infer_transition_noise, static_argnums=0)(
        policy, params, dynamics, state, action, next_state
    )
    np.testing.assert_allclose(noise.eps, eps, atol=1e-8)
    np.testing.assert_allclose(noise.xi, xi, atol=1e-8)


def test_dynamics_without_noise_inference_is_named():
    dynamics = from_function(
        lambda s, a, xi: s + jnp.tanh(xi),
        lambda s, a, s_next: 0.0,
        lambda key: jnp.zeros(2),
        action_size=1,
        noise_shape=(2,),
        name="tanh_noise",
    )
    state = dynamics.reset(jax.random.key(0))
    with pytest.raises(ValueError, match="FunctionDynamics 'tanh_noise' has no noise inference"):
        infer_dynamics_noise(dynamics, state, jnp.zeros(1), state)


def test_bad_shapes_raise_naming_the_shape():
    policy = POLICIES["gaussian"]
    params = init_f64(policy, 0)
    with pytest.raises(
        ValueError, match=r"action has shape \(4, 3\); GaussianPolicy expects shape \(\.\.\., 2\)"
    ):
        infer_policy_noise(policy, params, jnp.zeros((4, OBS_SIZE)), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"obs has shape \(5, 3\).*expects \(4, 3\)"):
        infer_policy_noise(policy, params, jnp.zeros((5, OBS_SIZE)), jnp.zeros((4, 2)))
