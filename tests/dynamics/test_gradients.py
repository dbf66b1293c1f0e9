"""Finite-difference checks (float64) of gradients through the dynamics interface."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from mbpo.unroll import open_loop
from tests.conftest import central_difference

pytestmark = pytest.mark.usefixtures("x64")

TASKS = ["pendulum", "cartpole", "lqr"]


def _setup(name, num_steps, seed=0):
    dynamics = envs.make(name)
    k_reset, k_act, k_xi = jax.random.split(jax.random.key(seed), 3)
    state = dynamics.reset(k_reset)
    # Stay inside the action box so the actuator saturation (a kink) is never hit.
    actions = 0.5 * jax.random.uniform(
        k_act, (num_steps, dynamics.action_size), minval=-1, maxval=1
    )
    xi = jax.vmap(dynamics.sample_noise)(jax.random.split(k_xi, num_steps))
    return dynamics, state, actions, xi


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("num_steps", [1, 20])
def test_return_gradient_wrt_actions_matches_finite_differences(name, num_steps):
    dynamics, state, actions, xi = _setup(name, num_steps)

    @jax.jit
    def total_reward(a):
        _, traj = open_loop(dynamics, state, a, xi)
        return jnp.sum(traj.reward)

    grad = np.asarray(jax.grad(total_reward)(actions))
    fd = central_difference(total_reward, np.asarray(actions))
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("num_steps", [1, 20])
def test_final_state_jacobian_wrt_initial_state_matches_finite_differences(name, num_steps):
    dynamics, state, actions, xi = _setup(name, num_steps, seed=1)

    @jax.jit
    def final_state(x0):
        final, _ = open_loop(dynamics, state.replace(x=x0), actions, xi)
        return final.x

    jac = np.asarray(jax.jacrev(final_state)(state.x))
    fd = central_difference(final_state, np.asarray(state.x))
    assert jac.shape == (state.x.shape[0], state.x.shape[0])
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(fd).max()))


@pytest.mark.slow
def test_ode_adjoints_agree():
    """RecursiveCheckpointAdjoint (default), DirectAdjoint and BacksolveAdjoint give the same
    gradient."""
    import diffrax

    from mbpo.dynamics import ODESolver

    grads = []
    for adjoint in (
        diffrax.RecursiveCheckpointAdjoint(),
        diffrax.DirectAdjoint(),
        diffrax.BacksolveAdjoint(),
    ):
        dynamics = envs.make("pendulum", solver=ODESolver(dt=0.05, substeps=4, adjoint=adjoint))
        state = dynamics.reset(jax.random.key(0))
        actions = 0.3 * jnp.ones((5, 1))
        xi = jnp.zeros((5, 0))

        def total(a, dynamics=dynamics, state=state, xi=xi):
            return jnp.sum(open_loop(dynamics, state, a, xi)[1].reward)

        grads.append(jax.jit(jax.grad(total))(actions))
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-10)
    np.testing.assert_allclose(grads[2], grads[0], rtol=1e-5)


def test_ode_solver_converges_to_fine_reference():
    """Euler converges at first order, and one Tsit5 step per interval is already accurate."""
    import diffrax

    from mbpo.dynamics import ODESolver

    def final(solver):
        dynamics = envs.make("pendulum", solver=solver)
        state = dynamics.reset(jax.random.key(3))
        return open_loop(dynamics, state, 0.5 * jnp.ones((40, 1)), jnp.zeros((40, 0)))[0].x

    reference = final(ODESolver(dt=0.05, substeps=32))
    errors = [
        np.abs(final(ODESolver(dt=0.05, substeps=k, solver=diffrax.Euler())) - reference).max()
        for k in (8, 16)
    ]
    # Euler is first order: halving the step halves the error.
    assert 1.7 < errors[0] / errors[1] < 2.3
    assert np.abs(final(ODESolver(dt=0.05, substeps=1)) - reference).max() < 1e-5
