"""Brax tasks through the mbpo adapter (differentiable physics)."""

from __future__ import annotations

from mbpo.dynamics import BraxDynamics, from_brax

TASKS = (
    "inverted_pendulum",
    "inverted_double_pendulum",
    "reacher",
    "halfcheetah",
    "hopper",
    "walker2d",
    "ant",
)


def make(name: str, *, backend: str = "generalized", **env_kwargs) -> BraxDynamics:
    """The Brax environment ``name`` with physics ``backend`` (see ``mbpo.dynamics.BACKENDS``)."""
    return from_brax(name, backend=backend, **env_kwargs)
