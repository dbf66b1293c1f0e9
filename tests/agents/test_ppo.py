"""PPO: the clipped surrogate against the REINFORCE/GAE gradient and the LQR closed form, the
registry and command line, learning on pendulum."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import envs
from envs import lqr as lqr_lib
from mbpo import estimators
from mbpo.agents import ppo, registry
from mbpo.critics import QCritic
from mbpo.policies import GaussianPolicy
from mbpo.unroll import rollout, sample_noise

GAMMA, SIGMA, K0 = 0.9, 0.4, np.array([[1.0, 1.5]])


def _linear_policy():
    return GaussianPolicy(2, 1, (-np.inf,), (np.inf,), hidden=(), use_bias=False)


def _params(K, sigma):
    net = {"params": {"Dense_0": {"kernel": -jnp.asarray(K).T}}}
    return {"net": net, "log_std": jnp.log(jnp.array([sigma]))}


def _episodes(task, policy, params, key, n, steps):
    states = jax.vmap(task.reset)(jax.random.split(key, n))
    noise = jax.vmap(lambda k: sample_noise(task, k, steps, (1,)))(jax.random.split(key, n))
    act = lambda o, e: policy.sample(params, o, e)
    return jax.vmap(lambda s, z: rollout(task, act, s, z, dynamics_gradient="stop")[1])(
        states, noise
    )


def _lqr_parts(**overrides):
    """PPO's pure functions on lqr (a Gaussian policy, tiny networks) and the batch of one
    collected window, its rewards shifted so that the value network's start is far from the
    returns."""
    task = envs.make("lqr")
    config = ppo.PPOConfig(
        env="lqr",
        policy="gaussian",
        hidden=(8,),
        num_envs=4,
        unroll_length=8,
        num_minibatches=1,
        **overrides,
    )
    policy = GaussianPolicy.for_dynamics(task, hidden=(8,), init_std=0.5)
    value = QCritic(task.observation_size, 0, num_q=1, hidden=(8,))
    parts = ppo._PPO(config, task, policy, value, optax.adam(1e-3))
    ts = jax.jit(parts.init)(jax.random.key(0))
    _, traj, eps = jax.jit(parts.collect)(ts, jax.random.key(1))
    traj = traj.replace(
        reward=traj.reward + jnp.linspace(-1.0, 2.0, traj.reward.size).reshape(4, 8)
    )
    batch = jax.jit(parts.batch)(ts, traj, eps)
    return parts, ts, traj, batch


def test_clipped_surrogate_without_clipping_is_the_reinforce_gae_gradient():
    """At the collecting parameters the ratio is 1; with clip = inf, no advantage normalization
    and no value or entropy terms, PPO's loss gradient is minus the score-function gradient
    mean_i grad log pi(a_i|s_i) A_i, exactly."""
    parts, ts, _, batch = _lqr_parts(
        clip=float("inf"), normalize_advantage=False, entropy_cost=0.0, value_coef=0.0
    )
    params = ts.learner.params
    got = jax.jit(jax.grad(lambda p: parts.loss(p, batch)[0]))(params)["policy"]

    def reinforce(p):  # the Gaussian policy's latent is its action: log pi itself
        log_pi = jax.vmap(lambda o, a: parts.policy.log_prob(p, o, a))(
            batch["obs"], batch["latent"]
        )
        return estimators.score_surrogate(log_pi, batch["advantage"]) / log_pi.shape[0]

    want = jax.jit(jax.grad(reinforce))(params["policy"])
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, -w, rtol=1e-5, atol=1e-7)


def test_minibatch_advantages_are_brax_gae_from_the_current_value_network():
    """advantages='minibatch' keeps each env's window and computes, inside the loss, brax's
    lambda-returns and advantages (``brax.training.agents.ppo.losses.compute_gae``, here with no
    truncation) from the value network it is given."""
    from brax.training.agents.ppo.losses import compute_gae

    parts, ts, traj, batch = _lqr_parts(advantages="minibatch", gamma=0.9, gae_lambda=0.8)
    assert batch["obs"].shape == (4, 8, 2) and batch["log_old"].shape == (4, 8)
    value_params = jax.tree.map(lambda x: 1.5 * x + 0.1, ts.learner.params["value"])
    got = jax.jit(parts.window_targets)(value_params, batch)
    values = parts.v(value_params, batch["obs"])  # (envs, steps)
    bootstrap = parts.v(value_params, batch["next_obs"][:, -1])
    vs, adv = compute_gae(
        truncation=jnp.zeros((8, 4)),
        termination=traj.done.T,
        rewards=batch["reward"].T,
        values=values.T,
        bootstrap_value=bootstrap,
        lambda_=0.8,
        discount=0.9,
    )
    np.testing.assert_allclose(got["target"], vs.T.reshape(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["advantage"], adv.T.reshape(-1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["obs"], batch["obs"].reshape(-1, 2))


def test_minibatch_advantages_at_lambda_one_are_the_window_gae():
    """With lambda = 1 brax's advantage r_t + gamma G_{t+1} - v(s_t) is G_t - v(s_t), the GAE;
    at the collecting parameters both modes give the same loss and gradient."""
    losses = []
    for mode in ppo.ADVANTAGES:
        parts, ts, _, batch = _lqr_parts(advantages=mode, gae_lambda=1.0)
        loss = jax.value_and_grad(lambda p, parts=parts, batch=batch: parts.loss(p, batch)[0])
        losses.append(jax.jit(loss)(ts.learner.params))
    (a, grad_a), (b, grad_b) = losses
    np.testing.assert_allclose(a, b, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.usefixtures("x64")
def test_reinforce_gae_gradient_is_within_4_standard_errors_of_the_lqr_closed_form():
    """sum_t gamma^t grad log pi(a_t|s_t) (G_t - V(s_t)) with the exact value of the policy as
    baseline and bootstrap (GAE with lambda = 1) is an unbiased estimate of grad J: its mean over
    4000 episodes of 80 steps lies within 4 standard errors of the closed form, for the gain and
    the log-std."""
    task, policy = envs.make("lqr"), _linear_policy()
    params, steps, n = _params(K0, SIGMA), 80, 4000
    traj = jax.jit(lambda w, k: _episodes(task, policy, w, k, n, steps))(params, jax.random.key(3))
    v = lambda s: lqr_lib.value(task, jnp.asarray(K0), GAMMA, s, SIGMA)

    @jax.jit
    def advantages(traj):
        v_t, v_tp1 = jax.vmap(jax.vmap(v))(traj.obs), jax.vmap(jax.vmap(v))(traj.next_obs)
        return jax.vmap(lambda r, d, a, b: estimators.gae(r, d, a, b, 1.0))(
            traj.reward, GAMMA * (1 - traj.done), v_t, v_tp1
        )

    adv = advantages(traj)
    weight = GAMMA ** jnp.arange(steps)

    def one(obs, action, a):
        def surrogate(p):
            log_pi = jax.vmap(lambda o, u: policy.log_prob(p, o, u))(obs, action)
            return estimators.score_surrogate(log_pi, weight * a)

        return jax.grad(surrogate)(params)

    grads = jax.jit(jax.vmap(one))(traj.obs, traj.action, adv)
    closed = jax.jit(
        jax.grad(
            lambda p: lqr_lib.expected_return(
                task,
                -p["net"]["params"]["Dense_0"]["kernel"].T,
                GAMMA,
                policy_std=jnp.exp(p["log_std"][0]),
            )
        )
    )(params)
    for g, c in zip(jax.tree.leaves(grads), jax.tree.leaves(closed)):
        mean, se = g.mean(0), g.std(0) / np.sqrt(n)
        assert np.all(np.abs(mean - c) <= 4 * se), (mean, se, c)


def test_ppo_is_an_algorithm_of_the_registry_and_refuses_bad_sizes():
    assert registry.config_class("ppo") is ppo.PPOConfig
    config = registry.config_for("ppo", env="pendulum")
    assert config.num_envs * config.unroll_length % config.num_minibatches == 0
    with pytest.raises(ValueError, match="num_minibatches=7 must divide"):
        dataclasses.replace(config, num_minibatches=7)
    with pytest.raises(ValueError, match=r"clip must be in \(0, inf\], got 0.0"):
        dataclasses.replace(config, clip=0.0)
    with pytest.raises(ValueError, match="unknown advantages 'brax'; allowed: window, minibatch"):
        dataclasses.replace(config, advantages="brax")
    with pytest.raises(ValueError, match=r"num_minibatches=16 must divide num_envs=8 \(adv"):
        dataclasses.replace(config, num_envs=8, advantages="minibatch")
    with pytest.raises(ValueError, match="unknown value_activation 'sigmoid'; allowed: relu, tanh"):
        dataclasses.replace(config, value_activation="sigmoid")
    swish = ppo.make_trainer(
        dataclasses.replace(config, policy_activation="swish", value_activation="elu")
    )
    assert swish.policy.activation == "swish" and swish.critic.activation == "elu"


@pytest.mark.slow
def test_ppo_improves_its_initial_return_on_pendulum():
    """3 vmapped seeds, 150 updates of 32 envs x 20 steps (96k env steps) at brax's learning rate:
    the mean return rises by more than 50 over the untrained policy's, towards the hanging-still
    optimum (about -760, which a swing-up must beat), and at least two seeds improve. Measured
    with the tests' XLA flags: +420, +213, +57 (swish networks, the default since 2026-12-04;
    +179, +122, +36 with the tanh policy and relu value before)."""
    from mbpo.agents import loop
    from mbpo.runner import fit

    config = ppo.PPOConfig(
        env="pendulum",
        episode_length=200,
        hidden=(32, 32),
        eval_envs=16,
        num_envs=32,
        unroll_length=20,
        num_updates=150,
        eval_every=150,
        gamma=0.95,
        update_epochs=4,
        num_minibatches=8,
        entropy_cost=1e-3,
        learning_rate=3e-4,
    )
    trainer = ppo.make_trainer(config)
    keys = loop.evaluation_keys(config, 3)
    initial = np.asarray(loop.evaluate_seeds(trainer, loop.initial_state(trainer, 3), keys))
    _, history = fit(config, seeds=3)
    final = np.asarray(history[-1]["eval_return"])
    assert np.mean(final - initial) > 50 and np.sum(final > initial) >= 2, (initial, final)
    assert history[-1]["skipped_updates"] == [0, 0, 0]


def test_tanh_policy_ratio_is_exact_where_the_action_saturates():
    """PPO's log-probs come from the pre-squash u: where tanh(u) rounds to the bound (|u| >> 1)
    the atanh of the stored action would lose u (and blow up the ratio), the latent keeps it;
    where it does not saturate, its gradient in w is log pi's (the Jacobian does not depend on
    w)."""
    from mbpo.policies import TanhGaussianPolicy

    policy = TanhGaussianPolicy(
        observation_size=3,
        action_size=2,
        action_low=(-1.0, -1.0),
        action_high=(1.0, 1.0),
        hidden=(8,),
    )
    params = policy.init(jax.random.key(0))
    obs, eps = jnp.ones(3), jnp.array([0.3, -0.2])
    layers = params["net"]["params"]
    last = sorted(layers)[-1]  # the output layer: its bias shifts every mean by 30 (saturated)
    shifted = {**layers[last], "bias": layers[last]["bias"] + 30.0}
    far = {**params, "net": {**params["net"], "params": {**layers, last: shifted}}}
    z = policy.latent(far, obs, eps)
    assert np.all(np.abs(np.asarray(policy.sample(far, obs, eps))) == 1.0)  # saturated
    assert float(policy.latent_log_prob(far, obs, z)) == pytest.approx(
        float(policy.sample_and_log_prob(far, obs, eps)[1] + jnp.sum(policy._log_det(z))), rel=1e-5
    )
    nudged = jax.tree.map(lambda x: x * 1.01, far)
    ratio = jnp.exp(policy.latent_log_prob(nudged, obs, z) - policy.latent_log_prob(far, obs, z))
    assert np.isfinite(float(ratio)) and 0.1 < float(ratio) < 10.0
    a = policy.sample(params, obs, eps)  # not saturated: the same gradient as log pi's
    g_latent = jax.grad(lambda p: policy.latent_log_prob(p, obs, policy.latent(params, obs, eps)))(
        params
    )
    g_true = jax.grad(lambda p: policy.log_prob(p, obs, a))(params)
    for x, y in zip(jax.tree.leaves(g_latent), jax.tree.leaves(g_true)):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5)
