"""A hybrid continuous/discrete task whose categorical transition is known and differentiable in a.

State s = (x, m): x in R^2 and a mode m in {0, 1, 2}, stored as the vector (x_0, x_1, m). With the
action a in [-1, 1]:

    p(m' = k | x, a) = softmax(L [x; a] + b)_k,
    x' = A_{m'} x + B a + sigma z,    z ~ N(0, I),
    r(s, a, s') = bonus_{m'} - |x'|^2 - 0.1 |a|^2.

The mode is drawn by inverse CDF from u = Phi(xi_0) with xi ~ N(0, I) of shape (3,): a
reparameterized path through it has zero derivative almost everywhere, so the reparameterized
estimator misses the d p(m'|x, a)/da term, while a score-function estimator through ``log_prob``
(DPMB-SF) captures it. Observation: (x, one_hot(m)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mbpo.dynamics import FunctionDynamics, make_function_dynamics

NUM_MODES = 3


def default_params() -> dict:
    return {
        "L": jnp.array([[0.5, 0.0, 2.0], [0.0, 0.5, 0.0], [-0.5, 0.0, -2.0]]),
        "b": jnp.zeros(NUM_MODES),
        "A": jnp.stack([0.9 * jnp.eye(2), jnp.array([[0.8, -0.3], [0.3, 0.8]]), 1.05 * jnp.eye(2)]),
        "B": jnp.array([[0.2], [0.1]]),
        "bonus": jnp.array([1.0, 0.0, -1.0]),
        "sigma": 0.05,
    }


def mode_logits(x, a, params):
    return params["L"] @ jnp.concatenate([x, a]) + params["b"]


def mode_probs(s, a, params):
    """p(m' | s, a) for every m', shape (NUM_MODES,)."""
    return jax.nn.softmax(mode_logits(s[:2], a, params))


def next_x_mean(s, a, mode, params):
    A = params["A"][mode]
    return A @ s[:2] + params["B"] @ a


def transition(s, a, xi, params):
    cdf = jnp.cumsum(mode_probs(s, a, params))
    u = jax.scipy.stats.norm.cdf(xi[0])
    mode = jnp.minimum(jnp.sum(u > cdf), NUM_MODES - 1)
    x_next = next_x_mean(s, a, mode, params) + params["sigma"] * xi[1:]
    return jnp.concatenate([x_next, mode[None].astype(s.dtype)])


def reward(s, a, s_next, params):
    mode = s_next[2].astype(jnp.int32)
    return params["bonus"][mode] - jnp.sum(s_next[:2] ** 2) - 0.1 * jnp.sum(a**2)


def log_prob(s, a, s_next, params):
    """log p(s'|s, a) = log p(m'|x, a) + log N(x'; A_{m'} x + B a, sigma^2 I)."""
    mode = s_next[2].astype(jnp.int32)
    log_p_mode = jax.nn.log_softmax(mode_logits(s[:2], a, params))[mode]
    z = (s_next[:2] - next_x_mean(s, a, mode, params)) / params["sigma"]
    return log_p_mode + jnp.sum(-0.5 * z**2 - jnp.log(params["sigma"]) - 0.5 * jnp.log(2 * jnp.pi))


def observation(s):
    return jnp.concatenate(
        [s[:2], jax.nn.one_hot(s[2].astype(jnp.int32), NUM_MODES, dtype=s.dtype)]
    )


def reset(key):
    x = 0.5 * jax.random.normal(key, (2,))
    return jnp.concatenate([x, jnp.zeros((1,), x.dtype)])


def make(**overrides) -> FunctionDynamics:
    """The hybrid task; keyword arguments override entries of :func:`default_params`."""
    params = default_params()
    unknown = set(overrides) - set(params)
    if unknown:
        raise ValueError(f"unknown hybrid parameters {sorted(unknown)}; allowed: {sorted(params)}")
    params.update({k: jnp.asarray(v) for k, v in overrides.items()})
    if not np.all(np.asarray(params["sigma"]) > 0):
        raise ValueError(f"sigma must be > 0, got {params['sigma']}")
    return make_function_dynamics(
        transition=transition,
        reward=reward,
        reset=reset,
        action_size=1,
        params=params,
        noise_shape=(3,),
        observation=observation,
        log_prob=log_prob,
        name="hybrid",
    )
