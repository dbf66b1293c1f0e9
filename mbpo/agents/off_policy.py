"""Model-free actor-critic baselines, the n = 0 end of the estimator family: NFQCA, fitted
Q-iteration (explicit and amortized maximization), DDPG, TD3 and SAC.

They share the critic module (:mod:`mbpo.critics`: ``QCritic``, ``td0_targets``, ``q_step``,
``polyak``), the policy classes (:mod:`mbpo.policies`) and the unroll engine: the actor objective
of NFQCA/DDPG/TD3 is DPMB-R(0) and SAC's is SVG(0) (:func:`mbpo.estimators.surrogate` with zero
model steps), plus SAC's entropy bonus. The algorithms differ only in data and targets:

| algo          | data                          | target value v(s') of y = r + gamma (1 - done) v(s')      | actor                         |
| ------------- | ----------------------------- | --------------------------------------------------------- | ----------------------------- |
| nfqca         | fixed basepoints              | q(s', d(s'; w_n); theta_n), theta_n frozen per iteration  | max_w mean q(s, d(s; w))      |
| fqi           | fixed basepoints              | max_a' q(s', a'; theta_n) by gradient ascent on a'        | none: act by maximizing q     |
| fqi_amortized | fixed basepoints              | q(s', a*) on B_opt, q(s', d(s'; w_n)) elsewhere           | regress d onto the last K a*  |
| ddpg          | replay, OU exploration        | q(s', d(s'; w_targ); theta_targ)                          | max_w mean q(s, d(s; w))      |
| td3           | replay, Gaussian exploration  | min_i q_i(s', clip(d(s'; w_targ) + clip(noise)); targ)    | q_1, every policy_delay steps |
| sac           | replay, the policy's samples  | min_i q_i(s', a'; targ) - alpha log pi(a'|s'), a' ~ pi    | SVG(0) + alpha entropy        |

References: Hafner & Riedmiller 2011 (NFQCA), Lillicrap et al. 2016 (DDPG), Fujimoto et al.
2018 (TD3), Haarnoja et al. 2018 (SAC, with the value-network variant of the first paper), and
the reference text's "Embedded Optimization", "Deterministic Parametrized Policies", "Soft
Actor-Critic".
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbpo import estimators
from mbpo.agents.common import evaluate, reset_finished
from mbpo.agents import loop
from mbpo.agents.loop import Trainer
from mbpo.cli import option
from mbpo.critics import QCritic, VCritic, polyak, q_step, td0_targets
from mbpo.dynamics.base import Dynamics, State
from mbpo.exploration import OrnsteinUhlenbeck, perturb, smoothed_target_action
from mbpo.policies import DeterministicPolicy, GaussianPolicy, TanhGaussianPolicy
from mbpo.replay import RingBufferState, basepoints, ring_buffer, uniform_policy
from mbpo.types import Action, Array, Float, Observation, Params, PRNGKey, Scalar
from mbpo.unroll import PolicyFn, RolloutNoise, Transition
from mbpo.optim import gradient_step, guarded

ALGOS = ("nfqca", "fqi", "fqi_amortized", "ddpg", "td3", "sac")
BATCH_ALGOS = ("nfqca", "fqi", "fqi_amortized")
OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OffPolicyConfig:
    """Settings of the model-free trainers; validated when built."""

    algo: str = option("sac", "nfqca | fqi | fqi_amortized | ddpg | td3 | sac", choices=ALGOS)
    env: str = option("pendulum", "task name (see `envs.names()`)")
    brax_backend: str = option("generalized", "physics pipeline of Brax tasks: generalized | positional | spring | mjx")
    num_envs: int = option(16, "parallel environments, each stepped once per iteration (online algorithms)")
    episode_length: int = option(200, "steps before an environment is reset (a time limit: not a termination)")
    num_updates: int = option(1000, "iterations; each collects num_envs env steps (online) and takes gradient_steps steps")
    gradient_steps: int = option(16, "critic (and actor) gradient steps per iteration")
    batch_size: int = option(256, "transitions per gradient step")
    buffer_capacity: int = option(100_000, "replay buffer size (online algorithms)")
    warmup_steps: int = option(2_000, "env steps with uniformly random actions before learning starts (online)")
    gamma: float = option(0.95, "discount (0.95 as the unroll trainer; batch methods need many iterations for gamma near 1)")
    tau: float = option(0.005, "Polyak rate of the target networks (online algorithms)")
    actor_lr: float = option(1e-3, "policy learning rate")
    critic_lr: float = option(1e-3, "critic learning rate")
    optimizer: str = option("adam", "adam | sgd (sgd: plain gradient steps, for hand-checked updates)", choices=OPTIMIZERS)
    max_grad_norm: float = option(100.0, "global-norm gradient clipping")
    hidden: tuple[int, ...] = option((256, 256), "hidden sizes of policy and critic; () gives linear networks")
    ou_theta: float = option(0.15, "DDPG: OU mean reversion")
    ou_sigma: float = option(0.2, "DDPG: OU diffusion, in action half-widths")
    ou_dt: float = option(1e-2, "DDPG: OU Euler-Maruyama step")
    explore_std: float = option(0.1, "TD3: Gaussian exploration std, in action half-widths")
    target_noise: float = option(0.2, "TD3: target policy smoothing std, in half-widths")
    target_noise_clip: float = option(0.5, "TD3: clip of the smoothing noise, in half-widths")
    policy_delay: int = option(2, "TD3: critic steps per actor (and target) update")
    init_alpha: float = option(0.2, "SAC: initial entropy temperature (0 with autotune_alpha false: no entropy bonus)")
    autotune_alpha: bool = option(True, "SAC: tune alpha towards target_entropy")
    alpha_lr: float = option(1e-3, "SAC: temperature learning rate")
    target_entropy: float | None = option(None, "SAC: target entropy; none: -action_size")
    value_network: bool = option(False, "SAC: the variant with a separate value network v(s; psi) and its target")
    num_basepoints: int = option(20_000, "batch methods: fixed transitions collected with random actions")
    basepoint_segment: int = option(50, "batch methods: steps per random-action trajectory from a reset")
    maximize_steps: int = option(30, "FQI: gradient-ascent steps on the action")
    maximize_lr: float = option(0.3, "FQI: Adam step size of the action ascent (in tanh-preimage units)")
    maximize_restarts: int = option(4, "FQI: random starts of the action ascent (the best one is kept)")
    num_optimized: int = option(256, "fqi_amortized: basepoints per iteration whose a* is computed exactly (B_opt)")
    window: int = option(5, "fqi_amortized: iterations K of optimizer actions the policy is regressed on")
    eval_every: int = option(25, "iterations between evaluations")
    eval_envs: int = option(32, "episodes per evaluation")
    seed: int = option(0, "random seed")
    target_return: float | None = option(None, "report the env steps and wall-clock at which the eval return first reaches this")

    def __post_init__(self):
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; allowed: {', '.join(ALGOS)}")
        loop.check_task(self.env, self.brax_backend)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        for name in (
            "num_envs", "episode_length", "num_updates", "gradient_steps", "batch_size", "buffer_capacity", "policy_delay",
            "num_basepoints", "basepoint_segment", "maximize_steps", "maximize_restarts", "num_optimized", "window",
            "eval_every", "eval_envs",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.num_envs > self.buffer_capacity:
            raise ValueError(f"buffer_capacity={self.buffer_capacity} must hold one iteration's num_envs={self.num_envs}")
        if not 0 < self.gamma <= 1 or not 0 < self.tau <= 1:
            raise ValueError(f"need 0 < gamma <= 1 and 0 < tau <= 1; got gamma={self.gamma}, tau={self.tau}")
        for name in ("actor_lr", "critic_lr", "max_grad_norm", "ou_theta", "ou_dt", "alpha_lr", "maximize_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not (self.init_alpha > 0 or (self.init_alpha == 0 and not self.autotune_alpha)):
            raise ValueError(f"init_alpha must be > 0 (or 0 with autotune_alpha=False: no entropy bonus), got {self.init_alpha}")
        for name in ("ou_sigma", "explore_std", "target_noise", "target_noise_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        loop.check_sizes(hidden=self.hidden)
        loop.check_counters(self.num_updates * self.num_envs if self.online else self.num_basepoints, self.num_updates)

    @property
    def label(self) -> str:
        return self.algo

    @property
    def online(self) -> bool:
        """Whether the algorithm collects data (DDPG, TD3, SAC) rather than using fixed basepoints."""
        return self.algo not in BATCH_ALGOS


class Learner(NamedTuple):
    """The learned parameters, their targets and optimizer states (the carry of gradient steps).

    Unused parts are empty tuples: ``value*`` outside SAC's value-network variant, ``log_alpha``
    and ``alpha_opt`` outside SAC.
    """

    policy_params: Params
    target_policy_params: Params
    policy_opt: optax.OptState
    critic_params: Params
    target_critic_params: Params
    critic_opt: optax.OptState
    value_params: Params
    target_value_params: Params
    value_opt: optax.OptState
    log_alpha: Scalar
    alpha_opt: optax.OptState
    steps: jax.Array


class OffPolicyState(struct.PyTreeNode):
    """Everything an iteration reads and writes; a pytree, so seeds vmap over it.

    Attributes:
      learner: parameters, targets and optimizer states.
      buffer: the replay buffer (online) or the fixed basepoints (batch methods).
      window: fqi_amortized's last K iterations of (s', a*) pairs; an empty buffer otherwise.
      env_states: the batch of environments (online).
      exploration: DDPG's OU noise per environment (zeros for other algorithms).
      key, updates (iterations done), env_steps (collected transitions).
    """

    learner: Learner
    buffer: RingBufferState
    window: RingBufferState
    env_states: State
    exploration: Float[Array, "B act"]
    key: PRNGKey
    updates: jax.Array
    env_steps: jax.Array


def _optimizer(config: OffPolicyConfig, lr: float) -> optax.GradientTransformation:
    return guarded(optax.adam(lr) if config.optimizer == "adam" else optax.sgd(lr), config.max_grad_norm)


def maximize_action(
    q: Callable[[Observation, Action], Scalar], obs: Observation, key: PRNGKey, low: Array, high: Array, *, steps: int, lr: float, restarts: int
) -> Action:
    """argmax_a q(s, a) over the box by gradient ascent: a = c + h tanh(u), Adam on u from u = 0
    and ``restarts - 1`` random starts, keeping the best end point (the reference's ``maximize``)."""
    center, half = (high + low) / 2, (high - low) / 2
    u0 = jnp.concatenate([jnp.zeros((1, low.shape[0])), 1.5 * jax.random.normal(key, (restarts - 1, low.shape[0]))])
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


@dataclasses.dataclass(frozen=True, eq=False)
class Agent:
    """The static parts of one algorithm and its pure per-step functions.

    Every method is a pure function of its arguments (noise is passed in explicitly), so one
    gradient step can be checked by hand (tests/agents/test_off_policy.py).
    """

    config: OffPolicyConfig
    policy: DeterministicPolicy | TanhGaussianPolicy
    critic: QCritic
    value: VCritic | None
    actor_opt: optax.GradientTransformation
    critic_opt: optax.GradientTransformation
    alpha_opt: optax.GradientTransformation
    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def stochastic(self) -> bool:
        return isinstance(self.policy, TanhGaussianPolicy)

    @property
    def target_entropy(self) -> float:
        c = self.config.target_entropy
        return -float(self.policy.action_size) if c is None else c

    def bounds(self, dtype) -> tuple[Array, Array]:
        return jnp.asarray(self.low, dtype), jnp.asarray(self.high, dtype)

    def alpha(self, learner: Learner) -> Scalar:
        if self.config.autotune_alpha:
            return jnp.exp(learner.log_alpha)
        return jnp.asarray(self.config.init_alpha, learner.log_alpha.dtype)

    def init(self, key: PRNGKey, observation_size: int) -> Learner:
        k_pi, k_q, k_v = jax.random.split(key, 3)
        policy_params = self.policy.init(k_pi)
        critic_params = self.critic.init(k_q)
        value_params = self.value.init(k_v) if self.value is not None else ()
        log_alpha = jnp.log(jnp.asarray(max(self.config.init_alpha, 1e-30), jnp.float32))
        return Learner(
            policy_params=policy_params,
            target_policy_params=policy_params,
            policy_opt=self.actor_opt.init(policy_params),
            critic_params=critic_params,
            target_critic_params=critic_params,
            critic_opt=self.critic_opt.init(critic_params),
            value_params=value_params,
            target_value_params=value_params,
            value_opt=self.critic_opt.init(value_params) if self.value is not None else (),
            log_alpha=log_alpha,
            alpha_opt=self.alpha_opt.init(log_alpha),
            steps=jnp.zeros((), jnp.int32),
        )

    # --- targets -----------------------------------------------------------------------------
    def next_value(self, learner: Learner, next_obs: Observation, eps: Array, key: PRNGKey) -> Scalar:
        """v(s') in y = r + gamma (1 - done) v(s') (module table); ``eps`` drives the target action."""
        c = self.config
        low, high = self.bounds(next_obs.dtype)
        q_targ = learner.target_critic_params
        if c.algo == "sac":
            if self.value is not None:
                return self.value.v(learner.target_value_params, next_obs)
            a, log_pi = self.policy.sample_and_log_prob(learner.policy_params, next_obs, eps)
            return self.critic.min_q(q_targ, next_obs, a) - self.alpha(learner) * log_pi
        if c.algo == "td3":
            a = self.policy.mean(learner.target_policy_params, next_obs)
            a = smoothed_target_action(a, eps, low, high, std=c.target_noise, clip=c.target_noise_clip)
            return self.critic.min_q(q_targ, next_obs, a)
        if c.algo == "fqi":
            return self.critic.min_q(q_targ, next_obs, self.maximize(q_targ, next_obs, key))
        return self.critic.min_q(q_targ, next_obs, self.policy.mean(learner.target_policy_params, next_obs))

    def maximize(self, critic_params: Params, obs: Observation, key: PRNGKey) -> Action:
        c = self.config
        low, high = self.bounds(obs.dtype)
        return maximize_action(
            lambda s, a: self.critic.min_q(critic_params, s, a), obs, key, low, high,
            steps=c.maximize_steps, lr=c.maximize_lr, restarts=c.maximize_restarts,
        )  # fmt: skip

    def critic_targets(self, learner: Learner, batch: Transition, eps: Array, key: PRNGKey) -> Float[Array, " B"]:
        """y = r + gamma (1 - done) v(s') for a batch, with the target networks' gradients stopped."""
        keys = jax.random.split(key, batch.reward.shape[0])
        v_next = jax.vmap(lambda s, e, k: self.next_value(learner, s, e, k))(batch.next_obs, eps, keys)
        return td0_targets(batch.reward, self.config.gamma * (1 - batch.done), v_next)

    # --- actor -------------------------------------------------------------------------------
    def actor_objective(self, policy_params: Params, learner: Learner, obs: Float[Array, "B obs"], eps: Array) -> tuple[Scalar, Scalar]:
        """The n = 0 surrogate through the unroll engine: mean q(s, d(s, eps; w)) (DPMB-R(0) for a
        deterministic policy, SVG(0) for SAC), plus SAC's entropy bonus -alpha mean log pi.
        Returns (objective, mean log pi (0 for deterministic policies))."""
        c = self.config
        states = jax.vmap(State.from_observation)(obs)
        noise = RolloutNoise(eps=eps[:, None], xi=jnp.zeros((obs.shape[0], 0), obs.dtype))
        policy_fn = functools.partial(self.policy.sample, policy_params)
        if self.stochastic:
            q = functools.partial(self.critic.min_q, learner.critic_params)
            value, _ = estimators.surrogate(estimators.svg(0), None, policy_fn, states, noise, gamma=c.gamma, q=q)
            _, log_pi = jax.vmap(functools.partial(self.policy.sample_and_log_prob, policy_params))(obs, eps)
            return value - self.alpha(learner) * log_pi.mean(), log_pi.mean()

        def q(s, a):  # TD3 and DDPG ascend q_1 (DDPG and NFQCA have a single q)
            return self.critic.q(learner.critic_params, s, a)[0]

        value, _ = estimators.surrogate(estimators.dpmb_r(0), None, policy_fn, states, noise, gamma=c.gamma, q=q)
        return value, jnp.zeros((), obs.dtype)

    def actor_step(self, learner: Learner, obs: Float[Array, "B obs"], eps: Array) -> tuple[Learner, dict]:
        """One ascent step of :meth:`actor_objective`, and SAC's temperature step."""
        step = gradient_step(
            self.actor_objective, learner.policy_params, learner.policy_opt, self.actor_opt, learner, obs, eps, maximize=True, has_aux=True
        )
        value, log_pi = step.value, step.aux
        learner = learner._replace(policy_params=step.params, policy_opt=step.opt_state)
        if self.stochastic and self.config.autotune_alpha:
            # d/d log_alpha of -log_alpha (log pi + target entropy): alpha grows when entropy is below target.
            alpha_grad = -(jax.lax.stop_gradient(log_pi) + self.target_entropy).astype(learner.log_alpha.dtype)
            upd, alpha_opt = self.alpha_opt.update(alpha_grad, learner.alpha_opt, learner.log_alpha)
            learner = learner._replace(log_alpha=optax.apply_updates(learner.log_alpha, upd), alpha_opt=alpha_opt)
        metrics = {"actor_objective": value, "grad_norm": step.grad_norm}
        if self.stochastic:  # the entropy and temperature columns belong to SAC alone
            metrics["entropy"] = -log_pi
        return learner, metrics

    def value_step(self, learner: Learner, obs: Float[Array, "B obs"], eps: Array) -> tuple[Learner, Scalar]:
        """SAC's value network: v(s; psi) -> min_i q_i(s, a) - alpha log pi(a|s), a ~ pi (one sample)."""
        a, log_pi = jax.vmap(functools.partial(self.policy.sample_and_log_prob, learner.policy_params))(obs, eps)
        q = jax.vmap(self.critic.min_q, in_axes=(None, 0, 0))(learner.critic_params, obs, a)
        y = jax.lax.stop_gradient(q - self.alpha(learner) * log_pi)

        def loss(psi):
            return 0.5 * jnp.mean((jax.vmap(self.value.v, in_axes=(None, 0))(psi, obs) - y) ** 2)

        step = gradient_step(loss, learner.value_params, learner.value_opt, self.critic_opt)
        return learner._replace(value_params=step.params, value_opt=step.opt_state), step.value

    def critic_step(self, learner: Learner, batch: Transition, key: PRNGKey) -> tuple[Learner, Scalar]:
        """One :func:`mbpo.critics.q_step` towards y = r + gamma (1 - done) v(s') (target noise drawn from ``key``)."""
        k_next, k_max = jax.random.split(key)
        target_eps = jax.random.normal(k_next, batch.action.shape, batch.obs.dtype)  # TD3 smoothing, SAC's a'
        y = self.critic_targets(learner, batch, target_eps, k_max)
        critic_params, critic_opt, loss = q_step(
            self.critic, self.critic_opt, learner.critic_params, learner.critic_opt, batch.obs, batch.action, y
        )
        return learner._replace(critic_params=critic_params, critic_opt=critic_opt), loss

    # --- one online gradient step ------------------------------------------------------------
    def gradient_step(self, learner: Learner, batch: Transition, key: PRNGKey) -> tuple[Learner, dict]:
        """Critic step on y, then (TD3: every ``policy_delay``-th step) the actor step and the
        Polyak updates of the targets."""
        c = self.config
        k_critic, k_actor, k_value = jax.random.split(key, 3)
        shape = (batch.reward.shape[0], *self.policy.eps_shape)
        learner, critic_loss = self.critic_step(learner, batch, k_critic)
        metrics = {"critic_loss": critic_loss}
        if self.value is not None:
            learner, metrics["value_loss"] = self.value_step(learner, batch.obs, jax.random.normal(k_value, shape, batch.obs.dtype))
        eps = jax.random.normal(k_actor, shape, batch.obs.dtype)

        def actor_and_targets(learner):
            learner, actor_metrics = self.actor_step(learner, batch.obs, eps)
            learner = learner._replace(
                target_policy_params=polyak(learner.target_policy_params, learner.policy_params, c.tau),
                target_critic_params=polyak(learner.target_critic_params, learner.critic_params, c.tau),
                target_value_params=polyak(learner.target_value_params, learner.value_params, c.tau),
            )
            return learner, actor_metrics

        if c.algo == "td3":
            zeros = {"actor_objective": jnp.zeros(()), "grad_norm": jnp.zeros(())}
            learner, actor_metrics = jax.lax.cond(
                learner.steps % c.policy_delay == 0, actor_and_targets, lambda lr: (lr, jax.tree.map(jnp.asarray, zeros)), learner
            )
        else:
            learner, actor_metrics = actor_and_targets(learner)
        metrics.update(actor_metrics)
        if self.stochastic:
            metrics["alpha"] = self.alpha(learner)
        return learner._replace(steps=learner.steps + 1), metrics


def make_agent(config: OffPolicyConfig, dynamics: Dynamics, policy: GaussianPolicy | None = None) -> Agent:
    """The :class:`Agent` of ``config`` sized for ``dynamics``; ``policy`` replaces the algorithm's
    own (the model-based loop's SVG policies with a SAC-style critic, alpha = 0)."""
    low, high = dynamics.action_bounds
    if policy is None and not (all(math.isfinite(v) for v in low) and all(math.isfinite(v) for v in high)):
        raise ValueError(f"{config.algo} needs a bounded action box, got low={low}, high={high}")
    if policy is None and config.algo == "sac":
        policy = TanhGaussianPolicy.for_dynamics(dynamics, hidden=config.hidden, activation="relu", init_std=1.0)
    elif policy is None:
        policy = DeterministicPolicy.for_dynamics(dynamics, hidden=config.hidden, activation="relu")
    num_q = 2 if config.algo in ("td3", "sac") else 1
    critic = QCritic(dynamics.observation_size, dynamics.action_size, num_q=num_q, hidden=config.hidden)
    value = VCritic(dynamics.observation_size, hidden=config.hidden) if config.algo == "sac" and config.value_network else None
    return Agent(
        config=config,
        policy=policy,
        critic=critic,
        value=value,
        actor_opt=_optimizer(config, config.actor_lr),
        critic_opt=_optimizer(config, config.critic_lr),
        alpha_opt=optax.adam(config.alpha_lr),
        low=tuple(float(v) for v in low),
        high=tuple(float(v) for v in high),
    )


def make_trainer(config: OffPolicyConfig, dynamics: Dynamics | None = None) -> Trainer:
    """The pure ``init``/``update``/``evaluate`` functions of ``config`` (cached per config for
    registered tasks, so resumed and evaluated runs reuse compiled programs)."""
    return loop.build_trainer(_make_trainer, config, dynamics)


def _make_trainer(config: OffPolicyConfig, dynamics: Dynamics) -> Trainer:
    agent = make_agent(config, dynamics)
    policy = agent.policy
    act_size = dynamics.action_size
    ou = OrnsteinUhlenbeck(theta=config.ou_theta, sigma=config.ou_sigma, dt=config.ou_dt)
    random_policy = uniform_policy(dynamics)
    replay = ring_buffer(config.buffer_capacity if config.online else config.num_basepoints)
    window = ring_buffer(config.window * config.num_optimized if config.algo == "fqi_amortized" else 1)

    def init(key: PRNGKey) -> OffPolicyState:
        k_learner, k_env, k_base, key = jax.random.split(key, 4)
        env_states = jax.vmap(dynamics.reset)(jax.random.split(k_env, config.num_envs))
        dtype = env_states.obs.dtype
        example = Transition(
            obs=env_states.obs[0], action=jnp.zeros(act_size, dtype), reward=jnp.zeros((), dtype), done=jnp.zeros((), dtype),
            next_obs=env_states.obs[0], log_prob=jnp.zeros((), dtype),
        )  # fmt: skip
        buffer = replay.init(example)
        if not config.online:
            data = basepoints(dynamics, k_base, config.num_basepoints, segment=config.basepoint_segment, num_envs=config.num_envs)
            buffer = replay.insert(buffer, data)
        return OffPolicyState(
            learner=agent.init(k_learner, dynamics.observation_size),
            buffer=buffer,
            window=window.init((env_states.obs[0], jnp.zeros(act_size, dtype))),
            env_states=env_states,
            exploration=jnp.zeros((config.num_envs, act_size), dtype),
            key=key,
            updates=jnp.zeros((), jnp.int32),
            env_steps=jnp.asarray(0 if config.online else config.num_basepoints, jnp.int32),  # batch: all data up front
        )

    def behaviour(ts: OffPolicyState, obs: Observation, eps: Action, ou_noise: Action) -> tuple[Action, Action]:
        """The exploring action and the next OU state for one environment."""
        low, high = agent.bounds(obs.dtype)
        w = ts.learner.policy_params
        if config.algo == "sac":
            return policy.sample(w, obs, eps), ou_noise
        if config.algo == "ddpg":
            ou_noise = ou.step(ou_noise, eps)
            return perturb(policy.mean(w, obs), ou_noise, low, high), ou_noise
        return perturb(policy.mean(w, obs), config.explore_std * eps, low, high), ou_noise

    def collect(ts: OffPolicyState, key: PRNGKey) -> OffPolicyState:
        """Steps every environment once and stores the transitions."""
        k_eps, k_xi, k_reset = jax.random.split(key, 3)
        states = ts.env_states
        eps = jax.random.normal(k_eps, (config.num_envs, act_size), states.obs.dtype)
        action, exploration = jax.vmap(functools.partial(behaviour, ts))(states.obs, eps, ts.exploration)
        warm = ts.env_steps < config.warmup_steps
        action = jnp.where(warm, jax.vmap(random_policy)(states.obs, eps), action)
        xi = jax.vmap(dynamics.sample_noise)(jax.random.split(k_xi, config.num_envs))
        nxt = jax.vmap(dynamics.step)(states, action, xi)
        transition = Transition(
            obs=states.obs, action=action, reward=nxt.reward, done=nxt.done, next_obs=nxt.obs, log_prob=jnp.zeros_like(nxt.reward)
        )
        finished = (nxt.done > 0) | (nxt.t >= config.episode_length)
        return ts.replace(
            buffer=replay.insert(ts.buffer, jax.lax.stop_gradient(transition)),
            env_states=reset_finished(dynamics, nxt, k_reset, config.episode_length),
            exploration=jnp.where(finished[:, None], 0.0, exploration),
            env_steps=ts.env_steps + config.num_envs,
        )

    def online_update(ts: OffPolicyState) -> tuple[OffPolicyState, dict]:
        key, k_collect, k_steps = jax.random.split(ts.key, 3)
        ts = collect(ts, k_collect)
        learning = ts.env_steps >= max(config.warmup_steps, config.num_envs)

        def step(learner, k):
            k_sample, k_grad = jax.random.split(k)
            new, metrics = agent.gradient_step(learner, replay.sample(ts.buffer, k_sample, config.batch_size), k_grad)
            new = jax.tree.map(lambda a, b: jnp.where(learning, a, b), new, learner)
            return new, metrics

        learner, metrics = jax.lax.scan(step, ts.learner, jax.random.split(k_steps, config.gradient_steps))
        return ts.replace(learner=learner, key=key, updates=ts.updates + 1), metrics

    def batch_update(ts: OffPolicyState) -> tuple[OffPolicyState, dict]:
        """One iteration n of NFQCA / FQI on the fixed basepoints: fit q to y(theta_n, w_n) with
        theta_n, w_n frozen (the targets), then the policy; then theta_n <- theta_{n+1}."""
        key, k_opt, k_critic, k_actor = jax.random.split(ts.key, 4)
        data = ts.buffer.data
        size = config.num_basepoints
        learner, win = ts.learner, ts.window
        a_star = in_opt = None
        if config.algo == "fqi_amortized":
            k_idx, k_max = jax.random.split(k_opt)
            idx = jax.random.choice(k_idx, size, (min(config.num_optimized, size),), replace=False)
            s_opt = data.next_obs[idx]
            best = jax.vmap(lambda s, k: agent.maximize(learner.target_critic_params, s, k))(s_opt, jax.random.split(k_max, idx.shape[0]))
            a_star = jnp.zeros_like(data.action).at[idx].set(best)
            in_opt = jnp.zeros(size, bool).at[idx].set(True)
            win = window.insert(win, (s_opt, best))

        def critic_fit(learner, k):
            k_idx, k_eps, k_max = jax.random.split(k, 3)
            idx = jax.random.randint(k_idx, (config.batch_size,), 0, size)
            batch = jax.tree.map(lambda x: x[idx], data)
            y = agent.critic_targets(learner, batch, jnp.zeros_like(batch.action), k_max)
            if a_star is not None:  # on B_opt the target uses the optimizer's action a*
                q_star = jax.vmap(agent.critic.min_q, in_axes=(None, 0, 0))(learner.target_critic_params, batch.next_obs, a_star[idx])
                y = jnp.where(in_opt[idx], td0_targets(batch.reward, config.gamma * (1 - batch.done), q_star), y)
            params, opt_state, loss = q_step(agent.critic, agent.critic_opt, learner.critic_params, learner.critic_opt, batch.obs, batch.action, y)
            delta = jnp.mean((jax.vmap(agent.critic.min_q, in_axes=(None, 0, 0))(params, batch.obs, batch.action)
                              - jax.vmap(agent.critic.min_q, in_axes=(None, 0, 0))(learner.target_critic_params, batch.obs, batch.action)) ** 2)  # fmt: skip
            return learner._replace(critic_params=params, critic_opt=opt_state), {"critic_loss": loss, "q_change": delta}

        learner, metrics = jax.lax.scan(critic_fit, learner, jax.random.split(k_critic, config.gradient_steps))

        def actor_fit(learner, k):
            k_idx, _ = jax.random.split(k)
            if config.algo == "fqi_amortized":  # regress d(s; w) onto the window's optimizer actions
                obs, target = window.sample(win, k_idx, config.batch_size)

                def loss(w):
                    return 0.5 * jnp.mean(jnp.sum((jax.vmap(policy.mean, in_axes=(None, 0))(w, obs) - target) ** 2, -1))

                step = gradient_step(loss, learner.policy_params, learner.policy_opt, agent.actor_opt)
                learner = learner._replace(policy_params=step.params, policy_opt=step.opt_state)
                return learner, {"actor_objective": -step.value, "grad_norm": step.grad_norm}
            obs = data.obs[jax.random.randint(k_idx, (config.batch_size,), 0, size)]
            learner, m = agent.actor_step(learner, obs, jnp.zeros((config.batch_size, 0), obs.dtype))
            return learner, {"actor_objective": m["actor_objective"], "grad_norm": m["grad_norm"]}

        if config.algo == "fqi":
            actor_metrics = {"actor_objective": jnp.zeros((config.gradient_steps,)), "grad_norm": jnp.zeros((config.gradient_steps,))}
        else:
            learner, actor_metrics = jax.lax.scan(actor_fit, learner, jax.random.split(k_actor, config.gradient_steps))
        learner = learner._replace(
            target_critic_params=learner.critic_params, target_policy_params=learner.policy_params, steps=learner.steps + config.gradient_steps
        )
        return ts.replace(learner=learner, window=win, key=key, updates=ts.updates + 1), {**metrics, **actor_metrics}

    def update(ts: OffPolicyState) -> tuple[OffPolicyState, dict]:
        ts, metrics = (online_update if config.online else batch_update)(ts)
        metrics = {k: v.mean() for k, v in metrics.items()}
        metrics["skipped_updates"] = ts.learner.critic_opt.total_notfinite
        return ts, metrics

    def act(ts: OffPolicyState) -> PolicyFn:
        if config.algo == "fqi":
            return lambda obs, eps: agent.maximize(ts.learner.critic_params, obs, jax.random.key(0))
        return functools.partial(policy.sample, ts.learner.policy_params)

    def evaluate_fn(ts: OffPolicyState, key: PRNGKey) -> jax.Array:
        return evaluate(dynamics, act(ts), key, num_envs=config.eval_envs, episode_length=config.episode_length, eps_shape=policy.eps_shape)

    return Trainer(
        config=config, dynamics=dynamics, policy=policy, critic=agent.critic, act=act, init=init, update=update, evaluate=evaluate_fn
    )
