"""The horizon comparison on a tiny preset: lqr bias shrinks with n, outputs are written."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from experiments import compare_horizons as ch

TINY = dataclasses.replace(
    ch.PRESETS["cpu"],
    horizons=(0, 4, None),
    gradient_seeds=8,
    gradient_batch=32,
    lqr_episode=120,
    pretrain_updates=2,
    budget=2 * 16 * 4,
    return_horizons=(4,),
    return_seeds=2,
    num_envs=16,
    brax_tasks=(),
)


def test_lqr_bias_of_a_stale_critic_shrinks_with_the_horizon(x64):
    rows = {r["n"]: r for r in ch.lqr_gradients(TINY, jax.random.key(0))}
    # n = 0 inherits all of the stale critic's error; "full" (no critic, gamma^120 ~ 2e-3) almost
    # none.
    assert rows["0"]["bias"] > rows["0"]["bias_se"] * 6
    assert rows["full"]["bias"] < rows["0"]["bias"] / 3
    assert rows["full"]["bias"] < 4 * rows["full"]["bias_se"] + 0.01
    # Longer unrolls without a critic are noisier.
    assert rows["full"]["variance"] > rows["0"]["variance"]


@pytest.mark.slow
def test_main_writes_csv_json_and_png(tmp_path, monkeypatch):
    # lqr stands in for pendulum here: the same code path, compiled in a fraction of the time.
    monkeypatch.setitem(
        ch.PRESETS,
        "cpu",
        dataclasses.replace(
            TINY,
            task="lqr",
            ode_episode=40,
            horizons=(2,),
            return_horizons=(2,),
            budget=2 * 16 * 2,
            brax_tasks=("inverted_pendulum",),
            # mjx's inverted pendulum loops its constraint solver (no reverse mode): the trainer
            # refuses it, which is reported as a failure, and the rest is written.
            brax_backends=("mjx",),
        ),
    )
    out = tmp_path / "run"
    ch.main(["--preset", "cpu", "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert [r["env"] for r in summary["gradients"]] == ["lqr", "lqr"]
    # Two seeds: first the policies they start from, then those after the budget.
    assert [r["n"] for r in summary["returns"]] == ["untrained", "untrained", "2", "2"]
    assert [r["env_steps"] for r in summary["returns"]][:2] == [0, 0]
    assert all(np.isfinite(r["return"]) for r in summary["returns"])
    assert (out / "gradients.csv").read_text().startswith("env,n,")
    assert (out / "horizons.png").stat().st_size > 10_000
    [failure] = summary["failures"]
    assert failure["env"] == "inverted_pendulum" and failure["backend"] == "mjx"
    assert "not reverse differentiable" in failure["error"]


@pytest.mark.parametrize(
    "assignment,message",
    [
        ("num_envs=0", "num_envs must be an int >= 1, got 0"),
        ("brax_horizons=[]", "brax_horizons must be a non-empty list"),
        ("horizons=[4, -1]", "horizons must be a non-empty list of ints >= 0 or null"),
        ('brax_backends=["warp"]', "brax_backends: unknown ['warp']; allowed: generalized"),
        ('brax_tasks=["pendulum"]', "brax_tasks: ['pendulum'] are not Brax tasks"),
        ("task=nosuch", "unknown env 'nosuch'"),
        ("mjx_iterations=0", "mjx_iterations must be an int >= 1"),
    ],
)
def test_a_bad_preset_value_exits_before_anything_runs(tmp_path, capsys, assignment, message):
    with pytest.raises(SystemExit) as exit_info:
        ch.main(["--set", assignment, "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_out_must_be_a_directory(tmp_path, capsys):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        ch.main(["--out", str(not_a_dir)])
    assert exit_info.value.code == 2 and "is not a directory" in capsys.readouterr().err
    assert not_a_dir.read_text() == "keep me"


def test_gradient_statistics_leave_out_overflowed_samples_and_count_them():
    samples = np.array([[1.0, 0.0], [3.0, 0.0], [np.inf, 0.0], [np.nan, 1.0]])
    stats = ch.gradient_statistics(samples)
    assert stats["finite_fraction"] == 0.5
    assert stats["norm"] == pytest.approx(2.0) and stats["variance"] == pytest.approx(2.0)
    assert stats["relative_variance"] == pytest.approx(0.5)
    none = ch.gradient_statistics(np.full((3, 2), np.nan))
    assert none["finite_fraction"] == 0.0 and np.isnan(none["norm"])


def test_each_brax_pipeline_is_a_gradient_part_and_one_return_part_per_horizon():
    import argparse

    args = argparse.Namespace(skip_ode=True, skip_brax=False)
    returns_only = ch._parts(ch.PRESETS["cpu_contact_returns"], args)
    first = ["halfcheetah[positional] n=1", "halfcheetah[positional] n=8"]
    assert returns_only[:4] == [*first, "halfcheetah[positional] n=32", "halfcheetah[spring] n=1"]
    assert len(returns_only) == 2 * 4 * 3  # tasks x pipelines x horizons
    gradients_only = ch._parts(ch.PRESETS["cpu_contact"], args)  # no budget: no returns
    assert gradients_only[:2] == [
        "halfcheetah[positional] gradients",
        "halfcheetah[spring] gradients",
    ]
    assert ch._parts(ch.PRESETS["cpu"], argparse.Namespace(skip_ode=False, skip_brax=True)) == [
        "ode"
    ]


def test_a_return_part_trains_its_horizon_and_only_the_first_writes_the_untrained_rows(
    monkeypatch,
):
    calls = []
    monkeypatch.setattr(ch, "trained_gradients", lambda *a, **k: calls.append("gradients") or [])

    def returns(env, preset, horizons, *args, label_as, untrained, seed, backend):
        calls.append((env, backend, horizons, untrained, seed))
        return [{"env": label_as}]

    monkeypatch.setattr(ch, "returns_after_budget", returns)
    preset = ch.PRESETS["cpu_contact_returns"]
    assert ch.brax_part(preset, "ant[spring] n=1", 0) == (
        [],
        [{"env": "ant[spring]"}],
    )
    ch.brax_part(preset, "ant[spring] n=32", 3)
    # The run's --seed is the training seed too.
    assert calls == [("ant", "spring", (1,), True, 0), ("ant", "spring", (32,), False, 3)]


def test_a_stopped_run_keeps_its_finished_parts_and_resume_runs_only_the_rest(
    tmp_path, monkeypatch, capsys
):
    measured, stop_in = [], ["ant[positional] n=8"]

    class Stopped(BaseException):  # as KeyboardInterrupt, which pytest itself would catch
        pass

    def measure(part, preset, seed):
        if part in stop_in:
            stop_in.remove(part)
            raise Stopped  # the run is stopped in its second part
        measured.append(part)
        return [{"env": part, "n": "1", "norm": 1.0, "variance": 1.0}], [
            {"env": part, "n": "1", "seed": 0, "return": float(len(measured))}
        ]

    monkeypatch.setattr(ch, "_measure", measure)
    out = tmp_path / "run"
    argv = ["--preset", "cpu_contact_returns", "--skip-ode", "--out", str(out)]
    argv += ["--set", 'brax_tasks=["ant"]', "--set", 'brax_backends=["positional"]']
    argv += ["--set", "brax_horizons=[1, 8]"]
    with pytest.raises(Stopped):
        ch.main(argv)
    stopped = json.loads((out / "summary.json").read_text())
    assert stopped["finished"] == ["ant[positional] n=1"] and not stopped["complete"]
    assert [r["env"] for r in stopped["returns"]] == ["ant[positional] n=1"]
    assert (out / "returns.csv").read_text().splitlines()[1].startswith("ant[positional] n=1,")

    # Without --resume, or with other settings, nothing runs and nothing is overwritten.
    for extra, message in [
        ([], "pass --resume"),
        (["--resume", "--set", "brax_budget=1024"], "brax_budget"),
        (["--resume", "--seed", "3"], "seed (0 there)"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            ch.main(argv + extra)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text()) == stopped

    ch.main([*argv, "--resume"])
    done = json.loads((out / "summary.json").read_text())
    parts = ["ant[positional] n=1", "ant[positional] n=8"]
    assert measured == parts  # the first part was not run again
    assert done["finished"] == parts and done["complete"]
    assert [r["return"] for r in done["returns"]] == [1.0, 2.0]
    assert done["wall_time"] >= stopped["wall_time"]


def test_resume_needs_a_run_to_go_on_with(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ch.main(["--skip-ode", "--skip-brax", "--resume", "--out", str(tmp_path / "none")])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_the_untrained_return_is_where_every_horizon_starts():
    from mbpo.agents import loop, registry
    from mbpo.agents.unroll_trainer import UnrollTrainerConfig

    def untrained(n):
        config = UnrollTrainerConfig(
            env="lqr", estimator="svg", horizon=n, num_envs=4, episode_length=16, eval_envs=4
        )
        trainer = registry.make_trainer(config)
        return ch.untrained_returns(trainer, loop.initial_state(trainer, 2), 2)

    one = untrained(1)
    assert one == untrained(8) and one[0] != one[1]  # the same policies, one per seed
    assert all(np.isfinite(one))


def test_the_untrained_rows_evaluate_with_the_program_the_run_compiles():
    from mbpo.agents import loop

    preset = dataclasses.replace(TINY, num_envs=6, return_seeds=2)  # a trainer no test builds
    before = loop.evaluate_seeds._cache_size()
    rows = ch.returns_after_budget("lqr", preset, (2,), 16, budget=6 * 2 * 2)
    assert [r["n"] for r in rows] == ["untrained", "untrained", "2", "2"]
    assert loop.evaluate_seeds._cache_size() == before + 1  # one evaluation program, not two
