"""Non-finite values are failures, never silent no-ops (issue 10, part 3): the observation
normalizer ignores them, a NaN objective is skipped and counted, a run whose updates are all
skipped stops with exit code 3, and training recovers from one NaN transition."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo.agents import loop
from mbpo.agents.env_batch import normalizer_init, normalizer_update
from mbpo.agents.unroll_trainer import UnrollTrainerConfig, make_trainer
from mbpo.dynamics import from_function
from tests.agents.conftest import SMALL_LQR, riccati_returns


def test_normalizer_leaves_out_nonfinite_observations():
    obs = jax.random.normal(jax.random.key(0), (32, 3)) * 2.0 + 1.0
    clean = normalizer_update(normalizer_init(3), obs)
    dirty = obs.at[5, 1].set(jnp.nan).at[9, 0].set(jnp.inf)
    keep = np.ones(32, bool)
    keep[[5, 9]] = False
    state = normalizer_update(normalizer_init(3), dirty)
    expected = normalizer_update(normalizer_init(3), obs[keep])
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # A batch with nothing finite leaves the statistics as they were, and later batches still count.
    after = normalizer_update(clean, jnp.full((8, 3), jnp.nan))
    for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(clean)):
        np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(np.asarray(normalizer_update(after, obs).mean)))


def _point_mass(reward_offset=0.0):
    def transition(s, a, xi):
        return jnp.stack([s[0] + 0.1 * s[1], 0.95 * s[1] + 0.1 * a[0] + 0.01 * xi[0]])

    return from_function(
        transition,
        reward=lambda s, a, s_next: (
            -(s_next[0] ** 2) - 0.01 * a @ a + jax.lax.stop_gradient(reward_offset)
        ),
        reset=lambda key: jax.random.normal(key, (2,)),
        action_size=1,
        noise_shape=(1,),
    )


BPO = UnrollTrainerConfig(
    env="lqr",
    estimator="bpo",
    horizon=4,
    num_envs=4,
    episode_length=8,
    num_updates=4,
    eval_every=2,
    eval_envs=2,
    hidden=(8,),
)


def test_nan_objective_with_a_finite_gradient_is_skipped_and_counted():
    # The NaN enters the reward through stop_gradient: the objective is NaN, its gradient finite.
    trainer = make_trainer(BPO, _point_mass(reward_offset=jnp.nan))
    ts = jax.jit(trainer.init)(jax.random.key(0))
    new, metrics = jax.jit(trainer.update)(ts)
    assert not np.isfinite(float(metrics["objective"])) and np.isfinite(float(metrics["grad_norm"]))
    assert int(metrics["skipped_updates"]) == 1
    for before, after in zip(jax.tree.leaves(ts.policy.params), jax.tree.leaves(new.policy.params)):
        np.testing.assert_array_equal(before, after)


def test_a_run_whose_updates_are_all_skipped_stops_with_exit_code_3(tmp_path, monkeypatch, capsys):
    from mbpo import main as cli
    from mbpo import runner
    from mbpo.agents import registry

    nan_task = make_trainer(BPO, _point_mass(reward_offset=jnp.nan))
    with pytest.raises(loop.Diverged, match="all 2 updates before update 2 were skipped"):
        loop.train(nan_task)
    monkeypatch.setattr(registry, "make_trainer", lambda config, dynamics=None: nan_task)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        argv = (
            "train --env lqr --estimator bpo --horizon 4 --num-envs 4 --episode-length 8 "
            "--num-updates 4 --eval-every 2 --eval-envs 2 --hidden 8"
        ).split()
        cli.main([*argv, "--run-dir", str(run)])
    err = capsys.readouterr().err
    assert (
        info.value.code == 3
        and "training diverged" in err
        and "last finite evaluation was after 0 updates" in err
    )
    assert "no checkpoint was written" in err and runner.checkpoint_steps(run) == []


@pytest.mark.slow
def test_training_recovers_from_one_nan_transition():
    """One environment's state turned NaN halfway through: that update is skipped, the
    environment is reset, the normalizer is untouched, and every seed still closes >= 75% of the
    gap to the Riccati policy on LQR (as test_unroll_trainer's learning test without the NaN)."""
    config = dataclasses.replace(SMALL_LQR, horizon=8, num_updates=100, actor_lr=3e-3)
    trainer = make_trainer(config)
    eval_keys = loop.evaluation_keys(config, 3)
    ts = loop.initial_state(trainer, 3)
    initial = np.asarray(loop.evaluate_seeds(trainer, ts, eval_keys))
    # Chunks of 2 updates, the program test_unroll_trainer's learning test compiles (same config).
    for _ in range(25):
        ts, _ = loop._run_updates_seeds(trainer, ts, 2)
    ts = ts.replace(
        env_states=ts.env_states.replace(
            obs=ts.env_states.obs.at[:, 0].set(jnp.nan), x=ts.env_states.x.at[:, 0].set(jnp.nan)
        )
    )
    for _ in range(25):
        ts, metrics = loop._run_updates_seeds(trainer, ts, 2)
    assert np.all(np.asarray(metrics["skipped_updates"])[:, -1] == 1)  # the one update, then none
    assert np.all(np.isfinite(np.asarray(ts.normalizer.mean)))
    final = np.asarray(loop.evaluate_seeds(trainer, ts, eval_keys))
    optimal = riccati_returns(trainer, eval_keys)
    assert np.all(optimal - final <= 0.25 * (optimal - initial)), (initial, final, optimal)


def test_int32_counters_are_checked_when_the_config_is_built():
    with pytest.raises(ValueError, match="more than the int32 counters hold"):
        dataclasses.replace(BPO, num_envs=4096, horizon=32, episode_length=32, num_updates=16_500)
    dataclasses.replace(
        BPO, num_envs=4096, horizon=32, episode_length=32, num_updates=16_000
    )  # 2.1e9: fits
