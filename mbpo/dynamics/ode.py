"""Continuous-time dynamics dx/dt = f(t, x, u, params), integrated over one control interval by
diffrax.

The action u is held constant over the interval [0, dt] (zero-order hold), which is split into
``substeps`` fixed steps of the chosen solver. Optional reparameterized Gaussian process noise,

    x_{t+1} = Phi_dt(x_t, u_t) + noise_std * xi_t,    xi_t ~ N(0, I),

gives the transition a known density, so score-function estimators through the dynamics apply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Unpack

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from mbpo.cli import check_int
from mbpo.dynamics.function import (
    FunctionDynamics,
    Options,
    make_function_dynamics,
    options_with,
    without_params,
)
from mbpo.types import Action, Array, Params, PRNGKey, Scalar

VectorField = Callable[[Array, Array, Action, Params], Array]


@dataclasses.dataclass(frozen=True)
class ODESolver:
    """How one control interval is integrated (diffrax style: the method is an object passed in).

    Attributes:
      dt: length of one control interval (the time between two actions), > 0.
      substeps: number of solver steps per control interval, >= 1.
      solver: a diffrax solver used with fixed steps; explicit Runge-Kutta methods such as
        ``diffrax.Tsit5()``, ``diffrax.Heun()`` or ``diffrax.Euler()``.
      adjoint: how gradients flow through the solve. ``RecursiveCheckpointAdjoint`` (exact
        backpropagation through the solver's operations) is the default; ``DirectAdjoint`` also
        supports forward mode; ``BacksolveAdjoint`` solves the continuous adjoint ODE backwards.
        With the first two the fixed steps are the solver's ``step`` called directly (the same
        values and gradients as ``diffrax.diffeqsolve``, without its while loop: a pendulum
        update traces in about 40% and compiles in about 85% of the time); with any other
        adjoint the interval is ``diffeqsolve``'s.
    """

    dt: float = 0.05
    substeps: int = 1
    solver: diffrax.AbstractSolver = dataclasses.field(default_factory=diffrax.Tsit5)
    adjoint: diffrax.AbstractAdjoint = dataclasses.field(
        default_factory=diffrax.RecursiveCheckpointAdjoint
    )

    def __post_init__(self):
        if not (isinstance(self.dt, (int, float)) and self.dt > 0 and np.isfinite(self.dt)):
            raise ValueError(f"dt must be a positive finite number, got {self.dt!r}")
        check_int("substeps", self.substeps)
        if not isinstance(self.solver, diffrax.AbstractSolver):
            raise TypeError(
                f"solver must be a diffrax solver such as diffrax.Tsit5(), got {self.solver!r}"
            )
        if not isinstance(self.adjoint, diffrax.AbstractAdjoint):
            raise TypeError(
                "adjoint must be a diffrax adjoint such as diffrax.RecursiveCheckpointAdjoint(), "
                f"got {self.adjoint!r}"
            )

    def or_given(self, solver: ODESolver | None, **steps: float | int | None) -> ODESolver:
        """``solver``, or this solver (a task's default) with the ``dt`` and ``substeps`` of
        ``steps`` that are not None: how a task takes either. Raises ValueError when ``solver``
        comes with a dt or substeps, which it would silently override."""
        given = {name: value for name, value in steps.items() if value is not None}
        if solver is None:
            return dataclasses.replace(self, **given)
        if given:
            raise ValueError(
                f"give a solver or {' and '.join(given)}, not both: the solver has its own "
                f"(dt={solver.dt}, substeps={solver.substeps})"
            )
        return solver

    def integrate(self, vector_field: VectorField, x: Array, u: Action, params: Params) -> Array:
        """Phi_dt(x, u): the state after one control interval with u held constant."""
        term = diffrax.ODETerm(lambda t, y, args: vector_field(t, y, args[0], args[1]))
        if isinstance(self.adjoint, _STEPPED_ADJOINTS):
            return self._stepped(term, x, (u, params))
        return self._solved(term, x, (u, params))

    def _stepped(self, term: diffrax.ODETerm, x: Array, args) -> Array:
        """The ``substeps`` solver steps called directly: what ``diffeqsolve`` computes with a
        constant step size, without its adaptive-step while loop (checkpointed for the reverse
        pass), which at a handful of fixed steps costs most of a rollout's tracing and compile
        time. Backpropagating through the steps' operations is what the recursive-checkpoint
        and direct adjoints do; tests/dynamics/test_ode.py checks values and gradients against
        ``diffeqsolve``."""
        x = jnp.asarray(x)
        times = [self.dt * k / self.substeps for k in range(self.substeps)] + [self.dt]
        state = self.solver.init(term, times[0], times[1], x, args)

        def substep(carry, t):
            y, state = carry
            y, _, _, state, _ = self.solver.step(term, t[0], t[1], y, args, state, False)
            return (y, state), None

        if self.substeps == 1:
            return substep((x, state), times)[0][0]
        # The times in the state's precision, as Python floats are in the single step.
        dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else float
        pairs = jnp.asarray(np.stack([times[:-1], times[1:]], axis=1), dtype=dtype)
        return jax.lax.scan(substep, (x, state), pairs)[0][0]

    def _solved(self, term: diffrax.ODETerm, x: Array, args) -> Array:
        """``diffeqsolve`` with constant steps (the adjoints other than backpropagation through
        the steps, such as ``BacksolveAdjoint``, need it)."""
        sol = diffrax.diffeqsolve(
            term,
            self.solver,
            t0=0.0,
            t1=self.dt,
            # diffrax snaps a last step that lands within rounding of t1 onto t1, so this takes
            # exactly `substeps` steps (tests/dynamics/test_interface.py).
            dt0=self.dt / self.substeps,
            y0=x,
            args=args,
            stepsize_controller=diffrax.ConstantStepSize(),
            saveat=diffrax.SaveAt(t1=True),
            adjoint=self.adjoint,
            max_steps=self.substeps,
            # Fixed steps cannot fail, and the error check would cost a host round trip per step.
            throw=False,
        )
        return sol.ys[-1]


# Adjoints that backpropagate through the solver's own operations: with fixed steps the solve
# is those steps called directly (ODESolver._stepped), whatever the adjoint's memory strategy.
_STEPPED_ADJOINTS = (diffrax.RecursiveCheckpointAdjoint, diffrax.DirectAdjoint)


def from_ode(
    vector_field: VectorField,
    reward: Callable[[Array, Action, Array], Scalar],
    reset: Callable[[PRNGKey], Array],
    *,
    action_size: int,
    params: Params = None,
    solver: ODESolver = ODESolver(),
    noise_std: float | Array | None = None,
    **options: Unpack[Options],
) -> FunctionDynamics:
    """Dynamics from a vector field ``f(t, x, u, params)`` integrated by diffrax.

    Args:
      vector_field: ``(t, x, u, params) -> dx/dt`` with the shape of ``x``.
      reward: ``(x, u, x_next) -> r``.
      reset: ``key -> x_0``.
      action_size: size of ``u``.
      params: pytree of physical parameters, passed to ``vector_field`` (a pytree leaf of the
        returned dynamics, so it can be differentiated or vmapped).
      solver: an :class:`ODESolver` (dt, substeps, diffrax solver, adjoint).
      noise_std: None for deterministic dynamics; else the standard deviation (scalar or per
        state component, > 0) of the additive Gaussian process noise after each interval.
      action_low, action_high: action bounds.
      observation: ``x -> obs``; identity by default.
      done: ``x -> {0., 1.}``; never done by default.
      name: a label for logs ("ode").

    Returns:
      A validated :class:`FunctionDynamics`; with ``noise_std`` it also has ``log_prob``.

    Raises:
      ValueError: if the vector field's output shape differs from the state's (checked with
        ``jax.eval_shape``, before anything is compiled).
    """
    x0 = _check_vector_field(vector_field, reset, action_size, params)
    integrate = solver.integrate
    common = dict(
        reward=without_params(reward),
        reset=reset,
        action_size=action_size,
        params=params,
        transition_name="vector_field",
        **options_with(options, name="ode", builder="from_ode"),
    )
    if noise_std is None:
        return make_function_dynamics(
            transition=lambda x, u, xi, p: integrate(vector_field, x, u, p),
            noise_shape=(0,),
            **common,
        )
    transition, infer_noise, log_prob = _additive_gaussian(
        integrate, vector_field, noise_std, x0.shape
    )
    return make_function_dynamics(
        transition=transition,
        noise_shape=tuple(x0.shape),
        log_prob=log_prob,
        infer_noise=infer_noise,
        **common,
    )


def _check_vector_field(
    vector_field: VectorField, reset, action_size: int, params
) -> jax.ShapeDtypeStruct:
    """The state's shape and dtype from ``reset``; a vector field whose output has another shape
    is refused (``jax.eval_shape``: nothing is compiled)."""
    x0 = jax.eval_shape(reset, jax.random.key(0))
    u0 = jax.ShapeDtypeStruct((int(action_size),), x0.dtype)
    dx = jax.eval_shape(vector_field, jax.ShapeDtypeStruct((), x0.dtype), x0, u0, params)
    if getattr(dx, "shape", None) != x0.shape:
        raise ValueError(
            f"vector_field(t, x, u, params) returned shape {getattr(dx, 'shape', dx)}, but the "
            "state "
            f"x from reset has shape {x0.shape}: dx/dt must have the shape of x"
        )
    return x0


def _additive_gaussian(integrate, vector_field: VectorField, noise_std, shape: tuple[int, ...]):
    """(transition, infer_noise, log_prob) of x' = Phi_dt(x, u) + noise_std xi, xi ~ N(0, I)."""
    std = np.broadcast_to(np.asarray(noise_std, float), shape)
    if not np.all(std > 0):
        raise ValueError(
            f"noise_std must be > 0 (or None for deterministic dynamics), got {noise_std!r}"
        )
    std = tuple(std.tolist())

    def transition(x, u, xi, p):
        return integrate(vector_field, x, u, p) + jnp.asarray(std, x.dtype) * xi

    def infer_noise(x, u, x_next, p):
        """xi = (x' - Phi_dt(x, u)) / noise_std, the inverse of ``transition``."""
        return (x_next - integrate(vector_field, x, u, p)) / jnp.asarray(std, x.dtype)

    def log_prob(x, u, x_next, p):
        z = infer_noise(x, u, x_next, p)
        return jnp.sum(-0.5 * z**2 - jnp.log(jnp.asarray(std, x.dtype)) - 0.5 * jnp.log(2 * jnp.pi))

    return transition, infer_noise, log_prob
