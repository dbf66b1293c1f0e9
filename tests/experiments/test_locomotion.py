"""experiments.locomotion end to end on a tiny non-Brax preset (the Brax presets compile for
minutes): every file written, the gradient-health columns filled, bad selections refused."""

import dataclasses
import json

import pytest

from experiments import locomotion as loco

TINY_FIRST_ORDER = {"num_updates": 4, "eval_every": 2, "eval_envs": 2, "num_envs": 4, "horizon": 4}
TINY_FIRST_ORDER |= {"hidden": (8,), "critic_epochs": 1, "critic_minibatches": 1}
TINY_SAC = {"num_updates": 4, "eval_every": 2, "eval_envs": 2, "num_envs": 4, "hidden": (8,)}
TINY_SAC |= {"gradient_steps": 1, "batch_size": 8, "warmup_steps": 4}
TINY = loco.Preset(
    seeds=2,
    tasks=(
        loco.Task(
            env="pendulum",
            backend="positional",
            episode_length=20,
            common_return=-1e9,  # every first evaluation reaches it
            algorithms=(("shac", TINY_FIRST_ORDER), ("sac", TINY_SAC)),
        ),
    ),
)


@pytest.mark.slow
def test_tiny_run_writes_every_file_with_the_gradient_health(tmp_path, monkeypatch):
    monkeypatch.setitem(loco.PRESETS, "tiny", TINY)
    loco.main(["--preset", "tiny", "--out", str(tmp_path)])
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {
        "curves.csv",
        "summary.json",
        "summary.md",
        "curves_pendulum.png",
        "wallclock_pendulum.png",
    }
    header = (tmp_path / "curves.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["task", "algorithm"] and "guarded_envs" in header
    summary = {
        t["algorithm"]: t for t in json.loads((tmp_path / "summary.json").read_text())["summary"]
    }
    assert summary["shac"]["guarded_envs"] == 0.0 and summary["sac"]["guarded_envs"] is None
    assert summary["shac"]["steps_to_common_return"] == 2 * 4 * 4  # the first evaluation
    assert summary["shac"]["skipped_fraction"] == 0.0 and summary["shac"]["seeds"] == 2
    assert len(summary["shac"]["grad_norm_p50_p90_max"]) == 3
    assert "| pendulum | shac |" in (tmp_path / "summary.md").read_text()

    # --from tabulates earlier runs without training: the same table from the written curves.
    again = tmp_path / "again"
    loco.main(
        ["--preset", "tiny", "--from", f"{tmp_path}:shac", f"{tmp_path}:sac", "--out", str(again)]
    )
    merged = {
        t["algorithm"]: t for t in json.loads((again / "summary.json").read_text())["summary"]
    }
    assert merged == summary
    with pytest.raises(SystemExit) as info:
        loco.main(["--preset", "tiny", "--from", str(tmp_path), str(tmp_path), "--out", str(again)])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        loco.main(["--preset", "tiny", "--from", f"{tmp_path}:sapo", "--out", str(again)])
    assert info.value.code == 2


def test_unknown_algorithm_exits_2_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        loco.main(["--only", "trpo", "--out", str(tmp_path / "out")])
    assert info.value.code == 2 and "unknown names ['trpo']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_variants_are_trained_only_where_only_names_them():
    task = dataclasses.replace(TINY.tasks[0], variants=(("shac-const", TINY_FIRST_ORDER),))
    assert [name for name, _ in task.selected(None).algorithms] == ["shac", "sac"]
    assert [name for name, _ in task.selected(["sac"]).algorithms] == ["shac", "sac"]
    named = task.selected(["shac-const"])
    assert [name for name, _ in named.algorithms] == ["shac", "sac", "shac-const"]
    assert named.variants == ()
    cpu = loco.PRESETS["cpu"].tasks[0]
    assert "shac-h8-const" in dict(cpu.variants) and "shac-h8-const" not in dict(cpu.algorithms)


# lqr compiles in a fraction of pendulum's time (the ODE), enough for the seed bookkeeping.
TINY_LQR = dataclasses.replace(
    TINY,
    seeds=1,
    tasks=(
        dataclasses.replace(TINY.tasks[0], env="lqr", algorithms=(("shac", TINY_FIRST_ORDER),)),
    ),
)


def test_first_seed_adds_independent_seeds_that_from_tabulates_together(tmp_path, monkeypatch):
    monkeypatch.setitem(loco.PRESETS, "tiny", TINY_LQR)
    one = ["--preset", "tiny", "--only", "shac", "--set", "seeds=1"]
    loco.main([*one, "--out", str(tmp_path / "a")])
    loco.main([*one, "--set", "first_seed=1", "--out", str(tmp_path / "b")])
    rows = {name: loco.read_curves(None, [str(tmp_path / name)], TINY_LQR) for name in ("a", "b")}
    assert {r["seed"] for r in rows["a"]} == {0} and {r["seed"] for r in rows["b"]} == {1}
    returns = {name: [r["eval_return"] for r in rows[name]] for name in rows}
    assert returns["a"] != returns["b"]  # another random stream, not a copy
    both = tmp_path / "both"
    loco.main(
        ["--preset", "tiny", "--from", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(both)]
    )
    (table,) = json.loads((both / "summary.json").read_text())["summary"]
    assert table["seeds"] == 2 and "| lqr | shac | 2 | " in (both / "summary.md").read_text()
    first = [r for r in rows["a"] + rows["b"] if r["env_steps"] == table["final_steps"]]
    assert len(first) == 2
    assert table["final_return"] == round(sum(r["eval_return"] for r in first) / 2, 1)
    with pytest.raises(ValueError, match="first_seed must be >= 0, got -1"):
        loco.Preset(tasks=TINY_LQR.tasks, seeds=1, first_seed=-1)


def test_from_reads_an_mbpo_train_run_as_the_preset_algorithm_it_equals(tmp_path, monkeypatch):
    # A run made with `mbpo train` (one that was resumed, say) joins the table under the preset's
    # name: the same config but for its length and cadence gives the harness's numbers, seeds
    # numbered from its own seed; a run of other settings, or unnamed, is refused.
    from mbpo import runner

    monkeypatch.setitem(loco.PRESETS, "tiny", TINY_LQR)
    task = TINY_LQR.tasks[0]
    loco.main(["--preset", "tiny", "--set", "first_seed=1", "--out", str(tmp_path / "h")])
    harness_rows = loco.read_curves(None, [str(tmp_path / "h")], TINY_LQR)
    config = loco.make_config(task, "shac", {**TINY_FIRST_ORDER, "seed": 1, "eval_every": 1})
    runner.fit(config, run_dir=tmp_path / "run", progress=False)
    rows = loco.read_curves(None, [f"{tmp_path / 'run'}:shac"], TINY_LQR)
    assert {(r["task"], r["algorithm"], r["seed"]) for r in rows} == {("lqr", "shac", 1)}
    assert [r["env_steps"] for r in rows] == [16, 32, 48, 64]
    ours = {r["env_steps"]: r["eval_return"] for r in rows}
    assert [(r["env_steps"], r["eval_return"]) for r in harness_rows] == [
        (steps, ours[steps]) for steps in (32, 64)
    ]

    class Parser:
        def error(self, message):
            raise SystemExit(message)

    with pytest.raises(SystemExit, match="name the preset's algorithm it trained"):
        loco.read_curves(Parser(), [str(tmp_path / "run")], TINY_LQR)
    with pytest.raises(SystemExit, match="the preset has no 'sapo' there"):
        loco.read_curves(Parser(), [f"{tmp_path / 'run'}:sapo"], TINY_LQR)
    other = dataclasses.replace(config, actor_lr=1e-4)
    runner.save_config(tmp_path / "run", other)
    with pytest.raises(SystemExit, match=r"not the preset's 'shac': actor_lr=0\.0001"):
        loco.read_curves(Parser(), [f"{tmp_path / 'run'}:shac"], TINY_LQR)


def test_every_algorithm_and_variant_of_every_preset_builds_a_valid_config():
    # A misspelled or out-of-range override fails here, not minutes into a long run.
    for preset in loco.PRESETS.values():
        for task in preset.tasks:
            for name, overrides in (*task.algorithms, *task.variants):
                config = loco.make_config(task, name, overrides)
                assert {k: getattr(config, k) for k in overrides} == overrides, name


def test_the_table_averages_only_where_every_seed_was_evaluated():
    # Seeds 0, 1 evaluated every 10 steps, seeds 2, 3 (another run) every 20: the 10-step point
    # holds half the seeds and does not count as the algorithm reaching the common return there.
    task = dataclasses.replace(TINY.tasks[0], common_return=100.0, checkpoints=(20,))
    rows = [
        {
            "task": "pendulum",
            "algorithm": "shac",
            "env_steps": s,
            "updates": s,
            "seed": seed,
            "wall_time": float(s),
            "eval_return": value,
            "skipped_updates": 0,
        }
        for seed, grid, value in (
            (0, (10, 20), 200.0),
            (1, (10, 20), 200.0),
            (2, (20,), 0.0),
            (3, (20,), 0.0),
        )
        for s in grid
    ]
    (row,) = loco.summarize(rows, dataclasses.replace(TINY, tasks=(task,)))
    assert row["steps_to_common_return"] == 20 and row["return_at_checkpoints"] == {20: 100.0}
    assert row["seeds"] == 4
