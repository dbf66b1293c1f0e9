"""Dynamics from plain JAX functions: s' = transition(s, a, xi) with a reward function."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict, Unpack

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mbpo.dynamics.base import Dynamics
from mbpo.types import Action, Array, Done, Noise, Observation, Params, PRNGKey, Scalar

TransitionFn = Callable[[Array, Action, Noise, Params], Array]
RewardFn = Callable[[Array, Action, Array, Params], Scalar]


class FunctionDynamics(Dynamics):
    """Dynamics given by functions of a state vector ``s`` and parameters ``params``.

    ``params`` is a pytree leaf, so the same dynamics can be differentiated or vmapped with respect
    to its physical parameters (system identification, domain randomization). Build it with
    :func:`from_function` (user functions of ``(s, a, xi)``) or :func:`mbpo.dynamics.from_ode`.
    """

    params: Params
    transition_fn: TransitionFn = struct.field(pytree_node=False)
    reward_fn: RewardFn = struct.field(pytree_node=False)
    reset_fn: Callable[[PRNGKey], Array] = struct.field(pytree_node=False)
    observation_fn: Callable[[Array], Observation] = struct.field(pytree_node=False)
    done_fn: Callable[[Array], Done] | None = struct.field(pytree_node=False)
    log_prob_fn: Callable[[Array, Action, Array, Params], Scalar] | None = struct.field(
        pytree_node=False
    )
    infer_noise_fn: Callable[[Array, Action, Array, Params], Noise] | None = struct.field(
        pytree_node=False
    )
    noise_fn: Callable[[PRNGKey, tuple[int, ...]], Noise] = struct.field(pytree_node=False)
    sizes: tuple[int, int] = struct.field(pytree_node=False)  # (observation_size, action_size)
    noise_shape_: tuple[int, ...] = struct.field(pytree_node=False)
    bounds: tuple[tuple[float, ...], tuple[float, ...]] = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False, default="custom")

    @property
    def observation_size(self) -> int:
        return self.sizes[0]

    @property
    def action_size(self) -> int:
        return self.sizes[1]

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return self.noise_shape_

    @property
    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.bounds[0]), np.asarray(self.bounds[1])

    @property
    def has_log_prob(self) -> bool:
        return self.log_prob_fn is not None

    def _reset(self, key):
        s = self.reset_fn(key)
        return s, self.observation_fn(s)

    def _step(self, x, action, xi):
        x_next = self.transition_fn(x, action, xi, self.params)
        reward = self.reward_fn(x, action, x_next, self.params)
        done = jnp.zeros(()) if self.done_fn is None else self.done_fn(x_next)
        return x_next, self.observation_fn(x_next), reward, done

    def _log_prob(self, x, action, x_next):
        if self.log_prob_fn is None:
            return super()._log_prob(x, action, x_next)
        return self.log_prob_fn(x, action, x_next, self.params)

    def _reward(self, x, action, x_next):
        return self.reward_fn(x, action, x_next, self.params)

    @property
    def has_noise_inference(self) -> bool:
        return int(np.prod(self.noise_shape)) == 0 or self.infer_noise_fn is not None

    def _infer_noise(self, x, action, x_next):
        if self.infer_noise_fn is None:
            return super()._infer_noise(x, action, x_next)
        return self.infer_noise_fn(x, action, x_next, self.params)

    def sample_noise(self, key):
        return self.noise_fn(key, self.noise_shape)


def _normal_noise(key: PRNGKey, shape: tuple[int, ...]) -> Noise:
    return jax.random.normal(key, shape)


def _broadcast_bounds(low, high, action_size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    low = np.broadcast_to(np.asarray(low, float), (action_size,))
    high = np.broadcast_to(np.asarray(high, float), (action_size,))
    if np.any(np.isnan(low)) or np.any(np.isnan(high)) or np.any(low >= high):
        raise ValueError(
            f"action bounds must satisfy low < high elementwise, got low={low}, high={high}"
        )
    return tuple(low.tolist()), tuple(high.tolist())


def _check_shapes(
    transition, reward, observation, log_prob, params, s, a, xi, transition_name: str
):
    """The shape and dtype checks of :func:`make_function_dynamics` (``jax.eval_shape``: nothing is
    compiled); returns the observation's shape."""
    s_next = jax.eval_shape(transition, s, a, xi, params)
    if getattr(s_next, "shape", None) != s.shape:
        raise ValueError(
            f"{transition_name} returned shape {getattr(s_next, 'shape', s_next)}, but the state "
            "from "
            f"reset has shape {s.shape}: the output of the {transition_name} must match the state"
        )
    if s_next.dtype != s.dtype:
        raise TypeError(
            f"{transition_name} returned dtype {s_next.dtype}, but the state from reset has dtype "
            f"{s.dtype}: "
            f"the output of the {transition_name} must keep the state's dtype (a lax.scan carry "
            "cannot change it)"
        )
    if not jnp.issubdtype(s.dtype, jnp.floating):
        raise TypeError(
            f"reset(key) returned dtype {s.dtype}; the state must be floating (float32 or float64) "
            "to be differentiated"
        )
    r = jax.eval_shape(reward, s, a, s, params)
    if getattr(r, "shape", None) != ():
        raise ValueError(
            f"reward(s, a, s_next) must return a scalar, got shape {getattr(r, 'shape', r)}"
        )
    obs = jax.eval_shape(observation, s)
    if len(getattr(obs, "shape", (None, None))) != 1:
        raise ValueError(
            f"observation(s) must return a vector, got shape {getattr(obs, 'shape', obs)}"
        )
    if log_prob is not None:
        lp = jax.eval_shape(log_prob, s, a, s, params)
        if getattr(lp, "shape", None) != ():
            raise ValueError(f"log_prob must return a scalar, got shape {getattr(lp, 'shape', lp)}")
    return obs


def make_function_dynamics(
    *,
    transition: TransitionFn,
    reward: RewardFn,
    reset: Callable[[PRNGKey], Array],
    action_size: int,
    params: Params = None,
    noise_shape: tuple[int, ...] = (0,),
    action_low: float | Array = -1.0,
    action_high: float | Array = 1.0,
    observation: Callable[[Array], Observation] | None = None,
    done: Callable[[Array], Done] | None = None,
    log_prob: Callable[[Array, Action, Array, Params], Scalar] | None = None,
    infer_noise: Callable[[Array, Action, Array, Params], Noise] | None = None,
    noise: Callable[[PRNGKey, tuple[int, ...]], Noise] = _normal_noise,
    name: str = "custom",
    transition_name: str = "transition",
) -> FunctionDynamics:
    """Builds and validates a :class:`FunctionDynamics` whose functions take ``params`` last.

    Shapes are checked with ``jax.eval_shape`` (nothing is compiled): the transition must return
    an array of the state's shape and dtype, the reward a scalar, the observation a vector.
    """
    if not isinstance(action_size, (int, np.integer)) or action_size < 1:
        raise ValueError(f"action_size must be a positive int, got {action_size!r}")
    noise_shape = tuple(int(n) for n in noise_shape)
    if any(n < 0 for n in noise_shape):
        raise ValueError(f"noise_shape must have non-negative entries, got {noise_shape}")
    observation = observation if observation is not None else (lambda s: s)
    key = jax.random.key(0)
    s = jax.eval_shape(reset, key)
    if not isinstance(s, jax.ShapeDtypeStruct):
        raise TypeError(f"reset(key) must return one array (the state vector), got {s}")
    a = jax.ShapeDtypeStruct((int(action_size),), s.dtype)
    xi = jax.ShapeDtypeStruct(noise_shape, s.dtype)
    obs = _check_shapes(
        transition, reward, observation, log_prob, params, s, a, xi, transition_name
    )
    return FunctionDynamics(
        params=params,
        transition_fn=transition,
        reward_fn=reward,
        reset_fn=reset,
        observation_fn=observation,
        done_fn=done,
        log_prob_fn=log_prob,
        infer_noise_fn=infer_noise,
        noise_fn=noise,
        sizes=(int(obs.shape[0]), int(action_size)),
        noise_shape_=noise_shape,
        bounds=_broadcast_bounds(action_low, action_high, int(action_size)),
        name=name,
    )


class Options(TypedDict, total=False):
    """The options every dynamics builder (:func:`from_function`, :func:`mbpo.dynamics.from_ode`,
    :func:`mbpo.flows.flow_dynamics`) passes on to :func:`make_function_dynamics`, with its
    defaults: ``action_low``/``action_high`` -1/1, identity ``observation``, never ``done``."""

    action_low: float | Array
    action_high: float | Array
    observation: Callable[[Array], Observation] | None
    done: Callable[[Array], Done] | None
    name: str


def options_with(options: dict, *, name: str, builder: str) -> dict:
    """``options`` with the builder's default ``name``; a key that is not an :class:`Options`
    field raises TypeError naming it (as an unknown keyword argument would), so that an option
    the builder sets itself (``log_prob``, ``noise``, ...) cannot slip through to
    :func:`make_function_dynamics`."""
    unknown = sorted(set(options) - set(Options.__annotations__))
    if unknown:
        raise TypeError(
            f"{builder}() got unexpected keyword arguments {unknown}; its options are "
            f"{sorted(Options.__annotations__)}"
        )
    return {"name": name, **options}


def without_params(f: Callable | None) -> Callable | None:
    """``f(*args)`` as a function of ``(*args, params)`` that ignores ``params`` (None stays)."""
    return None if f is None else (lambda *args: f(*args[:-1]))


def from_function(
    transition: Callable[[Array, Action, Noise], Array],
    reward: Callable[[Array, Action, Array], Scalar],
    reset: Callable[[PRNGKey], Array],
    *,
    action_size: int,
    noise_shape: tuple[int, ...] = (0,),
    log_prob: Callable[[Array, Action, Array], Scalar] | None = None,
    infer_noise: Callable[[Array, Action, Array], Noise] | None = None,
    **options: Unpack[Options],
) -> FunctionDynamics:
    """Wraps a plain JAX transition ``s' = transition(s, a, xi)`` as a :class:`Dynamics`.

    Args:
      transition: ``(s, a, xi) -> s'``, differentiable; ``xi`` has shape ``noise_shape``.
      reward: ``(s, a, s') -> r``, a scalar.
      reset: ``key -> s_0``.
      action_size: size of the action vector.
      noise_shape: shape of ``xi``; ``(0,)`` for deterministic dynamics. ``xi ~ N(0, I)``.
      action_low, action_high: action bounds (scalars or vectors).
      observation: ``s -> obs``; identity by default.
      done: ``s' -> {0., 1.}``; never done by default.
      log_prob: ``(s, a, s') -> log p(s'|s, a)``, if the transition density is known.
      infer_noise: ``(s, a, s') -> xi``, if the noise can be recovered from a transition.
      name: a label for logs ("custom").

    Returns:
      A validated :class:`FunctionDynamics`.
    """
    return make_function_dynamics(
        transition=without_params(transition),
        reward=without_params(reward),
        reset=reset,
        action_size=action_size,
        noise_shape=noise_shape,
        log_prob=without_params(log_prob),
        infer_noise=without_params(infer_noise),
        **options_with(options, name="custom", builder="from_function"),
    )
