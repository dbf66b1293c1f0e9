"""Policy optimization through the unroll engine: BPO (APG-style) and SVG(n)/DPMB (SHAC-style).

One trainer, configured by the estimator (:mod:`mbpo.estimators`):

* ``bpo``: short windows of ``horizon`` steps without reset (each window starts where the last
  one ended, with the gradient stopped there), no critic; Adam with betas (0.7, 0.95), gradient
  clipping and observation normalization, as brax's APG (Freeman et al. 2021).
* ``svg`` / ``dpmb_r`` / ``dpmb_sf``: the same windows, ended by the bootstrap gamma^n q(s_n, a_n)
  of a twin critic (min over the pair, target network) trained on the window's transitions with
  TD(lambda) targets, as SHAC (Xu et al. 2022) with a q critic.

``update`` is one jitted pure function ``TrainState -> (TrainState, metrics)``; ``jax.vmap`` of
``init``/``update`` over keys trains several seeds in one program.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

import envs
from mbpo import estimators
from mbpo.agents import loop
from mbpo.agents.common import NormalizerState, evaluate, normalize, normalizer_init, normalizer_update, reset_finished
from mbpo.agents.loop import Trainer, first_to_reach
from mbpo.cli import option
from mbpo.critics import QCritic, polyak, q_step, window_targets
from mbpo.dynamics.base import Dynamics, State
from mbpo.optim import gradient_step, guarded
from mbpo.policies import POLICIES
from mbpo.types import Params, PRNGKey
from mbpo.unroll import RolloutNoise, rollout

ESTIMATOR_POLICY = {"bpo": "deterministic", "dpmb_r": "deterministic", "dpmb_sf": "deterministic", "critic_only": "gaussian", "svg": "gaussian"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnrollTrainerConfig:
    """Settings of :func:`make_trainer`; validated when built."""

    env: str = option("pendulum", "task name (see `envs.names()`)")
    brax_backend: str = option("generalized", "physics pipeline of Brax tasks: generalized | positional | spring | mjx")
    estimator: str = option("svg", "bpo | svg | dpmb_r | dpmb_sf | critic_only", choices=tuple(estimators.ESTIMATORS))
    horizon: int | None = option(
        4, "model steps n per window, >= 0 (0: SVG(0) on 1-step data); none: whole episodes, no critic (SVG(inf)/BPO)"
    )
    policy: str | None = option(None, "deterministic | gaussian | tanh_gaussian; default: the estimator's kind")
    num_envs: int = option(64, "parallel environments per update")
    episode_length: int = option(200, "steps before an environment is reset")
    num_updates: int = option(1500, "policy updates")
    gamma: float = option(0.95, "discount")
    td_lambda: float = option(0.95, "lambda of the critic's TD(lambda) targets")
    actor_lr: float = option(2e-3, "policy learning rate (Adam)")
    critic_lr: float = option(2e-3, "critic learning rate (Adam)")
    adam_b1: float = option(0.7, "Adam beta1 (APG/SHAC use 0.7)")
    adam_b2: float = option(0.95, "Adam beta2 (APG/SHAC use 0.95)")
    max_grad_norm: float = option(1.0, "global-norm gradient clipping")
    critic_epochs: int = option(8, "passes over each window's transitions per critic update")
    critic_minibatches: int = option(4, "minibatches per critic pass")
    tau: float = option(0.2, "Polyak rate of the target critic")
    hidden: tuple[int, ...] = option((64, 64), "hidden sizes of policy and critic")
    init_std: float = option(0.5, "initial policy standard deviation (stochastic policies)")
    normalize_observations: bool = option(True, "normalize observations with running statistics")
    eval_every: int = option(25, "updates between evaluations")
    eval_envs: int = option(32, "episodes per evaluation")
    seed: int = option(0, "random seed")
    target_return: float | None = option(
        None, "report the env steps and wall-clock at which the eval return first reaches this (pendulum: -200)"
    )

    def __post_init__(self):
        loop.check_task(self.env, self.brax_backend)
        if self.estimator not in estimators.ESTIMATORS:
            raise ValueError(f"unknown estimator {self.estimator!r}; known: {', '.join(estimators.ESTIMATORS)}")
        if self.policy is not None and self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; allowed: {', '.join(POLICIES)}")
        if self.horizon is not None and (self.horizon < 0 or (self.horizon == 0 and self.estimator == "bpo")):
            raise ValueError(f"horizon must be >= 0 (>= 1 for bpo) or None (whole episodes), got {self.horizon}")
        if self.horizon is None and self.estimator in ("dpmb_sf", "critic_only"):
            raise ValueError(f"{self.estimator} bootstraps with a critic: give a finite horizon, not None")
        for name in ("num_envs", "episode_length", "num_updates", "critic_epochs", "critic_minibatches", "eval_every", "eval_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_envs * self.window % self.critic_minibatches:
            raise ValueError(
                f"critic_minibatches={self.critic_minibatches} must divide num_envs * window = {self.num_envs * self.window}"
            )
        if not 0 < self.gamma <= 1 or not 0 <= self.td_lambda <= 1 or not 0 < self.tau <= 1:
            raise ValueError(f"need 0 < gamma <= 1, 0 <= td_lambda <= 1, 0 < tau <= 1; got {self.gamma}, {self.td_lambda}, {self.tau}")
        if min(self.actor_lr, self.critic_lr, self.max_grad_norm, self.init_std) <= 0:
            raise ValueError("actor_lr, critic_lr, max_grad_norm and init_std must be > 0")
        loop.check_sizes(hidden=self.hidden)
        if self.horizon is not None and self.horizon > self.episode_length:
            raise ValueError(
                f"horizon={self.horizon} is longer than episode_length={self.episode_length}: windows would run past the time "
                "limit; use a horizon <= episode_length, or none for whole episodes"
            )
        estimator = estimators.make(self.estimator, self.horizon)
        kind = self.policy_kind
        try:
            estimator.check_policy(kind == "deterministic")
        except ValueError as error:
            raise ValueError(f"--policy {kind}: {error}; leave --policy out for the estimator's own kind") from None
        if estimator.dynamics_gradient == "score" and not envs.has_log_prob(self.env):
            with_log_prob = [n for n in envs.names() if not envs.is_brax(n) and envs.has_log_prob(n)]
            raise ValueError(
                f"{self.estimator} needs the transition density log p(s'|s,a), which env {self.env!r} does not have; "
                f"tasks with one: {', '.join(with_log_prob)}"
            )
        loop.check_counters(self.num_updates * self.num_envs * self.window, self.num_updates)

    @property
    def policy_kind(self) -> str:
        """The policy: ``policy``, or the estimator's own kind."""
        return self.policy or ESTIMATOR_POLICY[self.estimator]

    @property
    def label(self) -> str:
        """A short name for run directories and plots, e.g. ``svg-4``."""
        return f"{self.estimator}-{self.horizon}"

    @property
    def window(self) -> int:
        """Environment steps per update and environment: n, one for n = 0 (the critic's data), the
        episode for ``horizon=None``."""
        return self.episode_length if self.horizon is None else max(self.horizon, 1)


class TrainState(struct.PyTreeNode):
    """Everything an update reads and writes; a pytree, so seeds vmap over it."""

    policy_params: Params
    policy_opt: optax.OptState
    critic_params: Params
    target_critic_params: Params
    critic_opt: optax.OptState
    normalizer: NormalizerState
    env_states: State
    key: PRNGKey
    updates: jax.Array
    env_steps: jax.Array


def _optimizer(config: UnrollTrainerConfig, lr: float) -> optax.GradientTransformation:
    return guarded(optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2), config.max_grad_norm)


def make_trainer(config: UnrollTrainerConfig, dynamics: Dynamics | None = None) -> Trainer:
    """Builds the pure ``init``/``update``/``evaluate`` functions for ``config``.

    Args:
      config: the settings.
      dynamics: the model to optimize through; default ``envs.make(config.env)``, in which case
        the trainer is cached per config, so its compiled programs are reused (a resumed or
        evaluated run in the same process compiles nothing again).
    """
    return loop.build_trainer(_make_trainer, config, dynamics)


def _make_trainer(config: UnrollTrainerConfig, dynamics: Dynamics) -> Trainer:
    estimator = estimators.make(config.estimator, config.horizon)
    policy_kind = config.policy_kind
    policy = POLICIES[policy_kind].for_dynamics(
        dynamics, hidden=config.hidden, **({} if policy_kind == "deterministic" else {"init_std": config.init_std})
    )
    estimator.check_policy(policy_kind == "deterministic")
    critic = QCritic(dynamics.observation_size, dynamics.action_size, num_q=2, hidden=config.hidden)
    actor_opt = _optimizer(config, config.actor_lr)
    critic_opt = _optimizer(config, config.critic_lr)
    bootstrap = estimator.bootstrap
    window = config.window
    n = window if config.horizon is None else config.horizon

    def policy_fn(params, normalizer):
        return lambda obs, eps: policy.sample(params, normalize(normalizer, obs, config.normalize_observations), eps)

    def init(key: PRNGKey) -> TrainState:
        k_pi, k_q, k_env, key = jax.random.split(key, 4)
        policy_params = policy.init(k_pi)
        critic_params = critic.init(k_q)
        env_states = jax.vmap(dynamics.reset)(jax.random.split(k_env, config.num_envs))
        return TrainState(
            policy_params=policy_params,
            policy_opt=actor_opt.init(policy_params),
            critic_params=critic_params,
            target_critic_params=critic_params,
            critic_opt=critic_opt.init(critic_params),
            normalizer=normalizer_init(dynamics.observation_size),
            env_states=env_states,
            key=key,
            updates=jnp.zeros((), jnp.int32),
            env_steps=jnp.zeros((), jnp.int32),
        )

    def q_target(ts: TrainState):
        return lambda obs, a: critic.min_q(ts.target_critic_params, obs, a)

    def actor_step(ts: TrainState, noise: RolloutNoise):
        def objective(w):
            return estimators.surrogate(
                estimator,
                dynamics,
                policy_fn(w, ts.normalizer),
                jax.lax.stop_gradient(ts.env_states),
                noise,
                gamma=config.gamma,
                q=q_target(ts) if bootstrap else None,
            )

        step = gradient_step(objective, ts.policy_params, ts.policy_opt, actor_opt, maximize=True, has_aux=True)
        return step.params, step.opt_state, step.value, step.aux, step.grad_norm

    def data_window(ts: TrainState, result, noise: RolloutNoise):
        """The window's transitions (batch, time) and the action after its last state."""
        if n > 0:
            return jax.lax.stop_gradient((result.trajectory, result.final_state, result.final_action))
        # SVG(0): the objective used no model step; collect one step of data for the critic.
        pol = policy_fn(ts.policy_params, ts.normalizer)
        eps = noise.eps  # (B, 1, ...): a_0 for the critic data and a_1 for its bootstrap
        xi = jax.vmap(lambda k: dynamics.sample_noise(k)[None])(jax.random.split(jax.random.fold_in(ts.key, 7), config.num_envs))
        final, traj = jax.vmap(lambda s, e, x: rollout(dynamics, pol, s, RolloutNoise(e, x), dynamics_gradient="stop"))(
            ts.env_states, eps, xi
        )
        final_action = jax.vmap(pol)(final.obs, eps[:, 0])
        return jax.lax.stop_gradient((traj, final, final_action))

    def critic_step(ts: TrainState, traj, final_action, key):
        targets = window_targets(q_target(ts), traj, final_action, config.gamma, config.td_lambda)
        obs = traj.obs.reshape(-1, traj.obs.shape[-1])
        act = traj.action.reshape(-1, traj.action.shape[-1])
        y = targets.reshape(-1)
        size = y.shape[0] // config.critic_minibatches

        def epoch(carry, k):
            def minibatch(carry, idx):
                params, opt_state, loss = q_step(critic, critic_opt, *carry, obs[idx], act[idx], y[idx])
                return (params, opt_state), loss

            perm = jax.random.permutation(k, y.shape[0]).reshape(config.critic_minibatches, size)
            return jax.lax.scan(minibatch, carry, perm)

        (params, opt_state), losses = jax.lax.scan(
            epoch, (ts.critic_params, ts.critic_opt), jax.random.split(key, config.critic_epochs)
        )
        return params, opt_state, losses.mean()

    def update(ts: TrainState) -> tuple[TrainState, dict]:
        key, k_noise, k_critic, k_reset = jax.random.split(ts.key, 4)
        noise = estimators.draw_noise(estimator, dynamics, k_noise, policy.eps_shape, n, config.num_envs)
        policy_params, policy_opt, value, result, grad_norm = actor_step(ts, noise)
        traj, final_state, final_action = data_window(ts, result, noise)
        if bootstrap:
            critic_params, critic_opt_state, critic_loss = critic_step(ts, traj, final_action, k_critic)
            target = polyak(ts.target_critic_params, critic_params, config.tau)
        else:
            critic_params, critic_opt_state, target = ts.critic_params, ts.critic_opt, ts.target_critic_params
            critic_loss = jnp.zeros(())
        new = TrainState(
            policy_params=policy_params,
            policy_opt=policy_opt,
            critic_params=critic_params,
            target_critic_params=target,
            critic_opt=critic_opt_state,
            normalizer=normalizer_update(ts.normalizer, traj.obs),
            env_states=reset_finished(dynamics, final_state, k_reset, config.episode_length),
            key=key,
            updates=ts.updates + 1,
            env_steps=ts.env_steps + config.num_envs * window,
        )
        metrics = {
            "objective": value,
            "grad_norm": grad_norm,
            "reward_per_step": traj.reward.mean(),
            "critic_loss": critic_loss,
            "skipped_updates": policy_opt.total_notfinite,
        }
        return new, metrics

    def evaluate_fn(ts: TrainState, key: PRNGKey) -> jax.Array:
        return evaluate(
            dynamics,
            policy_fn(ts.policy_params, ts.normalizer),
            key,
            num_envs=config.eval_envs,
            episode_length=config.episode_length,
            eps_shape=policy.eps_shape,
        )

    return Trainer(
        config=config,
        dynamics=dynamics,
        policy=policy,
        critic=critic,
        act=lambda ts: policy_fn(ts.policy_params, ts.normalizer),
        init=init,
        update=update,
        evaluate=evaluate_fn,
    )


def train(
    config: UnrollTrainerConfig,
    *,
    dynamics: Dynamics | None = None,
    callback: Callable[[dict, TrainState], None] | None = None,
    resume: tuple[TrainState, list[dict]] | None = None,
) -> tuple[TrainState, list[dict]]:
    """:func:`mbpo.agents.loop.train` of ``make_trainer(config, dynamics)``."""
    return loop.train(make_trainer(config, dynamics), callback=callback, resume=resume)


def train_seeds(config: UnrollTrainerConfig, num_seeds: int, *, dynamics: Dynamics | None = None) -> tuple[TrainState, dict]:
    """:func:`mbpo.agents.loop.train_seeds` of ``make_trainer(config, dynamics)``."""
    return loop.train_seeds(make_trainer(config, dynamics), num_seeds)


def main(argv=None) -> None:
    from mbpo.cli import parse

    config = parse(UnrollTrainerConfig, argv, prog="python -m mbpo.agents.unroll_trainer")
    print(f"training {config.estimator} (n = {config.horizon}) on {config.env}")

    def report(r, _):
        print(
            f"updates {r['updates']:5d}  env steps {r['env_steps']:8d}  eval return {r['eval_return']:9.2f}  "
            f"grad norm {r['grad_norm']:8.3f}  critic loss {r['critic_loss']:8.4f}  {r['wall_time']:6.1f} s",
            flush=True,
        )

    _, history = train(config, callback=report)
    if config.target_return is not None:
        hit = first_to_reach(history, config.target_return)
        if hit is None:
            print(f"eval return never reached {config.target_return} in {history[-1]['env_steps']} env steps")
        else:
            print(
                f"reached eval return {hit['eval_return']:.1f} >= {config.target_return} after {hit['env_steps']} env steps, "
                f"{hit['updates']} updates, {hit['wall_time']:.1f} s wall-clock (compilation included)"
            )


if __name__ == "__main__":
    main()
