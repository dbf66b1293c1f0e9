"""Policy optimization through the unroll engine: BPO (APG-style) and SVG(n)/DPMB (SHAC-style).

One trainer, configured by the estimator (:mod:`mbpo.estimators`):

* ``bpo``: short windows of ``horizon`` steps without reset (each window starts where the last
  one ended, with the gradient stopped there), no critic; Adam with betas (0.7, 0.95), gradient
  clipping and observation normalization, as brax's APG (Freeman et al. 2021).
* ``svg`` / ``dpmb_r`` / ``dpmb_sf``: the same windows, ended by the bootstrap gamma^n q(s_n, a_n)
  of a twin critic (min over the pair, target network) trained on the window's transitions with
  TD(lambda) targets, as SHAC (Xu et al. 2022) with a q critic.
* ``critic="v"``: the bootstrap gamma^n v(s_n) of a state-value critic, SHAC's own. ``VARIANTS``
  holds the named configurations (``shac``: SHAC's recipe, with its linear learning-rate decay,
  its actor loss averaged over the window's steps and its guard, per env: an env whose objective
  or gradient is not finite, or whose state leaves +-1e6, is left out of that update's gradient
  and reset).

``update`` is one jitted pure function ``UnrollState -> (UnrollState, metrics)``; ``jax.vmap`` of
``init``/``update`` over keys trains several seeds in one program.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

import envs
from mbpo import estimators
from mbpo.agents import loop
from mbpo.agents.env_batch import (
    NormalizerState,
    evaluate_config,
    normalize,
    normalizer_init,
    normalizer_update,
    reset_finished,
)
from mbpo.agents.loop import Trainer
from mbpo.cli import check_choices, check_interval, check_positive, check_sizes, option
from mbpo.critics import QCritic, q_step, window_targets
from mbpo.dynamics.base import Dynamics, State
from mbpo.networks import ACTIVATIONS
from mbpo.optim import Step, TrainState, guarded, temperature_step
from mbpo.policies import POLICIES
from mbpo.types import Params, PRNGKey
from mbpo.unroll import (
    RolloutNoise,
    alive_mask,
    check_remat,
    draw_xi,
    remat_steps,
    rollout,
    truncated,
)

CRITICS = ("q", "v")
BOOTSTRAPS = ("min", "mean")
SCHEDULES = ("constant", "linear")
PRECISIONS = ("highest", "high", "default")
GUARD_LIMIT = 1e6  # SHAC's: a state or observation beyond it counts as diverged
ESTIMATOR_POLICY = {
    "bpo": "deterministic",
    "dpmb_r": "deterministic",
    "dpmb_sf": "deterministic",
    "critic_only": "gaussian",
    "svg": "gaussian",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnrollTrainerConfig(loop.UnrollFields):
    """Settings of :func:`make_trainer`; validated when built."""

    estimator: str = option(
        "svg", "bpo | svg | dpmb_r | dpmb_sf | critic_only", choices=tuple(estimators.ESTIMATORS)
    )
    horizon: int | None = option(
        4,
        "model steps n per window, >= 0 (0: SVG(0) on 1-step data); none: whole episodes, no "
        "critic (SVG(inf)/BPO)",
    )
    policy: str | None = option(
        None, "deterministic | gaussian | tanh_gaussian; default: the estimator's kind"
    )
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
    policy_activation: str = option(
        "tanh", "hidden activation of the policy (SHAC's: elu)", choices=tuple(ACTIVATIONS)
    )
    critic_activation: str = option(
        "relu", "hidden activation of the critic (SHAC's: elu)", choices=tuple(ACTIVATIONS)
    )
    layer_norm: bool = option(
        False, "LayerNorm before each hidden activation of policy and critic (SAPO's networks)"
    )
    init_std: float = option(0.5, "initial policy standard deviation (stochastic policies)")
    normalize_observations: bool = option(True, "normalize observations with running statistics")
    critic: str = option(
        "q", "q: q(s, a), bootstrap gamma^n q(s_n, a_n); v: v(s) (SHAC)", choices=CRITICS
    )
    num_critics: int = option(2, "critic ensemble size; the critics' targets take the minimum")
    actor_bootstrap: str = option(
        "min",
        "how the actor's bootstrap reduces the critic ensemble: min (pessimistic, as the "
        "targets) | mean (mineral's SAPO: actor_loss_avgcritics)",
        choices=BOOTSTRAPS,
    )
    lr_schedule: str = option(
        "constant", "constant | linear: both learning rates decay to 1e-5 (SHAC)", choices=SCHEDULES
    )
    mean_over_steps: bool = option(False, "divide the objective by its n steps (SHAC's loss)")
    per_env_guard: bool = option(
        False, "leave out, and reset, each env whose gradient is not finite or state > 1e6"
    )
    adaptive_horizon: bool = option(
        False,
        "AHAC: each env's window is cut before the step where its accumulated contact signal "
        "passes contact_threshold (not before horizon_min steps), under a cap that follows a "
        "dual update; horizon is the longest window. A dynamics without a contact signal keeps "
        "the fixed horizon",
    )
    horizon_min: int = option(8, "adaptive_horizon: the shortest window (AHAC: 8)")
    contact_threshold: float = option(
        1.0,
        "adaptive_horizon: the contact budget C of a window, in the dynamics' contact-signal "
        "units (Dynamics.contact)",
    )
    horizon_lr: float = option(
        0.05,
        "adaptive_horizon: dual step of the cap, cap += horizon_lr * horizon * (1 - S / C), S the "
        "mean accumulated contact signal within the cap",
    )
    entropy: bool = option(
        False, "maximum entropy (SAPO): alpha H(pi(.|s_t)) in the return and the critic targets"
    )
    temperature_init: float = option(1.0, "entropy: initial temperature alpha")
    temperature_lr: float = option(5e-3, "entropy: temperature learning rate (Adam)")
    entropy_target: float | None = option(
        None, "entropy: the entropy alpha is tuned to; none: -0.5 per action dimension (SAPO)"
    )
    matmul_precision: str = option(
        "highest",
        "float32 matmuls of the update: highest | high | default (TF32 on recent GPUs, reported "
        "to make first-order gradients explode)",
        choices=PRECISIONS,
    )

    def __post_init__(self):
        loop.check_task(self)
        check_remat(self.remat)
        check_choices(self)
        if self.policy is not None and self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; allowed: {', '.join(POLICIES)}")
        estimators.check_horizon(self.estimator, self.horizon)
        check_positive(
            self,
            "num_envs",
            "episode_length",
            "num_updates",
            "critic_epochs",
            "critic_minibatches",
            "num_critics",
            "eval_every",
            "eval_envs",
        )
        if self.num_envs * self.steps_per_update % self.critic_minibatches:
            raise ValueError(
                f"critic_minibatches={self.critic_minibatches} must divide num_envs * window = "
                f"{self.num_envs * self.steps_per_update}"
            )
        check_interval(self, "(0, 1]", "gamma", "tau")
        check_interval(self, "[0, 1]", "td_lambda")
        check_interval(self, "(0, inf]", "actor_lr", "critic_lr", "max_grad_norm", "init_std")
        check_sizes(hidden=self.hidden)
        if self.horizon is not None and self.horizon > self.episode_length:
            raise ValueError(
                f"horizon={self.horizon} is longer than episode_length={self.episode_length}: "
                "windows would run past the time "
                "limit; use a horizon <= episode_length, or none for whole episodes"
            )
        estimator = estimators.make(self.estimator, self.horizon)
        kind = self.policy_kind
        try:
            estimator.check_policy(kind == "deterministic")
        except ValueError as error:
            raise ValueError(
                f"--policy {kind}: {error}; leave --policy out for the estimator's own kind"
            ) from None
        self._check_first_order(estimator, kind)
        if estimator.dynamics_gradient == "score" and not envs.has_log_prob(self.env):
            with_log_prob = [
                n for n in envs.names() if not envs.is_brax(n) and envs.has_log_prob(n)
            ]
            raise ValueError(
                f"{self.estimator} needs the transition density log p(s'|s,a), which env "
                f"{self.env!r} does not have; "
                f"tasks with one: {', '.join(with_log_prob)}"
            )
        loop.check_counters(
            self.num_updates * self.num_envs * self.steps_per_update, self.num_updates
        )

    def _check_first_order(self, estimator: estimators.Estimator, kind: str) -> None:
        """The checks of SAPO's entropy and AHAC's adaptive horizon (``__post_init__``'s)."""
        if self.entropy and (kind == "deterministic" or self.horizon == 0):
            raise ValueError(
                "entropy needs a stochastic policy and a horizon >= 1 (its bonus is summed over "
                f"the window's steps); got policy {kind}, horizon {self.horizon}"
            )
        if self.adaptive_horizon:
            if self.horizon is None or not estimator.bootstrap or self.entropy:
                raise ValueError(
                    "adaptive_horizon cuts windows that end in a critic's bootstrap: it needs "
                    "svg (or dpmb_r/dpmb_sf) with an int horizon and no entropy; got estimator "
                    f"{self.estimator}, horizon {self.horizon}, entropy {self.entropy}"
                )
            if not 1 <= self.horizon_min <= self.horizon:
                raise ValueError(
                    f"need 1 <= horizon_min <= horizon; got horizon_min={self.horizon_min}, "
                    f"horizon={self.horizon}"
                )
            check_interval(self, "(0, inf]", "contact_threshold", "horizon_lr")
        check_interval(self, "(0, inf]", "temperature_init", "temperature_lr")

    @property
    def program_run_fields(self) -> tuple[str, ...]:
        """The run fields the compiled update reads: ``num_updates``, the length of the linear
        learning-rate schedule (:func:`mbpo.agents.loop.build_trainer`)."""
        return ("num_updates",) if self.lr_schedule == "linear" else ()

    @property
    def policy_kind(self) -> str:
        """The policy: ``policy``, or the estimator's own kind."""
        return self.policy or ESTIMATOR_POLICY[self.estimator]

    @property
    def label(self) -> str:
        """A short name for run directories and plots, e.g. ``svg-4``."""
        return f"{self.estimator}-{self.horizon}"

    @property
    def steps_per_update(self) -> int:
        """Environment steps per update and environment: n, one for n = 0 (the critic's data), the
        episode for ``horizon=None``."""
        return self.episode_length if self.horizon is None else max(self.horizon, 1)


# SHAC (Xu et al. 2022), NVlabs/DiffRL's examples/cfg/shac/cheetah.yaml: 32-step windows on 64
# envs, a Gaussian actor with one learned log-std (init -1), a v(s) critic fitted 16 epochs x
# 4 minibatches to TD(0.95) targets of a target critic (target <- 0.2 target + 0.8 critic),
# Adam (0.7, 0.95) at 2e-3 decaying linearly to 1e-5, clipping at 1, normalized observations,
# the actor loss averaged over steps and envs, NaN or > 1e6 states guarded. DiffRL's actor is
# (128, 64, 32) ELU and its critic (64, 64) ELU; here both are `hidden`. SAPO and AHAC are
# written as their changes to it.
SHAC: dict = {
    "estimator": "svg",
    "horizon": 32,
    "policy": "gaussian",
    "init_std": 0.368,
    "num_envs": 64,
    "gamma": 0.99,
    "td_lambda": 0.95,
    "critic": "v",
    "num_critics": 1,
    "critic_epochs": 16,
    "critic_minibatches": 4,
    "tau": 0.8,
    "actor_lr": 2e-3,
    "critic_lr": 2e-3,
    "adam_b1": 0.7,
    "adam_b2": 0.95,
    "max_grad_norm": 1.0,
    "lr_schedule": "linear",
    "mean_over_steps": True,
    "per_env_guard": True,
    "normalize_observations": True,
}

# Named configurations of this trainer (``mbpo train --algo NAME``; options given override them).
VARIANTS: dict[str, dict] = {
    "shac": SHAC,
    # SAPO (Xing et al. 2025), etaoxing/mineral's cfgs/agent/DFlexAntSAPO.yaml over SHAC2: SHAC's
    # windows with a tanh-squashed Gaussian actor, alpha H~(pi(.|s_t)) in the return and in the
    # critic targets (H~ = (H + |H_target|) / 2|H_target|, H_target = -0.5 per action), alpha from
    # 1 tuned at 5e-3, two v critics and no target critic (tau 1), critic lr 5e-4, clipping at
    # 0.5. mineral's actor bootstraps with the mean of the two critics and uses LayerNorm/SiLU
    # networks and AdamW; here the bootstrap is their minimum and the networks are `hidden` MLPs.
    "sapo": {
        **SHAC,
        "policy": "tanh_gaussian",
        "init_std": 0.5,
        "num_critics": 2,
        "tau": 1.0,
        "critic_lr": 5e-4,
        "max_grad_norm": 0.5,
        "entropy": True,
        "temperature_init": 1.0,
        "temperature_lr": 5e-3,
    },
    # AHAC (Georgiev et al. 2024), imgeorgiev/FoRL-WM's cfg/alg/ahac.yaml over SHAC: windows of at
    # most 64 steps, each env's cut before its accumulated contact signal passes the budget (not
    # before 8 steps), under a cap that follows the dual update of the budget; the min over 3 v
    # critics (critic lr 5e-4). FoRL's actor is (400, 200, 100) and its critic (400, 200), Mish;
    # here both are `hidden`. The budget is in the dynamics' contact units (Brax:
    # |d obs'/d a . u| per step, mbpo.dynamics.brax_env); 60 is sized to halfcheetah
    # (positional), about 6 a step with a random policy: windows of about 10 steps, where its
    # 8-step gradients still match finite differences and its 32-step ones do not
    # (experiments/results/brax_gradient_check.md).
    "ahac": {
        **SHAC,
        "horizon": 64,
        "horizon_min": 8,
        "adaptive_horizon": True,
        "contact_threshold": 60.0,
        "horizon_lr": 0.05,
        "num_critics": 3,
        "critic_lr": 5e-4,
    },
}


class UnrollState(struct.PyTreeNode):
    """Everything an update reads and writes; a pytree, so seeds vmap over it.

    Attributes:
      policy: the policy's parameters and optimizer state (:class:`mbpo.optim.TrainState`).
      critic: the twin q critic, its optimizer state and its Polyak target.
      normalizer: the running observation statistics.
      env_states, key, updates, env_steps.
      temperature: log alpha and its optimizer state (``entropy``), else None.
      horizon_cap: the cap of the windows (``adaptive_horizon``, float), else None.
    """

    policy: TrainState
    critic: TrainState
    normalizer: NormalizerState
    env_states: State
    key: PRNGKey
    updates: jax.Array
    env_steps: jax.Array
    temperature: TrainState | None = None
    horizon_cap: jax.Array | None = None


def _optimizer(
    config: UnrollTrainerConfig, lr: float, steps_per_update: int = 1
) -> optax.GradientTransformation:
    """Guarded Adam at ``lr``, or (``lr_schedule="linear"``) decaying linearly to 1e-5 over the
    run's ``num_updates * steps_per_update`` optimizer steps, as SHAC."""
    if config.lr_schedule == "linear":
        lr = optax.linear_schedule(lr, 1e-5, config.num_updates * steps_per_update)
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


@dataclasses.dataclass(frozen=True, eq=False)
class _Unroll:
    """The static parts of one configuration and its pure functions: the estimator's surrogate
    on fresh windows of the current environments, then the critic on the window's data."""

    config: UnrollTrainerConfig
    dynamics: Dynamics
    estimator: estimators.Estimator
    policy: Any
    critic: QCritic
    actor_opt: optax.GradientTransformation
    critic_opt: optax.GradientTransformation
    alpha_opt: optax.GradientTransformation

    @property
    def n(self) -> int:
        """Model steps of the surrogate (the whole window for ``horizon=None``)."""
        return self.config.steps_per_update if self.config.horizon is None else self.config.horizon

    def policy_fn(self, params: Params, normalizer: NormalizerState):
        c = self.config
        return lambda obs, eps: self.policy.sample(
            params, normalize(normalizer, obs, c.normalize_observations), eps
        )

    def act(self, ts: UnrollState):
        return self.policy_fn(ts.policy.params, ts.normalizer)

    def init(self, key: PRNGKey) -> UnrollState:
        k_pi, k_q, k_env, key = jax.random.split(key, 4)
        return UnrollState(
            policy=TrainState.create(self.policy.init(k_pi), self.actor_opt),
            critic=TrainState.create(self.critic.init(k_q), self.critic_opt, target=True),
            normalizer=normalizer_init(self.dynamics.observation_size),
            env_states=jax.vmap(self.dynamics.reset)(jax.random.split(k_env, self.config.num_envs)),
            key=key,
            updates=jnp.zeros((), jnp.int32),
            env_steps=jnp.zeros((), jnp.int32),
            temperature=TrainState.create(
                jnp.log(jnp.asarray(self.config.temperature_init, jnp.float32)), self.alpha_opt
            )
            if self.config.entropy
            else None,
            horizon_cap=jnp.asarray(float(self.n), jnp.float32)
            if self.config.adaptive_horizon
            else None,
        )

    @property
    def target_entropy(self) -> float:
        c = self.config
        size = self.dynamics.action_size
        return -0.5 * size if c.entropy_target is None else c.entropy_target

    def scaled_entropy(self, entropy):
        """SAPO's entropy term: (H + |H_target|) / (2 |H_target|), 1 at H = |H_target|."""
        scale = abs(self.target_entropy)
        return (entropy + scale) / (2 * scale)

    def log_pi(self, params: Params, normalizer: NormalizerState, traj, eps):
        """log pi(a_t|s_t; params) of a batch of windows, from their observations and eps."""
        c = self.config

        def one(obs, e):
            normal = normalize(normalizer, obs, c.normalize_observations)
            return self.policy.sample_and_log_prob(params, normal, e)[1]

        return jax.vmap(jax.vmap(one))(traj.obs, eps[:, : traj.obs.shape[1]])

    def alpha(self, ts: UnrollState):
        return jax.lax.stop_gradient(jnp.exp(ts.temperature.params))

    def entropy_bonus(self, ts: UnrollState, w: Params, result, noise) -> jax.Array:
        """Mean over envs of sum_t gamma^t alive_t alpha H~_t, H_t = -log pi(a_t|s_t; w) of the
        window's own actions (reparameterized: differentiable in w and through s_t)."""
        traj = result.trajectory
        log_pi = self.log_pi(w, ts.normalizer, traj, noise.eps)
        n = log_pi.shape[1]
        discount = self.config.gamma ** jnp.arange(n, dtype=log_pi.dtype)
        alive = jax.vmap(alive_mask)(traj.done)
        bonus = self.alpha(ts) * self.scaled_entropy(-log_pi)
        return jnp.mean(jnp.sum(discount * alive * bonus, axis=1))

    def critic_action(self, action):
        """What the critic sees of an action: all of it (q), none of it (v: a zero-size slice)."""
        return action if self.config.critic == "q" else action[..., :0]

    def q_target(self, ts: UnrollState, reduce: str = "min"):
        """The target critic as a function of (obs, action), reduced over the ensemble."""
        q = self.critic.min_q if reduce == "min" else self.critic.mean_q
        return lambda obs, a: q(ts.critic.target, obs, self.critic_action(a))

    def actor_step(self, ts: UnrollState, noise: RolloutNoise):
        def objective(w, states, noise):
            bootstrap = self.estimator.bootstrap
            q = self.q_target(ts, self.config.actor_bootstrap) if bootstrap else None
            value, result = estimators.surrogate(
                self.estimator,
                self.dynamics,
                self.policy_fn(w, ts.normalizer),
                jax.lax.stop_gradient(states),
                noise,
                gamma=self.config.gamma,
                q=q,
                contact=self.config.adaptive_horizon,
                remat=remat_steps(self.config.remat, self.n),
            )
            steps = max(self.n, 1)
            if self.config.adaptive_horizon:
                lengths = self.window_lengths(result.trajectory.contact, ts.horizon_cap)
                cut = functools.partial(truncated, gamma=self.config.gamma, q=q)
                value = jnp.mean(jax.vmap(cut)(result.trajectory, result.final_action, lengths))
                steps = jax.lax.stop_gradient(jnp.mean(lengths.astype(value.dtype)))
            if self.config.entropy:
                value = value + self.entropy_bonus(ts, w, result, noise)
            return value / (steps if self.config.mean_over_steps else 1), result

        if not self.config.per_env_guard:
            return ts.policy.step(objective, ts.env_states, noise, maximize=True, has_aux=True)
        return self.guarded_actor_step(ts, objective, noise)

    def cap_steps(self, cap: jax.Array) -> jax.Array:
        """The cap as a whole number of steps in [horizon_min, horizon]."""
        return jnp.clip(jnp.round(cap), self.config.horizon_min, self.n).astype(jnp.int32)

    def window_lengths(self, contact: jax.Array, cap: jax.Array) -> jax.Array:
        """AHAC's per-env windows (B,): each cut before the first step t whose accumulated contact
        signal sum_{k<=t} c_k passes ``contact_threshold``, within [horizon_min, cap]."""
        cap = self.cap_steps(cap)
        if not self.dynamics.has_contact_signal:
            return jnp.full(contact.shape[:1], cap)
        over = jnp.cumsum(contact, axis=1) > self.config.contact_threshold
        first = jnp.where(jnp.any(over, axis=1), jnp.argmax(over, axis=1), self.n)
        return jnp.clip(first, self.config.horizon_min, cap)

    def cap_step(self, cap: jax.Array, contact: jax.Array) -> jax.Array:
        """The dual update of the cap on the constraint S <= C, S the mean over envs of the contact
        signal accumulated within the cap: it grows while S < C and shrinks while S > C (fixed
        for a dynamics without a contact signal)."""
        if not self.dynamics.has_contact_signal:
            return cap
        c = self.config
        within = jnp.arange(self.n) < self.cap_steps(cap)
        spent = jnp.mean(jnp.sum(jnp.where(within, contact, 0.0), axis=1))
        step = c.horizon_lr * self.n * (1.0 - spent / c.contact_threshold)
        return jnp.clip(cap + step, c.horizon_min, self.n).astype(cap.dtype)

    def guarded_actor_step(self, ts: UnrollState, objective, noise: RolloutNoise):
        """The actor step with each env's gradient apart: an env whose objective or gradient is
        not finite, or whose window leaves +-:data:`GUARD_LIMIT`, is left out of the mean (all of
        them out: the step is skipped and counted). ``aux`` is (result, kept) per env."""

        def one(w, state, noise_i):
            batch = jax.tree.map(lambda x: x[None], (state, noise_i))
            value, result = objective(w, *batch)
            return value, jax.tree.map(lambda x: x[0], result)

        grad_fn = jax.vmap(jax.value_and_grad(one, has_aux=True), in_axes=(None, 0, 0))
        (values, result), grads = grad_fn(ts.policy.params, ts.env_states, noise)
        kept = jnp.isfinite(values) & _within(result.final_state.obs)
        if result.trajectory is not None:
            kept &= _within(result.trajectory.next_obs)
        for g in jax.tree.leaves(grads):
            kept &= jnp.all(jnp.isfinite(g.reshape(g.shape[0], -1)), axis=1)
        count = jnp.sum(kept)

        def mean(g):
            mask = kept.reshape((-1,) + (1,) * (g.ndim - 1))
            total = jnp.sum(jnp.where(mask, g, 0.0), axis=0) / jnp.maximum(count, 1)
            return jnp.where(count > 0, total, jnp.nan)

        grad = jax.tree.map(mean, grads)
        policy = ts.policy.apply_gradients(jax.tree.map(jnp.negative, grad))
        value = jnp.sum(jnp.where(kept, values, 0.0)) / jnp.maximum(count, 1)
        step = Step(policy.params, policy.opt_state, value, (result, kept), optax.tree.norm(grad))
        return policy, step

    def data_window(self, ts: UnrollState, result, noise: RolloutNoise):
        """The window's transitions (batch, time) and the action after its last state."""
        if self.n > 0:
            return jax.lax.stop_gradient(
                (result.trajectory, result.final_state, result.final_action)
            )
        # SVG(0): the objective used no model step; collect one step of data for the critic.
        dynamics = self.dynamics
        pol = self.act(ts)
        eps = noise.eps  # (B, 1, ...): a_0 for the critic data and a_1 for its bootstrap
        xi = draw_xi(dynamics, jax.random.fold_in(ts.key, 7), (self.config.num_envs, 1))
        final, traj = jax.vmap(
            lambda s, e, x: rollout(dynamics, pol, s, RolloutNoise(e, x), dynamics_gradient="stop")
        )(ts.env_states, eps, xi)
        final_action = jax.vmap(pol)(final.obs, eps[:, 0])
        return jax.lax.stop_gradient((traj, final, final_action))

    def critic_step(
        self, ts: UnrollState, traj, final_action, key
    ) -> tuple[UnrollState, jax.Array]:
        """``critic_epochs`` epochs of ``critic_minibatches`` TD(lambda) steps on the window, then
        the Polyak update of the target."""
        c = self.config
        targets = window_targets(self.q_target(ts), traj, final_action, c.gamma, c.td_lambda)
        obs = traj.obs.reshape(-1, traj.obs.shape[-1])
        act = self.critic_action(traj.action.reshape(-1, traj.action.shape[-1]))
        y = targets.reshape(-1)
        size = y.shape[0] // c.critic_minibatches

        def epoch(carry, k):
            def minibatch(carry, idx):
                params, opt_state, loss = q_step(
                    self.critic, self.critic_opt, *carry, obs[idx], act[idx], y[idx]
                )
                return (params, opt_state), loss

            perm = jax.random.permutation(k, y.shape[0]).reshape(c.critic_minibatches, size)
            return jax.lax.scan(minibatch, carry, perm)

        critic = ts.critic
        (params, opt_state), losses = jax.lax.scan(
            epoch, (critic.params, critic.opt_state), jax.random.split(key, c.critic_epochs)
        )
        return critic.replace(params=params, opt_state=opt_state).track(c.tau), losses.mean()

    def update(self, ts: UnrollState) -> tuple[UnrollState, dict]:
        with jax.default_matmul_precision(self.config.matmul_precision):
            return self._update(ts)

    def _update(self, ts: UnrollState) -> tuple[UnrollState, dict]:
        c = self.config
        key, k_noise, k_critic, k_reset = jax.random.split(ts.key, 4)
        noise = estimators.draw_noise(
            self.estimator, self.dynamics, k_noise, self.policy.eps_shape, self.n, c.num_envs
        )
        policy, step = self.actor_step(ts, noise)
        result, kept = step.aux if c.per_env_guard else (step.aux, None)
        traj, final_state, final_action = self.data_window(ts, result, noise)
        if kept is not None:  # a guarded env starts afresh
            final_state = final_state.replace(done=jnp.where(kept, final_state.done, 1.0))
        temperature, extra = ts.temperature, {}
        if c.entropy:  # the entropy of the window's actions, in the targets and for alpha
            log_pi = jax.lax.stop_gradient(
                self.log_pi(ts.policy.params, ts.normalizer, traj, noise.eps)
            )
            bonus = self.alpha(ts) * self.scaled_entropy(-log_pi)
            traj = traj.replace(reward=traj.reward + bonus)
            temperature = temperature_step(temperature, log_pi.mean(), self.target_entropy)
            extra = {"entropy": -log_pi.mean(), "alpha": self.alpha(ts)}
        horizon_cap = ts.horizon_cap
        if c.adaptive_horizon:
            lengths = self.window_lengths(traj.contact, ts.horizon_cap)
            extra = {
                "effective_horizon": jnp.mean(lengths.astype(jnp.float32)),
                "horizon_cap": ts.horizon_cap,
            }
            horizon_cap = self.cap_step(ts.horizon_cap, traj.contact)
        if self.estimator.bootstrap:
            critic, critic_loss = self.critic_step(ts, traj, final_action, k_critic)
        else:
            critic, critic_loss = ts.critic, jnp.zeros(())
        new = UnrollState(
            policy=policy,
            critic=critic,
            normalizer=normalizer_update(ts.normalizer, traj.obs),
            env_states=reset_finished(self.dynamics, final_state, k_reset, c.episode_length),
            key=key,
            updates=ts.updates + 1,
            env_steps=ts.env_steps + c.num_envs * c.steps_per_update,
            temperature=temperature,
            horizon_cap=horizon_cap,
        )
        metrics = {
            **extra,
            "objective": step.value,
            "grad_norm": step.grad_norm,
            "reward_per_step": (traj.reward - bonus if c.entropy else traj.reward).mean(),
            "critic_loss": critic_loss,
            "skipped_updates": policy.skipped,
        }
        if kept is not None:
            metrics["guarded_envs"] = 1.0 - jnp.mean(kept)
        return new, metrics

    def evaluate(self, ts: UnrollState, key: PRNGKey) -> jax.Array:
        eps_shape = self.policy.eps_shape
        return evaluate_config(self.dynamics, self.act(ts), key, self.config, eps_shape)


def _within(x) -> jax.Array:
    """Per env (leading axis): every entry of ``x`` finite and within +-GUARD_LIMIT."""
    x = x.reshape(x.shape[0], -1)
    return jnp.all(jnp.isfinite(x) & (jnp.abs(x) <= GUARD_LIMIT), axis=1)


def _make_trainer(config: UnrollTrainerConfig, dynamics: Dynamics) -> Trainer:
    estimator = estimators.make(config.estimator, config.horizon)
    kind = config.policy_kind
    policy = POLICIES[kind].for_dynamics(
        dynamics,
        hidden=config.hidden,
        activation=config.policy_activation,
        layer_norm=config.layer_norm,
        **({} if kind == "deterministic" else {"init_std": config.init_std}),
    )
    estimator.check_policy(kind == "deterministic")
    through = estimator.dynamics_gradient == "pathwise" and config.horizon != 0
    if through and not dynamics.reverse_differentiable:
        raise ValueError(
            f"{config.label} backpropagates through the dynamics, and "
            f"{getattr(dynamics, 'name', type(dynamics).__name__)} is not reverse differentiable "
            "(an MJX system whose constraint solver loops: --mjx-iterations 1, in Python "
            "envs.make(name, backend='mjx', mjx_iterations=1); or another pipeline: positional, "
            "spring or generalized)"
        )
    u = _Unroll(
        config=config,
        dynamics=dynamics,
        estimator=estimator,
        policy=policy,
        critic=QCritic(
            dynamics.observation_size,
            dynamics.action_size if config.critic == "q" else 0,
            num_q=config.num_critics,
            hidden=config.hidden,
            activation=config.critic_activation,
            layer_norm=config.layer_norm,
        ),
        actor_opt=_optimizer(config, config.actor_lr),
        critic_opt=_optimizer(
            config, config.critic_lr, config.critic_epochs * config.critic_minibatches
        ),
        alpha_opt=optax.adam(config.temperature_lr, b1=config.adam_b1, b2=config.adam_b2),
    )
    return Trainer.of(u, policy=policy, critic=u.critic)
