"""DPMB-SF against exact enumeration of the discrete mode on the hybrid task (float64).

With n = 1, a deterministic policy d(s; w), a fixed start state s_0 and a fixed critic q,

    J_1(w) = sum_{m'} p(m' | s_0, a_0) E_z[r(s_0, a_0, s_1) + gamma q(s_1, d(s_1; w))],
    a_0 = d(s_0; w),  s_1 = (A_{m'} x_0 + B a_0 + sigma z, m'),

so grad J_1 is the gradient of an exact sum over the three modes of a reparameterized Gaussian
expectation, estimated by Monte Carlo over z (with its own standard error). DPMB-SF (score function
through log p(s_1 | s_0, a_0)) is unbiased for it; the pathwise gradient misses d p(m' | s_0, a_0) /
da
and is biased. Statistical checks use combined standard errors (SE) of independent batches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import envs
from envs import hybrid
from mbpo.policies import DeterministicPolicy
from mbpo.unroll import RolloutNoise, unroll

GAMMA = 0.9
BATCH = 20_000
C = np.array([1.0, 0.0, -1.0])
X0 = np.array([0.3, -0.2, 0.0])  # x_0 = (0.3, -0.2), mode 0


@pytest.fixture(scope="module", autouse=True)
def x64_module():
    """float64 for the whole module: the gradient batches are computed once and shared."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def q(obs, a):
    """A fixed smooth critic: -|x|^2 + c . one_hot(m) - 0.1 |a|^2."""
    return -jnp.sum(obs[:2] ** 2) + jnp.asarray(C) @ obs[2:] - 0.1 * jnp.sum(a**2)


@pytest.fixture(scope="module")
def setup():
    task = envs.make("hybrid")
    policy = DeterministicPolicy.for_dynamics(task, hidden=(8,))
    params = jax.tree.map(
        lambda x: jnp.asarray(x, jnp.float64), jax.jit(policy.init)(jax.random.key(0))
    )
    x0 = jnp.asarray(X0)
    s0 = task.reset(jax.random.key(0)).replace(x=x0, obs=hybrid.observation(x0))
    return task, policy, params, s0


def _noise(xi):
    return RolloutNoise(eps=jnp.zeros((2, 0)), xi=xi[None])  # eps_0, eps_1 (bootstrap): none


def _surrogate(setup, dynamics_gradient):
    task, policy, _, s0 = setup
    return lambda w, xi: unroll(
        task,
        lambda o, e: policy.sample(w, o, e),
        s0,
        _noise(xi),
        gamma=GAMMA,
        q=q,
        dynamics_gradient=dynamics_gradient,
    )[0]


def _enumerated(setup):
    """(w, z) -> sum_{m'} p(m' | s_0, a_0) [r + gamma q(s_1, d(s_1; w))] at a draw z ~ N(0, I_2)"""
    task, policy, _, s0 = setup
    p = task.params

    def value(w, z):
        x0, a0 = s0.x, policy.mean(w, s0.obs)
        total = 0.0
        for m in range(hybrid.NUM_MODES):
            x1 = hybrid.next_x_mean(x0, a0, m, p) + p["sigma"] * z
            s1 = jnp.concatenate([x1, jnp.array([float(m)])])
            obs1 = hybrid.observation(s1)
            total += hybrid.mode_probs(x0, a0, p)[m] * (
                hybrid.reward(x0, a0, s1, p) + GAMMA * q(obs1, policy.mean(w, obs1))
            )
        return total

    return value


@pytest.fixture(scope="module")
def gradients(setup):
    """Mean and SE of per-sample gradients (flattened) for each method, from independent noise."""
    losses = {
        "enumeration": _enumerated(setup),
        "score": _surrogate(setup, "score"),
        "pathwise": _surrogate(setup, "pathwise"),
    }
    keys = dict(zip(losses, jax.random.split(jax.random.key(1), 3)))
    noise = {
        name: jax.random.normal(keys[name], (BATCH, 2 if name == "enumeration" else 3))
        for name in losses
    }

    # One program for the three (one compilation); w is an argument, not a closed-over constant,
    # which XLA would constant-fold into its broadcast over the batch.
    def flat_grads(loss, w, noise):
        return jax.vmap(lambda x: ravel_pytree(jax.grad(loss)(w, x))[0])(noise)

    @jax.jit
    def per_sample(w, noise):
        return {name: flat_grads(loss, w, noise[name]) for name, loss in losses.items()}

    grads = jax.tree.map(np.asarray, per_sample(setup[2], noise))
    return {name: (g.mean(0), g.std(0, ddof=1) / np.sqrt(BATCH)) for name, g in grads.items()}


def _z_scores(gradients, name):
    (want, se_want), (got, se_got) = gradients["enumeration"], gradients[name]
    return got - want, np.sqrt(se_want**2 + se_got**2)


def test_the_check_is_informative(gradients):
    want, se_want = gradients["enumeration"]
    norm = np.linalg.norm(want)
    assert norm > 1.0, norm
    for name in ("score", "pathwise"):
        _, se = _z_scores(gradients, name)
        assert se.max() < 0.05 * norm, (name, se.max(), norm)
    assert se_want.max() < 1e-3 * norm  # the enumeration is near-exact: its only noise is z


def test_dpmb_sf_agrees_with_enumeration_within_4_se(gradients):
    diff, se = _z_scores(gradients, "score")
    assert np.all(np.abs(diff) < 4 * se), (diff, se)


def test_pathwise_gradient_misses_the_mode_probability_term(gradients, setup):
    """Checked on the output bias b of d(s; w) = tanh(net(s) + b): d a_0 / d b = 1 - a_0^2 != 0."""
    diff, se = _z_scores(gradients, "pathwise")
    _, unravel = ravel_pytree(setup[2])
    i = int(unravel(jnp.arange(diff.size))["params"]["Dense_1"]["bias"][0])
    assert abs(diff[i]) > 6 * se[i], (
        f"pathwise - enumeration = {diff[i]:.4g}, combined SE {se[i]:.3g}"
    )
    assert abs(diff[i]) > 0.1 * np.linalg.norm(
        gradients["enumeration"][0]
    )  # a large bias, not a nuance


def test_score_surrogate_has_the_pathwise_value(setup):
    xi = jax.random.normal(jax.random.key(2), (3,))
    values = jax.jit(
        lambda w: (_surrogate(setup, "score")(w, xi), _surrogate(setup, "pathwise")(w, xi))
    )
    score, pathwise = values(setup[2])
    np.testing.assert_allclose(score, pathwise, rtol=1e-14)
    assert float(pathwise) != 0.0


def test_score_needs_a_dynamics_with_log_prob():
    task = envs.make("pendulum")
    assert not task.has_log_prob
    noise = RolloutNoise(eps=jnp.zeros((2, 0)), xi=jnp.zeros((1, *task.noise_shape)))
    with pytest.raises(
        ValueError, match="dynamics_gradient='score' needs a transition density.*has no log_prob"
    ):
        unroll(
            task,
            lambda o, e: jnp.zeros(1),
            task.reset(jax.random.key(0)),
            noise,
            gamma=GAMMA,
            q=lambda o, a: jnp.sum(a),
            dynamics_gradient="score",
        )
