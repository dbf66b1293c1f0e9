"""Cart-pole swing-up as a diffrax ODE (Barto, Sutton & Anderson 1983 equations; theta = 0 upright).

State x = (position, velocity, theta, omega); the pole starts hanging down (theta ~ pi). The force
is F = max_force * u with u in [-1, 1]. Reward, smooth everywhere:
r = -(2 (1 - cos theta) + 0.1 position^2 + 0.01 velocity^2 + 0.01 omega^2 + 0.01 u^2).
Observation: (position, velocity, cos theta, sin theta, omega).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbpo.dynamics import FunctionDynamics, ODESolver, from_ode


def vector_field(t, x, u, params):
    _, vel, theta, omega = x[0], x[1], x[2], x[3]
    force = params["max_force"] * jnp.clip(u[0], -1.0, 1.0)
    total_mass = params["m_cart"] + params["m_pole"]
    polemass_length = params["m_pole"] * params["l"]
    sin, cos = jnp.sin(theta), jnp.cos(theta)
    temp = (force + polemass_length * omega**2 * sin) / total_mass
    alpha = (params["g"] * sin - cos * temp) / (
        params["l"] * (4.0 / 3.0 - params["m_pole"] * cos**2 / total_mass)
    )
    acc = temp - polemass_length * alpha * cos / total_mass
    return jnp.stack([vel, acc, omega, alpha])


def reward(x, u, x_next):
    pos, vel, theta, omega = x[0], x[1], x[2], x[3]
    return -(
        2 * (1 - jnp.cos(theta))
        + 0.1 * pos**2
        + 0.01 * vel**2
        + 0.01 * omega**2
        + 0.01 * jnp.sum(u**2)
    )


def observation(x):
    return jnp.stack([x[0], x[1], jnp.cos(x[2]), jnp.sin(x[2]), x[3]])


def reset(key):
    return jnp.array([0.0, 0.0, jnp.pi, 0.0]) + 0.05 * jax.random.normal(key, (4,))


def make(
    *,
    dt: float | None = None,
    substeps: int | None = None,
    g: float = 9.8,
    m_cart: float = 1.0,
    m_pole: float = 0.1,
    l: float = 0.5,  # noqa: E741 (half the pole's length)
    max_force: float = 10.0,
    noise_std: float | None = None,
    solver: ODESolver | None = None,
) -> FunctionDynamics:
    """Cart-pole swing-up; ``noise_std`` adds Gaussian process noise (and a ``log_prob``). Its
    integration: ``dt`` (default 0.05) and ``substeps`` (default 2) of Tsit5, or a whole
    ``solver`` (then neither of the two)."""
    return from_ode(
        vector_field,
        reward,
        reset,
        action_size=1,
        params={"g": g, "m_cart": m_cart, "m_pole": m_pole, "l": l, "max_force": max_force},
        solver=ODESolver(dt=0.05, substeps=2).or_given(solver, dt=dt, substeps=substeps),
        noise_std=noise_std,
        observation=observation,
        name="cartpole",
    )
