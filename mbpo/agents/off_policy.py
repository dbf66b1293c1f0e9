"""Model-free actor-critic baselines, the n = 0 end of the estimator family: NFQCA, fitted
Q-iteration (explicit and amortized maximization), DDPG, TD3 and SAC.

They share the critic module (:mod:`mbpo.critics`: ``QCritic``, ``td0_targets``, ``q_step``,
``polyak``), the policy classes (:mod:`mbpo.policies`) and the unroll engine: the actor objective
of NFQCA/DDPG/TD3 is DPMB-R(0) and SAC's is SVG(0) (:func:`mbpo.estimators.surrogate` with zero
model steps), plus SAC's entropy bonus. The algorithms differ only in data and targets:

* nfqca: fixed basepoints; v(s') = q(s', d(s'; w_n); theta_n), theta_n frozen per iteration;
  actor max_w mean q(s, d(s; w)).
* fqi: fixed basepoints; v(s') = max_a' q(s', a'; theta_n) by gradient ascent on a'; no actor:
  it acts by maximizing q.
* fqi_amortized: fixed basepoints; v(s') = q(s', a*) on B_opt, q(s', d(s'; w_n)) elsewhere;
  actor: regress d onto the last K a*.
* ddpg: replay, OU exploration; v(s') = q(s', d(s'; w_targ); theta_targ); actor max_w mean
  q(s, d(s; w)).
* td3: replay, Gaussian exploration; v(s') = min_i q_i(s', clip(d(s'; w_targ) + clip(noise)));
  actor on q_1, every policy_delay steps.
* sac: replay, the policy's samples; v(s') = min_i q_i(s', a'; targ) - alpha log pi(a'|s'),
  a' ~ pi; actor SVG(0) + alpha entropy.

Each is one row of :data:`ALGORITHMS` (policy, critics, target, exploration, actor); the batch
methods' iterations are in :mod:`mbpo.agents.batch`.

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

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbpo import estimators
from mbpo.agents import batch, loop
from mbpo.agents.env_batch import evaluate_config, reset_finished
from mbpo.agents.loop import Trainer
from mbpo.cli import check_choices, check_interval, check_positive, check_sizes, option
from mbpo.critics import (
    Bootstrap,
    CriticTarget,
    MaxTarget,
    PolicyTarget,
    QCritic,
    SmoothedPolicyTarget,
    SoftTarget,
    ValueTarget,
    VCritic,
    maximize_action,  # noqa: F401 (re-exported: it was defined here)
    q_step,
    td0_targets,
)
from mbpo.dynamics.base import Dynamics, State
from mbpo.exploration import (
    Exploration,
    GaussianExploration,
    OrnsteinUhlenbeck,
    OUExploration,
    PolicySample,
)
from mbpo.optim import TrainState, guarded, temperature_step
from mbpo.policies import DeterministicPolicy, GaussianPolicy, TanhGaussianPolicy
from mbpo.replay import RingBuffer, RingBufferState, ring_buffer, uniform_policy
from mbpo.types import Action, Array, Float, Observation, Params, PRNGKey, PyTree, Scalar
from mbpo.unroll import PolicyFn, RolloutNoise, Transition, draw_noise
from mbpo.unroll import step as transition_step

ALGOS = ("nfqca", "fqi", "fqi_amortized", "ddpg", "td3", "sac")
OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OffPolicyConfig(loop.TaskFields):
    """Settings of the model-free trainers; validated when built."""

    algo: str = option("sac", "nfqca | fqi | fqi_amortized | ddpg | td3 | sac", choices=ALGOS)
    num_envs: int = option(
        16, "parallel environments, each stepped once per iteration (online algorithms)"
    )
    episode_length: int = option(
        200, "steps before an environment is reset (a time limit: not a termination)"
    )
    num_updates: int = option(
        1000, "iterations; each collects num_envs env steps (online) and takes gradient_steps steps"
    )
    gradient_steps: int = option(16, "critic (and actor) gradient steps per iteration")
    batch_size: int = option(256, "transitions per gradient step")
    buffer_capacity: int = option(100_000, "replay buffer size (online algorithms)")
    warmup_steps: int = option(
        2_000, "env steps with uniformly random actions before learning starts (online)"
    )
    gamma: float = option(
        0.95,
        "discount (0.95 as the unroll trainer; batch methods need many iterations for gamma near "
        "1)",
    )
    tau: float = option(0.005, "Polyak rate of the target networks (online algorithms)")
    actor_lr: float = option(1e-3, "policy learning rate")
    critic_lr: float = option(1e-3, "critic learning rate")
    optimizer: str = option(
        "adam",
        "adam | sgd (sgd: plain gradient steps, for hand-checked updates)",
        choices=OPTIMIZERS,
    )
    max_grad_norm: float = option(100.0, "global-norm gradient clipping")
    hidden: tuple[int, ...] = option(
        (256, 256), "hidden sizes of policy and critic; () gives linear networks"
    )
    ou_theta: float = option(0.15, "DDPG: OU mean reversion")
    ou_sigma: float = option(0.2, "DDPG: OU diffusion, in action half-widths")
    ou_dt: float = option(1e-2, "DDPG: OU Euler-Maruyama step")
    explore_std: float = option(0.1, "TD3: Gaussian exploration std, in action half-widths")
    target_noise: float = option(0.2, "TD3: target policy smoothing std, in half-widths")
    target_noise_clip: float = option(0.5, "TD3: clip of the smoothing noise, in half-widths")
    policy_delay: int = option(2, "TD3: critic steps per actor (and target) update")
    temperature_init: float = option(
        0.2,
        "SAC: initial entropy temperature alpha (0 with tune_temperature false: no entropy bonus)",
        formerly=("init_alpha",),
    )
    tune_temperature: bool = option(
        True, "SAC: tune alpha towards entropy_target", formerly=("autotune_alpha",)
    )
    temperature_lr: float = option(1e-3, "SAC: temperature learning rate", formerly=("alpha_lr",))
    entropy_target: float | None = option(
        None, "SAC: the entropy alpha is tuned to; none: -action_size", formerly=("target_entropy",)
    )
    value_network: bool = option(
        False, "SAC: the variant with a separate value network v(s; psi) and its target"
    )
    num_basepoints: int = option(
        20_000, "batch methods: fixed transitions collected with random actions"
    )
    basepoint_segment: int = option(
        50, "batch methods: steps per random-action trajectory from a reset"
    )
    maximize_steps: int = option(30, "FQI: gradient-ascent steps on the action")
    maximize_lr: float = option(
        0.3, "FQI: Adam step size of the action ascent (in tanh-preimage units)"
    )
    maximize_restarts: int = option(
        4, "FQI: random starts of the action ascent (the best one is kept)"
    )
    num_optimized: int = option(
        256, "fqi_amortized: basepoints per iteration whose a* is computed exactly (B_opt)"
    )
    window: int = option(
        5, "fqi_amortized: iterations K of optimizer actions the policy is regressed on"
    )

    def __post_init__(self):
        check_choices(self)
        loop.check_task(self)
        check_positive(
            self,
            "num_envs",
            "episode_length",
            "num_updates",
            "gradient_steps",
            "batch_size",
            "buffer_capacity",
            "policy_delay",
            "num_basepoints",
            "basepoint_segment",
            "maximize_steps",
            "maximize_restarts",
            "num_optimized",
            "window",
            "eval_every",
            "eval_envs",
        )
        check_interval(self, "[0, inf]", "warmup_steps")
        if self.num_envs > self.buffer_capacity:
            raise ValueError(
                f"buffer_capacity={self.buffer_capacity} must hold one iteration's "
                f"num_envs={self.num_envs}"
            )
        check_interval(self, "(0, 1]", "gamma", "tau")
        check_interval(
            self,
            "(0, inf]",
            "actor_lr",
            "critic_lr",
            "max_grad_norm",
            "ou_theta",
            "ou_dt",
            "temperature_lr",
            "maximize_lr",
        )
        if not (
            self.temperature_init > 0 or (self.temperature_init == 0 and not self.tune_temperature)
        ):
            raise ValueError(
                "temperature_init must be > 0 (or 0 with tune_temperature=False: no entropy "
                f"bonus), got {self.temperature_init}"
            )
        check_interval(
            self, "[0, inf]", "ou_sigma", "explore_std", "target_noise", "target_noise_clip"
        )
        check_sizes(hidden=self.hidden)
        loop.check_counters(
            self.num_updates * self.num_envs if self.online else self.num_basepoints,
            self.num_updates,
        )

    @property
    def label(self) -> str:
        return self.algo

    @property
    def online(self) -> bool:
        """Whether the algorithm collects data (DDPG, TD3, SAC) rather than use fixed basepoints."""
        return ALGORITHMS[self.algo].exploration is not None


class Learner(struct.PyTreeNode):
    """The learned parts (the carry of gradient steps): compositions of
    :class:`mbpo.optim.TrainState`.

    Attributes:
      policy: the policy; its ``target`` is the target policy of the deterministic algorithms
        (None for SAC, whose targets use the current policy).
      critic: the q ensemble and its target.
      value: SAC's value network v(s; psi) and its target, or None.
      temperature: SAC's log alpha when it is tuned, or None.
      steps: gradient steps taken.
    """

    policy: TrainState
    critic: TrainState
    value: TrainState | None
    temperature: TrainState | None
    steps: jax.Array


class OffPolicyState(struct.PyTreeNode):
    """Everything an iteration reads and writes; a pytree, so seeds vmap over it.

    Attributes:
      learner: parameters, targets and optimizer states.
      buffer: the replay buffer (online) or the fixed basepoints (batch methods).
      optimized: fqi_amortized's last K iterations of (s', a*) pairs; a one-slot buffer otherwise.
      env_states: the batch of environments (online).
      exploration: the exploration's per-environment state (DDPG's OU noise; () otherwise).
      key, updates (iterations done), env_steps (collected transitions).
    """

    learner: Learner
    buffer: RingBufferState
    optimized: RingBufferState
    env_states: State
    exploration: PyTree
    key: PRNGKey
    updates: jax.Array
    env_steps: jax.Array


# --- actors: the policy objective of each kind of algorithm ---------------------------------------


def _zero_step(
    estimator: estimators.Estimator, agent: Agent, policy_params: Params, obs, eps, q
) -> Scalar:
    """The surrogate of a zero-step ``estimator`` on a batch of replayed observations: mean
    q(s, a) with a = pi(s, eps; w), through the unroll engine (no dynamics step)."""
    states = jax.vmap(State.from_observation)(obs)
    noise = RolloutNoise(eps=eps[:, None], xi=jnp.zeros((obs.shape[0], 0), obs.dtype))
    policy_fn = functools.partial(agent.policy.sample, policy_params)
    value, _ = estimators.surrogate(
        estimator, None, policy_fn, states, noise, gamma=agent.config.gamma, q=q
    )
    return value


@dataclasses.dataclass(frozen=True)
class DeterministicActor:
    """max_w mean q_1(s, d(s; w)) through the unroll engine (DPMB-R(0)): NFQCA, DDPG, TD3 (TD3 and
    DDPG ascend q_1; NFQCA and DDPG have a single q)."""

    def objective(
        self, agent: Agent, policy_params: Params, learner: Learner, obs, eps
    ) -> tuple[Scalar, Scalar]:
        def q(s, a):
            return agent.critic.q(learner.critic.params, s, a)[0]

        value = _zero_step(estimators.dpmb_r(0), agent, policy_params, obs, eps, q)
        return value, jnp.zeros((), obs.dtype)


@dataclasses.dataclass(frozen=True)
class SoftActor:
    """SVG(0) on min_i q_i(s, a), a ~ pi(s), plus the entropy bonus -alpha mean log pi (SAC)."""

    def objective(
        self, agent: Agent, policy_params: Params, learner: Learner, obs, eps
    ) -> tuple[Scalar, Scalar]:
        q = functools.partial(agent.critic.min_q, learner.critic.params)
        value = _zero_step(estimators.svg(0), agent, policy_params, obs, eps, q)
        _, log_pi = jax.vmap(functools.partial(agent.policy.sample_and_log_prob, policy_params))(
            obs, eps
        )
        return value - agent.alpha(learner) * log_pi.mean(), log_pi.mean()


# --- the algorithms as data -----------------------------------------------------------------------


def _box(dynamics: Dynamics) -> tuple[tuple[float, ...], tuple[float, ...]]:
    low, high = dynamics.action_bounds
    return tuple(float(v) for v in low), tuple(float(v) for v in high)


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """One row of the module table: which policy, how many q, which target, exploration and actor.

    Attributes:
      stochastic: a tanh-Gaussian policy (else a deterministic one).
      num_q: q networks (2: the clipped double q of TD3 and SAC).
      target: the critic target, from the config and the action box (:mod:`mbpo.critics`).
      exploration: the behaviour policy of online algorithms (:mod:`mbpo.exploration`), or None for
        a batch method on fixed basepoints.
      batch_actor: a batch method's policy fit (:mod:`mbpo.agents.batch`), or None (online).
      actor_every: critic steps per actor and target update (TD3's policy delay), from the config.
    """

    stochastic: bool
    num_q: int
    target: Callable[[OffPolicyConfig, tuple, tuple], CriticTarget]
    exploration: Callable[[OffPolicyConfig], Exploration] | None = None
    batch_actor: Callable[[OffPolicyConfig], batch.BatchActor] | None = None
    actor_every: Callable[[OffPolicyConfig], int] = lambda c: 1


def _max_target(c: OffPolicyConfig, low: tuple, high: tuple) -> MaxTarget:
    return MaxTarget(
        low=low, high=high, steps=c.maximize_steps, lr=c.maximize_lr, restarts=c.maximize_restarts
    )


def _soft_target(c: OffPolicyConfig, low: tuple, high: tuple) -> SoftTarget | ValueTarget:
    return ValueTarget() if c.value_network else SoftTarget()


ALGORITHMS: dict[str, Algorithm] = {
    "nfqca": Algorithm(
        stochastic=False,
        num_q=1,
        target=lambda c, lo, hi: PolicyTarget(),
        batch_actor=lambda c: batch.PolicyAscent(),
    ),
    "fqi": Algorithm(
        stochastic=False, num_q=1, target=_max_target, batch_actor=lambda c: batch.Greedy()
    ),
    "fqi_amortized": Algorithm(
        stochastic=False,
        num_q=1,
        target=lambda c, lo, hi: PolicyTarget(),
        batch_actor=lambda c: batch.Amortized(num_optimized=c.num_optimized, window=c.window),
    ),
    "ddpg": Algorithm(
        stochastic=False,
        num_q=1,
        target=lambda c, lo, hi: PolicyTarget(),
        exploration=lambda c: OUExploration(
            OrnsteinUhlenbeck(theta=c.ou_theta, sigma=c.ou_sigma, dt=c.ou_dt)
        ),
    ),
    "td3": Algorithm(
        stochastic=False,
        num_q=2,
        target=lambda c, lo, hi: SmoothedPolicyTarget(
            std=c.target_noise, clip=c.target_noise_clip, low=lo, high=hi
        ),
        exploration=lambda c: GaussianExploration(c.explore_std),
        actor_every=lambda c: c.policy_delay,
    ),
    "sac": Algorithm(
        stochastic=True, num_q=2, target=_soft_target, exploration=lambda c: PolicySample()
    ),
}
assert set(ALGORITHMS) == set(ALGOS)


@dataclasses.dataclass(frozen=True, eq=False)
class Agent:
    """The static parts of one algorithm and its pure per-step functions.

    Every method is a pure function of its arguments (noise is passed in explicitly), so one
    gradient step can be checked by hand (tests/agents/test_off_policy.py).
    """

    config: OffPolicyConfig
    policy: DeterministicPolicy | TanhGaussianPolicy | GaussianPolicy
    critic: QCritic
    value: VCritic | None
    target: CriticTarget
    maximizer: MaxTarget
    actor: DeterministicActor | SoftActor
    actor_every: int
    actor_opt: optax.GradientTransformation
    critic_opt: optax.GradientTransformation
    alpha_opt: optax.GradientTransformation
    low: tuple[float, ...]
    high: tuple[float, ...]

    @property
    def stochastic(self) -> bool:
        return isinstance(self.actor, SoftActor)

    @property
    def target_entropy(self) -> float:
        c = self.config
        return -float(self.policy.action_size) if c.entropy_target is None else c.entropy_target

    def bounds(self, dtype) -> tuple[Array, Array]:
        return jnp.asarray(self.low, dtype), jnp.asarray(self.high, dtype)

    def alpha(self, learner: Learner) -> Scalar:
        if learner.temperature is not None:
            return jnp.exp(learner.temperature.params)
        return jnp.asarray(self.config.temperature_init, jnp.result_type(float))

    def init(self, key: PRNGKey, observation_size: int) -> Learner:
        k_pi, k_q, k_v = jax.random.split(key, 3)
        tune = self.stochastic and self.config.tune_temperature
        log_alpha = jnp.log(jnp.asarray(max(self.config.temperature_init, 1e-30), jnp.float32))
        return Learner(
            policy=TrainState.create(
                self.policy.init(k_pi), self.actor_opt, target=not self.stochastic
            ),
            critic=TrainState.create(self.critic.init(k_q), self.critic_opt, target=True),
            value=TrainState.create(self.value.init(k_v), self.critic_opt, target=True)
            if self.value is not None
            else None,
            temperature=TrainState.create(log_alpha, self.alpha_opt) if tune else None,
            steps=jnp.zeros((), jnp.int32),
        )

    # --- targets -----------------------------------------------------------------------------
    def bootstrap(self, learner: Learner) -> Bootstrap:
        """What :attr:`target` reads at s': ``learner``'s target networks and current policy."""
        value = (
            functools.partial(self.value.v, learner.value.target)
            if self.value is not None
            else None
        )
        return Bootstrap(
            q=functools.partial(self.critic.min_q, learner.critic.target),
            target_action=lambda s: self.policy.mean(learner.policy.target, s),
            sample=lambda s, e: self.policy.sample_and_log_prob(learner.policy.params, s, e),
            alpha=self.alpha(learner),
            value=value,
        )

    def maximize(self, critic_params: Params, obs: Observation, key: PRNGKey) -> Action:
        """argmax_a min_i q_i(s, a; critic_params) (FQI's greedy action)."""
        return self.maximizer.argmax(lambda s, a: self.critic.min_q(critic_params, s, a), obs, key)

    def critic_targets(
        self, learner: Learner, batch: Transition, eps: Array, key: PRNGKey
    ) -> Float[Array, " B"]:
        """y = r + gamma (1 - done) v(s') of a batch, the target networks' gradients stopped."""
        keys = jax.random.split(key, batch.reward.shape[0])
        b = self.bootstrap(learner)
        v_next = jax.vmap(lambda s, e, k: self.target(b, s, e, k))(batch.next_obs, eps, keys)
        return td0_targets(batch.reward, self.config.gamma * (1 - batch.done), v_next)

    # --- actor -------------------------------------------------------------------------------
    def actor_objective(
        self, policy_params: Params, learner: Learner, obs: Float[Array, "B obs"], eps: Array
    ) -> tuple[Scalar, Scalar]:
        """The n = 0 surrogate of :attr:`actor`: DPMB-R(0) for a deterministic policy, SVG(0) with
        the entropy bonus for SAC. Returns (objective, mean log pi (0 for deterministic
        policies))."""
        return self.actor.objective(self, policy_params, learner, obs, eps)

    def actor_step(
        self, learner: Learner, obs: Float[Array, "B obs"], eps: Array
    ) -> tuple[Learner, dict]:
        """One ascent step of :meth:`actor_objective`, and SAC's temperature step."""
        policy, step = learner.policy.step(
            self.actor_objective, learner, obs, eps, maximize=True, has_aux=True
        )
        log_pi = step.aux
        learner = learner.replace(policy=policy)
        if learner.temperature is not None:
            temperature = temperature_step(learner.temperature, log_pi, self.target_entropy)
            learner = learner.replace(temperature=temperature)
        metrics = {"actor_objective": step.value, "grad_norm": step.grad_norm}
        if self.stochastic:  # the entropy and temperature columns belong to SAC alone
            metrics["entropy"] = -log_pi
        return learner, metrics

    def value_step(
        self, learner: Learner, obs: Float[Array, "B obs"], eps: Array
    ) -> tuple[Learner, Scalar]:
        """SAC's value network: v(s; psi) -> min_i q_i(s, a) - alpha log pi(a|s), a ~ pi (one
        sample)."""
        a, log_pi = jax.vmap(
            functools.partial(self.policy.sample_and_log_prob, learner.policy.params)
        )(obs, eps)
        q = jax.vmap(self.critic.min_q, in_axes=(None, 0, 0))(learner.critic.params, obs, a)
        y = jax.lax.stop_gradient(q - self.alpha(learner) * log_pi)

        def loss(psi):
            return 0.5 * jnp.mean((jax.vmap(self.value.v, in_axes=(None, 0))(psi, obs) - y) ** 2)

        value, step = learner.value.step(loss)
        return learner.replace(value=value), step.value

    def critic_step(
        self, learner: Learner, batch: Transition, key: PRNGKey
    ) -> tuple[Learner, Scalar]:
        """One :func:`mbpo.critics.q_step` towards y = r + gamma (1 - done) v(s') (target noise
        drawn from ``key``)."""
        k_next, k_max = jax.random.split(key)
        target_eps = jax.random.normal(
            k_next, batch.action.shape, batch.obs.dtype
        )  # TD3 smoothing, SAC's a'
        y = self.critic_targets(learner, batch, target_eps, k_max)
        critic = learner.critic
        params, opt_state, loss = q_step(
            self.critic, critic.tx, critic.params, critic.opt_state, batch.obs, batch.action, y
        )
        return learner.replace(critic=critic.replace(params=params, opt_state=opt_state)), loss

    def track_targets(self, learner: Learner) -> Learner:
        """Polyak updates of every target network."""
        tau = self.config.tau
        track = functools.partial(TrainState.track, tau=tau)
        return learner.replace(
            policy=track(learner.policy) if learner.policy.target is not None else learner.policy,
            critic=track(learner.critic),
            value=track(learner.value) if learner.value is not None else None,
        )

    # --- one online gradient step ------------------------------------------------------------
    def gradient_step(
        self, learner: Learner, batch: Transition, key: PRNGKey
    ) -> tuple[Learner, dict]:
        """Critic step on y, then (every :attr:`actor_every`-th step: TD3's policy delay) the actor
        step and the Polyak updates of the targets."""
        k_critic, k_actor, k_value = jax.random.split(key, 3)
        shape = (batch.reward.shape[0], *self.policy.eps_shape)
        learner, critic_loss = self.critic_step(learner, batch, k_critic)
        metrics = {"critic_loss": critic_loss}
        if self.value is not None:
            learner, metrics["value_loss"] = self.value_step(
                learner, batch.obs, jax.random.normal(k_value, shape, batch.obs.dtype)
            )
        eps = jax.random.normal(k_actor, shape, batch.obs.dtype)

        def actor_and_targets(learner):
            learner, actor_metrics = self.actor_step(learner, batch.obs, eps)
            return self.track_targets(learner), actor_metrics

        if self.actor_every > 1:
            zeros = {"actor_objective": jnp.zeros(()), "grad_norm": jnp.zeros(())}
            learner, actor_metrics = jax.lax.cond(
                learner.steps % self.actor_every == 0,
                actor_and_targets,
                lambda lr: (lr, jax.tree.map(jnp.asarray, zeros)),
                learner,
            )
        else:
            learner, actor_metrics = actor_and_targets(learner)
        metrics.update(actor_metrics)
        if self.stochastic:
            metrics["alpha"] = self.alpha(learner)
        return learner.replace(steps=learner.steps + 1), metrics


def _optimizer(config: OffPolicyConfig, lr: float) -> optax.GradientTransformation:
    return guarded(
        optax.adam(lr) if config.optimizer == "adam" else optax.sgd(lr), config.max_grad_norm
    )


def make_agent(
    config: OffPolicyConfig, dynamics: Dynamics, policy: GaussianPolicy | None = None
) -> Agent:
    """The :class:`Agent` of ``config`` sized for ``dynamics``; ``policy`` replaces the algorithm's
    own (the model-based loop's SVG policies with a SAC-style critic, alpha = 0)."""
    spec = ALGORITHMS[config.algo]
    low, high = _box(dynamics)
    if policy is None and not (
        all(math.isfinite(v) for v in low) and all(math.isfinite(v) for v in high)
    ):
        raise ValueError(f"{config.algo} needs a bounded action box, got low={low}, high={high}")
    if policy is None and spec.stochastic:
        policy = TanhGaussianPolicy.for_dynamics(
            dynamics, hidden=config.hidden, activation="relu", init_std=1.0
        )
    elif policy is None:
        policy = DeterministicPolicy.for_dynamics(dynamics, hidden=config.hidden, activation="relu")
    critic = QCritic(
        dynamics.observation_size, dynamics.action_size, num_q=spec.num_q, hidden=config.hidden
    )
    target = spec.target(config, low, high)
    value = (
        VCritic(dynamics.observation_size, hidden=config.hidden)
        if isinstance(target, ValueTarget)
        else None
    )
    return Agent(
        config=config,
        policy=policy,
        critic=critic,
        value=value,
        target=target,
        maximizer=_max_target(config, low, high),
        actor=SoftActor() if spec.stochastic else DeterministicActor(),
        actor_every=spec.actor_every(config),
        actor_opt=_optimizer(config, config.actor_lr),
        critic_opt=_optimizer(config, config.critic_lr),
        alpha_opt=optax.adam(config.temperature_lr),
        low=low,
        high=high,
    )


def make_trainer(config: OffPolicyConfig, dynamics: Dynamics | None = None) -> Trainer:
    """The pure ``init``/``update``/``evaluate`` functions of ``config`` (cached per config for
    registered tasks, so resumed and evaluated runs reuse compiled programs)."""
    return loop.build_trainer(_make_trainer, config, dynamics)


@dataclasses.dataclass(frozen=True, eq=False)
class _Online:
    """The static parts of an online algorithm (DDPG, TD3, SAC) and its pure functions: each
    iteration steps every environment once with the exploration, then takes ``gradient_steps``
    agent steps on replayed batches."""

    config: OffPolicyConfig
    dynamics: Dynamics
    agent: Agent
    exploration: Exploration
    replay: RingBuffer
    random_policy: PolicyFn  # the warm-up's uniform actions

    def init(self, key: PRNGKey) -> OffPolicyState:
        c, act_size = self.config, self.dynamics.action_size
        k_learner, k_env, _, key = jax.random.split(key, 4)
        env_states = jax.vmap(self.dynamics.reset)(jax.random.split(k_env, c.num_envs))
        dtype = env_states.obs.dtype
        return OffPolicyState(
            learner=self.agent.init(k_learner, self.dynamics.observation_size),
            buffer=self.replay.init(Transition.example(env_states.obs[0], act_size)),
            optimized=ring_buffer(1).init((env_states.obs[0], jnp.zeros(act_size, dtype))),
            env_states=env_states,
            exploration=self.exploration.init(c.num_envs, act_size, dtype),
            key=key,
            updates=jnp.zeros((), jnp.int32),
            env_steps=jnp.zeros((), jnp.int32),
        )

    def collect(self, ts: OffPolicyState, key: PRNGKey) -> OffPolicyState:
        """Steps every environment once and stores the transitions."""
        c, dynamics = self.config, self.dynamics
        k_eps, k_xi, k_reset = jax.random.split(key, 3)
        states = ts.env_states
        noise = draw_noise(
            dynamics, k_eps, k_xi, (c.num_envs,), (dynamics.action_size,), states.obs.dtype
        )
        eps = noise.eps
        low, high = self.agent.bounds(states.obs.dtype)
        params = ts.learner.policy.params
        behaviour = functools.partial(
            self.exploration, self.agent.policy, params, low=low, high=high
        )
        action, explored = jax.vmap(behaviour)(states.obs, eps, ts.exploration)
        warm = ts.env_steps < c.warmup_steps
        action = jnp.where(warm, jax.vmap(self.random_policy)(states.obs, eps), action)
        nxt, transition = jax.vmap(functools.partial(transition_step, dynamics))(
            states, action, noise.xi
        )
        finished = (nxt.done > 0) | (nxt.t >= c.episode_length)
        return ts.replace(
            buffer=self.replay.insert(ts.buffer, jax.lax.stop_gradient(transition)),
            env_states=reset_finished(dynamics, nxt, k_reset, c.episode_length),
            exploration=self.exploration.reset(explored, finished),
            env_steps=ts.env_steps + c.num_envs,
        )

    def update(self, ts: OffPolicyState) -> tuple[OffPolicyState, dict]:
        c = self.config
        key, k_collect, k_steps = jax.random.split(ts.key, 3)
        ts = self.collect(ts, k_collect)
        learning = ts.env_steps >= max(c.warmup_steps, c.num_envs)

        def step(learner, k):
            k_sample, k_grad = jax.random.split(k)
            batch = self.replay.sample(ts.buffer, k_sample, c.batch_size)
            new, metrics = self.agent.gradient_step(learner, batch, k_grad)
            new = jax.tree.map(lambda a, b: jnp.where(learning, a, b), new, learner)
            return new, metrics

        keys = jax.random.split(k_steps, c.gradient_steps)
        learner, metrics = jax.lax.scan(step, ts.learner, keys)
        ts = ts.replace(learner=learner, key=key, updates=ts.updates + 1)
        metrics = {k: v.mean() for k, v in metrics.items()}
        return ts, {**metrics, "skipped_updates": learner.critic.skipped}

    def act(self, ts: OffPolicyState) -> PolicyFn:
        return functools.partial(self.agent.policy.sample, ts.learner.policy.params)

    def evaluate(self, ts: OffPolicyState, key: PRNGKey) -> jax.Array:
        eps_shape = self.agent.policy.eps_shape
        return evaluate_config(self.dynamics, self.act(ts), key, self.config, eps_shape)


def _make_trainer(config: OffPolicyConfig, dynamics: Dynamics) -> Trainer:
    agent = make_agent(config, dynamics)
    spec = ALGORITHMS[config.algo]
    if spec.batch_actor is not None:
        return batch.make_trainer(config, dynamics, agent, spec.batch_actor(config), OffPolicyState)
    online = _Online(
        config=config,
        dynamics=dynamics,
        agent=agent,
        exploration=spec.exploration(config),
        replay=ring_buffer(config.buffer_capacity),
        random_policy=uniform_policy(dynamics),
    )
    return Trainer.of(online, policy=agent.policy, critic=agent.critic)
