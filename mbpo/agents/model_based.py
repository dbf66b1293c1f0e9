"""Model-based policy optimization with a learned Gaussian ensemble (MBPO-style loop).

Each iteration (one jitted pure ``update``):

1. collect: ``num_envs`` real environments each take ``horizon`` = n steps with the current
   stochastic policy (uniform random actions during warm-up); the n-step segment (s_0, a_0, ...,
   s_n) and the behaviour log-densities go to the replay buffer (every ``holdout_every``-th
   iteration's segments to the holdout buffer instead);
2. model: ``model_steps`` gradient steps of the PETS loss on transitions from the replay buffer,
   each member on its own random minibatch (bootstrap by resampling), inputs normalized with the
   buffer's statistics; elites re-selected by their MSE on the holdout buffer;
3. critic: ``critic_steps`` TD(0) steps on real transitions, y = r + gamma (1 - done) min_i
   q_i(s', a'), a' ~ pi(s') (:meth:`mbpo.agents.off_policy.Agent.critic_step`, the shared critic);
4. policy, by ``policy_update``:

   * ``svg``: SVG(n) on the model: n-step rollouts from replayed states with fresh noise, each
     transition by a random elite (PETS' TS-1), bootstrapped with gamma^n q(s_n, a_n);
   * ``svg_er``: off-policy SVG(n) from replay (Heess et al. 2015's SVG(1)-ER for n = 1): the noise
     of the stored real segments is inferred and the segments re-simulated through the model
     (:func:`mbpo.estimators.replay_surrogate`), with truncated importance weights;
   * ``sac``: MBPO (Janner et al. 2019): k-step model rollouts from replayed states with the SAC
     policy, k growing linearly from ``rollout_min`` to ``rollout_max`` between iterations
     ``rollout_from`` and ``rollout_to``, stored in a model buffer; SAC steps on that buffer.

``model="true"`` replaces the learned model by the task's own differentiable dynamics (steps 2 is
skipped): off-policy SVG(n) from replay through the true dynamics. Then every simulated step of
step 4 counts as an environment step; with the learned model only real steps count.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from mbpo import estimators
from mbpo.agents import loop
from mbpo.agents.env_batch import evaluate_config, reset_finished
from mbpo.agents.loop import Trainer
from mbpo.agents.off_policy import Agent, Learner, OffPolicyConfig, make_agent
from mbpo.cli import check_choices, check_interval, check_positive, check_sizes, option
from mbpo.critics import q_step, window_targets
from mbpo.dynamics.base import Dynamics, State
from mbpo.flows import FlowPolicy
from mbpo.models.ensemble import (
    ElitesMean,
    GaussianEnsemble,
    ModelState,
    RandomElite,
    fit_normalizer,
    from_ensemble,
    select_elites,
)
from mbpo.optim import gradient_step
from mbpo.policies import GaussianPolicy, TanhGaussianPolicy
from mbpo.replay import RingBuffer, RingBufferState, Segment, ring_buffer, uniform_policy
from mbpo.types import PRNGKey
from mbpo.unroll import (
    PolicyFn,
    Transition,
    alive_mask,
    check_remat,
    draw_noise,
    remat_steps,
    rollout,
)

POLICY_UPDATES = ("svg", "svg_er", "sac")
SVG_POLICIES = {"gaussian": GaussianPolicy, "tanh_gaussian": TanhGaussianPolicy, "flow": FlowPolicy}
MODELS = ("learned", "true")
MEMBERS = ("random_elite", "elites_mean")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelBasedConfig(loop.UnrollFields):
    """Settings of the model-based loop; validated when built."""

    algo: str = option("mbpo", "the trainer's name (mbpo train --algo mbpo)", choices=("mbpo",))
    policy_update: str = option(
        "svg", "svg | svg_er | sac (module docstring)", choices=POLICY_UPDATES
    )
    model: str = option(
        "learned", "learned: the Gaussian ensemble; true: the task's own dynamics", choices=MODELS
    )
    horizon: int = option(
        3,
        "n: model steps of SVG(n), and the length of the real segments collected per env and "
        "iteration",
    )
    num_envs: int = option(1, "real environments")
    episode_length: int = option(
        200, "real steps before an environment is reset (at a segment's end)"
    )
    num_updates: int = option(500, "iterations")
    warmup_steps: int = option(
        150, "real env steps with uniformly random actions first (bounded action boxes)"
    )
    buffer_capacity: int = option(50_000, "real transitions the replay buffer holds")
    holdout_every: int = option(
        5, "every k-th iteration's segments are held out for elite selection"
    )
    members: int = option(5, "ensemble members")
    elites: int = option(3, "elites")
    model_hidden: tuple[int, ...] = option((128, 128), "hidden sizes of each member")
    model_steps: int = option(20, "model gradient steps per iteration")
    model_batch: int = option(128, "transitions per member and model step")
    model_lr: float = option(1e-3, "model learning rate (Adam)")
    member: str = option(
        "random_elite",
        "how the model picks a member: random_elite (per step) | elites_mean",
        choices=MEMBERS,
    )
    policy: str = option(
        "gaussian",
        "svg/svg_er policy: gaussian | tanh_gaussian | flow (a spline normalizing flow; sac: "
        "tanh_gaussian)",
        choices=tuple(SVG_POLICIES),
    )
    hidden: tuple[int, ...] = option((64, 64), "hidden sizes of policy and critic")
    init_std: float = option(0.5, "initial policy std (svg, svg_er)")
    policy_steps: int = option(10, "policy gradient steps per iteration")
    critic_steps: int = option(
        10, "critic TD(0) steps on real transitions per iteration (svg, svg_er)"
    )
    model_critic: bool = option(
        True, "svg: also fit the critic to TD(lambda) targets of each model rollout (SHAC-style)"
    )
    td_lambda: float = option(0.95, "lambda of the model-rollout critic targets")
    batch_size: int = option(128, "start states, segments or transitions per step")
    gamma: float = option(0.95, "discount")
    actor_lr: float = option(1e-3, "policy learning rate")
    critic_lr: float = option(1e-3, "critic learning rate")
    tau: float = option(0.01, "Polyak rate of the target critic")
    max_weight: float = option(2.0, "svg_er: truncation of the importance weights")
    rollout_min: int = option(1, "sac: model rollout length at the start")
    rollout_max: int = option(5, "sac: model rollout length at the end")
    rollout_from: int = option(20, "sac: iteration where the rollout length starts growing")
    rollout_to: int = option(200, "sac: iteration where it reaches rollout_max")
    model_rollouts: int = option(256, "sac: model rollouts started per iteration")
    model_buffer_capacity: int = option(50_000, "sac: model transitions kept")
    real_ratio: float = option(
        0.05, "sac: fraction of each SAC batch drawn from real transitions (MBPO's 0.05)"
    )

    def __post_init__(self):
        check_choices(self)
        loop.check_task(self)
        check_remat(self.remat)
        check_positive(
            self,
            "horizon",
            "num_envs",
            "episode_length",
            "num_updates",
            "buffer_capacity",
            "holdout_every",
            "members",
            "elites",
            "model_steps",
            "model_batch",
            "policy_steps",
            "critic_steps",
            "batch_size",
            "rollout_min",
            "rollout_max",
            "model_rollouts",
            "model_buffer_capacity",
            "eval_every",
            "eval_envs",
        )
        if self.elites > self.members:
            raise ValueError(f"elites must be <= members = {self.members}, got {self.elites}")
        if self.rollout_min > self.rollout_max or self.rollout_from > self.rollout_to:
            raise ValueError(
                "need rollout_min <= rollout_max and rollout_from <= rollout_to, got "
                f"{self.rollout_min}, {self.rollout_max}, {self.rollout_from}, {self.rollout_to}"
            )
        if self.model == "true" and UPDATES[self.policy_update].model_data_only:
            raise ValueError(
                "policy_update='sac' with model='true' is SAC with extra simulator steps: use "
                "--algo sac"
            )
        check_interval(self, "(0, 1]", "gamma", "tau")
        check_interval(self, "[0, 1]", "td_lambda")
        check_interval(self, "[0, inf]", "warmup_steps")
        check_interval(
            self, "(0, inf]", "max_weight", "model_lr", "actor_lr", "critic_lr", "init_std"
        )
        check_sizes(hidden=self.hidden, model_hidden=self.model_hidden)
        check_interval(self, "[0, 1)", "real_ratio")
        if self.horizon > self.episode_length:
            raise ValueError(
                f"horizon={self.horizon} is longer than episode_length={self.episode_length}: "
                "segments would run past the time limit"
            )
        simulated = (
            self.batch_size * self.horizon * self.policy_steps if self.model == "true" else 0
        )
        loop.check_counters(
            self.num_updates * (self.num_envs * self.horizon + simulated), self.num_updates
        )

    @property
    def label(self) -> str:
        return f"mbpo-{self.policy_update}-{self.horizon}" + (
            "-true" if self.model == "true" else ""
        )

    @property
    def segments_capacity(self) -> int:
        return max(self.buffer_capacity // self.horizon, self.num_envs)


class ModelBasedState(struct.PyTreeNode):
    """Everything an iteration reads and writes (a pytree: seeds vmap over it).

    Attributes:
      model: the ensemble's parameters, normalizer and elites.
      model_opt: its optimizer state.
      learner: policy, critic, targets, optimizer states (and SAC's temperature).
      segments: real n-step segments (replay); holdout: real transitions held out for elites.
      model_data: SAC's model-generated transitions (a one-slot placeholder otherwise).
      env_states, key, updates, env_steps (real steps, plus simulator steps of model="true").
    """

    model: ModelState
    model_opt: optax.OptState
    learner: Learner
    segments: RingBufferState
    holdout: RingBufferState
    model_data: RingBufferState
    env_states: State
    key: PRNGKey
    updates: jax.Array
    env_steps: jax.Array


def _transitions(segments: Segment) -> Transition:
    """The n transitions of each segment, flattened: (B * n) observation-space transitions."""
    obs = segments.state.obs
    flat = Transition(
        obs=obs[:, :-1],
        action=segments.action,
        reward=segments.state.reward[:, 1:],
        done=segments.state.done[:, 1:],
        next_obs=obs[:, 1:],
        log_prob=segments.log_prob,
        contact=jnp.zeros_like(segments.log_prob),
    )
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), flat)


def _observation_states(state: State) -> State:
    """The same states with x = obs: the state of a model that works in observation space."""
    return state.replace(x=state.obs)


# --- the three policy updates, one object each ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SVGOnModel:
    """``svg``: SVG(n) on the model from replayed start states with fresh noise at every depth of
    the stored segments, each transition by a random elite; with ``model_critic`` the rollouts'
    TD(lambda) targets train the critic too (SHAC-style)."""

    entropy = False  # the critic bootstraps with alpha = 0
    model_data_only = False  # it also learns through the true dynamics (model="true")

    def model_buffer_capacity(self, c: ModelBasedConfig) -> int:
        return 1

    def objective(self, lp: _Loop, w, segments: Segment, model: Dynamics, q, key: PRNGKey):
        c, n = lp.config, lp.config.horizon
        starts = jax.tree.map(
            lambda x: x[jnp.arange(c.batch_size), jax.random.randint(key, (c.batch_size,), 0, n)],
            segments.state,
        )
        noise = estimators.draw_noise(
            lp.estimator, model, jax.random.fold_in(key, 1), lp.policy.eps_shape, n, c.batch_size
        )
        value, result = estimators.surrogate(
            lp.estimator,
            model,
            functools.partial(lp.policy.sample, w),
            starts,
            noise,
            gamma=c.gamma,
            q=q,
            remat=remat_steps(c.remat, n),
        )
        return value, (jnp.ones(()), result)

    def critic_from_rollouts(self, lp: _Loop, learner: Learner, result, metrics: dict) -> Learner:
        """The rollout's TD(lambda) targets as one more critic step (``model_critic``)."""
        c = lp.config
        if not c.model_critic:
            return learner
        traj, final_action = jax.lax.stop_gradient((result.trajectory, result.final_action))
        q_target = functools.partial(lp.agent.critic.min_q, learner.critic.target)
        y = window_targets(q_target, traj, final_action, c.gamma, c.td_lambda).reshape(-1)
        flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), traj)
        critic = learner.critic
        params, opt_state, metrics["model_critic_loss"] = q_step(
            lp.agent.critic, critic.tx, critic.params, critic.opt_state, flat.obs, flat.action, y
        )
        return learner.replace(
            critic=critic.replace(params=params, opt_state=opt_state).track(c.tau)
        )

    def policy_step(
        self, lp: _Loop, learner: Learner, ts: ModelBasedState, model: Dynamics, key: PRNGKey
    ) -> tuple[Learner, dict]:
        k_batch, k_noise = jax.random.split(key)
        segments = lp.sample_segments(ts, k_batch, lp.config.batch_size)
        q = functools.partial(lp.agent.critic.min_q, learner.critic.params)
        if lp.config.model == "learned":
            segments = segments.replace(state=_observation_states(segments.state))
        policy_state, step = learner.policy.step(
            lambda w: self.objective(lp, w, segments, model, q, k_noise),
            maximize=True,
            has_aux=True,
        )
        weight, result = step.aux
        learner = learner.replace(policy=policy_state)
        metrics = {"objective": step.value, "grad_norm": step.grad_norm, "weight": weight}
        if result is not None:
            learner = self.critic_from_rollouts(lp, learner, result, metrics)
        return learner, metrics

    def step(
        self, lp: _Loop, ts: ModelBasedState, model: Dynamics, keys: dict
    ) -> tuple[ModelBasedState, Learner, dict]:
        """Critic TD(0) steps on real transitions, then ``policy_steps`` policy steps."""
        learner, critic_loss = lp.critic_update(ts.learner, ts, keys["critic"])
        policy_step = functools.partial(self.policy_step, lp, ts=ts, model=model)
        learner, m = jax.lax.scan(
            lambda lr, k: policy_step(lr, key=k),
            learner,
            jax.random.split(keys["policy"], lp.config.policy_steps),
        )
        return ts, learner, {"critic_loss": critic_loss, **{k: v.mean() for k, v in m.items()}}


@dataclasses.dataclass(frozen=True)
class SVGFromReplay(SVGOnModel):
    """``svg_er``: off-policy SVG(n) from replay (Heess et al. 2015's SVG(1)-ER for n = 1): the
    noise of the stored real segments is inferred and the segments re-simulated through the model
    (:func:`mbpo.estimators.replay_surrogate`), with truncated importance weights."""

    def objective(self, lp: _Loop, w, segments: Segment, model: Dynamics, q, key: PRNGKey):
        c = lp.config
        value, info = estimators.replay_surrogate(
            lp.estimator,
            model,
            lp.policy,
            w,
            segments,
            key,
            gamma=c.gamma,
            q=q,
            max_weight=c.max_weight,
        )
        return value, (info["weight"], None)


@dataclasses.dataclass(frozen=True)
class SACOnModel:
    """``sac``: MBPO (Janner et al. 2019): branched k-step model rollouts from replayed real states
    into a model buffer, k growing from ``rollout_min`` to ``rollout_max``; SAC steps on batches of
    model transitions with a ``real_ratio`` fraction of real ones."""

    entropy = True
    model_data_only = True  # with the true dynamics it would be SAC with extra simulator steps

    def model_buffer_capacity(self, c: ModelBasedConfig) -> int:
        return c.model_buffer_capacity

    def rollout_length(self, c: ModelBasedConfig, updates: jax.Array) -> jax.Array:
        frac = jnp.clip(
            (updates - c.rollout_from) / max(c.rollout_to - c.rollout_from, 1), 0.0, 1.0
        )
        return jnp.floor(c.rollout_min + frac * (c.rollout_max - c.rollout_min)).astype(jnp.int32)

    def model_data(
        self, lp: _Loop, ts: ModelBasedState, model: Dynamics, key: PRNGKey
    ) -> RingBufferState:
        """MBPO's branched rollouts: k(iteration) model steps from replayed real states."""
        c = lp.config
        k_start, k_noise = jax.random.split(key)
        starts = _transitions(lp.sample_segments(ts, k_start, c.model_rollouts))
        starts = jax.vmap(State.from_observation)(starts.obs[: c.model_rollouts])
        noise = estimators.draw_noise(
            estimators.svg(None),
            model,
            k_noise,
            lp.policy.eps_shape,
            c.rollout_max,
            c.model_rollouts,
        )

        def one(s0, nz):
            _, traj = rollout(
                model,
                functools.partial(lp.policy.sample, ts.learner.policy.params),
                s0,
                nz,
                dynamics_gradient="stop",
            )
            return traj

        traj = jax.lax.stop_gradient(jax.vmap(one)(starts, noise))
        depth = jnp.arange(c.rollout_max)[None, :] < self.rollout_length(c, ts.updates)
        mask = depth & (jax.vmap(alive_mask)(traj.done) > 0)
        flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), traj)
        return lp.model_buffer.insert(ts.model_data, flat, mask.reshape(-1))

    def step(
        self, lp: _Loop, ts: ModelBasedState, model: Dynamics, keys: dict
    ) -> tuple[ModelBasedState, Learner, dict]:
        c, n = lp.config, lp.config.horizon
        ts = ts.replace(model_data=self.model_data(lp, ts, model, keys["data"]))
        num_real = round(c.real_ratio * c.batch_size)

        def sac_step(learner, k):
            k_b, k_r, k_g = jax.random.split(k, 3)
            batch = lp.model_buffer.sample(ts.model_data, k_b, c.batch_size - num_real)
            if num_real:  # MBPO mixes a fraction of real transitions into every batch
                real = _transitions(lp.sample_segments(ts, k_r, -(-num_real // n)))
                batch = jax.tree.map(
                    lambda m, r: jnp.concatenate([m, r[:num_real].astype(m.dtype)]), batch, real
                )
            return lp.agent.gradient_step(learner, batch, k_g)

        learner, m = jax.lax.scan(
            sac_step, ts.learner, jax.random.split(keys["policy"], c.policy_steps)
        )
        return (
            ts,
            learner,
            {
                **{k: v.mean() for k, v in m.items()},
                "rollout_length": self.rollout_length(c, ts.updates),
            },
        )


UPDATES: dict[str, SVGOnModel | SACOnModel] = {
    "svg": SVGOnModel(),
    "svg_er": SVGFromReplay(),
    "sac": SACOnModel(),
}
assert set(UPDATES) == set(POLICY_UPDATES)


def make_trainer(config: ModelBasedConfig, dynamics: Dynamics | None = None) -> Trainer:
    """The pure ``init``/``update``/``evaluate`` of ``config`` (cached per config for registered
    tasks)."""
    return loop.build_trainer(_make_trainer, config, dynamics)


@dataclasses.dataclass(frozen=True, eq=False)
class _Loop:
    """The static parts of one model-based configuration and its pure per-iteration functions."""

    config: ModelBasedConfig
    dynamics: Dynamics
    policy_update: SVGOnModel | SACOnModel
    agent: Agent
    ensemble: GaussianEnsemble
    model_opt: optax.GradientTransformation
    segments_buffer: RingBuffer
    holdout_buffer: RingBuffer
    model_buffer: RingBuffer
    random_policy: PolicyFn | None  # warm-up: uniform in a bounded box (None: the initial policy)
    uniform_log_density: float

    @property
    def policy(self):
        return self.agent.policy

    @property
    def estimator(self) -> estimators.Estimator:
        return estimators.svg(self.config.horizon)

    def model_dynamics(self, model: ModelState) -> Dynamics:
        c = self.config
        if c.model == "true":
            return self.dynamics
        member = RandomElite() if c.member == "random_elite" else ElitesMean()
        low, high = (
            np.asarray(b, np.float32) for b in self.dynamics.action_bounds
        )  # concrete: the model's static bounds
        return from_ensemble(
            self.ensemble,
            model,
            start_obs=jnp.zeros((1, self.dynamics.observation_size)),
            member=member,
            action_low=low,
            action_high=high,
        )

    def init(self, key: PRNGKey) -> ModelBasedState:
        c, n, act_size = self.config, self.config.horizon, self.dynamics.action_size
        k_model, k_agent, k_env, key = jax.random.split(key, 4)
        env_states = jax.vmap(self.dynamics.reset)(jax.random.split(k_env, c.num_envs))
        dtype = env_states.obs.dtype
        one_state = jax.tree.map(lambda x: x[0], env_states)
        segment = Segment(
            state=jax.tree.map(lambda x: jnp.stack([x] * (n + 1)), one_state),
            action=jnp.zeros((n, act_size), dtype),
            log_prob=jnp.zeros(n, dtype),
        )
        transition = Transition.example(one_state.obs, act_size)
        model = self.ensemble.init(k_model)
        return ModelBasedState(
            model=model,
            model_opt=self.model_opt.init(model.params),
            learner=self.agent.init(k_agent, self.dynamics.observation_size),
            segments=self.segments_buffer.init(segment),
            holdout=self.holdout_buffer.init(transition),
            model_data=self.model_buffer.init(transition),
            env_states=env_states,
            key=key,
            updates=jnp.zeros((), jnp.int32),
            env_steps=jnp.zeros((), jnp.int32),
        )

    def collect(self, ts: ModelBasedState, key: PRNGKey) -> tuple[ModelBasedState, Segment]:
        """Every env takes n real steps; returns the new state (envs reset at the segment's end)."""
        c, n, dynamics, policy = self.config, self.config.horizon, self.dynamics, self.policy
        k_eps, k_xi, k_reset = jax.random.split(key, 3)
        warm = ts.env_steps < c.warmup_steps
        w = ts.learner.policy.params

        def act(obs, eps):
            a = policy.sample(w, obs, eps)
            if self.random_policy is None:
                return a, policy.log_prob(w, obs, a)
            a = jnp.where(warm, self.random_policy(obs, eps), a)
            return a, jnp.where(warm, self.uniform_log_density, policy.log_prob(w, obs, a))

        def one_env(s0, eps, xi):
            def body(s, noise):
                a, log_mu = act(s.obs, noise[0])
                s_next = dynamics.step(s, a, noise[1])
                return s_next, (s_next, a, log_mu)

            _, (states, actions, log_mu) = jax.lax.scan(body, s0, (eps, xi))
            return Segment(
                state=jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), s0, states),
                action=actions,
                log_prob=log_mu,
            )

        dtype = ts.env_states.obs.dtype
        noise = draw_noise(dynamics, k_eps, k_xi, (c.num_envs, n), policy.eps_shape, dtype)
        segments = jax.lax.stop_gradient(jax.vmap(one_env)(ts.env_states, noise.eps, noise.xi))
        final = jax.tree.map(lambda x: x[:, -1], segments.state)
        held = ts.updates % c.holdout_every == c.holdout_every - 1
        keep = jnp.full((c.num_envs,), ~held)
        flat = _transitions(segments)
        ts = ts.replace(
            segments=self.segments_buffer.insert(ts.segments, segments, keep),
            holdout=self.holdout_buffer.insert(ts.holdout, flat, jnp.full((c.num_envs * n,), held)),
            env_states=reset_finished(dynamics, final, k_reset, c.episode_length),
            env_steps=ts.env_steps + c.num_envs * n,
        )
        return ts, segments

    def sample_segments(self, ts: ModelBasedState, key: PRNGKey, num: int) -> Segment:
        return self.segments_buffer.sample(ts.segments, key, num)

    def model_update(self, ts: ModelBasedState, key: PRNGKey) -> tuple[ModelBasedState, dict]:
        c, n, ensemble = self.config, self.config.horizon, self.ensemble
        k_norm, k_steps, k_hold = jax.random.split(key, 3)
        sample = _transitions(self.sample_segments(ts, k_norm, max(2048 // n, 1)))
        normalizer = fit_normalizer(jnp.concatenate([sample.obs, sample.action], axis=1))

        def step(carry, k):
            params, opt_state = carry
            # One minibatch per member: whole sampled segments, n transitions each.
            batch = _transitions(self.sample_segments(ts, k, -(-c.members * c.model_batch // n)))
            per_member = jax.tree.map(
                lambda x: x[: c.members * c.model_batch].reshape(
                    c.members, c.model_batch, *x.shape[1:]
                ),
                batch,
            )
            target = jnp.concatenate(
                [per_member.next_obs - per_member.obs, per_member.reward[..., None]], axis=-1
            )
            step = gradient_step(
                ensemble.loss,
                params,
                opt_state,
                self.model_opt,
                normalizer,
                per_member.obs,
                per_member.action,
                target,
                skip_nonfinite=False,
            )
            return (step.params, step.opt_state), step.value

        (params, opt_state), losses = jax.lax.scan(
            step, (ts.model.params, ts.model_opt), jax.random.split(k_steps, c.model_steps)
        )
        hold = self.holdout_buffer.sample(ts.holdout, k_hold, 1024)
        target = jnp.concatenate([hold.next_obs - hold.obs, hold.reward[:, None]], axis=-1)
        mse = ensemble.mse(params, normalizer, hold.obs, hold.action, target)
        elites = jnp.where(ts.holdout.size > 0, select_elites(mse, c.elites), ts.model.elites)
        model = ModelState(params=params, normalizer=normalizer, elites=elites)
        return ts.replace(model=model, model_opt=opt_state), {
            "model_loss": losses.mean(),
            "model_holdout_mse": jnp.sort(mse)[: c.elites].mean(),
        }

    def critic_update(
        self, learner: Learner, ts: ModelBasedState, key: PRNGKey
    ) -> tuple[Learner, jax.Array]:
        """``critic_steps`` TD(0) steps on real transitions (the shared critic), Polyak-tracked."""
        c = self.config

        def step(learner, k):
            k_batch, k_step = jax.random.split(k)
            batch = _transitions(
                self.sample_segments(ts, k_batch, max(c.batch_size // c.horizon, 1))
            )
            learner, loss = self.agent.critic_step(learner, batch, k_step)
            return learner.replace(critic=learner.critic.track(c.tau)), loss

        learner, losses = jax.lax.scan(step, learner, jax.random.split(key, c.critic_steps))
        return learner, losses.mean()

    def update(self, ts: ModelBasedState) -> tuple[ModelBasedState, dict]:
        c = self.config
        key, k_collect, k_model, k_critic, k_policy, k_data = jax.random.split(ts.key, 6)
        ts, _ = self.collect(ts, k_collect)
        metrics = {}
        if c.model == "learned":
            ts, metrics = self.model_update(ts, k_model)
        learning = ts.env_steps >= max(c.warmup_steps, c.num_envs * c.horizon)
        keys = {"critic": k_critic, "policy": k_policy, "data": k_data}
        ts_new, learner, policy_metrics = self.policy_update.step(
            self, ts, self.model_dynamics(ts.model), keys
        )
        metrics.update(policy_metrics)
        learner = jax.tree.map(lambda new, old: jnp.where(learning, new, old), learner, ts.learner)
        simulated = c.batch_size * c.horizon * c.policy_steps if c.model == "true" else 0
        env_steps = ts_new.env_steps + jnp.where(learning, simulated, 0)
        ts = ts_new.replace(
            learner=learner, key=key, updates=ts_new.updates + 1, env_steps=env_steps
        )
        metrics["skipped_updates"] = learner.policy.skipped
        return ts, metrics

    def act(self, ts: ModelBasedState) -> PolicyFn:
        return functools.partial(self.policy.sample, ts.learner.policy.params)

    def evaluate(self, ts: ModelBasedState, key: PRNGKey) -> jax.Array:
        eps_shape = self.policy.eps_shape
        return evaluate_config(self.dynamics, self.act(ts), key, self.config, eps_shape)


def _make_trainer(config: ModelBasedConfig, dynamics: Dynamics) -> Trainer:
    c = config
    update = UPDATES[c.policy_update]
    agent_config = OffPolicyConfig(
        algo="sac",
        env=c.env,
        hidden=c.hidden,
        gamma=c.gamma,
        tau=c.tau,
        actor_lr=c.actor_lr,
        critic_lr=c.critic_lr,
        batch_size=c.batch_size,
        tune_temperature=update.entropy,
        temperature_init=0.2 if update.entropy else 0.0,
    )
    # SVG: a reparameterized policy of the config's kind; the critic bootstraps with alpha = 0.
    svg_policy = (
        None
        if update.entropy
        else SVG_POLICIES[c.policy].for_dynamics(dynamics, hidden=c.hidden, init_std=c.init_std)
    )
    low, high = (jnp.asarray(b) for b in dynamics.action_bounds)
    bounded = bool(jnp.all(jnp.isfinite(low)) and jnp.all(jnp.isfinite(high)))
    lp = _Loop(
        config=c,
        dynamics=dynamics,
        policy_update=update,
        agent=make_agent(agent_config, dynamics, svg_policy),
        ensemble=GaussianEnsemble.for_dynamics(
            dynamics,
            num_members=c.members,
            num_elites=c.elites,
            hidden=c.model_hidden,
            learn_reward=True,
        ),
        model_opt=optax.adam(c.model_lr),
        segments_buffer=ring_buffer(c.segments_capacity),
        holdout_buffer=ring_buffer(
            max(c.buffer_capacity // c.holdout_every, c.num_envs * c.horizon)
        ),
        model_buffer=ring_buffer(update.model_buffer_capacity(c)),
        random_policy=uniform_policy(dynamics) if bounded else None,
        uniform_log_density=-float(jnp.sum(jnp.log(high - low))) if bounded else 0.0,
    )
    return Trainer.of(lp, policy=lp.policy, critic=lp.agent.critic)
