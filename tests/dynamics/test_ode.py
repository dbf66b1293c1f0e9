"""mbpo.dynamics.ode: fixed steps called directly equal diffrax's diffeqsolve."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo.dynamics import ODESolver


def forced_pendulum(t, x, u, params):
    """A non-autonomous field (the forcing depends on t), so that each substep's times matter."""
    theta, omega = x
    g, drive = params
    return jnp.stack([omega, -g * jnp.sin(theta) + u[0] + drive * jnp.cos(7.0 * t)])


X = np.array([0.4, -1.3])
U = np.array([0.7])
PARAMS = (np.float64(9.81), np.float64(2.0))


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), diffrax.Euler(), diffrax.Heun()])
@pytest.mark.parametrize("substeps", [1, 3])
def test_stepped_solve_equals_diffeqsolve_in_value_and_gradient(x64, solver, substeps):
    ode = ODESolver(dt=0.1, substeps=substeps, solver=solver)
    term = diffrax.ODETerm(lambda t, y, args: forced_pendulum(t, y, args[0], args[1]))

    def stepped(x, u, params):
        return ode._stepped(term, x, (u, params))

    def solved(x, u, params):
        return ode._solved(term, x, (u, params))

    np.testing.assert_allclose(stepped(X, U, PARAMS), solved(X, U, PARAMS), rtol=1e-13)
    for argnum in range(3):
        want = jax.jacrev(solved, argnums=argnum)(X, U, PARAMS)
        got = jax.jacrev(stepped, argnums=argnum)(X, U, PARAMS)
        for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


def test_backpropagating_adjoints_step_directly_and_the_others_solve(monkeypatch):
    """The recursive-checkpoint (default) and direct adjoints take the direct steps; an adjoint
    that solves something else backwards (BacksolveAdjoint) keeps diffeqsolve."""
    called = []
    monkeypatch.setattr(ODESolver, "_stepped", lambda self, *a: called.append("stepped") or a[1])
    monkeypatch.setattr(ODESolver, "_solved", lambda self, *a: called.append("solved") or a[1])
    for adjoint in (
        diffrax.RecursiveCheckpointAdjoint(),
        diffrax.DirectAdjoint(),
        diffrax.BacksolveAdjoint(),
    ):
        ODESolver(adjoint=adjoint).integrate(forced_pendulum, X, U, PARAMS)
    assert called == ["stepped", "stepped", "solved"]


@pytest.mark.parametrize("substeps", [1, 4])
def test_stepped_solve_keeps_the_state_in_single_precision(substeps):
    x = jnp.asarray(X, jnp.float32)
    out = ODESolver(substeps=substeps).integrate(forced_pendulum, x, jnp.asarray(U), (9.81, 2.0))
    assert out.dtype == jnp.float32 and out.shape == (2,)
