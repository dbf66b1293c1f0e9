"""The batch methods: NFQCA, fitted Q-iteration and amortized FQI on fixed basepoints.

Each iteration n fits q to y = r + gamma (1 - done) v(s'; theta_n, w_n) with the targets frozen,
then fits the policy, then copies theta_n <- theta_{n+1} and w_n <- w_{n+1} (the reference
text's "Embedded Optimization"; Hafner & Riedmiller 2011 for NFQCA). The algorithms differ in
the critic target (:mod:`mbpo.critics`, chosen by :data:`mbpo.agents.off_policy.ALGORITHMS`)
and in how the policy is fitted, one object per kind here:

* :class:`PolicyAscent` (NFQCA): ascend mean q(s, d(s; w)) on basepoint states;
* :class:`Greedy` (FQI): no policy; act by maximizing q (:class:`mbpo.critics.MaxTarget`);
* :class:`Amortized` (amortized FQI): compute a* = argmax q exactly on ``num_optimized``
  basepoints per iteration (their targets use a*), keep the last ``window`` iterations of
  (s', a*), and regress d(s'; w) onto them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from mbpo.agents.env_batch import evaluate_config
from mbpo.agents.loop import Trainer
from mbpo.critics import q_step, td0_targets
from mbpo.dynamics.base import Dynamics
from mbpo.replay import RingBuffer, basepoints, ring_buffer
from mbpo.types import PRNGKey
from mbpo.unroll import Transition


@dataclasses.dataclass(frozen=True)
class PolicyAscent:
    """NFQCA's policy fit: ``gradient_steps`` ascent steps of the agent's actor objective."""

    @property
    def window_size(self) -> int:
        """Slots of the (s', a*) window buffer (one unused slot: no optimizer actions)."""
        return 1

    def optimize(self, agent, learner, data, window: RingBuffer, win, key):
        return None, None, win

    def fit(
        self, agent, learner, data, window: RingBuffer, win, key, *, steps: int, batch_size: int
    ):
        size = data.reward.shape[0]

        def one(learner, k):
            k_idx, _ = jax.random.split(k)
            obs = data.obs[jax.random.randint(k_idx, (batch_size,), 0, size)]
            learner, m = agent.actor_step(learner, obs, jnp.zeros((batch_size, 0), obs.dtype))
            return learner, {"actor_objective": m["actor_objective"], "grad_norm": m["grad_norm"]}

        return jax.lax.scan(one, learner, jax.random.split(key, steps))

    def act(self, agent, learner):
        return functools.partial(agent.policy.sample, learner.policy.params)


@dataclasses.dataclass(frozen=True)
class Greedy(PolicyAscent):
    """FQI: no policy fit; the greedy action argmax_a q(s, a) is computed when acting."""

    def fit(
        self, agent, learner, data, window: RingBuffer, win, key, *, steps: int, batch_size: int
    ):
        return learner, {"actor_objective": jnp.zeros((steps,)), "grad_norm": jnp.zeros((steps,))}

    def act(self, agent, learner):
        return lambda obs, eps: agent.maximize(learner.critic.params, obs, jax.random.key(0))


@dataclasses.dataclass(frozen=True)
class Amortized(PolicyAscent):
    """Amortized FQI: a* on ``num_optimized`` basepoints per iteration, the policy regressed onto
    the last ``window`` iterations of (s', a*)."""

    num_optimized: int = 256
    window: int = 5

    @property
    def window_size(self) -> int:
        return self.window * self.num_optimized

    def optimize(self, agent, learner, data, window: RingBuffer, win, key):
        """(a* on B_opt and zeros elsewhere, the mask of B_opt, the window with (s', a*) added)."""
        size = data.reward.shape[0]
        k_idx, k_max = jax.random.split(key)
        idx = jax.random.choice(k_idx, size, (min(self.num_optimized, size),), replace=False)
        s_opt = data.next_obs[idx]
        best = jax.vmap(lambda s, k: agent.maximize(learner.critic.target, s, k))(
            s_opt, jax.random.split(k_max, idx.shape[0])
        )
        a_star = jnp.zeros_like(data.action).at[idx].set(best)
        in_opt = jnp.zeros(size, bool).at[idx].set(True)
        return a_star, in_opt, window.insert(win, (s_opt, best))

    def fit(
        self, agent, learner, data, window: RingBuffer, win, key, *, steps: int, batch_size: int
    ):
        def one(learner, k):
            k_idx, _ = jax.random.split(k)
            obs, target = window.sample(win, k_idx, batch_size)

            def loss(w):
                return 0.5 * jnp.mean(
                    jnp.sum(
                        (jax.vmap(agent.policy.mean, in_axes=(None, 0))(w, obs) - target) ** 2, -1
                    )
                )

            policy, step = learner.policy.step(loss)
            return learner.replace(policy=policy), {
                "actor_objective": -step.value,
                "grad_norm": step.grad_norm,
            }

        return jax.lax.scan(one, learner, jax.random.split(key, steps))


BatchActor = PolicyAscent | Greedy | Amortized


@dataclasses.dataclass(frozen=True, eq=False)
class _Batch:
    """The static parts of a batch method and its pure functions."""

    config: Any
    dynamics: Dynamics
    agent: Any
    actor: BatchActor
    state_class: type
    replay: RingBuffer
    window: RingBuffer

    def init(self, key: PRNGKey):
        c, dynamics, act_size = self.config, self.dynamics, self.dynamics.action_size
        k_learner, k_env, k_base, key = jax.random.split(key, 4)
        env_states = jax.vmap(dynamics.reset)(jax.random.split(k_env, c.num_envs))
        obs = env_states.obs[0]
        example = Transition.example(obs, act_size)
        data = basepoints(
            dynamics, k_base, c.num_basepoints, segment=c.basepoint_segment, num_envs=c.num_envs
        )
        return self.state_class(
            learner=self.agent.init(k_learner, dynamics.observation_size),
            buffer=self.replay.insert(self.replay.init(example), data),
            optimized=self.window.init((obs, jnp.zeros(act_size, obs.dtype))),
            env_states=env_states,
            exploration=(),
            key=key,
            updates=jnp.zeros((), jnp.int32),
            env_steps=jnp.asarray(c.num_basepoints, jnp.int32),  # all data up front
        )

    def critic_fit(self, learner, data, a_star, in_opt, key):
        """One q step on a basepoint batch towards y(theta_n, w_n) (a* on B_opt)."""
        c, agent = self.config, self.agent
        q_min = jax.vmap(agent.critic.min_q, in_axes=(None, 0, 0))
        k_idx, _, k_max = jax.random.split(key, 3)
        idx = jax.random.randint(k_idx, (c.batch_size,), 0, c.num_basepoints)
        batch = jax.tree.map(lambda x: x[idx], data)
        y = agent.critic_targets(learner, batch, jnp.zeros_like(batch.action), k_max)
        critic = learner.critic
        if a_star is not None:  # on B_opt the target uses the optimizer's action a*
            q_star = q_min(critic.target, batch.next_obs, a_star[idx])
            y_star = td0_targets(batch.reward, c.gamma * (1 - batch.done), q_star)
            y = jnp.where(in_opt[idx], y_star, y)
        params, opt_state, loss = q_step(
            agent.critic, critic.tx, critic.params, critic.opt_state, batch.obs, batch.action, y
        )
        new_q = q_min(params, batch.obs, batch.action)
        delta = jnp.mean((new_q - q_min(critic.target, batch.obs, batch.action)) ** 2)
        learner = learner.replace(critic=critic.replace(params=params, opt_state=opt_state))
        return learner, {"critic_loss": loss, "q_change": delta}

    def update(self, ts):
        """One iteration n: fit q to y(theta_n, w_n) with theta_n, w_n frozen, then the policy;
        then theta_n <- theta_{n+1}."""
        c, agent, actor = self.config, self.agent, self.actor
        key, k_opt, k_critic, k_actor = jax.random.split(ts.key, 4)
        data = ts.buffer.data
        a_star, in_opt, win = actor.optimize(
            agent, ts.learner, data, self.window, ts.optimized, k_opt
        )
        fit = functools.partial(self.critic_fit, data=data, a_star=a_star, in_opt=in_opt)
        keys = jax.random.split(k_critic, c.gradient_steps)
        learner, metrics = jax.lax.scan(lambda lr, k: fit(lr, key=k), ts.learner, keys)
        learner, actor_metrics = actor.fit(
            agent,
            learner,
            data,
            self.window,
            win,
            k_actor,
            steps=c.gradient_steps,
            batch_size=c.batch_size,
        )
        learner = learner.replace(
            critic=learner.critic.replace(target=learner.critic.params),
            policy=learner.policy.replace(target=learner.policy.params),
            steps=learner.steps + c.gradient_steps,
        )
        metrics = {k: v.mean() for k, v in {**metrics, **actor_metrics}.items()}
        ts = ts.replace(learner=learner, optimized=win, key=key, updates=ts.updates + 1)
        return ts, {**metrics, "skipped_updates": learner.critic.skipped}

    def act(self, ts):
        return self.actor.act(self.agent, ts.learner)

    def evaluate(self, ts, key: PRNGKey) -> jax.Array:
        eps_shape = self.agent.policy.eps_shape
        return evaluate_config(self.dynamics, self.act(ts), key, self.config, eps_shape)


def make_trainer(config, dynamics: Dynamics, agent, actor: BatchActor, state_class) -> Trainer:
    """The trainer of a batch method: basepoints collected once in ``init``, then one iteration
    per update. ``state_class`` is :class:`mbpo.agents.off_policy.OffPolicyState`."""
    b = _Batch(
        config=config,
        dynamics=dynamics,
        agent=agent,
        actor=actor,
        state_class=state_class,
        replay=ring_buffer(config.num_basepoints),
        window=ring_buffer(actor.window_size),
    )
    return Trainer.of(b, policy=agent.policy, critic=agent.critic)
