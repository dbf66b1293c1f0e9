"""Brax environments as mbpo dynamics, differentiable through the physics.

Only ``brax.envs`` and the physics pipelines are used (never ``brax.training``, whose agents need
jax < 0.10). Brax physics is deterministic: ``noise_shape`` is ``(0,)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flax import struct

from mbpo.cli import check_int
from mbpo.dynamics.base import Dynamics

BACKENDS = ("generalized", "positional", "spring", "mjx")


class BraxDynamics(Dynamics):
    """A ``brax.envs.Env`` behind the mbpo interface; ``State.x`` is the brax ``State``."""

    env: Any = struct.field(
        pytree_node=False
    )  # a brax.envs.Env; typed loosely to keep brax optional at import
    name: str = struct.field(pytree_node=False, default="brax")

    @property
    def observation_size(self) -> int:
        return int(self.env.observation_size)

    @property
    def action_size(self) -> int:
        return int(self.env.action_size)

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return (0,)

    @property
    def reverse_differentiable(self) -> bool:
        """False for an MJX system whose constraint solver runs more than one iteration: MJX
        then loops with ``lax.while_loop``, which reverse mode cannot differentiate. brax 0.14
        ships ant and humanoid with one iteration on mjx; halfcheetah, hopper and walker2d with 4
        (``from_brax(..., mjx_iterations=1)`` changes that)."""
        if self.env.backend != "mjx":
            return True
        options = getattr(getattr(self.env, "sys", None), "opt", None)  # a brax System's
        return getattr(options, "iterations", 1) <= 1

    @property
    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        # Brax envs take actions in [-1, 1] and scale them to the actuators' ranges themselves.
        return -np.ones(self.action_size), np.ones(self.action_size)

    def _reset(self, key):
        s = self.env.reset(key)
        return s, s.obs

    def _step(self, x, action, xi):
        s = self.env.step(x, action)
        return s, s.obs, s.reward, s.done

    def _contact(self, x, action, x_next):
        """How stiffly the step reacts: |d obs' / d a . u|, u = (1, ..., 1) / sqrt(m), one
        forward-mode derivative of the physics step. It is small in free flight and on smooth
        contact and jumps at impacts and stiff contact, where first-order gradients are biased
        (AHAC normalizes contact forces by accelerations for the same reason; this measures the
        effect, on every pipeline, rather than the forces, which positional and spring do not
        keep). Costs about one more step; asked for by AHAC only."""
        import jax
        import jax.numpy as jnp

        u = jnp.full_like(action, 1.0 / np.sqrt(self.action_size))

        def obs(a):  # brax's envs update state.metrics in place: give them their own dicts
            return self.env.step(x.replace(metrics=dict(x.metrics), info=dict(x.info)), a).obs

        _, tangent = jax.jvp(obs, (action,), (u,))
        return jnp.linalg.norm(tangent)


def import_brax_envs():
    """``brax.envs``, imported (deferred: it takes seconds) without the lines brax 0.14 prints on
    stdout when the optional warp packages are missing ("Failed to import warp: ..."), which would
    corrupt a program's own output; anything else brax prints is passed through."""
    import contextlib
    import io
    import sys

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        from brax import envs as brax_envs
    kept = [
        line
        for line in captured.getvalue().splitlines(keepends=True)
        if not line.startswith(("Failed to import warp", "Failed to import mujoco_warp"))
    ]
    sys.stdout.write("".join(kept))
    return brax_envs


def from_brax(
    env_or_name: Any,
    *,
    backend: str = "generalized",
    mjx_iterations: int | None = None,
    **env_kwargs,
) -> BraxDynamics:
    """Wraps a Brax environment (an instance, or a registered name built with ``backend``).

    Args:
      env_or_name: a ``brax.envs.Env`` or the name of one in ``brax.envs``.
      backend: physics pipeline when building by name: one of ``BACKENDS``.
      mjx_iterations: with ``backend="mjx"``, the iterations of MJX's constraint solver (brax's
        ant sets 1; a system with more is not reverse differentiable:
        :attr:`BraxDynamics.reverse_differentiable`). None keeps the environment's own.
      **env_kwargs: passed to ``brax.envs.get_environment`` when building by name.

    Returns:
      A :class:`BraxDynamics`.
    """
    brax_envs = import_brax_envs()
    if isinstance(env_or_name, str):
        known = sorted(brax_envs._envs)  # brax keeps its registry private; this is its only listing
        if env_or_name not in known:
            raise ValueError(
                f"unknown Brax environment {env_or_name!r}; Brax has: {', '.join(known)}"
            )
        if backend not in BACKENDS:
            raise ValueError(f"unknown Brax backend {backend!r}; allowed: {', '.join(BACKENDS)}")
        env = brax_envs.get_environment(env_or_name, backend=backend, **env_kwargs)
        name = f"{env_or_name}[{backend}]"
        if mjx_iterations is not None:
            if backend != "mjx":
                raise ValueError(f"mjx_iterations is an option of backend 'mjx', not {backend!r}")
            check_int("mjx_iterations", mjx_iterations)
            env.unwrapped.sys = env.sys.tree_replace({"opt.iterations": mjx_iterations})
            name = f"{env_or_name}[mjx, {mjx_iterations} solver iterations]"
        return BraxDynamics(env=env, name=name)
    if not isinstance(env_or_name, brax_envs.Env):
        raise TypeError(
            f"expected a brax.envs.Env or a Brax environment name, got {type(env_or_name).__name__}"
        )
    return BraxDynamics(env=env_or_name, name=type(env_or_name).__name__)
