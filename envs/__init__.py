"""The task registry: ``envs.make(name, **kwargs)`` and ``envs.names()``.

ODE tasks (pendulum, cartpole), closed-form tasks (lqr, hybrid) and Brax tasks share the
:class:`mbpo.dynamics.Dynamics` interface. Brax is imported only when a Brax task is made.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from envs import brax_tasks, cartpole, hybrid, lqr, pendulum
from mbpo.dynamics import Dynamics

_REGISTRY: dict[str, Callable[..., Dynamics]] = {
    "pendulum": pendulum.make,
    "cartpole": cartpole.make,
    "lqr": lqr.make,
    "hybrid": hybrid.make,
    **{name: functools.partial(brax_tasks.make, name) for name in brax_tasks.TASKS},
}


def names() -> tuple[str, ...]:
    """The registered task names."""
    return tuple(_REGISTRY)


def is_brax(name: str) -> bool:
    """Whether ``name`` is a Brax task (slow to compile: 20-40 s for a 10-step gradient on a CPU)."""
    return name in brax_tasks.TASKS


@functools.lru_cache(maxsize=None)
def has_log_prob(name: str) -> bool:
    """Whether the registered task ``name`` (default settings) has a transition density
    ``log_prob`` (what DPMB-SF needs). Brax tasks are deterministic and have none; the others are
    cheap to build and are asked."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown env {name!r}; known envs: {', '.join(names())}")
    return False if is_brax(name) else make(name).has_log_prob


def make(name: str, **kwargs) -> Dynamics:
    """Builds the task ``name``; kwargs go to its factory (for Brax tasks, e.g. ``backend=``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown env {name!r}; known envs: {', '.join(names())}")
    return _REGISTRY[name](**kwargs)
