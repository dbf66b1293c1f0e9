"""Estimator configurations and their input checks (the engine itself: tests/test_unroll.py)."""

import jax
import jax.numpy as jnp
import pytest

import envs
from mbpo import estimators
from mbpo.estimators import Estimator
from mbpo.unroll import RolloutNoise
from tests.test_unroll import _counter_task, _policy

pytestmark = pytest.mark.usefixtures("x64")
GAMMA = 0.9


@pytest.mark.parametrize(
    "estimator, name, horizon, dynamics_gradient, policy, bootstrap, steps",
    [
        (estimators.make("svg", 5), "svg(5)", 5, "pathwise", "stochastic", True, 5),
        (estimators.make("svg"), "svg(inf)", None, "pathwise", "stochastic", False, 40),
        (estimators.svg(0), "svg(0)", 0, "pathwise", "stochastic", True, 0),
        (estimators.bpo(), "bpo", None, "pathwise", "deterministic", False, 40),
        (estimators.make("bpo"), "bpo", None, "pathwise", "deterministic", False, 40),
        (estimators.dpmb_sf(3), "dpmb-sf(3)", 3, "score", "deterministic", True, 3),
        (estimators.make("dpmb_r", 2), "dpmb-r(2)", 2, "pathwise", "deterministic", True, 2),
        (estimators.critic_only(4), "critic-only(4)", 4, "stop", "any", True, 4),
    ],
)
def test_configurations(estimator, name, horizon, dynamics_gradient, policy, bootstrap, steps):
    assert estimator.name == name
    assert estimator.horizon == horizon
    assert estimator.dynamics_gradient == dynamics_gradient
    assert estimator.policy == policy
    assert estimator.bootstrap is bootstrap
    assert estimator.num_steps(40) == steps


def test_make_equals_the_factories():
    assert estimators.make("dpmb_sf", 3) == estimators.dpmb_sf(3)
    assert estimators.make("svg", 5) == estimators.svg(5)
    assert estimators.make("critic_only", 1) == estimators.critic_only(1)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: estimators.svg(-1), "horizon must be an int >= 0 or None.*got -1"),
        (lambda: estimators.make("dpmb_r", 2.5), "horizon must be an int >= 0 or None.*got 2.5"),
        (lambda: estimators.svg(True), "got True"),
        (
            lambda: estimators.make("ppo", 3),
            "unknown estimator 'ppo'; known: bpo, svg, dpmb_r, dpmb_sf, critic_only",
        ),
        (
            lambda: Estimator("x", 1, "reinforce"),
            "unknown dynamics_gradient 'reinforce'; allowed: pathwise, stop, score",
        ),
        (lambda: Estimator("x", 1, "pathwise", "greedy"), "unknown policy kind 'greedy'"),
        (lambda: estimators.dpmb_sf(None), "needs a critic.*got horizon=None"),
        (lambda: estimators.make("dpmb_sf"), "needs a critic.*got horizon=None"),
    ],
)
def test_bad_configuration_raises(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_check_policy():
    estimators.dpmb_sf(1).check_policy(deterministic=True)
    estimators.svg(1).check_policy(deterministic=False)
    estimators.critic_only(1).check_policy(deterministic=True)
    estimators.critic_only(1).check_policy(deterministic=False)
    with pytest.raises(
        ValueError, match=r"bpo is defined for a deterministic policy, got a stochastic one"
    ):
        estimators.bpo().check_policy(deterministic=False)
    with pytest.raises(
        ValueError, match=r"svg\(2\) is defined for a stochastic policy, got a deterministic one"
    ):
        estimators.svg(2).check_policy(deterministic=True)


def test_draw_noise_has_the_lengths_the_estimator_needs():
    task = envs.make("hybrid")

    def shapes(estimator, eps_shape, batch):
        noise = jax.eval_shape(
            lambda k: estimators.draw_noise(estimator, task, k, eps_shape, 20, batch),
            jax.random.key(0),
        )
        return noise.eps.shape, noise.xi.shape

    assert shapes(estimators.dpmb_sf(3), (0,), 4) == (
        (4, 4, 0),
        (4, 3, 3),
    )  # eps_3 draws the bootstrap action
    assert shapes(estimators.bpo(), (0,), 2) == ((2, 20, 0), (2, 20, 3))
    assert shapes(estimators.svg(0), (1,), 2) == ((2, 1, 1), (2, 0, 3))


def test_surrogate_needs_q_for_a_bootstrapping_estimator():
    task = _counter_task()
    states = jax.vmap(task.reset)(jax.random.split(jax.random.key(0), 2))
    noise = RolloutNoise(eps=jnp.zeros((2, 2, 0)), xi=jnp.zeros((2, 1, 0)))
    with pytest.raises(ValueError, match=r"dpmb-r\(1\) bootstraps with a critic: pass q"):
        estimators.surrogate(estimators.dpmb_r(1), task, _policy(0.5), states, noise, gamma=GAMMA)
