"""One critic module for every algorithm: q(s, a; theta), twin q with min, v(s), targets.

Model-based (SVG(n), DPMB) and model-free (NFQCA, DDPG, TD3, SAC) methods all use these
functions; the TD targets follow rlax's conventions (``rlax/_src/multistep.py``): maths for one
trajectory with time-suffixed names, ``discount_t = gamma * (1 - done_t)``, and an explicit
``stop_target_gradients`` flag.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from mbpo.exploration import smoothed_target_action
from mbpo.networks import MLP, check_activation
from mbpo.optim import gradient_step, polyak  # noqa: F401 (polyak: re-exported beside the critics)
from mbpo.types import Action, Array, Float, Observation, Params, PRNGKey, Scalar


@dataclasses.dataclass(frozen=True)
class QCritic:
    """An ensemble of ``num_q`` action-value networks q_i(s, a; theta_i) (2 = twin q).

    Attributes:
      observation_size: size of the observation.
      action_size: size of the action.
      num_q: ensemble size; ``min_q`` takes the minimum over it (TD3, SAC: clipped double Q).
      hidden: hidden layer sizes.
      activation: hidden activation.
      layer_norm: LayerNorm before each hidden activation (``mbpo.networks.MLP``).
    """

    observation_size: int
    action_size: int
    num_q: int = 2
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    layer_norm: bool = False

    def __post_init__(self):
        if self.num_q < 1:
            raise ValueError(f"num_q must be >= 1, got {self.num_q}")
        check_activation(self.activation)

    def _net(self) -> MLP:
        return MLP(self.hidden, 1, self.activation, layer_norm=self.layer_norm)

    def init(self, key: PRNGKey) -> Params:
        x = jnp.zeros(self.observation_size + self.action_size)
        return jax.vmap(lambda k: self._net().init(k, x))(jax.random.split(key, self.num_q))

    def q(self, params: Params, obs: Observation, action: Action) -> Float[Array, " num_q"]:
        """All q_i(s, a), shape (num_q,)."""
        x = jnp.concatenate([obs, action])
        return jax.vmap(lambda p: self._net().apply(p, x)[0])(params)

    def min_q(self, params: Params, obs: Observation, action: Action) -> Scalar:
        return jnp.min(self.q(params, obs, action))

    def mean_q(self, params: Params, obs: Observation, action: Action) -> Scalar:
        return jnp.mean(self.q(params, obs, action))


@dataclasses.dataclass(frozen=True)
class VCritic:
    """A state-value network v(s; theta)."""

    observation_size: int
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"

    def _net(self) -> MLP:
        return MLP(self.hidden, 1, self.activation)

    def init(self, key: PRNGKey) -> Params:
        return self._net().init(key, jnp.zeros(self.observation_size))

    def v(self, params: Params, obs: Observation) -> Scalar:
        return self._net().apply(params, obs)[0]


def _check_trajectory(r_t: Array, discount_t: Array, v_t: Array) -> None:
    if r_t.ndim != 1 or discount_t.shape != r_t.shape or v_t.shape != r_t.shape:
        raise ValueError(
            f"expected r_t, discount_t, v_t of equal shape (T,), got {r_t.shape}, "
            f"{discount_t.shape}, {v_t.shape}"
        )


def td0_targets(
    r_t: Array, discount_t: Array, v_tp1: Array, *, stop_target_gradients: bool = True
) -> Array:
    """y_t = r_t + discount_t v(s_{t+1})."""
    _check_trajectory(r_t, discount_t, v_tp1)
    y = r_t + discount_t * v_tp1
    return jax.lax.stop_gradient(y) if stop_target_gradients else y


def lambda_returns(
    r_t: Array,
    discount_t: Array,
    v_tp1: Array,
    lambda_: float,
    *,
    stop_target_gradients: bool = True,
) -> Array:
    """TD(lambda) targets over one trajectory, computed backwards:

        G_t = r_t + discount_t ((1 - lambda) v(s_{t+1}) + lambda G_{t+1}),  G_{T-1} = r_{T-1} +
        discount_{T-1} v(s_T).

    lambda = 0 gives TD(0); lambda = 1 the Monte Carlo return bootstrapped at the end.
    """
    _check_trajectory(r_t, discount_t, v_tp1)
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"lambda_ must be in [0, 1], got {lambda_}")

    def body(g_tp1, inputs):
        r, d, v, last = inputs
        g = r + d * jnp.where(last, v, (1 - lambda_) * v + lambda_ * g_tp1)
        return g, g

    last = jnp.arange(r_t.shape[0]) == r_t.shape[0] - 1
    _, g = jax.lax.scan(body, v_tp1[-1], (r_t, discount_t, v_tp1, last), reverse=True)
    return jax.lax.stop_gradient(g) if stop_target_gradients else g


def n_step_targets(
    r_t: Array, discount_t: Array, v_tp1: Array, n: int, *, stop_target_gradients: bool = True
) -> Array:
    """y_t = sum_{k<n} (prod_{j<k} discount_{t+j}) r_{t+k} + (prod_{j<n} discount_{t+j}) v(s_{t+n}),
    truncated at the end of the trajectory (bootstrapping from the last v there)."""
    _check_trajectory(r_t, discount_t, v_tp1)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    T = r_t.shape[0]

    def target(t):
        def body(k, acc):
            y, disc = acc
            idx = jnp.minimum(t + k, T - 1)
            use = t + k < T
            return y + jnp.where(use, disc * r_t[idx], 0.0), jnp.where(
                use, disc * discount_t[idx], disc
            )

        y, disc = jax.lax.fori_loop(0, n, body, (jnp.zeros((), r_t.dtype), jnp.ones((), r_t.dtype)))
        return y + disc * v_tp1[jnp.minimum(t + n, T) - 1]

    y = jax.vmap(target)(jnp.arange(T))
    return jax.lax.stop_gradient(y) if stop_target_gradients else y


def window_targets(
    q_target, traj, final_action: Float[Array, "B act"], gamma: float, lambda_: float
) -> Float[Array, "B T"]:
    """TD(lambda) targets for a batch of n-step windows (SHAC-style critic data): the next action
    of step t is a_{t+1} of the window, and a_n = ``final_action`` after its last state;
    q_target(s, a) bootstraps (its gradient stopped). ``traj`` is a batch of
    :class:`mbpo.unroll.Transition` with leading axes (B, T)."""
    next_action = jnp.concatenate([traj.action[:, 1:], final_action[:, None]], axis=1)
    q_next = jax.vmap(jax.vmap(q_target))(traj.next_obs, next_action)
    discount = gamma * (1 - traj.done)
    return jax.vmap(lambda r, d, v: lambda_returns(r, d, v, lambda_))(traj.reward, discount, q_next)


def q_loss(
    critic: QCritic,
    params: Params,
    obs: Float[Array, "B obs"],
    action: Float[Array, "B act"],
    y: Float[Array, " B"],
) -> Scalar:
    """Mean over the batch and the ensemble of 0.5 (q_i(s, a; theta) - y)^2."""
    q = jax.vmap(critic.q, in_axes=(None, 0, 0))(params, obs, action)
    return 0.5 * jnp.mean((q - jax.lax.stop_gradient(y)[:, None]) ** 2)


def q_step(
    critic: QCritic,
    optimizer: optax.GradientTransformation,
    params: Params,
    opt_state: optax.OptState,
    obs: Float[Array, "B obs"],
    action: Float[Array, "B act"],
    y: Float[Array, " B"],
) -> tuple[Params, optax.OptState, Scalar]:
    """One gradient step of :func:`q_loss` towards the targets ``y``: the critic update of every
    algorithm (SVG(n), DPMB, NFQCA, FQI, DDPG, TD3, SAC). Returns (theta', optimizer state,
    loss)."""
    step = gradient_step(lambda p: q_loss(critic, p, obs, action, y), params, opt_state, optimizer)
    return step.params, step.opt_state, step.value


# --- critic targets: v(s') in y = r + gamma (1 - done) v(s'), one small object per kind ---------


class Bootstrap(NamedTuple):
    """What a critic target may read at s', closed over the current learner.

    Attributes:
      q: min_i q_i(s', a; theta_target), the target critics.
      target_action: d(s'; w_target), the target policy's deterministic action.
      sample: (a', log pi(a'|s')) of the current policy for standard normal ``eps``.
      alpha: the entropy temperature (0 without an entropy bonus).
      value: v(s'; psi_target) of a value network, or None.
    """

    q: Callable[[Observation, Action], Scalar]
    target_action: Callable[[Observation], Action]
    sample: Callable[[Observation, Array], tuple[Action, Scalar]]
    alpha: Scalar
    value: Callable[[Observation], Scalar] | None = None


@dataclasses.dataclass(frozen=True)
class PolicyTarget:
    """q(s', d(s'; w_target); theta_target): NFQCA, DDPG."""

    def __call__(self, b: Bootstrap, next_obs: Observation, eps: Array, key: PRNGKey) -> Scalar:
        return b.q(next_obs, b.target_action(next_obs))


@dataclasses.dataclass(frozen=True)
class SmoothedPolicyTarget:
    """min_i q_i(s', clip(d(s'; w_target) + h clip(std eps, -clip, clip))): TD3's target policy
    smoothing (:func:`mbpo.exploration.smoothed_target_action`), in a box [low, high]."""

    std: float
    clip: float
    low: tuple[float, ...]
    high: tuple[float, ...]

    def __call__(self, b: Bootstrap, next_obs: Observation, eps: Array, key: PRNGKey) -> Scalar:
        low, high = jnp.asarray(self.low, next_obs.dtype), jnp.asarray(self.high, next_obs.dtype)
        a = smoothed_target_action(
            b.target_action(next_obs), eps, low, high, std=self.std, clip=self.clip
        )
        return b.q(next_obs, a)


@dataclasses.dataclass(frozen=True)
class SoftTarget:
    """min_i q_i(s', a'; theta_target) - alpha log pi(a'|s'), a' ~ pi(s') (SAC)."""

    def __call__(self, b: Bootstrap, next_obs: Observation, eps: Array, key: PRNGKey) -> Scalar:
        a, log_pi = b.sample(next_obs, eps)
        return b.q(next_obs, a) - b.alpha * log_pi


@dataclasses.dataclass(frozen=True)
class ValueTarget:
    """v(s'; psi_target): SAC with a separate value network (Haarnoja et al. 2018, 1st version)."""

    def __call__(self, b: Bootstrap, next_obs: Observation, eps: Array, key: PRNGKey) -> Scalar:
        return b.value(next_obs)


@dataclasses.dataclass(frozen=True)
class MaxTarget:
    """max_a' q(s', a'; theta_target) by gradient ascent on a' (:func:`maximize_action`): FQI."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    steps: int
    lr: float
    restarts: int

    def argmax(
        self, q: Callable[[Observation, Action], Scalar], obs: Observation, key: PRNGKey
    ) -> Action:
        low, high = jnp.asarray(self.low, obs.dtype), jnp.asarray(self.high, obs.dtype)
        return maximize_action(
            q, obs, key, low, high, steps=self.steps, lr=self.lr, restarts=self.restarts
        )

    def __call__(self, b: Bootstrap, next_obs: Observation, eps: Array, key: PRNGKey) -> Scalar:
        return b.q(next_obs, self.argmax(b.q, next_obs, key))


CriticTarget = PolicyTarget | SmoothedPolicyTarget | SoftTarget | ValueTarget | MaxTarget


def maximize_action(
    q: Callable[[Observation, Action], Scalar],
    obs: Observation,
    key: PRNGKey,
    low: Array,
    high: Array,
    *,
    steps: int,
    lr: float,
    restarts: int,
) -> Action:
    """argmax_a q(s, a) over the box by gradient ascent: a = c + h tanh(u), Adam on u from u = 0
    and ``restarts - 1`` random starts, keeping the best end point (the reference's
    ``maximize``)."""
    center, half = (high + low) / 2, (high - low) / 2
    u0 = jnp.concatenate(
        [jnp.zeros((1, low.shape[0])), 1.5 * jax.random.normal(key, (restarts - 1, low.shape[0]))]
    )
    u0 = u0.astype(obs.dtype)
    opt = optax.adam(lr)

    def value(u):
        return q(obs, center + half * jnp.tanh(u))

    def ascend(u):
        def body(carry, _):
            u, state = carry
            grad = jax.grad(value)(u)
            upd, state = opt.update(-grad, state, u)
            return (optax.apply_updates(u, upd), state), None

        (u, _), _ = jax.lax.scan(body, (u, opt.init(u)), None, length=steps)
        return u

    u = jax.vmap(ascend)(jax.lax.stop_gradient(u0))
    best = jnp.argmax(jax.vmap(value)(u))
    return jax.lax.stop_gradient(center + half * jnp.tanh(u[best]))
