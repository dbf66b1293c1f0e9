"""The task registry: ``envs.make(name, **kwargs)`` and ``envs.names()``.

ODE tasks (pendulum, cartpole), closed-form tasks (lqr, hybrid) and Brax tasks share the
:class:`mbpo.dynamics.Dynamics` interface. Brax is imported only when a Brax task is made.

Your own task is a function returning a :class:`mbpo.dynamics.Dynamics`. Name it
``"module:function"`` (``mbpo train --env mytasks:point_mass``; the module is imported when the
task is made, so a saved run names it and ``--resume`` and ``evaluate`` find it again), or
``envs.register("point_mass", make_point_mass)`` in the process that trains.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
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


def register(name: str, factory: Callable[..., Dynamics]) -> None:
    """Registers ``factory(**kwargs) -> Dynamics`` as the task ``name`` (in this process)."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"task name must be a non-empty string without ':', got {name!r}")
    if name in _REGISTRY and _REGISTRY[name] is not factory:
        raise ValueError(f"task {name!r} is already registered; choose another name")
    _REGISTRY[name] = factory
    has_log_prob.cache_clear()


def _import_factory(spec: str) -> Callable[..., Dynamics]:
    """The function named by ``"module:function"``; ValueError naming what is missing."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"a task given as module:function needs both parts, got {spec!r}")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            # The `mbpo` console script does not put the working directory on sys.path as
            # `python -m` does: a task file next to where the user runs is found either way.
            if os.getcwd() in sys.path:
                raise
            sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"env {spec!r}: cannot import module {module_name!r} ({error})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"env {spec!r}: module {module_name!r} has no function {attr!r}")
    return factory


def check(name: str) -> None:
    """Raises ValueError unless ``name`` is a registered task or an importable module:function."""
    if name in _REGISTRY:
        return
    if ":" in name:
        _import_factory(name)
        return
    raise ValueError(
        f"unknown env {name!r}; known envs: {', '.join(names())} (or your own as module:function)"
    )


def names() -> tuple[str, ...]:
    """The registered task names."""
    return tuple(_REGISTRY)


def is_brax(name: str) -> bool:
    """Whether ``name`` is a Brax task (slow to compile: 20-40 s for a 10-step gradient on CPU)."""
    return name in brax_tasks.TASKS


@functools.cache
def has_log_prob(name: str) -> bool:
    """Whether the registered task ``name`` (default settings) has a transition density
    ``log_prob`` (what DPMB-SF needs). Brax tasks are deterministic and have none; the others are
    cheap to build and are asked."""
    check(name)
    return False if is_brax(name) else make(name).has_log_prob


def make(name: str, **kwargs) -> Dynamics:
    """Builds the task ``name`` (registered, or ``"module:function"``); kwargs go to its factory
    (for Brax tasks, e.g. ``backend=``)."""
    check(name)
    factory = _REGISTRY[name] if name in _REGISTRY else _import_factory(name)
    dynamics = factory(**kwargs)
    if not isinstance(dynamics, Dynamics):
        raise TypeError(
            f"env {name!r}: its factory returned a {type(dynamics).__name__}, not an "
            "mbpo.dynamics.Dynamics"
        )
    return dynamics
