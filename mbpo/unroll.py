"""The unroll engine: one ``lax.scan`` over explicit noise, and the n-step surrogate objective.

A trajectory is a pure function of (policy, s_0, eps_{0:n}, xi_{0:n-1}):

    a_t = d(s_t, eps_t; w),    s_{t+1} = f(s_t, a_t, xi_t),

and the surrogate of the reference text ("Stochastic Value Gradient", "Policy Optimization with a
Model") is

    J_n(w) = sum_{t<n} gamma^t alive_t r_t + gamma^n alive_n q(s_n, a_n),

with alive_t = prod_{k<t} (1 - done_k). ``jax.grad`` of :func:`unroll` is the estimator: every
estimator of :mod:`mbpo.estimators` is a configuration of this one function. How gradients cross
the dynamics is data (``dynamics_gradient``):

* ``"pathwise"``: backpropagate through s_{t+1} = f(s_t, a_t, xi_t) (BPO, SVG(n), DPMB-R).
* ``"stop"``: s_{t+1} is data; the gradient keeps only each step's direct dependence on a_t.
* ``"score"``: s_{t+1} is data and the distributional dependence of s_{t+1} on a_t is estimated by
  the score function grad_w log p(s_{t+1} | s_t, a_t) (DPMB-SF), with the critic as baseline. The
  term is added as (log p - stop_gradient(log p)) * stop_gradient(advantage) so that the value of
  the surrogate is still J_n while its gradient is the score-function estimator.

Open-loop control is the policy ``(obs, eps) -> eps`` with the actions passed as ``eps``.
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
from mbpo.types import Action, Array, Float, Noise, Observation, PRNGKey, Scalar

PolicyFn = Callable[[Observation, Noise], Action]
QFn = Callable[[Observation, Action], Scalar]
DYNAMICS_GRADIENTS = ("pathwise", "stop", "score")


class Transition(struct.PyTreeNode):
    """A stacked trajectory; every field has a leading time axis of length n.

    ``log_prob`` is log p(s_{t+1} | s_t, a_t) under ``dynamics_gradient="score"``, else zeros.
    ``contact`` is the dynamics' contact signal of the step (:meth:`Dynamics.contact`; zeros for a
    dynamics without one), data: its gradient is stopped.
    """

    obs: Float[Array, "T obs"]
    action: Float[Array, "T act"]
    reward: Float[Array, " T"]
    done: Float[Array, " T"]
    next_obs: Float[Array, "T obs"]
    log_prob: Float[Array, " T"]
    contact: Float[Array, " T"] | None = None

    @classmethod
    def example(cls, obs: Observation, action_size: int) -> Transition:
        """One zero transition at ``obs`` (no time axis): the example that sizes a replay buffer."""
        scalars = dict.fromkeys(("reward", "done", "log_prob", "contact"), jnp.zeros((), obs.dtype))
        return cls(obs=obs, action=jnp.zeros(action_size, obs.dtype), next_obs=obs, **scalars)


class RolloutNoise(struct.PyTreeNode):
    """The explicit noise of a rollout: eps for the policy, xi for the dynamics (time first)."""

    eps: Float[Array, "T ..."]
    xi: Float[Array, "T ..."]


def sample_noise(
    dynamics: Dynamics,
    key: PRNGKey,
    num_steps: int,
    eps_shape: tuple[int, ...] = (0,),
    *,
    extra_eps: int = 0,
) -> RolloutNoise:
    """eps_t ~ N(0, I) for num_steps + extra_eps steps, xi_t ~ dynamics.sample_noise for num_steps.

    ``extra_eps=1`` gives the eps_n of the bootstrap action a_n = d(s_n, eps_n) of :func:`unroll`.
    """
    num_steps = check_int("num_steps", num_steps, minimum=1 - extra_eps)
    k_eps, k_xi = jax.random.split(key)
    xi = draw_xi(dynamics, k_xi, (num_steps,))
    return RolloutNoise(eps=jax.random.normal(k_eps, (num_steps + extra_eps, *eps_shape)), xi=xi)


def draw_noise(
    dynamics: Dynamics,
    k_eps: PRNGKey,
    k_xi: PRNGKey,
    shape: tuple[int, ...],
    eps_shape: tuple[int, ...],
    dtype=None,
) -> RolloutNoise:
    """eps ~ N(0, I) of shape ``shape + eps_shape`` from ``k_eps`` and xi ~ dynamics.sample_noise
    of shape ``shape + noise_shape``, one key of ``k_xi`` split to ``shape`` per draw: the noise of
    :func:`sample_noise`, and of data collection, whose shape leads with the environments."""
    kw = {} if dtype is None else {"dtype": dtype}
    eps = jax.random.normal(k_eps, (*shape, *eps_shape), **kw)
    return RolloutNoise(eps=eps, xi=draw_xi(dynamics, k_xi, shape))


def draw_xi(dynamics: Dynamics, k_xi: PRNGKey, shape: tuple[int, ...]) -> Noise:
    """xi ~ dynamics.sample_noise of shape ``shape + noise_shape``, one key of ``k_xi`` split to
    ``shape`` per draw (the xi of :func:`sample_noise` and :func:`draw_noise`)."""
    keys = jax.random.split(k_xi, shape).reshape(-1)
    return jax.vmap(dynamics.sample_noise)(keys).reshape(*shape, *dynamics.noise_shape)


def step(
    dynamics: Dynamics, state: State, action: Action, xi: Noise, *, contact: bool = False
) -> tuple[State, Transition]:
    """One step s' = f(s, a, xi) and its :class:`Transition`: the one place a transition is formed
    (by :func:`rollout`, and by data collection, whose actions come from a behaviour policy).
    ``contact``: also record the dynamics' contact signal (where it has one; it may cost as much
    as the step again, so only AHAC asks for it)."""
    s_next = dynamics.step(state, action, xi)
    zero = jnp.zeros_like(s_next.reward)
    signal = zero
    if contact and dynamics.has_contact_signal:
        signal = jax.lax.stop_gradient(dynamics.contact(state, action, s_next)).astype(zero.dtype)
    return s_next, Transition(
        obs=state.obs,
        action=action,
        reward=s_next.reward,
        done=s_next.done,
        next_obs=s_next.obs,
        log_prob=zero,
        contact=signal,
    )


def rollout(
    dynamics: Dynamics,
    policy: PolicyFn,
    state: State,
    noise: RolloutNoise,
    *,
    dynamics_gradient: str = "pathwise",
    with_states: bool = False,
    contact: bool = False,
    remat: int | None = None,
) -> tuple[State, Transition]:
    """Runs n = len(noise.xi) steps from ``state``: the only rollout loop in mbpo.

    Args:
      dynamics: any :class:`~mbpo.dynamics.Dynamics`.
      policy: ``(obs, eps) -> action``.
      state: the start state s_0 (unbatched; vmap for batches).
      noise: eps of shape (n, ...) and xi of shape (n, *dynamics.noise_shape).
      dynamics_gradient: ``"pathwise"``, ``"stop"`` or ``"score"`` (module docstring).
      with_states: also stack the states s_1..s_n (the whole State, physics included: what a
        renderer draws).
      contact: record the dynamics' contact signal in ``Transition.contact`` (:func:`step`).
      remat: rematerialize: keep the state only every ``remat`` steps and recompute each chunk of
        steps in the backward pass (two nested scans, ``jax.checkpoint`` on the inner one), so
        backpropagation holds n / remat states and one chunk's intermediates instead of all n
        steps' (``remat_steps`` picks sqrt(n): O(sqrt n) memory for one more forward pass).
        Values and gradients are those of the plain scan. None: the plain scan.

    Returns:
      (s_n, the stacked transitions t = 0..n-1); with ``with_states``, (s_n, (transitions, the
      stacked states s_1..s_n)).
    """
    if dynamics_gradient not in DYNAMICS_GRADIENTS:
        raise ValueError(
            f"unknown dynamics_gradient {dynamics_gradient!r}; allowed: "
            f"{', '.join(DYNAMICS_GRADIENTS)}"
        )
    if dynamics_gradient == "score" and not dynamics.has_log_prob:
        raise ValueError(
            f"dynamics_gradient='score' needs a transition density, but "
            f"{getattr(dynamics, 'name', type(dynamics).__name__)} ({type(dynamics).__name__}) has "
            "no log_prob"
        )
    n_eps, n_xi = jnp.shape(noise.eps)[0], jnp.shape(noise.xi)[0]
    if n_eps != n_xi:
        raise ValueError(f"noise.eps has {n_eps} steps but noise.xi has {n_xi}; they must be equal")
    check_int("num_steps", n_eps)
    if dynamics_gradient != "pathwise":
        state = jax.lax.stop_gradient(state)

    def body(s: State, noise_t: RolloutNoise) -> tuple[State, Transition]:
        a = policy(s.obs, noise_t.eps)
        s_next, t = step(dynamics, s, a, noise_t.xi, contact=contact)
        if dynamics_gradient != "pathwise":
            s_next = jax.lax.stop_gradient(s_next)
            t = t.replace(done=s_next.done, next_obs=s_next.obs)
        if dynamics_gradient == "score":
            t = t.replace(
                reward=dynamics.reward(s, a, s_next), log_prob=dynamics.log_prob(s, a, s_next)
            )
        return s_next, (t, s_next) if with_states else t

    return _scan(body, state, noise, remat)


def _scan(body, state, noise: RolloutNoise, remat: int | None):
    """``lax.scan(body, state, noise)``, in chunks of ``remat`` rematerialized steps."""
    n = jnp.shape(noise.eps)[0]
    if remat is None or remat >= n:
        return jax.lax.scan(body, state, noise)
    check_int("remat", remat)
    chunk = jax.checkpoint(lambda s, xs: jax.lax.scan(body, s, xs), prevent_cse=False)
    whole, rest = divmod(n, remat)
    head = jax.tree.map(lambda x: x[: whole * remat].reshape(whole, remat, *x.shape[1:]), noise)
    state, out = jax.lax.scan(chunk, state, head)
    out = jax.tree.map(lambda y: y.reshape(whole * remat, *y.shape[2:]), out)
    if rest:
        state, tail = chunk(state, jax.tree.map(lambda x: x[whole * remat :], noise))
        out = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, tail)
    return state, out


REMAT = ("auto", "off", "sqrt")
AUTO_REMAT_STEPS = 128  # "auto" rematerializes windows of at least this many steps


def check_remat(spec: str) -> str:
    """Returns ``spec`` if it is a rematerialization setting (:data:`REMAT` or a positive int as
    text), else raises ValueError naming it and what is allowed."""
    if spec in REMAT or (spec.isdigit() and int(spec) >= 1):
        return spec
    raise ValueError(
        f"remat={spec!r}: allowed are auto (sqrt for windows of >= {AUTO_REMAT_STEPS} steps, "
        "else off), off, sqrt, or a chunk length K >= 1"
    )


def remat_steps(spec: str, n: int) -> int | None:
    """The chunk length of :func:`rollout`'s ``remat`` for a window of ``n`` steps: None (off),
    ceil(sqrt(n)) (sqrt; auto for n >= :data:`AUTO_REMAT_STEPS`) or the int given."""
    check_remat(spec)
    if spec == "off" or (spec == "auto" and n < AUTO_REMAT_STEPS) or n <= 1:
        return None
    if spec in ("sqrt", "auto"):
        return int(np.ceil(np.sqrt(n)))
    return int(spec)


def open_loop(
    dynamics: Dynamics, state: State, actions: Array, xi: Array
) -> tuple[State, Transition]:
    """Applies a fixed action sequence a_{0:n} with dynamics noise xi_{0:n}."""
    return rollout(dynamics, lambda obs, a: a, state, RolloutNoise(eps=actions, xi=xi))


def alive_mask(done_t: Float[Array, " T"]) -> Float[Array, " T"]:
    """alive_t = prod_{k<t} (1 - done_k): 1 up to and including the step that terminates."""
    return jnp.cumprod(jnp.concatenate([jnp.ones(1, done_t.dtype), 1 - done_t[:-1]]))


def truncated(
    traj: Transition,
    final_action: Action,
    length: jax.Array,
    *,
    gamma: float,
    q: QFn | None = None,
) -> Scalar:
    """J_T of a window of n >= T steps cut at T = ``length`` (traced, in [1, n]):

        J_T = sum_{t<T} gamma^t alive_t r_t + gamma^T alive_T q(s_T, a_T),

    from the window's own transitions, a_T = d(s_T, eps_T) being the window's next action (its
    ``final_action`` for T = n), so the gradient crosses only the steps before T. At T = n it is
    :func:`unroll`'s J_n. AHAC cuts each env's window this way before its stiff contact.
    """
    n = traj.reward.shape[0]
    dtype = traj.reward.dtype
    t = jnp.arange(n)
    alive = alive_mask(traj.done)
    weight = gamma ** t.astype(dtype) * alive
    value = jnp.sum(jnp.where(t < length, weight * traj.reward, 0.0))
    if q is not None:  # q(s_T, a_T), s_T the next state of step T - 1
        last = length - 1
        next_action = jnp.concatenate([traj.action[1:], final_action[None]])
        discount = gamma ** length.astype(dtype) * alive[last] * (1 - traj.done[last])
        value = value + discount * q(traj.next_obs[last], next_action[last])
    return value


class UnrollResult(NamedTuple):
    """What :func:`unroll` returns besides the surrogate.

    Attributes:
      trajectory: the n transitions (None for n = 0).
      final_state: s_n.
      final_action: a_n = d(s_n, eps_n; w) (zeros-size when not bootstrapping).
      bootstrap: q(s_n, a_n) (0 when not bootstrapping).
      discount_n: gamma^n alive_n, the weight of the bootstrap.
    """

    trajectory: Transition | None
    final_state: State
    final_action: Action
    bootstrap: Scalar
    discount_n: Scalar


def _check_unroll(noise: RolloutNoise, gamma: float, *, bootstrap: bool) -> int:
    """n, the model steps of ``noise``; ValueError for a gamma or noise lengths that do not fit."""
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    n = jnp.shape(noise.xi)[0]
    n_eps = jnp.shape(noise.eps)[0]
    if n_eps != n + bootstrap:
        need = "n + 1 (eps_n draws the bootstrap action a_n)" if bootstrap else "n (no bootstrap)"
        raise ValueError(f"noise.eps has {n_eps} steps and noise.xi has {n}: eps needs {need}")
    if not bootstrap and n == 0:
        raise ValueError("a horizon of 0 needs a critic q: J_0 = q(s_0, d(s_0, eps_0))")
    return n


def unroll(
    dynamics: Dynamics,
    policy: PolicyFn,
    state: State,
    noise: RolloutNoise,
    *,
    gamma: float,
    q: QFn | None = None,
    dynamics_gradient: str = "pathwise",
    baseline: QFn | None = None,
    contact: bool = False,
    remat: int | None = None,
) -> tuple[Scalar, UnrollResult]:
    """The n-step surrogate J_n for one start state; ``jax.grad`` of it is the estimator.

    Args:
      dynamics: the model (any :class:`~mbpo.dynamics.Dynamics`).
      policy: ``(obs, eps) -> action``, closing over the parameters w being differentiated.
      state: s_0.
      noise: xi of shape (n, ...) and eps of shape (n + 1, ...) when bootstrapping with ``q``
        (eps_n draws a_n), (n, ...) otherwise. n = 0 with ``q`` is SVG(0): J_0 = q(s_0, a_0).
      gamma: the discount, in (0, 1].
      q: the critic q(s, a) for the bootstrap gamma^n q(s_n, a_n); None for no bootstrap
        (BPO, SVG(inf): the horizon is the whole noise sequence).
      dynamics_gradient: ``"pathwise"``, ``"stop"`` or ``"score"`` (module docstring).
      baseline: b(s_t, a_t), the control variate of the score-function term (``"score"`` only;
        defaults to ``q``). It must not depend on s_{t+1}; its gradient is stopped.
      contact: record the contact signal of each step (:func:`rollout`).
      remat: the rematerialization chunk of the rollout (:func:`rollout`); None: off.

    Returns:
      (J_n, :class:`UnrollResult`).
    """
    n = _check_unroll(noise, gamma, bootstrap=q is not None)
    dtype = state.obs.dtype
    if n > 0:
        final_state, traj = rollout(
            dynamics,
            policy,
            state,
            RolloutNoise(eps=noise.eps[:n], xi=noise.xi),
            dynamics_gradient=dynamics_gradient,
            contact=contact,
            remat=remat,
        )
        discount_t = gamma ** jnp.arange(n, dtype=dtype)
        alive_t = alive_mask(traj.done)
        weight_t = discount_t * alive_t
        discount_n = gamma**n * alive_t[-1] * (1 - traj.done[-1])
        rewards = weight_t * traj.reward
    else:
        final_state, traj = state, None
        discount_n = jnp.ones((), dtype)
        rewards = jnp.zeros((0,), dtype)

    if q is not None:
        final_action = policy(final_state.obs, noise.eps[n])
        bootstrap = q(final_state.obs, final_action)
    else:
        final_action = jnp.zeros((0,), dtype)
        bootstrap = jnp.zeros((), dtype)
    objective = jnp.sum(rewards) + discount_n * bootstrap

    if dynamics_gradient == "score" and n > 0:
        b = baseline if baseline is not None else q
        # Everything downstream of s_{t+1}: r_t (r may depend on s_{t+1}) and all later terms.
        downstream = jnp.cumsum(rewards[::-1])[::-1] + discount_n * bootstrap
        if b is not None:
            b_t = jax.vmap(b)(traj.obs, traj.action)
            downstream = downstream - weight_t * b_t
        advantage = jax.lax.stop_gradient(downstream)
        log_p = traj.log_prob
        objective = objective + jnp.sum(
            alive_t * (log_p - jax.lax.stop_gradient(log_p)) * advantage
        )

    return objective, UnrollResult(traj, final_state, final_action, bootstrap, discount_n)
