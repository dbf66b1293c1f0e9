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


@pytest.mark.parametrize(
    ("solver", "substeps"), [(diffrax.Tsit5(), 1), (diffrax.Tsit5(), 3), (diffrax.Heun(), 3)]
)
def test_stepped_solve_equals_diffeqsolve_in_value_and_gradient(x64, solver, substeps):
    """Tsit5 (the default, first-same-as-last: its state carries a stage across substeps) and
    Heun, in value and in the Jacobians with respect to state, action and parameters."""
    ode = ODESolver(dt=0.1, substeps=substeps, solver=solver)
    term = diffrax.ODETerm(lambda t, y, args: forced_pendulum(t, y, args[0], args[1]))

    def value_and_jacobians(integrate):
        f = lambda x, u, params: integrate(term, x, (u, params))
        return jax.jit(lambda *a: (f(*a), jax.jacrev(f, argnums=(0, 1, 2))(*a)))(X, U, PARAMS)

    want = value_and_jacobians(ode._solved)
    got = value_and_jacobians(ode._stepped)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-13)
    for w, g in zip(jax.tree.leaves(want[1]), jax.tree.leaves(got[1]), strict=True):
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
