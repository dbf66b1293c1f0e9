"""The pure parts of experiments.bench_vs_brax_ppo and its worker: the two sides' schedules, the
worker's command line, the summary's goals. No training (brax's side needs a second
environment)."""

import dataclasses

import pytest

from experiments import bench_vs_brax_ppo as bench
from experiments import ppo_worker


@pytest.mark.parametrize("name", sorted(bench.PRESETS))
def test_both_sides_collect_and_fit_alike(name):
    preset = bench.PRESETS[name]
    ours, brax = bench.trainer_config(preset), bench.worker_settings(preset, 0, None)
    assert ours.num_updates * ours.num_envs * ours.unroll_length == brax.env_steps
    assert (ours.num_envs, ours.unroll_length) == (brax.num_envs, brax.unroll_length)
    assert (ours.num_minibatches, ours.update_epochs) == (brax.num_minibatches, brax.update_epochs)
    assert brax.num_evals - 1 == ours.num_updates // ours.eval_every == preset.train_chunks
    assert (ours.gamma, ours.gae_lambda, ours.clip) == (brax.discount, brax.gae_lambda, brax.clip)
    assert ours.learning_rate == brax.learning_rate and ours.hidden == brax.hidden
    assert brax.normalize_observations


def test_worker_command_round_trips_and_bad_sizes_are_refused(capsys):
    preset = bench.PRESETS["cpu"]
    settings = bench.worker_settings(preset, 2, "/tmp/cache")
    command = bench.SIDE.command("python", settings)
    assert command[:3] == ["python", "-m", "experiments.ppo_worker"]
    assert ppo_worker.parse(command[3:]) == settings
    with pytest.raises(SystemExit):
        ppo_worker.parse(["--num-envs", "10", "--num-minibatches", "4"])
    assert "must divide num_envs=10" in capsys.readouterr().err
    with pytest.raises(ValueError, match="num_minibatches=5 must divide"):
        dataclasses.replace(preset, num_minibatches=5)
    with pytest.raises(SystemExit):  # brax's wrappers set no info['time_out']: not an option
        ppo_worker.parse(["--bootstrap-on-timeout", "true"])
    assert "unrecognized arguments: --bootstrap-on-timeout" in capsys.readouterr().err


def _runs(rate: float, returns: list[float]) -> list[dict]:
    steps = [0, 10, 20]
    return [
        {
            "env_steps_per_s": rate + seed,
            "fastest_env_steps_per_s": rate + 2 * seed,
            "eval_return": returns[-1] + seed,
            "compile_s": 1.0,
            "evals": [{"env_steps": s, "eval_return": r + seed} for s, r in zip(steps, returns)],
        }
        for seed in range(2)
    ]


def test_summary_goals():
    summary = bench.summarize(_runs(1000.0, [0.0, 50.0, 95.0]), _runs(900.0, [0.0, 60.0, 100.0]))
    assert summary["speed_ratio"] == pytest.approx(1000.5 / 900.5) and summary["speed_goal_met"]
    assert summary["return_goal_met"]  # 95.5 >= 0.9 * 100.5
    worse = bench.summarize(_runs(800.0, [0.0, 10.0, 50.0]), _runs(900.0, [0.0, 60.0, 100.0]))
    assert not worse["speed_goal_met"] and not worse["return_goal_met"]
