"""Experience replay: a pure-JAX fixed-capacity ring buffer, and fixed basepoints for batch methods.

The buffer follows the optax pattern: :func:`ring_buffer` closes over the capacity and returns a
:class:`RingBuffer` of pure functions ``init``, ``insert``, ``sample`` over a
:class:`RingBufferState`. Everything is jittable and vmappable over seeds (the state is a pytree
of arrays with a leading ``capacity`` axis).

The items are :class:`mbpo.unroll.Transition` pytrees (s, a, r, done, s', log_prob),
the same record the unroll engine produces, so replay data and model rollouts look alike
(collectors store zeros in ``log_prob`` unless they know the dynamics density).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mbpo.cli import check_int
from mbpo.dynamics.base import Dynamics, State
from mbpo.types import Array, Float, Int, PRNGKey, PyTree
from mbpo.unroll import PolicyFn, Transition, draw_noise, rollout


class Segment(struct.PyTreeNode):
    """n consecutive real steps, stored for off-policy SVG(n) (n = 1: SVG(1)-ER).

    Attributes:
      state: the n + 1 states s_0..s_n (every leaf with a leading axis n + 1); ``state.reward[t]``
        and ``state.done[t]`` belong to the transition that produced s_t.
      action: a_0..a_{n-1}, shape (n, act).
      log_prob: log mu(a_t | s_t) of the behaviour policy, shape (n,) (for importance weights).
    """

    state: State
    action: Float[Array, "n act"]
    log_prob: Float[Array, " n"]


class RingBufferState(NamedTuple):
    """Storage and bookkeeping of :func:`ring_buffer`.

    Attributes:
      data: the items, every leaf with a leading axis of length ``capacity``.
      position: where the next item goes.
      size: how many slots hold data (at most ``capacity``).
    """

    data: PyTree
    position: Int[Array, ""]
    size: Int[Array, ""]


class RingBuffer(NamedTuple):
    """The pure functions of a ring buffer (see :func:`ring_buffer`)."""

    init: Callable[[PyTree], RingBufferState]
    insert: Callable[..., RingBufferState]
    sample: Callable[[RingBufferState, PRNGKey, int], PyTree]


def ring_buffer(capacity: int) -> RingBuffer:
    """A first-in-first-out buffer of ``capacity`` items that overwrites the oldest when full.

    ``init(example)`` allocates zeros shaped like one item ``example``; ``insert(state, batch,
    mask=None)`` writes a batch (leading axis B <= capacity) at positions (position + 0..B-1) mod
    capacity, only the items where ``mask`` is True if given (jittable: the count may be traced);
    ``sample(state, key, n)`` draws n items uniformly with replacement from the filled slots (the
    caller must insert before sampling: an empty buffer returns slot 0's zeros).
    """
    check_int("capacity", capacity)

    def init(example: PyTree) -> RingBufferState:
        data = jax.tree.map(
            lambda x: jnp.zeros((capacity, *jnp.shape(x)), jnp.result_type(x)), example
        )
        return RingBufferState(
            data=data, position=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32)
        )

    def insert(state: RingBufferState, batch: PyTree, mask: Array | None = None) -> RingBufferState:
        sizes = {jnp.shape(x)[0] for x in jax.tree.leaves(batch)}
        if len(sizes) != 1:
            raise ValueError(
                f"every leaf of the batch needs the same leading axis, got sizes {sorted(sizes)}"
            )
        (num,) = sizes
        if num > capacity:
            raise ValueError(f"cannot insert {num} items into a buffer of capacity {capacity}")
        if mask is None:
            mask = jnp.ones(num, bool)
        # Kept items go to consecutive slots; dropped ones to the out-of-range slot ``capacity``.
        count = jnp.sum(mask, dtype=jnp.int32)
        index = jnp.where(mask, (state.position + jnp.cumsum(mask) - 1) % capacity, capacity)
        data = jax.tree.map(
            lambda d, x: d.at[index].set(x.astype(d.dtype), mode="drop"), state.data, batch
        )
        return RingBufferState(
            data=data,
            position=(state.position + count) % capacity,
            size=jnp.minimum(state.size + count, capacity),
        )

    def sample(state: RingBufferState, key: PRNGKey, num: int) -> PyTree:
        index = jax.random.randint(key, (num,), 0, jnp.maximum(state.size, 1))
        return jax.tree.map(lambda d: d[index], state.data)

    return RingBuffer(init=init, insert=insert, sample=sample)


def uniform_policy(dynamics: Dynamics) -> PolicyFn:
    """a ~ U(low, high) driven by eps ~ N(0, I) (through the normal CDF), so it is a PolicyFn."""
    low, high = (np.asarray(b, float) for b in dynamics.action_bounds)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ValueError(
            f"uniform random actions need a bounded action box, got low={low}, high={high}"
        )
    return lambda obs, eps: (low + (high - low) * jax.scipy.stats.norm.cdf(eps)).astype(eps.dtype)


def basepoints(
    dynamics: Dynamics, key: PRNGKey, num: int, *, segment: int = 50, num_envs: int = 64
) -> Transition:
    """A fixed set of ``num`` transitions (s, a, r, done, s') for batch methods (NFQCA, FQI).

    Start states are drawn from ``dynamics.reset``; uniformly random actions drive ``num_envs``
    trajectories of ``segment`` steps from there (repeated from fresh resets until ``num`` are
    collected), so the set covers the reset distribution and what random actions reach from it.
    Transitions after a termination are kept with done = 1.
    """
    if num < 1 or segment < 1 or num_envs < 1:
        raise ValueError(
            f"num, segment and num_envs must be >= 1, got {num}, {segment}, {num_envs}"
        )
    policy = uniform_policy(dynamics)
    rounds = -(-num // (segment * num_envs))

    def trajectory(k):
        k_reset, k_noise = jax.random.split(k)
        noise = draw_noise(
            dynamics, k_noise, jax.random.fold_in(k_noise, 1), (segment,), (dynamics.action_size,)
        )
        _, traj = rollout(dynamics, policy, dynamics.reset(k_reset), noise)
        # Steps after a termination stay in the set, marked done so that they bootstrap nothing.
        return traj.replace(done=1 - jnp.cumprod(1 - traj.done))

    traj = jax.vmap(trajectory)(jax.random.split(key, rounds * num_envs))
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:num], traj)
    return jax.lax.stop_gradient(flat)
