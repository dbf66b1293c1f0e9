"""Model-free baselines: one update of each algorithm against a hand derivation, SAC -> DDPG as
alpha -> 0, TD3's smoothing and delay, FQI's maximization, and small learning runs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from mbpo.agents import loop
from mbpo.agents.off_policy import OffPolicyConfig, make_agent, make_trainer, maximize_action
from mbpo.policies import TanhGaussianPolicy
from mbpo.replay import uniform_policy
from mbpo.unroll import RolloutNoise, Transition, alive_mask, rollout

PENDULUM = envs.make("pendulum")  # obs (cos, sin, omega), one action in [-2, 2]


def _f64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(float)) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, tree)


def _learner(agent, key=0):
    """A float64 learner whose targets differ from the online networks (so targets matter)."""
    learner = agent.init(jax.random.key(key), 3)
    other = agent.init(jax.random.key(key + 100), 3)
    learner = learner._replace(target_critic_params=other.critic_params, target_policy_params=other.policy_params)
    params = _f64((learner.policy_params, learner.target_policy_params, learner.critic_params, learner.target_critic_params,
                   learner.value_params, learner.target_value_params, learner.log_alpha))  # fmt: skip
    p, tp, c, tc, v, tv, la = params
    return learner._replace(
        policy_params=p, target_policy_params=tp, critic_params=c, target_critic_params=tc, value_params=v, target_value_params=tv,
        log_alpha=la, policy_opt=agent.actor_opt.init(p), critic_opt=agent.critic_opt.init(c),
        value_opt=agent.critic_opt.init(v) if agent.value is not None else (), alpha_opt=agent.alpha_opt.init(la),
    )  # fmt: skip


def _batch(size=6, seed=0):
    k = jax.random.split(jax.random.key(seed), 5)
    return Transition(
        obs=jax.random.normal(k[0], (size, 3), jnp.result_type(float)),
        action=jax.random.uniform(k[1], (size, 1), float, -2, 2),
        reward=jax.random.normal(k[2], (size,), jnp.result_type(float)),
        done=(jnp.arange(size) % 3 == 0).astype(jnp.result_type(float)),
        next_obs=jax.random.normal(k[3], (size, 3), jnp.result_type(float)),
        log_prob=jnp.zeros(size, jnp.result_type(float)),
    )


def _linear(params):
    """(kernel, bias) of a one-layer MLP's flax params."""
    dense = params["params"]["Dense_0"]
    return np.asarray(dense["kernel"]), np.asarray(dense["bias"])


def _q(critic_params, s, a):
    """All members' q = [s, a] W + b by hand: shape (B, num_q)."""
    w, b = _linear(critic_params)  # (num_q, 4, 1), (num_q, 1)
    x = np.concatenate([s, a], -1)
    return np.einsum("bi,qi->bq", x, w[..., 0]) + b[:, 0]


def _deterministic(policy_params, s):
    k, c = _linear(policy_params)
    return 2 * np.tanh(s @ k + c)


def test_ddpg_update_matches_the_hand_derivation(x64):
    """Linear q(s, a) = [s, a] w + b and d(s) = 2 tanh(s K + c), plain SGD:
    y = r + gamma (1 - done) q_targ(s', d_targ(s')); w <- w - lr_q mean((q - y) [s, a]);
    K <- K + lr_pi mean(s^T w_a 2 (1 - tanh^2(s K + c))) with the updated w; targets Polyak-averaged."""
    config = OffPolicyConfig(algo="ddpg", hidden=(), optimizer="sgd", actor_lr=0.1, critic_lr=0.05, gamma=0.9, tau=0.25, max_grad_norm=1e9)
    agent = make_agent(config, PENDULUM)
    learner, batch = _learner(agent), _batch()
    new, metrics = jax.jit(agent.gradient_step)(learner, batch, jax.random.key(3))

    s, a, r, d, s2 = (np.asarray(x) for x in (batch.obs, batch.action, batch.reward, batch.done, batch.next_obs))
    y = r + 0.9 * (1 - d) * _q(learner.target_critic_params, s2, _deterministic(learner.target_policy_params, s2))[:, 0]
    q = _q(learner.critic_params, s, a)[:, 0]
    w, b = _linear(learner.critic_params)
    x = np.concatenate([s, a], -1)
    w1 = w[0, :, 0] - 0.05 * np.mean((q - y)[:, None] * x, 0)
    b1 = b[0, 0] - 0.05 * np.mean(q - y)
    np.testing.assert_allclose(_linear(new.critic_params)[0][0, :, 0], w1, rtol=1e-10)
    np.testing.assert_allclose(_linear(new.critic_params)[1][0, 0], b1, rtol=1e-10)
    np.testing.assert_allclose(float(metrics["critic_loss"]), 0.5 * np.mean((q - y) ** 2), rtol=1e-10)

    k, c = _linear(learner.policy_params)
    u = s @ k + c
    da = w1[3] * 2 * (1 - np.tanh(u) ** 2)  # dq/da * da/du, shape (B, 1)
    np.testing.assert_allclose(_linear(new.policy_params)[0], k + 0.1 * np.mean(s[:, :, None] * da[:, None, :], 0), rtol=1e-10)
    np.testing.assert_allclose(_linear(new.policy_params)[1], c + 0.1 * np.mean(da, 0), rtol=1e-10)
    objective = np.mean(_q(new.critic_params, s, _deterministic(learner.policy_params, s))[:, 0])  # at w_n, theta_{n+1}
    np.testing.assert_allclose(float(metrics["actor_objective"]), objective, rtol=1e-10)

    for name in ("critic_params", "policy_params"):
        expected = jax.tree.map(lambda t, o: 0.75 * t + 0.25 * o, getattr(learner, f"target_{name}"), getattr(new, name))
        jax.tree.map(lambda e, g: np.testing.assert_allclose(g, e, rtol=1e-12), expected, getattr(new, f"target_{name}"))
    assert int(new.steps) == 1


def test_td3_targets_use_twin_min_and_clipped_smoothing(x64):
    config = OffPolicyConfig(algo="td3", hidden=(), target_noise=0.3, target_noise_clip=0.4, gamma=0.9)
    agent = make_agent(config, PENDULUM)
    learner, batch = _learner(agent), _batch()
    eps = jnp.array([[3.0], [-0.5], [0.2], [-4.0], [1.0], [0.0]])
    y = agent.critic_targets(learner, batch, eps, jax.random.key(0))
    s2 = np.asarray(batch.next_obs)
    a2 = np.clip(_deterministic(learner.target_policy_params, s2) + 2 * np.clip(0.3 * np.asarray(eps), -0.4, 0.4), -2, 2)
    v = _q(learner.target_critic_params, s2, a2).min(1)
    np.testing.assert_allclose(y, np.asarray(batch.reward) + 0.9 * (1 - np.asarray(batch.done)) * v, rtol=1e-10)


def test_td3_updates_actor_and_targets_every_policy_delay_steps():
    config = OffPolicyConfig(algo="td3", hidden=(8,), policy_delay=3)
    agent = make_agent(config, PENDULUM)
    learner = agent.init(jax.random.key(0), 3)
    step = jax.jit(agent.gradient_step)
    changed = []
    for i in range(7):
        new, _ = step(learner, _batch(16, seed=i), jax.random.key(i))
        moved = lambda a, b: any(bool(jnp.any(x != y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # noqa: E731
        changed.append((moved(new.policy_params, learner.policy_params), moved(new.target_critic_params, learner.target_critic_params),
                        moved(new.critic_params, learner.critic_params)))  # fmt: skip
        learner = new
    assert [c[0] for c in changed] == [True, False, False, True, False, False, True]
    assert [c[1] for c in changed] == [True, False, False, True, False, False, True]
    assert all(c[2] for c in changed)  # the critics learn every step


def _tanh_gaussian_by_hand(params, s, eps):
    """a = 2 tanh(u), u = mu + sigma eps, [mu, delta] = s K + c, log sigma = clip(log_std + delta, -5, 2)."""
    k, c = _linear(params["net"])
    out = s @ k + c
    mu, log_std = out[:, :1], np.clip(np.asarray(params["log_std"]) + out[:, 1:], -5, 2)
    u = mu + np.exp(log_std) * eps
    log_pi = -0.5 * eps**2 - log_std - 0.5 * np.log(2 * np.pi) - np.log(2 * (1 - np.tanh(u) ** 2))
    return 2 * np.tanh(u), log_pi.sum(-1)


def test_sac_targets_and_temperature_step(x64):
    config = OffPolicyConfig(algo="sac", hidden=(), gamma=0.9, init_alpha=0.3, alpha_lr=0.01)
    agent = make_agent(config, PENDULUM)
    learner, batch = _learner(agent), _batch()
    eps = jax.random.normal(jax.random.key(5), (6, 1), jnp.result_type(float))
    y = agent.critic_targets(learner, batch, eps, jax.random.key(0))
    s2 = np.asarray(batch.next_obs)
    a2, log_pi = _tanh_gaussian_by_hand(learner.policy_params, s2, np.asarray(eps))
    alpha = float(np.exp(learner.log_alpha))  # 0.3, stored as log alpha
    v = _q(learner.target_critic_params, s2, a2).min(1) - alpha * log_pi
    np.testing.assert_allclose(y, np.asarray(batch.reward) + 0.9 * (1 - np.asarray(batch.done)) * v, rtol=1e-9)

    # Temperature: loss -log(alpha) (log pi + H_target); Adam's first step moves log(alpha) by
    # lr * sign(mean log pi + H_target): up when the entropy -log pi is below the target.
    obs = np.asarray(batch.obs)
    for target_entropy in (-5.0, 5.0):
        agent_h = dataclasses.replace(agent, config=dataclasses.replace(config, target_entropy=target_entropy))
        new, metrics = agent_h.actor_step(learner, batch.obs, eps)
        _, log_pi_s = _tanh_gaussian_by_hand(learner.policy_params, obs, np.asarray(eps))
        step = float(new.log_alpha - learner.log_alpha)
        np.testing.assert_allclose(step, 0.01 * np.sign(log_pi_s.mean() + target_entropy), rtol=1e-6)
        np.testing.assert_allclose(float(metrics["entropy"]), -log_pi_s.mean(), rtol=1e-9)


def test_sac_value_network_variant_bootstraps_from_the_target_value(x64):
    config = OffPolicyConfig(algo="sac", hidden=(), gamma=0.9, value_network=True)
    agent = make_agent(config, PENDULUM)
    learner, batch = _learner(agent), _batch()
    y = agent.critic_targets(learner, batch, jnp.zeros((6, 1)), jax.random.key(0))
    k, c = _linear(learner.target_value_params)
    v = (np.asarray(batch.next_obs) @ k + c)[:, 0]
    np.testing.assert_allclose(y, np.asarray(batch.reward) + 0.9 * (1 - np.asarray(batch.done)) * v, rtol=1e-10)
    new, metrics = jax.jit(agent.gradient_step)(learner, batch, jax.random.key(1))
    assert float(metrics["value_loss"]) > 0
    assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(new.value_params), jax.tree.leaves(learner.value_params)))


def test_sac_actor_gradient_tends_to_the_ddpg_gradient_as_alpha_and_sigma_vanish(x64):
    """The reference's "DPG as a special case of SAC": with temperature alpha -> 0 and the policy's
    sigma -> 0, SAC's reparameterized actor gradient w.r.t. the mean network is the DPG/DDPG one."""
    hidden = (16,)
    ddpg = make_agent(OffPolicyConfig(algo="ddpg", hidden=hidden), PENDULUM)
    sac = make_agent(OffPolicyConfig(algo="sac", hidden=hidden, autotune_alpha=False), PENDULUM)
    # The same mean network for both, a state-independent sigma, and one critic for both.
    sac = dataclasses.replace(sac, policy=TanhGaussianPolicy.for_dynamics(PENDULUM, hidden=hidden, activation="relu", state_dependent_std=False),
                              critic=ddpg.critic)  # fmt: skip
    learner = _learner(ddpg)
    obs = _batch(64).obs
    grad_ddpg = jax.grad(lambda w: ddpg.actor_objective(w, learner, obs, jnp.zeros((64, 0)))[0])(learner.policy_params)
    eps = jax.random.normal(jax.random.key(2), (64, 1), jnp.result_type(float))
    errors = []
    for scale in (0.3, 0.1, 0.03, 0.01):  # sigma stays above the policy's floor exp(-5) = 0.0067
        sac_s = dataclasses.replace(sac, config=dataclasses.replace(sac.config, init_alpha=scale))
        params = {"net": learner.policy_params, "log_std": jnp.full((1,), np.log(scale))}
        grad_sac = jax.grad(lambda w: sac_s.actor_objective(w, learner, obs, eps)[0])(params)["net"]
        diff = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), grad_sac, grad_ddpg)
        errors.append(float(jnp.sqrt(sum(jax.tree.leaves(diff)))) / float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grad_ddpg)))))
    # The relative difference shrinks with (alpha, sigma): first-order terms in sigma (q's
    # curvature along eps) and alpha (the entropy term's gradient through the tanh).
    assert all(a > b for a, b in zip(errors, errors[1:])) and errors[-1] < 0.05 and errors[-1] < errors[0] / 5, errors


def test_maximize_action_finds_interior_and_boundary_maxima():
    low, high = -2 * jnp.ones(2), 2 * jnp.ones(2)
    target = jnp.array([0.7, 3.0])  # the second coordinate's optimum lies outside the box

    def q(s, a):
        return -jnp.sum((a - target) ** 2) + 0.1 * jnp.sum(jnp.cos(3 * a))

    best = maximize_action(q, jnp.zeros(3), jax.random.key(0), low, high, steps=200, lr=0.1, restarts=8)
    grid = jnp.linspace(-2, 2, 4001)
    best_0 = grid[jnp.argmax(jax.vmap(lambda a: -(a - 0.7) ** 2 + 0.1 * jnp.cos(3 * a))(grid))]
    np.testing.assert_allclose(best, [best_0, 2.0], atol=2e-3)


def test_batch_iteration_freezes_then_copies_targets_and_keeps_the_basepoints():
    config = OffPolicyConfig(algo="fqi_amortized", hidden=(16,), num_basepoints=512, gradient_steps=3, batch_size=32,
                             num_optimized=16, window=2, maximize_steps=50, maximize_restarts=3, num_envs=8)  # fmt: skip
    trainer = make_trainer(config)
    ts = jax.jit(trainer.init)(jax.random.key(0))
    assert int(ts.env_steps) == 512 and int(ts.buffer.size) == 512
    update = jax.jit(trainer.update)
    new, metrics = update(ts)
    jax.tree.map(np.testing.assert_array_equal, new.learner.target_critic_params, new.learner.critic_params)
    jax.tree.map(np.testing.assert_array_equal, new.learner.target_policy_params, new.learner.policy_params)
    jax.tree.map(np.testing.assert_array_equal, new.buffer.data, ts.buffer.data)
    assert int(new.window.size) == 16 and float(metrics["q_change"]) > 0
    # The window's a* are maximizers of q(s', .; theta_n): no grid action is better.
    obs, a_star = new.window.data[0][:16], new.window.data[1][:16]
    q = lambda s, a: trainer.critic.min_q(ts.learner.target_critic_params, s, a)  # noqa: E731
    grid = jnp.linspace(-2, 2, 401)[:, None]
    grid_best = jax.vmap(lambda s: jnp.max(jax.vmap(lambda a: q(s, a))(grid)))(obs)
    assert float(jnp.max(grid_best - jax.vmap(q)(obs, a_star))) < 1e-2
    # The window keeps K = 2 iterations: the third iteration's pairs overwrite the first's.
    newer, _ = update(update(new)[0])
    assert int(newer.window.size) == 32 and int(newer.window.position) == 16


def _random_policy_return(dynamics, episode_length, episodes=32):
    policy = uniform_policy(dynamics)

    def episode(key):
        k_reset, k_eps = jax.random.split(key)
        noise = RolloutNoise(eps=jax.random.normal(k_eps, (episode_length, 1)), xi=jnp.zeros((episode_length, 0)))
        _, traj = rollout(dynamics, policy, dynamics.reset(k_reset), noise)
        return jnp.sum(alive_mask(traj.done) * traj.reward)

    return float(jnp.mean(jax.jit(jax.vmap(episode))(jax.random.split(jax.random.key(99), episodes))))


SMALL_RUNS = {  # 10000 env steps (online) or 8000 random-action basepoints (batch)
    "sac": dict(num_updates=1250, num_envs=8, gradient_steps=8, warmup_steps=500),
    "td3": dict(num_updates=1250, num_envs=8, gradient_steps=8, warmup_steps=500),
    "ddpg": dict(num_updates=1250, num_envs=8, gradient_steps=8, warmup_steps=500),
    "nfqca": dict(num_updates=40, num_basepoints=8000, gradient_steps=100),
    "fqi_amortized": dict(num_updates=40, num_basepoints=8000, gradient_steps=100, maximize_steps=15, maximize_restarts=2, num_optimized=128),
    "fqi": dict(num_updates=40, num_basepoints=8000, gradient_steps=100, maximize_steps=15, maximize_restarts=2),
}
MARGIN = 300.0


@pytest.mark.parametrize("algo", list(SMALL_RUNS))
def test_small_pendulum_run_beats_a_random_policy(algo):
    """Pendulum swing-up: after <= 10000 env steps the learned policy's return must beat uniformly
    random actions' (about -820 here; hanging still scores about -800) by MARGIN = 300: only a
    policy that swings up and balances for part of the episode does that."""
    config = OffPolicyConfig(algo=algo, hidden=(64, 64), batch_size=128, eval_every=SMALL_RUNS[algo]["num_updates"], **SMALL_RUNS[algo])
    _, history = loop.train(make_trainer(config))
    random_return = _random_policy_return(PENDULUM, config.episode_length)
    assert -1000 < random_return < -600
    assert history[-1]["eval_return"] > random_return + MARGIN, (history[-1], random_return)
    assert history[-1]["env_steps"] <= 10_000
