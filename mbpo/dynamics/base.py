"""The one dynamics interface of mbpo.

Every source of transitions (Brax physics, a diffrax ODE, a learned Gaussian model, a user function)
is a :class:`Dynamics`: a pytree whose ``step`` is a pure, differentiable function

    s_{t+1} = f(s_t, a_t, xi_t),    xi_t ~ p(xi)  (``sample_noise``),

with the dynamics noise ``xi`` an explicit input of shape ``noise_shape`` (zero-size when the
dynamics are deterministic). Because the noise is an argument, a trajectory is a pure function of
(policy parameters, s_0, noise) and ``jax.grad`` through it is the reparameterized estimator of
the reference text ("Policy Optimization with a Model", "Stochastic Value Gradient").
"""

from __future__ import annotations

import abc

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mbpo.types import Action, Done, Flag, Noise, Observation, PRNGKey, PyTree, Scalar, Step


class State(struct.PyTreeNode):
    """What a dynamics step returns.

    Attributes:
      x: the dynamics' own state (an ODE state vector, a brax ``State``, ...).
      obs: the observation the policy sees, shape ``(observation_size,)``.
      reward: r(s_{t-1}, a_{t-1}, s_t), the reward of the transition that produced this state
        (zero after ``reset``).
      done: 1.0 where the episode has terminated, else 0.0.
      t: number of steps taken since ``reset``.
      nan_action: True once any action fed to ``step`` since ``reset`` contained a NaN. NaN actions
        are reported here (see :func:`check_actions_finite`) rather than silently propagated.
    """

    x: PyTree
    obs: Observation
    reward: Scalar
    done: Done
    t: Step
    nan_action: Flag

    @classmethod
    def start(cls, x: PyTree, obs: Observation) -> State:
        """The state at t = 0 of ``x`` seen as ``obs``: no reward yet, not done, no NaN action."""
        zero = jnp.zeros((), obs.dtype)
        return cls(
            x=x,
            obs=obs,
            reward=zero,
            done=zero,
            t=jnp.zeros((), jnp.int32),
            nan_action=jnp.zeros((), bool),
        )

    @classmethod
    def from_observation(cls, obs: Observation) -> State:
        """A state that is its observation (x = obs): the start of an n = 0 surrogate on replayed
        observations (model-free actors) and of models whose state is the observation."""
        return cls.start(obs, obs)


class NaNActionError(FloatingPointError):
    """Raised by :func:`check_actions_finite` when a NaN action reached a dynamics step."""


# What a dynamics without each optional capability says when an estimator asks for it.
_MISSING = {
    "_log_prob": "has no known transition density; DPMB-SF and other score-function "
    "estimators through the dynamics need a dynamics with has_log_prob = True",
    "_reward": "computes its reward inside step only; score-function estimators through the "
    "dynamics need the reward as a separate function r(s, a, s')",
    "_infer_noise": "cannot infer its noise xi from an observed transition; off-policy SVG "
    "needs a dynamics with has_noise_inference = True (Gaussian models, additive-noise ODEs)",
    "_contact": "offers no contact signal; an adaptive horizon (AHAC) keeps its fixed "
    "horizon on it",
}


class Dynamics(struct.PyTreeNode, abc.ABC):
    """Abstract base: subclasses implement ``_reset``, ``_step`` and, where known, ``_log_prob``.

    The public ``reset``/``step`` validate shapes and dtypes at trace time (so a wrong action shape
    fails before any compilation) and keep the bookkeeping fields of :class:`State`.
    Subclasses are ``flax.struct`` dataclasses: arrays and parameters are pytree leaves (so a jitted
    function can take the dynamics as an argument, or vmap over its parameters), configuration is
    static.
    """

    # --- what subclasses provide -------------------------------------------------------------
    @property
    @abc.abstractmethod
    def observation_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def action_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def noise_shape(self) -> tuple[int, ...]: ...

    @property
    @abc.abstractmethod
    def action_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high), each of shape ``(action_size,)``; +-inf where unbounded."""

    @abc.abstractmethod
    def _reset(self, key: PRNGKey) -> tuple[PyTree, Observation]:
        """Returns the initial dynamics state and its observation."""

    @abc.abstractmethod
    def _step(
        self, x: PyTree, action: Action, xi: Noise
    ) -> tuple[PyTree, Observation, Scalar, Done]:
        """Returns (x', obs', reward, done) for one transition."""

    def _missing(self, method: str):
        raise NotImplementedError(f"{type(self).__name__} {_MISSING[method]}")

    def _log_prob(self, x: PyTree, action: Action, x_next: PyTree) -> Scalar:
        self._missing("_log_prob")

    def _reward(self, x: PyTree, action: Action, x_next: PyTree) -> Scalar:
        self._missing("_reward")

    def _infer_noise(self, x: PyTree, action: Action, x_next: PyTree) -> Noise:
        self._missing("_infer_noise")

    def _contact(self, x: PyTree, action: Action, x_next: PyTree) -> Scalar:
        self._missing("_contact")

    @property
    def has_contact_signal(self) -> bool:
        """Whether ``contact(state, action, next_state)`` is available (Brax physics; any
        dynamics that overrides ``_contact``)."""
        return type(self)._contact is not Dynamics._contact

    @property
    def has_noise_inference(self) -> bool:
        """Whether ``infer_noise(state, action, next_state)`` recovers xi (always for deterministic
        dynamics)."""
        return (
            int(np.prod(self.noise_shape)) == 0
            or type(self)._infer_noise is not Dynamics._infer_noise
        )

    @property
    def has_log_prob(self) -> bool:
        """Whether ``log_prob(state, action, next_state)`` (and ``reward``) are available."""
        return type(self)._log_prob is not Dynamics._log_prob

    @property
    def reverse_differentiable(self) -> bool:
        """Whether ``jax.grad`` goes through ``step`` (a dynamics whose step loops with
        ``lax.while_loop`` runs and has forward-mode derivatives, but no reverse-mode ones)."""
        return True

    # --- the interface -----------------------------------------------------------------------
    def reset(self, key: PRNGKey) -> State:
        """Samples s_0 ~ rho_0 and returns its :class:`State`."""
        return State.start(*self._reset(key))

    def step(self, state: State, action: Action, xi: Noise) -> State:
        """One transition s' = f(s, a, xi), differentiable in ``state``, ``action`` and ``xi``."""
        action = jnp.asarray(action)
        xi = jnp.asarray(xi)
        check_array("action", action, (self.action_size,), floating=True)
        check_array("xi", xi, self.noise_shape, floating=True)
        x, obs, reward, done = self._step(state.x, action, xi)
        return State(
            x=x,
            obs=obs,
            reward=jnp.asarray(reward, obs.dtype),
            done=jnp.asarray(done, obs.dtype),
            t=state.t + 1,
            nan_action=state.nan_action | jnp.any(jnp.isnan(action)),
        )

    def sample_noise(self, key: PRNGKey) -> Noise:
        """xi ~ N(0, I) of shape ``noise_shape``; subclasses with other noise override this."""
        return jax.random.normal(key, self.noise_shape)

    def log_prob(self, state: State, action: Action, next_state: State) -> Scalar:
        """log p(s' | s, a), the transition density, where ``has_log_prob``."""
        action = jnp.asarray(action)
        check_array("action", action, (self.action_size,), floating=True)
        return self._log_prob(state.x, action, next_state.x)

    def infer_noise(self, state: State, action: Action, next_state: State) -> Noise:
        """Noise inference (Heess et al. 2015): the xi with ``step(state, action, xi) ==
        next_state``,
        e.g. xi = Sigma(s, a)^-1 (s' - mu(s, a)) for a Gaussian model. Zero-size for deterministic
        dynamics."""
        action = jnp.asarray(action)
        check_array("action", action, (self.action_size,), floating=True)
        if int(np.prod(self.noise_shape)) == 0:
            return jnp.zeros(self.noise_shape, next_state.obs.dtype)
        return self._infer_noise(state.x, action, next_state.x)

    def contact(self, state: State, action: Action, next_state: State) -> Scalar:
        """c >= 0, how stiff the contact of the transition s -> s' was (0: no contact), where
        ``has_contact_signal``: AHAC truncates a window before a step whose signal exceeds its
        threshold, since first-order gradients through stiff contact are biased (Suh et al.
        2022; Georgiev et al. 2024 normalize contact forces by accelerations). An ODE or learned
        model provides one by overriding ``_contact``. Data, not differentiated."""
        action = jnp.asarray(action)
        check_array("action", action, (self.action_size,), floating=True)
        return jnp.asarray(self._contact(state.x, action, next_state.x))

    def reward(self, state: State, action: Action, next_state: State) -> Scalar:
        """r(s, a, s') as a function of its three arguments (where ``has_log_prob``): DPMB-SF
        differentiates it in ``a`` with s and s' held as data."""
        return self._reward(state.x, action, next_state.x)


def check_array(name: str, value: jax.Array, shape: tuple[int, ...], *, floating: bool) -> None:
    """Raises ValueError/TypeError naming ``value`` when its shape or dtype is not the one allowed.

    Runs on shapes and dtypes only, so it raises at trace time, before any compilation.
    """
    if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}, but this dynamics expects shape "
            f"{tuple(shape)} "
            "(batch over several states with jax.vmap, not by adding a leading axis)"
        )
    if floating and not jnp.issubdtype(value.dtype, jnp.floating):
        raise TypeError(
            f"{name} has dtype {value.dtype}; a floating dtype (float32 or float64) is required"
        )


def check_actions_finite(state: State) -> None:
    """Raises :class:`NaNActionError` (on the host) if any NaN action reached ``step``.

    ``state`` may be batched (a vmapped rollout's final state): the error counts the offending
    members.
    """
    flags = np.asarray(jax.device_get(state.nan_action))
    if flags.any():
        raise NaNActionError(
            f"{int(flags.sum())} of {flags.size} trajectories received a NaN action; "
            "check the policy parameters and observations (mbpo reports NaN actions, it never "
            "replaces them)"
        )
