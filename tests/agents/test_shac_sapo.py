"""SHAC and SAPO on the unroll trainer: the v critic, the per-env guard, the schedule, the entropy
term and its temperature, the named configurations, learning on pendulum."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs import lqr as lqr_lib
from mbpo import estimators
from mbpo.agents import registry, unroll_trainer
from mbpo.agents.unroll_trainer import VARIANTS, UnrollTrainerConfig, make_trainer
from mbpo.dynamics import from_function
from tests.agents.conftest import SMALL_LQR

# SHAC's pieces on the small LQR run: a v critic, the per-env guard, the step mean, the schedule.
GUARDED = dataclasses.replace(
    SMALL_LQR,
    num_envs=8,
    critic="v",
    num_critics=1,
    per_env_guard=True,
    mean_over_steps=True,
    lr_schedule="linear",
)


def _poison(ts, env: int):
    obs, x = ts.env_states.obs, ts.env_states.x
    return ts.replace(
        env_states=ts.env_states.replace(
            obs=obs.at[env, 0].set(jnp.nan), x=x.at[env, 0].set(jnp.nan)
        )
    )


def test_guard_leaves_out_and_resets_one_nan_env_and_updates_on_the_others():
    trainer = make_trainer(GUARDED)
    ts = jax.jit(trainer.init)(jax.random.key(0))
    new, metrics = jax.jit(trainer.update)(_poison(ts, env=3))
    assert float(metrics["guarded_envs"]) == pytest.approx(1 / GUARDED.num_envs)
    assert int(metrics["skipped_updates"]) == 0 and np.isfinite(float(metrics["grad_norm"]))
    before, after = jax.tree.leaves(ts.policy.params), jax.tree.leaves(new.policy.params)
    assert all(np.all(np.isfinite(a)) for a in after)
    assert any(not np.array_equal(b, a) for b, a in zip(before, after))
    assert np.all(np.isfinite(np.asarray(new.env_states.obs)))  # env 3 was reset
    assert int(new.env_states.t[3]) == 0 and int(new.env_states.t[2]) == GUARDED.horizon


def test_guard_with_every_env_bad_skips_the_step_and_counts_it():
    trainer = make_trainer(GUARDED)
    ts = jax.jit(trainer.init)(jax.random.key(0))
    far = ts.env_states.replace(x=ts.env_states.x + 2e6, obs=ts.env_states.obs + 2e6)
    ts = ts.replace(env_states=far)  # every window leaves +-1e6
    new, metrics = jax.jit(trainer.update)(ts)
    assert float(metrics["guarded_envs"]) == 1.0 and int(metrics["skipped_updates"]) == 1
    for b, a in zip(jax.tree.leaves(ts.policy.params), jax.tree.leaves(new.policy.params)):
        np.testing.assert_array_equal(b, a)


def test_guard_without_a_bad_env_is_the_batch_gradient():
    """The mean of the per-env gradients is the gradient of the batch mean: one update with the
    guard on equals one with it off."""
    plain = dataclasses.replace(GUARDED, per_env_guard=False)
    states = []
    for config in (GUARDED, plain):
        trainer = make_trainer(config)
        ts = jax.jit(trainer.init)(jax.random.key(1))
        states.append(jax.jit(trainer.update)(ts)[0])
    for a, b in zip(*(jax.tree.leaves(s.policy.params) for s in states)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_v_critic_sees_no_action():
    trainer = make_trainer(GUARDED)
    ts = jax.jit(trainer.init)(jax.random.key(0))
    inputs = next(x.shape[1] for x in jax.tree.leaves(ts.critic.params) if x.ndim == 3)
    assert inputs == trainer.dynamics.observation_size  # q would see obs + action
    assert trainer.critic.num_q == 1


def test_activations_reach_the_policy_and_the_critic():
    tanh_relu = make_trainer(GUARDED)
    elu = make_trainer(
        dataclasses.replace(GUARDED, policy_activation="elu", critic_activation="elu")
    )
    assert (elu.policy.activation, elu.critic.activation) == ("elu", "elu")
    assert (tanh_relu.policy.activation, tanh_relu.critic.activation) == ("tanh", "relu")
    # The same parameters give other values: the activation is used, not only stored.
    obs = jnp.full(elu.dynamics.observation_size, 2.0)
    w = tanh_relu.policy.init(jax.random.key(1))
    assert not np.allclose(tanh_relu.policy.mean(w, obs), elu.policy.mean(w, obs))
    theta = tanh_relu.critic.init(jax.random.key(2))
    assert not np.allclose(
        tanh_relu.critic.q(theta, obs, jnp.zeros(0)), elu.critic.q(theta, obs, jnp.zeros(0))
    )
    with pytest.raises(ValueError, match="unknown policy_activation 'softsign'; allowed: relu"):
        UnrollTrainerConfig(policy_activation="softsign")


def test_layer_norm_reaches_the_policy_and_the_critic():
    plain = make_trainer(GUARDED)
    normed = make_trainer(dataclasses.replace(GUARDED, layer_norm=True))
    assert (normed.policy.layer_norm, normed.critic.layer_norm) == (True, True)
    assert (plain.policy.layer_norm, plain.critic.layer_norm) == (False, False)

    # A LayerNorm (scale, bias) per hidden layer of the policy and of each critic; none without.
    def norms(params):
        paths = jax.tree_util.tree_leaves_with_path(params)
        return sorted({p for p in map(lambda x: jax.tree_util.keystr(x[0]), paths) if "Norm" in p})

    w, theta = normed.policy.init(jax.random.key(1)), normed.critic.init(jax.random.key(2))
    hidden_layers = len(GUARDED.hidden)
    assert len(norms(w)) == len(norms(theta)) == 2 * hidden_layers  # scale and bias each
    assert norms(plain.policy.init(jax.random.key(1))) == []
    assert norms(plain.critic.init(jax.random.key(2))) == []


def test_mlp_layer_norm_normalizes_each_hidden_layer_before_its_activation():
    """h = act(LN(W x + b)) with LN's initial scale 1 and bias 0: the pre-activations of a hidden
    layer have mean 0 and variance 1 (up to LN's epsilon), whatever the input's scale."""
    from mbpo.networks import MLP

    net = MLP((32,), 1, "tanh", layer_norm=True)
    x = 100.0 * jax.random.normal(jax.random.key(0), (5,))
    params = net.init(jax.random.key(1), x)
    dense = params["params"]["Dense_0"]
    pre = x @ dense["kernel"] + dense["bias"]
    normed = (pre - pre.mean()) / jnp.sqrt(pre.var() + 1e-6)
    head = params["params"]["Dense_1"]
    want = jnp.tanh(normed) @ head["kernel"] + head["bias"]
    np.testing.assert_allclose(net.apply(params, x), want, rtol=1e-5, atol=1e-5)
    assert abs(float(normed.mean())) < 1e-5 and float(normed.var()) == pytest.approx(1.0, 1e-3)


def test_linear_schedule_decays_the_learning_rate_over_the_run():
    """Adam's step along a constant unit gradient is the learning rate: SHAC's schedule takes it
    from lr to 1e-5 over num_updates optimizer steps."""
    tx = unroll_trainer._optimizer(GUARDED, 1e-2)
    params = jnp.zeros(1)
    state, steps = tx.init(params), []
    for _ in range(GUARDED.num_updates):
        updates, state = tx.update(jnp.ones(1), state, params)
        steps.append(-float(updates[0]))
    lr = [1e-2 + (1e-5 - 1e-2) * k / GUARDED.num_updates for k in range(GUARDED.num_updates)]
    np.testing.assert_allclose(steps, lr, rtol=1e-4)


@pytest.mark.parametrize("num_updates", [10, 40])
def test_linear_schedule_of_a_registered_trainer_spans_its_own_run(num_updates):
    """The trainer of a registered task is cached without its run fields, but the linear schedule
    reads num_updates: the actor's rate must decay over the config's own updates (it once
    decayed over the cache key's placeholder, 1 update, and every SHAC run trained at 1e-5)."""
    config = dataclasses.replace(GUARDED, num_updates=num_updates, actor_lr=1e-2)
    tx = make_trainer(config).update.__self__.actor_opt
    params = jnp.zeros(1)
    state, steps = tx.init(params), []
    for _ in range(3):
        updates, state = tx.update(jnp.ones(1), state, params)
        steps.append(-float(updates[0]))
    lr = [1e-2 + (1e-5 - 1e-2) * k / num_updates for k in range(3)]
    np.testing.assert_allclose(steps, lr, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "margin"), [("shac", 50.0), ("sapo", 40.0), ("ahac", 30.0)])
def test_improves_its_initial_return_on_pendulum(variant, margin):
    """The named configuration with a constant rate (the linear decay spans the run) on 3 vmapped
    seeds, 100 updates: the mean return rises by more than ``margin`` over the untrained
    policy's (measured with the tests' XLA flags: SHAC +104, +185, +54; SAPO +152, +103, +27;
    AHAC +74, +54, +71) and at most one seed ends below where it started. AHAC's pendulum has no
    contact signal: its windows keep the horizon (their cutting is tests/agents/test_ahac.py's),
    and this checks that its 3 critics and cut objective learn."""
    from mbpo.agents import loop
    from mbpo.runner import fit

    config = UnrollTrainerConfig(
        **{
            **VARIANTS[variant],
            "env": "pendulum",
            "episode_length": 200,
            "horizon": 16,
            "num_envs": 32,
            "num_updates": 100,
            "eval_every": 100,
            "eval_envs": 16,
            "gamma": 0.95,
            "hidden": (32, 32),
            "critic_epochs": 4,
            "lr_schedule": "constant",
            **({"horizon_min": 4} if variant == "ahac" else {}),
        }
    )
    trainer = make_trainer(config)
    keys = loop.evaluation_keys(config, 3)
    initial = np.asarray(loop.evaluate_seeds(trainer, loop.initial_state(trainer, 3), keys))
    _, history = fit(config, seeds=3)
    final = np.asarray(history[-1]["eval_return"])
    assert np.mean(final - initial) > margin and np.sum(final > initial) >= 2, (initial, final)
    assert history[-1]["skipped_updates"] == [0, 0, 0]


ENTROPIC = dataclasses.replace(
    GUARDED,
    policy="tanh_gaussian",
    entropy=True,
    temperature_init=0.5,
    temperature_lr=0.1,
)


def _bounded_lqr():
    """The lqr task with actions in [-2, 2], as the tanh-squashed policy needs (cheap to compile,
    unlike the pendulum ODE)."""
    task = lqr_lib.make()
    return from_function(
        lambda s, a, xi: task.A @ s + task.B @ a + task.W @ xi,
        lambda s, a, s_next: task.stage_reward(s, a),
        lambda key: task.S0 @ jax.random.normal(key, (2,)),
        action_size=1,
        noise_shape=(2,),
        action_low=-2.0,
        action_high=2.0,
    )


BOUNDED = _bounded_lqr()


@pytest.mark.parametrize(("target", "direction"), [(-5.0, -1), (5.0, 1)])
def test_temperature_falls_above_its_target_entropy_and_rises_below_it(target, direction):
    """SAC's temperature step, shared: alpha moves against the gap between the entropy of the
    window's actions and the target (a 1-d action's entropy at init is about 0.1 here)."""
    trainer = make_trainer(dataclasses.replace(ENTROPIC, entropy_target=target), BOUNDED)
    ts = jax.jit(trainer.init)(jax.random.key(0))
    new, metrics = jax.jit(trainer.update)(ts)
    before, after = float(jnp.exp(ts.temperature.params)), float(jnp.exp(new.temperature.params))
    assert np.sign(after - before) == direction and float(metrics["alpha"]) == pytest.approx(0.5)
    assert np.isfinite(float(metrics["entropy"]))


@pytest.mark.slow
def test_entropy_term_enters_the_objective_and_the_critic_targets():
    """With the bonus the objective is the plain one plus alpha times the discounted scaled
    entropy, and the critic is fitted to the rewards plus the bonus."""
    plain = make_trainer(dataclasses.replace(ENTROPIC, entropy=False), BOUNDED)
    entropic = make_trainer(ENTROPIC, BOUNDED)
    ts_plain = jax.jit(plain.init)(jax.random.key(2))
    ts = jax.jit(entropic.init)(jax.random.key(2))
    _, m_plain = jax.jit(plain.update)(ts_plain)
    _, m = jax.jit(entropic.update)(ts)
    assert float(m["reward_per_step"]) == pytest.approx(float(m_plain["reward_per_step"]))
    assert float(m["objective"]) > float(m_plain["objective"])  # alpha H~ > 0 near the target
    assert float(m["critic_loss"]) != pytest.approx(float(m_plain["critic_loss"]))


def test_shac_and_sapo_are_named_configurations_of_the_unroll_trainer():
    for name in ("shac", "sapo"):
        assert registry.config_class(name) is UnrollTrainerConfig
        assert set(VARIANTS[name]) <= {f.name for f in dataclasses.fields(UnrollTrainerConfig)}
    shac = UnrollTrainerConfig(**registry.algo_defaults("shac"))
    assert (shac.critic, shac.horizon, shac.tau, shac.lr_schedule) == ("v", 32, 0.8, "linear")
    assert shac.per_env_guard and shac.mean_over_steps and shac.num_critics == 1
    sapo = UnrollTrainerConfig(**registry.algo_defaults("sapo"))
    assert sapo.entropy and sapo.num_critics == 2 and sapo.tau == 1.0
    assert sapo.policy_kind == "tanh_gaussian"
    with pytest.raises(ValueError, match="entropy needs a stochastic policy"):
        dataclasses.replace(sapo, estimator="dpmb_r", policy=None)


def test_actor_bootstrap_reduces_the_critic_ensemble_by_min_or_mean():
    """Two critics equal but for an offset c on their output bias: min bootstraps with q_0 and
    mean with q_0 + c/2, so on the same window the objectives differ by exactly gamma^n c / 2."""
    base = dataclasses.replace(
        GUARDED, critic="q", num_critics=2, per_env_guard=False, mean_over_steps=False, horizon=3
    )
    offset = 0.8

    def value(bootstrap: str) -> float:
        trainer = make_trainer(dataclasses.replace(base, actor_bootstrap=bootstrap))
        parts = trainer.update.__self__
        ts = trainer.init(jax.random.key(0))
        twins = jax.tree.map(lambda x: x.at[1].set(x[0]), ts.critic.target)
        head = max(twins["params"], key=lambda name: int(name.split("_")[-1]))
        twins["params"][head]["bias"] = twins["params"][head]["bias"].at[1].add(offset)
        ts = ts.replace(critic=ts.critic.replace(target=twins))
        noise = estimators.draw_noise(
            parts.estimator, parts.dynamics, jax.random.key(1), parts.policy.eps_shape, 3, 8
        )
        return float(parts.actor_step(ts, noise)[1].value)

    np.testing.assert_allclose(value("mean") - value("min"), base.gamma**3 * offset / 2, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown actor_bootstrap 'max'; allowed: min, mean"):
        dataclasses.replace(base, actor_bootstrap="max")
