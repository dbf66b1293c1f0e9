"""Pendulum swing-up as a diffrax ODE (theta = 0 is upright, as in Gym's Pendulum-v1).

    d theta / dt = omega,    d omega / dt = 3 g / (2 l) sin(theta) + 3 / (m l^2) u,

with the torque u saturated at ``max_torque`` and, as Gym's ``max_speed``, no acceleration that
would take |omega| past ``max_speed`` (8 rad/s; None: unbounded). Without the limit a policy
that keeps pushing spins the pendulum ever faster and its cost grows without bound (episode returns
below -8000; with the limit no 200-step episode scores below about -2100), which made TD3 diverge.
The
reward is the smooth version of Gym's cost,
r = -(2 (1 - cos theta) + 0.1 omega^2 + 0.001 u^2) (2 (1 - cos theta) ~ theta^2 near upright),
so it is differentiable everywhere. Observation: (cos theta, sin theta, omega).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbpo.dynamics import FunctionDynamics, ODESolver, from_ode


def vector_field(t, x, u, params):
    theta, omega = x[0], x[1]
    torque = jnp.clip(u[0], -params["max_torque"], params["max_torque"])
    domega = (
        3 * params["g"] / (2 * params["l"]) * jnp.sin(theta)
        + 3.0 / (params["m"] * params["l"] ** 2) * torque
    )
    outward = (jnp.abs(omega) >= params["max_speed"]) & (domega * omega > 0)  # Gym's speed limit
    return jnp.stack([omega, jnp.where(outward, jnp.zeros_like(domega), domega)])


def reward(x, u, x_next):
    return -(2 * (1 - jnp.cos(x[0])) + 0.1 * x[1] ** 2 + 0.001 * jnp.sum(u**2))


def observation(x):
    return jnp.stack([jnp.cos(x[0]), jnp.sin(x[0]), x[1]])


def reset(key):
    k1, k2 = jax.random.split(key)
    return jnp.stack(
        [
            jax.random.uniform(k1, minval=-jnp.pi, maxval=jnp.pi),
            jax.random.uniform(k2, minval=-1.0, maxval=1.0),
        ]
    )


def make(
    *,
    dt: float | None = None,
    substeps: int | None = None,
    g: float = 10.0,
    m: float = 1.0,
    l: float = 1.0,  # noqa: E741 (the pendulum's length)
    max_torque: float = 2.0,
    max_speed: float | None = 8.0,
    noise_std: float | None = None,
    solver: ODESolver | None = None,
) -> FunctionDynamics:
    """Pendulum swing-up; ``noise_std`` adds Gaussian process noise (and a ``log_prob``). Its
    integration: ``dt`` (default 0.05) and ``substeps`` (default 1) of Tsit5, or a whole
    ``solver`` (then neither of the two)."""
    return from_ode(
        vector_field,
        reward,
        reset,
        action_size=1,
        params={
            "g": g,
            "m": m,
            "l": l,
            "max_torque": max_torque,
            "max_speed": float("inf") if max_speed is None else max_speed,
        },
        solver=ODESolver(dt=0.05, substeps=1).or_given(solver, dt=dt, substeps=substeps),
        noise_std=noise_std,
        action_low=-max_torque,
        action_high=max_torque,
        observation=observation,
        name="pendulum",
    )
