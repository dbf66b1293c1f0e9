"""PPO (Schulman et al. 2017): the clipped-surrogate on-policy policy gradient with GAE(lambda)
advantages on a state-value critic, as brax's ``ppo.train`` does it.

Each update rolls every environment ``unroll_length`` steps with the current policy through
:func:`mbpo.unroll.rollout` (the dynamics' gradient stopped: PPO is zeroth order), computes GAE
advantages with the value network, bootstrapping at the end of the window and at a time-out
(the episode limit is a truncation, not a termination), and then takes ``update_epochs`` passes of
``num_minibatches`` Adam steps on one loss of policy and value,

    L = -mean min(rho A, clip(rho, 1 - eps, 1 + eps) A) + c_v mean (v - G)^2 / 2 - c_H H,

with rho = pi(a|s; w) / pi_old(a|s), A normalized per minibatch, G = A + v_old and H the
entropy estimate -log pi(a|s; w). ``clip=inf`` is the REINFORCE/GAE gradient.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbpo import critics, estimators
from mbpo.agents import env_batch, loop
from mbpo.agents.loop import Trainer
from mbpo.cli import check_choices, check_interval, check_positive, check_sizes, option
from mbpo.critics import QCritic
from mbpo.dynamics.base import Dynamics, State
from mbpo.networks import ACTIVATIONS
from mbpo.optim import TrainState, guarded
from mbpo.policies import POLICIES
from mbpo.types import Params, PRNGKey
from mbpo.unroll import rollout, sample_noise

POLICY_KINDS = ("tanh_gaussian", "gaussian")
ADVANTAGES = ("window", "minibatch")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PPOConfig(loop.TaskFields):
    """Settings of :func:`make_trainer` (defaults: brax's PPO, its halfcheetah settings where it
    has none); validated when built."""

    algo: str = option("ppo", "ppo", choices=("ppo",))
    num_envs: int = option(64, "parallel environments, each rolled unroll_length steps per update")
    episode_length: int = option(1000, "steps before an environment is reset (a time-out)")
    unroll_length: int = option(20, "steps of each environment per update")
    num_updates: int = option(500, "updates (rollouts), each num_envs * unroll_length env steps")
    update_epochs: int = option(8, "passes over each rollout's transitions")
    num_minibatches: int = option(16, "minibatches per pass")
    gamma: float = option(0.97, "discount")
    gae_lambda: float = option(0.95, "lambda of the GAE advantages")
    clip: float = option(0.3, "ratio clipping epsilon (inf: none, the REINFORCE/GAE gradient)")
    entropy_cost: float = option(1e-2, "weight of the entropy bonus")
    value_coef: float = option(0.5, "weight of the value loss")
    learning_rate: float = option(3e-4, "Adam learning rate of policy and value")
    max_grad_norm: float = option(1e9, "global-norm gradient clipping (brax's PPO: none)")
    normalize_advantage: bool = option(True, "normalize the advantages of each minibatch")
    advantages: str = option(
        "window",
        "window: GAE advantages and value targets once per window, from the value network of its "
        "start, minibatches of transitions; minibatch: brax's PPO, minibatches of whole env "
        "windows whose lambda-returns G and advantages r_t + gamma G_{t+1} - v(s_t) are "
        "recomputed with the current value network at every step",
        choices=ADVANTAGES,
    )
    reward_scaling: float = option(1.0, "reward multiplier")
    policy: str = option("tanh_gaussian", "tanh_gaussian | gaussian", choices=POLICY_KINDS)
    init_std: float = option(0.5, "initial policy standard deviation")
    hidden: tuple[int, ...] = option((64, 64), "hidden sizes of policy and value networks")
    policy_activation: str = option(
        "swish", "hidden activation of the policy (brax's PPO)", choices=tuple(ACTIVATIONS)
    )
    value_activation: str = option(
        "swish", "hidden activation of the value network (brax's PPO)", choices=tuple(ACTIVATIONS)
    )
    normalize_observations: bool = option(True, "normalize observations with running statistics")

    def __post_init__(self):
        loop.check_task(self)
        check_positive(self, "num_envs", "episode_length", "unroll_length", "num_updates")
        check_positive(self, "update_epochs", "num_minibatches", "eval_every", "eval_envs")
        check_choices(self)
        if self.num_envs * self.unroll_length % self.num_minibatches:
            raise ValueError(
                f"num_minibatches={self.num_minibatches} must divide num_envs * unroll_length = "
                f"{self.num_envs * self.unroll_length}"
            )
        if self.advantages == "minibatch" and self.num_envs % self.num_minibatches:
            raise ValueError(
                f"num_minibatches={self.num_minibatches} must divide num_envs={self.num_envs} "
                "(advantages='minibatch' splits the envs' windows)"
            )
        check_interval(self, "(0, 1]", "gamma")
        check_interval(self, "[0, 1]", "gae_lambda")
        check_interval(self, "(0, inf]", "clip")  # inf: no clipping
        check_interval(
            self, "(0, inf]", "learning_rate", "max_grad_norm", "init_std", "reward_scaling"
        )
        check_interval(self, "[0, inf]", "entropy_cost", "value_coef")
        check_sizes(hidden=self.hidden)
        loop.check_counters(self.num_updates * self.num_envs * self.unroll_length, self.num_updates)

    @property
    def label(self) -> str:
        return "ppo"


class PPOState(struct.PyTreeNode):
    """Everything an update reads and writes.

    Attributes:
      learner: ``{"policy", "value"}`` parameters and their one Adam state.
      normalizer: the running observation statistics.
      env_states, key, updates, env_steps.
    """

    learner: TrainState
    normalizer: env_batch.NormalizerState
    env_states: State
    key: PRNGKey
    updates: jax.Array
    env_steps: jax.Array


@dataclasses.dataclass(frozen=True, eq=False)
class _PPO:
    """The static parts of one configuration and its pure functions."""

    config: PPOConfig
    dynamics: Dynamics
    policy: object
    value: QCritic
    tx: optax.GradientTransformation

    def normal(self, normalizer: env_batch.NormalizerState, obs):
        return env_batch.normalize(normalizer, obs, self.config.normalize_observations)

    def policy_fn(self, params: Params, normalizer: env_batch.NormalizerState):
        return lambda obs, eps: self.policy.sample(params, self.normal(normalizer, obs), eps)

    def act(self, ts: PPOState):
        return self.policy_fn(ts.learner.params["policy"], ts.normalizer)

    def v(self, params: Params, obs):
        """v(s) of a batch (any leading axes)."""
        flat = obs.reshape(-1, obs.shape[-1])
        values = jax.vmap(lambda o: self.value.q(params, o, o[:0])[0])(flat)
        return values.reshape(obs.shape[:-1])

    def log_prob(self, params: Params, obs, z):
        """log pi(a|s; w) of a batch, from the actions' Gaussian variables z (pre-squash for a
        tanh policy: the atanh of a saturated action would lose it and blow up the ratio), up to
        a Jacobian that does not depend on w and so cancels in the ratio."""
        return jax.vmap(lambda o, x: self.policy.latent_log_prob(params, o, x))(obs, z)

    def init(self, key: PRNGKey) -> PPOState:
        k_pi, k_v, k_env, key = jax.random.split(key, 4)
        params = {"policy": self.policy.init(k_pi), "value": self.value.init(k_v)}
        resets = jax.random.split(k_env, self.config.num_envs)
        return PPOState(
            learner=TrainState.create(params, self.tx),
            normalizer=env_batch.normalizer_init(self.dynamics.observation_size),
            env_states=jax.vmap(self.dynamics.reset)(resets),
            key=key,
            updates=jnp.zeros((), jnp.int32),
            env_steps=jnp.zeros((), jnp.int32),
        )

    def collect(self, ts: PPOState, key: PRNGKey):
        """One window of every env with the current policy: (final states, transitions)."""
        c = self.config
        noise = jax.vmap(
            lambda k: sample_noise(self.dynamics, k, c.unroll_length, self.policy.eps_shape)
        )(jax.random.split(key, c.num_envs))
        pol = self.act(ts)
        final, traj = jax.vmap(
            lambda s, n: rollout(self.dynamics, pol, s, n, dynamics_gradient="stop")
        )(ts.env_states, noise)
        return jax.lax.stop_gradient((final, traj, noise.eps))

    def batch(self, ts: PPOState, traj, eps) -> dict:
        """The samples of a window: normalized observations, actions, old log-probs, and either
        (``advantages='window'``) flattened over envs and steps with the GAE advantages and
        value targets, or (``'minibatch'``) per env, (envs, steps, ...), with what
        :meth:`window_targets` needs. A time-out (t reaching the episode limit) bootstraps from
        v(s'); only a termination stops the return."""
        c, params = self.config, ts.learner.params
        obs = self.normal(ts.normalizer, traj.obs)
        next_obs = self.normal(ts.normalizer, traj.next_obs)
        discount = c.gamma * (1.0 - traj.done)
        rewards = c.reward_scaling * traj.reward
        flat = lambda x: x.reshape(-1, *x.shape[2:])
        latent = jax.vmap(lambda o, e: self.policy.latent(params["policy"], o, e))(
            flat(obs), flat(eps)
        )
        log_old = self.log_prob(params["policy"], flat(obs), latent)
        if c.advantages == "minibatch":
            per_env = lambda x: x.reshape(*obs.shape[:2], *x.shape[1:])
            return {
                "obs": obs,
                "eps": eps,
                "latent": per_env(latent),
                "log_old": per_env(log_old),
                "next_obs": next_obs,
                "reward": rewards,
                "discount": discount,
            }
        v_t, v_tp1 = self.v(params["value"], obs), self.v(params["value"], next_obs)
        adv = jax.vmap(lambda r, d, v, vn: estimators.gae(r, d, v, vn, c.gae_lambda))(
            rewards, discount, v_t, v_tp1
        )
        return {
            "obs": flat(obs),
            "eps": flat(eps),
            "latent": latent,
            "log_old": log_old,
            "advantage": flat(adv),
            "target": flat(adv + v_t),
        }

    def window_targets(self, value_params: Params, batch: dict) -> dict:
        """Brax's targets for a minibatch of env windows (envs, steps, ...), from the current
        value network (gradients stopped): the lambda-returns G_t and the advantages
        A_t = r_t + discount_t G_{t+1} - v(s_t), G_T = v(s_T); flattened as :meth:`batch`'s."""
        v_t = jax.lax.stop_gradient(self.v(value_params, batch["obs"]))
        v_tp1 = jax.lax.stop_gradient(self.v(value_params, batch["next_obs"]))
        lam = self.config.gae_lambda
        g = jax.vmap(lambda r, d, vn: critics.lambda_returns(r, d, vn, lam))(
            batch["reward"], batch["discount"], v_tp1
        )
        g_next = jnp.concatenate([g[:, 1:], v_tp1[:, -1:]], axis=1)
        adv = batch["reward"] + batch["discount"] * g_next - v_t
        flat = lambda x: x.reshape(-1, *x.shape[2:])
        samples = {k: flat(batch[k]) for k in ("obs", "eps", "latent", "log_old")}
        return {**samples, "advantage": flat(adv), "target": flat(g)}

    def loss(self, params: Params, batch: dict):
        c = self.config
        if c.advantages == "minibatch":
            batch = self.window_targets(params["value"], batch)
        log_pi = self.log_prob(params["policy"], batch["obs"], batch["latent"])
        ratio = jnp.exp(log_pi - batch["log_old"])
        adv = batch["advantage"]
        if c.normalize_advantage:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        clipped = jnp.clip(ratio, 1.0 - c.clip, 1.0 + c.clip)
        policy_loss = -jnp.mean(jnp.minimum(ratio * adv, clipped * adv))
        value_loss = 0.5 * jnp.mean((self.v(params["value"], batch["obs"]) - batch["target"]) ** 2)
        # The entropy from the window's eps reparameterized at w: log pi(a|s; w) with the tanh's
        # Jacobian, whose gradient keeps the pre-squash mean off saturation (brax's PPO).
        draws = jax.vmap(lambda o, e: self.policy.sample_and_log_prob(params["policy"], o, e)[1])
        entropy = -jnp.mean(draws(batch["obs"], batch["eps"]))
        total = policy_loss + c.value_coef * value_loss - c.entropy_cost * entropy
        return total, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy}

    def fit(self, learner: TrainState, batch: dict, key: PRNGKey):
        """``update_epochs`` passes of ``num_minibatches`` steps of :meth:`loss`."""
        c = self.config
        count = batch["obs"].shape[0]  # transitions, or env windows ('minibatch')
        size = count // c.num_minibatches

        def epoch(learner, k):
            order = jax.random.permutation(k, count)
            chunks = jax.tree.map(
                lambda x: x[order].reshape(c.num_minibatches, size, *x.shape[1:]), batch
            )

            def minibatch(learner, mb):
                learner, step = learner.step(self.loss, mb, has_aux=True)
                return learner, {**step.aux, "grad_norm": step.grad_norm}

            return jax.lax.scan(minibatch, learner, chunks)

        learner, metrics = jax.lax.scan(epoch, learner, jax.random.split(key, c.update_epochs))
        return learner, jax.tree.map(jnp.mean, metrics)

    def update(self, ts: PPOState) -> tuple[PPOState, dict]:
        c = self.config
        key, k_roll, k_fit, k_reset = jax.random.split(ts.key, 4)
        final, traj, eps = self.collect(ts, k_roll)
        learner, metrics = self.fit(ts.learner, self.batch(ts, traj, eps), k_fit)
        new = PPOState(
            learner=learner,
            normalizer=env_batch.normalizer_update(ts.normalizer, traj.obs),
            env_states=env_batch.reset_finished(self.dynamics, final, k_reset, c.episode_length),
            key=key,
            updates=ts.updates + 1,
            env_steps=ts.env_steps + c.num_envs * c.unroll_length,
        )
        return new, {
            **metrics,
            "reward_per_step": traj.reward.mean(),
            "skipped_updates": learner.skipped,
        }

    def evaluate(self, ts: PPOState, key: PRNGKey) -> jax.Array:
        return env_batch.evaluate_config(
            self.dynamics, self.act(ts), key, self.config, self.policy.eps_shape
        )


def make_trainer(config: PPOConfig, dynamics: Dynamics | None = None) -> Trainer:
    """Builds the pure ``init``/``update``/``evaluate`` functions for ``config`` (cached per
    config for the registered task, as every trainer)."""
    return loop.build_trainer(_make_trainer, config, dynamics)


def _make_trainer(config: PPOConfig, dynamics: Dynamics) -> Trainer:
    policy = POLICIES[config.policy].for_dynamics(
        dynamics,
        hidden=config.hidden,
        init_std=config.init_std,
        activation=config.policy_activation,
    )
    value = QCritic(
        dynamics.observation_size,
        0,
        num_q=1,
        hidden=config.hidden,
        activation=config.value_activation,
    )
    clip = config.max_grad_norm if math.isfinite(config.max_grad_norm) else 1e30
    tx = guarded(optax.adam(config.learning_rate), clip)
    parts = _PPO(config=config, dynamics=dynamics, policy=policy, value=value, tx=tx)
    return Trainer.of(parts, policy=policy, critic=value)
