"""AHAC on the unroll trainer: per-env windows cut before stiff contact, the dual update of their
cap, a dynamics without a contact signal keeps its fixed horizon, the named configuration, and
the Brax contact signal's definition (without compiling Brax)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from envs import lqr as lqr_lib
from mbpo.agents import registry
from mbpo.agents.unroll_trainer import VARIANTS, UnrollTrainerConfig, make_trainer


class ContactLQR(lqr_lib.LQR):
    """The LQR task with a contact signal: |s'|_1 (as if a wall at the origin pushed back)."""

    def _contact(self, x, action, x_next):
        return jnp.sum(jnp.abs(x_next))


def _contact_lqr():
    base = lqr_lib.make()
    return ContactLQR(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})


CONFIG = UnrollTrainerConfig(
    env="lqr",
    estimator="svg",
    horizon=16,
    horizon_min=2,
    adaptive_horizon=True,
    contact_threshold=4.0,
    horizon_lr=0.1,
    num_envs=8,
    episode_length=64,
    num_updates=6,
    hidden=(16,),
    critic="v",
    num_critics=3,
    critic_epochs=2,
    critic_minibatches=2,
    mean_over_steps=True,
    eval_envs=4,
    eval_every=6,
)


def _run(dynamics, updates=6):
    trainer = make_trainer(CONFIG, dynamics)
    ts = jax.jit(trainer.init)(jax.random.key(0))
    update = jax.jit(trainer.update)
    history = []
    for _ in range(updates):
        ts, metrics = update(ts)
        history.append(jax.device_get(metrics))
    return ts, history


def test_contact_signal_is_part_of_the_dynamics_interface():
    plain, contact = lqr_lib.make(), _contact_lqr()
    assert not plain.has_contact_signal and contact.has_contact_signal
    s = contact.reset(jax.random.key(0))
    s2 = contact.step(s, jnp.ones(1), jnp.zeros(2))
    assert float(contact.contact(s, jnp.ones(1), s2)) == pytest.approx(
        float(jnp.sum(jnp.abs(s2.x)))
    )
    with pytest.raises(NotImplementedError, match="no contact signal"):
        plain.contact(s, jnp.ones(1), s2)


def test_horizon_shrinks_where_the_contact_signal_fires():
    """|s'|_1 of about 1-2 per step spends a budget of 4 in a few steps: the per-env windows are
    cut well short of 16 and the dual update brings the cap down."""
    ts, history = _run(_contact_lqr())
    assert history[0]["horizon_cap"] == CONFIG.horizon
    assert history[0]["effective_horizon"] < CONFIG.horizon / 2
    assert float(ts.horizon_cap) < CONFIG.horizon - 2
    assert history[1]["horizon_cap"] < history[0]["horizon_cap"]
    assert all(np.isfinite(h["grad_norm"]) and h["skipped_updates"] == 0 for h in history)


def test_horizon_stays_fixed_without_a_contact_signal():
    ts, history = _run(lqr_lib.make())
    assert float(ts.horizon_cap) == CONFIG.horizon
    assert all(h["effective_horizon"] == CONFIG.horizon for h in history)


def test_window_lengths_per_env():
    """Each env is cut before the step where its accumulated signal passes the threshold, never
    shorter than horizon_min nor longer than the cap."""
    trainer = make_trainer(CONFIG, _contact_lqr())
    u = trainer.update.__self__  # the trainer's parts (unroll_trainer._Unroll)
    n = CONFIG.horizon
    contact = np.zeros((4, n))
    contact[0, 10] = 5.0  # passes 4 at step 10: window 10
    contact[1, :] = 1.0  # passes 4 at step 4 (sum 5): window 4
    contact[2, 0] = 9.0  # at once: horizon_min
    # env 3: never: the cap
    lengths = u.window_lengths(jnp.asarray(contact), jnp.asarray(12.0))
    np.testing.assert_array_equal(lengths, [10, 4, CONFIG.horizon_min, 12])


def test_adaptive_horizon_equals_the_fixed_window_when_nothing_cuts():
    """Without a signal and with the cap at the horizon, AHAC's objective is SVG(n)'s: one update
    of each gives the same parameters."""
    plain = dataclasses.replace(CONFIG, adaptive_horizon=False)
    params = []
    for config in (CONFIG, plain):
        trainer = make_trainer(config, lqr_lib.make())
        ts = jax.jit(trainer.init)(jax.random.key(3))
        params.append(jax.jit(trainer.update)(ts)[0].policy.params)
    for a, b in zip(*(jax.tree.leaves(p) for p in params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"horizon_min": 20}, "horizon_min"),
        ({"contact_threshold": 0.0}, "contact_threshold"),
        ({"estimator": "bpo", "policy": None, "critic": "q"}, "adaptive_horizon"),
        ({"horizon": None, "estimator": "bpo", "policy": None}, "adaptive_horizon"),
    ],
)
def test_bad_adaptive_horizon_settings_name_the_value(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(CONFIG, **change)


def test_ahac_is_a_named_configuration():
    config = registry.config_for("ahac", env="pendulum", num_updates=2)
    assert config.adaptive_horizon and config.num_critics == 3 and config.critic == "v"
    assert (config.horizon_min, config.horizon) == (8, 64)
    assert set(VARIANTS["ahac"]) >= {"adaptive_horizon", "horizon_min", "contact_threshold"}
