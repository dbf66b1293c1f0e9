"""The rollout loop: one ``lax.scan`` over (policy noise eps_t, dynamics noise xi_t).

A trajectory is a pure function of (policy, s_0, eps_{0:n}, xi_{0:n}):

    a_t = pi(o_t, eps_t),    s_{t+1} = f(s_t, a_t, xi_t),

so ``jax.grad`` of any function of it is a reparameterized (pathwise) derivative. Open-loop
control is the policy ``pi(o, eps) = eps`` with the actions passed as ``eps``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mbpo.dynamics.base import Dynamics, State
from mbpo.types import Action, Array, Float, Noise, Observation, PRNGKey

Policy = Callable[[Observation, Noise], Action]


class Transition(struct.PyTreeNode):
    """A stacked trajectory; every field has a leading time axis of length n."""

    obs: Float[Array, "T obs"]
    action: Float[Array, "T act"]
    reward: Float[Array, " T"]
    done: Float[Array, " T"]
    next_obs: Float[Array, "T obs"]


class RolloutNoise(struct.PyTreeNode):
    """The explicit noise of an n-step rollout: eps for the policy, xi for the dynamics."""

    eps: Float[Array, "T ..."]
    xi: Float[Array, "T ..."]


def check_num_steps(num_steps: int) -> int:
    """Returns ``num_steps`` as an int, or raises ValueError naming it if it is not an int >= 1."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    return int(num_steps)


def sample_noise(
    dynamics: Dynamics, key: PRNGKey, num_steps: int, eps_shape: tuple[int, ...] = (0,)
) -> RolloutNoise:
    """Draws eps_t ~ N(0, I) of shape ``eps_shape`` and xi_t ~ ``dynamics.sample_noise`` for n steps."""
    num_steps = check_num_steps(num_steps)
    k_eps, k_xi = jax.random.split(key)
    xi = jax.vmap(dynamics.sample_noise)(jax.random.split(k_xi, num_steps))
    return RolloutNoise(eps=jax.random.normal(k_eps, (num_steps, *eps_shape)), xi=xi)


def rollout(dynamics: Dynamics, policy: Policy, state: State, noise: RolloutNoise) -> tuple[State, Transition]:
    """Runs n = len(noise.eps) steps from ``state``.

    Args:
      dynamics: any :class:`~mbpo.dynamics.Dynamics`.
      policy: ``(obs, eps) -> action``.
      state: the start state s_0 (unbatched; vmap for batches).
      noise: eps of shape (n, ...) and xi of shape (n, *dynamics.noise_shape).

    Returns:
      (s_n, the stacked transitions t = 0..n-1).
    """
    n_eps, n_xi = jnp.shape(noise.eps)[0], jnp.shape(noise.xi)[0]
    if n_eps != n_xi:
        raise ValueError(f"noise.eps has {n_eps} steps but noise.xi has {n_xi}; they must be equal")
    check_num_steps(n_eps)

    def body(s: State, noise_t: RolloutNoise) -> tuple[State, Transition]:
        a = policy(s.obs, noise_t.eps)
        s_next = dynamics.step(s, a, noise_t.xi)
        return s_next, Transition(obs=s.obs, action=a, reward=s_next.reward, done=s_next.done, next_obs=s_next.obs)

    return jax.lax.scan(body, state, noise)


def open_loop(dynamics: Dynamics, state: State, actions: Array, xi: Array) -> tuple[State, Transition]:
    """Applies a fixed action sequence a_{0:n} with dynamics noise xi_{0:n}."""
    return rollout(dynamics, lambda obs, a: a, state, RolloutNoise(eps=actions, xi=xi))
