"""Noise inference: the eps and xi that reproduce observed (off-policy) transitions.

SVG with replayed data needs the noise that the reparameterized policy and dynamics would have
used to produce each stored transition (Heess et al. 2015; reference text, "Noise Inference in
SVG"). Because a = d(s, eps; w) and s' = f(s, a, xi) are bijections in their noise,

    eps = (a - d(s; w)) / sigma(s; w)                   (Gaussian policy),
    xi = Sigma(s, a; phi)^-1 (s' - mu(s, a; phi))        (Gaussian dynamics),
    z_0 = (f_1^-1 o ... o f_K^-1)(a; s, w)               (a normalizing flow, :mod:`mbpo.flows`),

and a value gradient computed at the inferred noise differentiates through the same sample path
that produced the data. Each policy provides ``noise_from_action`` and each dynamics
``infer_noise``; this module batches them over any leading axes of a replay batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax

from mbpo.dynamics.base import Dynamics, State
from mbpo.flows import FlowPolicy
from mbpo.policies import Policy
from mbpo.types import Action, Array, Float, Params, PyTree

AnyPolicy = Policy | FlowPolicy


class InferredNoise(NamedTuple):
    """The noise of a batch of transitions, leading axes as in the batch.

    Attributes:
      eps: policy noise, shape ``batch + policy.eps_shape``.
      xi: dynamics noise, shape ``batch + dynamics.noise_shape``.
    """

    eps: Float[Array, "*B ..."]
    xi: Float[Array, "*B ..."]


def _map_leading(fn: Callable[..., PyTree], batch_shape: tuple[int, ...], *args: PyTree) -> PyTree:
    """fn applied to each element of ``args`` over the leading axes ``batch_shape`` (one vmap)."""
    if not batch_shape:
        return fn(*args)
    size = math.prod(batch_shape)
    rank = len(batch_shape)
    flat = jax.tree.map(lambda v: v.reshape((size, *v.shape[rank:])), args)
    out = jax.vmap(fn)(*flat)
    return jax.tree.map(lambda v: v.reshape((*batch_shape, *v.shape[1:])), out)


def _batch_shape(action: Action, action_size: int, what: str) -> tuple[int, ...]:
    if action.ndim < 1 or action.shape[-1] != action_size:
        raise ValueError(
            f"action has shape {action.shape}; {what} expects shape (..., {action_size})"
        )
    return tuple(action.shape[:-1])


def infer_policy_noise(
    policy: AnyPolicy, params: Params, obs: Float[Array, "*B obs"], action: Float[Array, "*B act"]
) -> Float[Array, "*B ..."]:
    """eps with ``policy.sample(params, s, eps) == a``, for each (s, a) of a batch.

    eps = (a - d(s; w)) / sigma(s; w) for a Gaussian policy, (atanh((a - c) / h) - mu(s; w)) /
    sigma(s; w) for a tanh-Gaussian one, z_0 = (f_1^-1 o ... o f_K^-1)(a) for a flow, and the
    zero-size eps of a deterministic policy.

    Args:
      policy: any policy of :mod:`mbpo.policies` or a :class:`mbpo.flows.FlowPolicy`.
      params: its parameters w.
      obs: observations, shape ``batch + (observation_size,)``.
      action: the actions taken there, shape ``batch + (action_size,)``.

    Returns:
      eps, shape ``batch + policy.eps_shape``.
    """
    batch = _batch_shape(action, policy.action_size, type(policy).__name__)
    if tuple(obs.shape) != (*batch, policy.observation_size):
        raise ValueError(
            f"obs has shape {obs.shape}; with actions of shape {action.shape} "
            f"{type(policy).__name__} "
            f"expects {(*batch, policy.observation_size)}"
        )
    return _map_leading(lambda o, a: policy.noise_from_action(params, o, a), batch, obs, action)


def infer_dynamics_noise(
    dynamics: Dynamics, state: State, action: Float[Array, "*B act"], next_state: State
) -> Float[Array, "*B ..."]:
    """xi with ``dynamics.step(state, action, xi) == next_state``, for each transition of a batch.

    xi = Sigma(s, a)^-1 (s' - mu(s, a)) for additive Gaussian noise, the flow inverse
    f^-1(s' - mu(s, a); (s, a)) for :func:`mbpo.flows.flow_dynamics`.

    Args:
      dynamics: a dynamics with ``has_noise_inference``.
      state, next_state: :class:`mbpo.dynamics.State` batches, every leaf with leading axes
      ``batch``.
      action: the actions, shape ``batch + (action_size,)``.

    Returns:
      xi, shape ``batch + dynamics.noise_shape``.

    Raises:
      ValueError: if the dynamics cannot infer its noise (it names the dynamics).
    """
    if not dynamics.has_noise_inference:
        name = getattr(dynamics, "name", None)
        raise ValueError(
            f"{type(dynamics).__name__}{f' {name!r}' if name else ''} has no noise inference "
            "(has_noise_inference is False): its xi cannot be recovered from (s, a, s'); use a "
            "dynamics with invertible noise (additive Gaussian, mbpo.flows.flow_dynamics)"
        )
    batch = _batch_shape(action, dynamics.action_size, type(dynamics).__name__)
    return _map_leading(dynamics.infer_noise, batch, state, action, next_state)


def infer_transition_noise(
    policy: AnyPolicy,
    params: Params,
    dynamics: Dynamics,
    state: State,
    action: Float[Array, "*B act"],
    next_state: State,
) -> InferredNoise:
    """(eps, xi) of a batch of replayed transitions (s, a, s'): eps from the policy at
    ``state.obs``, xi from the dynamics (see :func:`infer_policy_noise`,
    :func:`infer_dynamics_noise`).
    """
    xi = infer_dynamics_noise(dynamics, state, action, next_state)
    return InferredNoise(eps=infer_policy_noise(policy, params, state.obs, action), xi=xi)
