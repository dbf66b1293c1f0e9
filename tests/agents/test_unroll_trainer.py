"""The BPO / SVG(n) trainer: no retracing, seeds vmapped, guards, learning on small tasks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo.agents import loop
from mbpo.agents.loop import run_updates
from mbpo.agents.unroll_trainer import UnrollTrainerConfig, make_trainer
from mbpo.cli import parse
from mbpo.runner import fit
from tests.agents.conftest import SMALL_LQR, riccati_returns


def test_another_seed_in_the_same_process_traces_nothing_again():
    """fit's programs (init, the chunk of updates, the evaluation) are jitted with the trainer
    static: a second run of the same configuration at another seed finds them all."""
    config = dataclasses.replace(SMALL_LQR, hidden=(15,))  # networks no other test builds
    programs = (loop._init, loop.run_updates, loop.evaluate)
    before = [f._cache_size() for f in programs]
    fit(config)
    traced = [f._cache_size() for f in programs]
    _, history = fit(dataclasses.replace(config, seed=7))
    assert [t - b for t, b in zip(traced, before)] == [1, 1, 1]
    assert [f._cache_size() for f in programs] == traced and len(history) == 2


@pytest.mark.parametrize(
    "estimator,horizon", [("svg", 4), ("dpmb_sf", 2), ("svg", 0), ("svg", None)]
)
def test_jitted_update_does_not_retrace_on_second_call(estimator, horizon):
    trainer = make_trainer(dataclasses.replace(SMALL_LQR, estimator=estimator, horizon=horizon))
    traces = []

    def update(ts):
        traces.append(1)
        return trainer.update(ts)

    step = jax.jit(update)
    ts = jax.jit(trainer.init)(jax.random.key(0))
    ts, metrics = step(ts)
    ts, metrics = step(ts)
    assert len(traces) == 1
    assert (
        int(ts.updates) == 2
        and int(ts.env_steps) == 2 * SMALL_LQR.num_envs * trainer.config.steps_per_update
    )
    assert np.isfinite(float(metrics["objective"]))


@pytest.mark.slow
def test_vmapped_seeds_equal_separate_runs():
    config = dataclasses.replace(SMALL_LQR, num_updates=3)
    states, _history = fit(config, seeds=3)
    trainer = make_trainer(config)
    for i, key in enumerate(jax.random.split(jax.random.key(config.seed), 3)):
        ts, _ = run_updates(trainer, jax.jit(trainer.init)(key), 3)
        for a, b in zip(
            jax.tree.leaves(ts.policy.params),
            jax.tree.leaves(jax.tree.map(lambda x, i=i: x[i], states.policy.params)),
        ):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_nonfinite_gradient_is_skipped_and_counted():
    trainer = make_trainer(SMALL_LQR)
    ts = jax.jit(trainer.init)(jax.random.key(0))
    poisoned = ts.replace(
        env_states=ts.env_states.replace(
            obs=ts.env_states.obs.at[0, 0].set(jnp.nan), x=ts.env_states.x.at[0, 0].set(jnp.nan)
        )
    )
    new, metrics = jax.jit(trainer.update)(poisoned)
    assert int(metrics["skipped_updates"]) == 1
    for before, after in zip(jax.tree.leaves(ts.policy.params), jax.tree.leaves(new.policy.params)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("estimator,horizon", [("svg", 8), ("bpo", 10)])
def test_learning_closes_most_of_the_gap_to_the_riccati_policy_on_lqr(estimator, horizon):
    """100 updates close >= 75% of the gap between the initial policy's return and the Riccati
    gain's, on each of 3 seeds (same evaluation episodes for all three policies)."""
    config = dataclasses.replace(
        SMALL_LQR, estimator=estimator, horizon=horizon, num_updates=100, actor_lr=3e-3
    )
    trainer = make_trainer(config)
    eval_keys = loop.evaluation_keys(config, 3)
    initial = np.asarray(loop.evaluate_seeds(trainer, loop.initial_state(trainer, 3), eval_keys))
    optimal = riccati_returns(trainer, eval_keys)
    _, history = fit(config, seeds=3)
    final = np.asarray(history[-1]["eval_return"])
    assert np.all(optimal - final <= 0.25 * (optimal - initial)), (initial, final, optimal)


def test_train_reports_progress():
    records = []
    _, history = fit(
        dataclasses.replace(SMALL_LQR, num_updates=4, eval_every=2),
        callbacks=[lambda r, ts: records.append(r)],
    )
    assert [r["updates"] for r in records] == [2, 4] and records == history
    assert {"eval_return", "env_steps", "grad_norm", "wall_time", "skipped_updates"} <= set(
        records[0]
    )


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--env", "pendullum"], "unknown env 'pendullum'"),
        (["--horizon", "-1"], "horizon must be >= 0"),
        (["--num-envs", "0"], "num_envs must be >= 1, got 0"),
        (["--estimator", "dpmb_sf", "--horizon", "none"], "dpmb_sf bootstraps with a critic"),
        (["--estimator", "bogus"], "invalid choice: 'bogus'"),
    ],
)
def test_bad_config_exits_with_code_2_naming_the_value(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(UnrollTrainerConfig, argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_parses_tuples_and_none():
    config = parse(
        UnrollTrainerConfig,
        ["--hidden", "8", "8", "--horizon", "none", "--normalize-observations", "false"],
    )
    assert (
        config.hidden == (8, 8)
        and config.horizon is None
        and config.normalize_observations is False
    )


def test_remat_leaves_the_update_unchanged():
    """remat is a memory setting: one BPO update over whole 40-step episodes with the unroll
    rematerialized every 7 steps moves the policy as the plain one does."""
    base = UnrollTrainerConfig(
        env="lqr",
        estimator="bpo",
        horizon=None,
        num_envs=4,
        episode_length=40,
        num_updates=1,
        hidden=(8,),
        eval_envs=2,
        eval_every=1,
    )
    params = []
    for remat in ("off", "7"):
        trainer = make_trainer(dataclasses.replace(base, remat=remat))
        ts = jax.jit(trainer.init)(jax.random.key(0))
        params.append(jax.jit(trainer.update)(ts)[0].policy.params)
    for a, b in zip(*(jax.tree.leaves(p) for p in params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
