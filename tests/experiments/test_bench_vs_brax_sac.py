"""The pure parts of experiments.bench_vs_brax_sac and its worker: presets, the worker's command
line, the summary and the table. No training (brax's side needs a second environment)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from experiments import bench_vs_brax_sac as bench
from experiments import harness, sac_worker


def _preset(**changes) -> bench.Preset:
    return dataclasses.replace(bench.PRESETS["cpu"], **changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"env": "pendulum"}, "Brax task"),
        ({"backend": "warp"}, "backend"),
        ({"num_envs": 0}, "num_envs must be >= 1"),
        ({"train_chunks": 1}, "train_chunks must be >= 2"),
        ({"buffer_capacity": 8}, "buffer_capacity=8"),
        ({"discount": 1.5}, "discount"),
        ({"hidden": ()}, "hidden"),
    ],
)
def test_preset_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        _preset(**changes)


@pytest.mark.parametrize("name", sorted(bench.PRESETS))
def test_both_sides_get_the_same_schedule(name):
    """Ours and brax's settings agree on env steps, warmup, chunks and the optimizer."""
    preset = bench.PRESETS[name]
    ours = bench.trainer_config(preset, action_size=2)
    brax = bench.worker_settings(preset, seed=1, cache=None)
    assert ours.num_updates * ours.num_envs == brax.env_steps == preset.env_steps
    assert ours.warmup_steps == brax.warmup_steps == ours.eval_every * ours.num_envs
    assert brax.steps_per_epoch == ours.eval_every == preset.chunk_updates
    assert brax.num_evals - 1 == ours.num_updates // ours.eval_every - 1 == preset.train_chunks
    assert (ours.batch_size, ours.gradient_steps) == (brax.batch_size, brax.grad_updates_per_step)
    assert ours.actor_lr == ours.critic_lr == brax.learning_rate
    assert (ours.gamma, ours.tau, ours.hidden) == (brax.discount, brax.tau, brax.hidden)
    assert ours.buffer_capacity == brax.max_replay_size
    assert (
        ours.entropy_target == -1.0 and ours.temperature_init == 1.0 and ours.temperature_lr == 3e-4
    )
    assert not brax.normalize_observations and brax.reward_scaling == 1.0


def test_worker_command_round_trips():
    preset = bench.PRESETS["cpu"]
    command = bench.SIDE.command("/venv/bin/python", bench.worker_settings(preset, 2, "/tmp/cache"))
    assert command[:3] == ["/venv/bin/python", "-m", "experiments.sac_worker"]
    assert command[command.index("--hidden") + 1 : command.index("--hidden") + 3] == ["64", "64"]
    assert sac_worker.parse(command[3:]) == bench.worker_settings(preset, 2, "/tmp/cache")
    assert "--compilation-cache" not in bench.SIDE.command(
        "python", bench.worker_settings(preset, 0, None)
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--num-evals", "2"], "num_evals must be >= 3"),
        (["--warmup-steps", "100"], "multiple of num_envs"),
        (["--env-steps", "14000"], "positive multiple"),
        (["--activation", "gelu"], "unknown activation"),
        (["--normalize-observations", "maybe"], "expected true or false"),
    ],
)
def test_worker_rejects_bad_flags(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sac_worker.parse(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_parse_args_needs_an_executable_brax_python(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.SIDE.parse(bench.EXPERIMENT, ["--brax-python", str(tmp_path / "missing")])
    assert "--brax-python" in capsys.readouterr().err


def _runs(rate: float, returns: list[float], steps: list[int]) -> list[dict]:
    """Three fake seeds whose rates are rate - 1, rate, rate + 1 and whose curves are ``returns``
    shifted by the seed."""
    return [
        {
            "env_steps_per_s": rate + seed - 1,
            "fastest_env_steps_per_s": 2 * rate + seed - 1,
            "eval_return": returns[-1] + seed,
            "compile_s": 30.0 if seed == 0 else 0.5,
            "evals": [{"env_steps": s, "eval_return": r + seed} for s, r in zip(steps, returns)],
            "chunk_times_s": [40.0, 2.0, 1.0],
            "epoch_times_s": [30.0, 1.0],
        }
        for seed in range(3)
    ]


def test_summary_and_table():
    steps = [0, 4096, 6144]
    ours, brax = (
        _runs(2000.0, [40.0, 150.0, 190.0], steps),
        _runs(1000.0, [45.0, 200.0, 200.0], steps),
    )
    summary = bench.summarize(ours, brax)
    assert summary["speed_ratio"] == summary["fastest_speed_ratio"] == pytest.approx(2.0)
    assert summary["speed_goal_met"] and not summary["return_goal_met"]
    assert summary["ours"]["env_steps_per_s"] == {"mean": 2000.0, "std": 1.0, "n": 3}
    assert [c["env_steps"] for c in summary["brax"]["curve"]] == steps
    assert summary["brax"]["curve"][1]["mean"] == pytest.approx(201.0)
    assert summary["ours"]["compile_s_seed0"] == 30.0

    report = {
        "preset": "cpu",
        "config": dataclasses.asdict(bench.PRESETS["cpu"]),
        "summary": summary,
        "ours": ours,
        "brax": brax,
        "jax_version": "0.10.2",
        "brax_version": "0.14.2",
        "brax_jax_version": "0.9.2",
        "device_kind": "cpu",
        "wall_s": 300.0,
        "ours_wall_s": 120.0,
        "brax_wall_s": 180.0,
        "load_average_1min_at_start": 1.0,
        "load_average_1min_at_end": 2.0,
    }
    table = bench.format_table(report)
    assert "2000 +- 1" in table and "1000 +- 1" in table and "2.00" in table
    assert "4000 +- 1" in table and "2000 +- 1" in table
    assert ">= 1.0: met" in table and "ours >= brax: NOT met (difference -10.0)" in table
    assert "warmup + first chunk s, seed 0" in table and "42.0" in table
    assert table.splitlines()[-2].split() == ["6144", "191.0", "+-", "1.0", "201.0", "+-", "1.0"]


def test_summary_rejects_different_evaluation_steps():
    ours, brax = _runs(1.0, [0.0, 1.0], [0, 10]), _runs(1.0, [0.0, 1.0], [0, 12])
    with pytest.raises(ValueError, match="different env steps"):
        bench.summarize(ours, brax)


def test_summary_without_timed_chunks():
    ours, brax = _runs(1.0, [0.0, 1.0], [0, 10]), _runs(1.0, [0.0, 1.0], [0, 10])
    for run in brax:
        run["env_steps_per_s"] = run["fastest_env_steps_per_s"] = None
    summary = bench.summarize(ours, brax)
    assert summary["speed_ratio"] is None and not summary["speed_goal_met"]
    assert summary["fastest_speed_ratio"] is None
    assert harness.pm(summary["brax"]["env_steps_per_s"]) == "n/a"


def test_shared_flag_writer_serves_the_apg_worker_too():
    """bench_vs_brax_apg's command line, written by the shared helper, parses back to settings."""
    from experiments import apg_worker
    from experiments import bench_vs_brax_apg as apg_bench

    preset = apg_bench.PRESETS["cpu"]
    command = apg_bench.SIDE.command("python", apg_bench.worker_settings(preset, 3, "/tmp/cache"))
    assert command[:3] == ["python", "-m", "experiments.apg_worker"]
    assert apg_worker.parse(command[3:]) == apg_bench.worker_settings(preset, 3, "/tmp/cache")
    assert command[command.index("--use-schedule") + 1] == "false"


@pytest.mark.parametrize("name", ["bench_vs_brax_apg", "bench_vs_brax_ppo", "bench_vs_brax_sac"])
def test_both_sides_of_every_brax_benchmark_run_the_same_task_and_pipeline(name):
    """Our side once ran reacher on the generalized pipeline (the config default) against APG on
    the positional one, which made our update look 2.3x slower."""
    import importlib

    bench = importlib.import_module(f"experiments.{name}")
    for preset in bench.PRESETS.values():
        ours = (
            bench.trainer_config(preset, 2)
            if name.endswith("sac")
            else bench.trainer_config(preset)
        )
        brax = bench.worker_settings(preset, 0, None)
        assert (
            (ours.env, ours.brax_backend)
            == (brax.env, brax.backend)
            == (preset.env, preset.backend)
        )
        assert (ours.num_envs, ours.episode_length) == (brax.num_envs, brax.episode_length)
        assert (ours.hidden, ours.eval_envs) == (brax.hidden, brax.eval_envs)


def test_a_benchmark_run_as_a_script_names_its_module():
    """``python -m`` runs a benchmark as __main__; its --help and its ours_worker command must
    still name the module (they once said ``__main__``, and --ours-python failed)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "experiments.bench_vs_brax_apg", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "usage: python -m experiments.bench_vs_brax_apg" in done.stdout


def test_a_comparison_cut_short_keeps_the_seeds_it_measured():
    from experiments import _baselines

    written = []

    def fails_on_seed_1(seed):
        if seed == 1:
            raise RuntimeError("the brax worker failed")
        return {"seed": seed}

    sides = {"ours": lambda seed: {"seed": seed}, "brax": fails_on_seed_1}
    with pytest.raises(RuntimeError):
        _baselines.alternate_seeds(
            3, sides, after=lambda result: written.append(json.loads(json.dumps(result)))
        )
    # ours 0, brax 0, ours 1: each written as it finished; brax 1 failed.
    assert [(len(r["ours"]), len(r["brax"])) for r in written] == [(1, 0), (1, 1), (2, 1)]
