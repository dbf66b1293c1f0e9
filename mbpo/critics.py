"""One critic module for every algorithm: q(s, a; theta), twin q with min, v(s), targets.

Model-based (SVG(n), DPMB) and model-free (NFQCA, DDPG, TD3, SAC) methods all use these
functions; the TD targets follow rlax's conventions (``rlax/_src/multistep.py``): maths for one
trajectory with time-suffixed names, ``discount_t = gamma * (1 - done_t)``, and an explicit
``stop_target_gradients`` flag.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from mbpo.networks import MLP, check_activation
from mbpo.types import Action, Array, Float, Observation, Params, PRNGKey, Scalar
from mbpo.optim import gradient_step


@dataclasses.dataclass(frozen=True)
class QCritic:
    """An ensemble of ``num_q`` action-value networks q_i(s, a; theta_i) (2 = twin q).

    Attributes:
      observation_size: size of the observation.
      action_size: size of the action.
      num_q: ensemble size; ``min_q`` takes the minimum over it (TD3, SAC: clipped double Q).
      hidden: hidden layer sizes.
      activation: hidden activation.
    """

    observation_size: int
    action_size: int
    num_q: int = 2
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"

    def __post_init__(self):
        if self.num_q < 1:
            raise ValueError(f"num_q must be >= 1, got {self.num_q}")
        check_activation(self.activation)

    def _net(self) -> MLP:
        return MLP(self.hidden, 1, self.activation)

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


def polyak(target: Params, online: Params, tau: float) -> Params:
    """theta_target <- (1 - tau) theta_target + tau theta (tau = 1 copies)."""
    return jax.tree.map(lambda t, o: (1 - tau) * t + tau * o, target, online)


def _check_trajectory(r_t: Array, discount_t: Array, v_t: Array) -> None:
    if r_t.ndim != 1 or discount_t.shape != r_t.shape or v_t.shape != r_t.shape:
        raise ValueError(
            f"expected r_t, discount_t, v_t of equal shape (T,), got {r_t.shape}, {discount_t.shape}, {v_t.shape}"
        )


def td0_targets(r_t: Array, discount_t: Array, v_tp1: Array, *, stop_target_gradients: bool = True) -> Array:
    """y_t = r_t + discount_t v(s_{t+1})."""
    _check_trajectory(r_t, discount_t, v_tp1)
    y = r_t + discount_t * v_tp1
    return jax.lax.stop_gradient(y) if stop_target_gradients else y


def lambda_returns(
    r_t: Array, discount_t: Array, v_tp1: Array, lambda_: float, *, stop_target_gradients: bool = True
) -> Array:
    """TD(lambda) targets over one trajectory, computed backwards:

        G_t = r_t + discount_t ((1 - lambda) v(s_{t+1}) + lambda G_{t+1}),  G_{T-1} = r_{T-1} + discount_{T-1} v(s_T).

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
            return y + jnp.where(use, disc * r_t[idx], 0.0), jnp.where(use, disc * discount_t[idx], disc)

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


def q_loss(critic: QCritic, params: Params, obs: Float[Array, "B obs"], action: Float[Array, "B act"], y: Float[Array, " B"]) -> Scalar:
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
    algorithm (SVG(n), DPMB, NFQCA, FQI, DDPG, TD3, SAC). Returns (theta', optimizer state, loss)."""
    step = gradient_step(lambda p: q_loss(critic, p, obs, action, y), params, opt_state, optimizer)
    return step.params, step.opt_state, step.value
