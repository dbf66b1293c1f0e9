"""A batch of environments in training, as every trainer keeps it: observation normalization,
resets of the members that finished, evaluation episodes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from mbpo.dynamics.base import Dynamics, State
from mbpo.types import Array, Float, PRNGKey, Scalar
from mbpo.unroll import PolicyFn, RolloutNoise, alive_mask, draw_xi, rollout


class NormalizerState(struct.PyTreeNode):
    """Running mean and variance of observations (Chan et al. parallel update)."""

    mean: Float[Array, " obs"]
    var: Float[Array, " obs"]
    count: Scalar


def normalizer_init(size: int) -> NormalizerState:
    return NormalizerState(mean=jnp.zeros(size), var=jnp.ones(size), count=jnp.zeros(()))


def normalizer_update(state: NormalizerState, obs: Float[Array, "B obs"]) -> NormalizerState:
    """Merges the moments of the batch ``obs`` (any leading axes) into ``state``.

    Observations with a non-finite entry are left out (one NaN would poison the statistics for
    good); a batch with none finite leaves ``state`` as it is.
    """
    obs = jax.lax.stop_gradient(obs.reshape(-1, obs.shape[-1]))
    finite = jnp.all(jnp.isfinite(obs), axis=-1)
    obs = jnp.where(finite[:, None], obs, 0.0)
    n = jnp.sum(finite).astype(state.count.dtype)
    safe_n = jnp.maximum(n, 1)
    batch_mean = obs.sum(0) / safe_n
    batch_var = jnp.where(finite[:, None], (obs - batch_mean) ** 2, 0.0).sum(0) / safe_n
    total = state.count + n
    safe_total = jnp.maximum(total, 1)
    delta = batch_mean - state.mean
    mean = state.mean + delta * n / safe_total
    m2 = state.var * state.count + batch_var * n + delta**2 * state.count * n / safe_total
    new = NormalizerState(
        mean=mean, var=jnp.where(total > 0, m2 / safe_total, state.var), count=total
    )
    return jax.tree.map(lambda a, b: jnp.where(n > 0, a, b), new, state)


def normalize(state: NormalizerState, obs: Array, enabled: bool = True) -> Array:
    """(obs - mean) / sqrt(var + 1e-6), with the statistics treated as constants."""
    if not enabled:
        return obs
    mean, var = jax.lax.stop_gradient((state.mean, state.var))
    return jnp.clip((obs - mean) / jnp.sqrt(var + 1e-6), -10.0, 10.0)


def reset_finished(dynamics: Dynamics, states: State, key: PRNGKey, episode_length: int) -> State:
    """Replaces the members of a batch of states that are done, at ``episode_length`` or not
    finite (a NaN or Inf observation or reward) by fresh ``reset`` states (the others continue:
    training windows run across episode boundaries)."""
    batch = states.t.shape[0]
    fresh = jax.vmap(dynamics.reset)(jax.random.split(key, batch))
    finite = jnp.all(jnp.isfinite(states.obs.reshape(batch, -1)), axis=-1) & jnp.isfinite(
        states.reward.reshape(batch)
    )
    finished = (states.done > 0) | (states.t >= episode_length) | ~finite

    def pick(new, old):
        mask = finished.reshape((batch,) + (1,) * (old.ndim - 1))
        return jnp.where(mask, new, old)

    return jax.tree.map(pick, fresh, states)


def evaluate_config(
    dynamics: Dynamics, policy: PolicyFn, key: PRNGKey, config, eps_shape
) -> Scalar:
    """:func:`evaluate` with the config's ``eval_envs`` episodes of ``episode_length`` steps."""
    return evaluate(
        dynamics,
        policy,
        key,
        num_envs=config.eval_envs,
        episode_length=config.episode_length,
        eps_shape=eps_shape,
    )


def evaluate(
    dynamics: Dynamics,
    policy: PolicyFn,
    key: PRNGKey,
    *,
    num_envs: int,
    episode_length: int,
    eps_shape: tuple[int, ...],
) -> Scalar:
    """Mean undiscounted return of ``policy`` with zero noise (eps = 0: the mean action) over
    ``num_envs`` episodes of ``episode_length`` steps from fresh resets; steps after a done do not
    count."""
    k_reset, k_xi = jax.random.split(key)

    def episode(k_r, k_x):
        xi = draw_xi(dynamics, k_x, (episode_length,))
        noise = RolloutNoise(eps=jnp.zeros((episode_length, *eps_shape)), xi=xi)
        _, traj = rollout(dynamics, policy, dynamics.reset(k_r), noise)
        return jnp.sum(alive_mask(traj.done) * traj.reward)

    returns = jax.vmap(episode)(
        jax.random.split(k_reset, num_envs), jax.random.split(k_xi, num_envs)
    )
    return jnp.mean(returns)
