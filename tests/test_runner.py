"""Runs that never lose or corrupt data and refuse bad input before compiling (issue 10, parts 1
and 2): verified checkpoints, claimed and locked run directories, resumable seeds runs, resume
options, type-checked configs, mbpo compare's checks."""

import json
import pathlib

import numpy as np
import pytest

from mbpo import main as cli
from mbpo import runner
from tests.test_main import TINY, _checkpoint, kill_after_two_checkpoints


def _exit_code(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    return info.value.code, capsys.readouterr().err


def _snapshot(root: pathlib.Path) -> dict:
    return {
        p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != runner.LOCK
    }


def _damage_middle(path: pathlib.Path) -> None:
    """Flips 64 bytes in the middle of ``path``; its size stays the same."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def _largest_data_file(checkpoint: pathlib.Path) -> pathlib.Path:
    return max(
        (p for p in checkpoint.rglob("*") if p.is_file() and p.parent.name == "d"),
        key=lambda p: p.stat().st_size,
    )


# 64-unit layers: arrays big enough that orbax stores them outside its checksummed index, where a
# damaged byte used to be restored silently.
WIDE = [*TINY, "--hidden", "64", "64"]


@pytest.mark.slow
def test_damaged_checkpoint_of_the_same_size_is_refused_and_an_older_intact_one_resumes(
    tmp_path, capsys
):
    whole, run = tmp_path / "whole", tmp_path / "run"
    cli.main(["train", *WIDE, "--run-dir", str(whole)])
    cli.main(["train", *WIDE, "--run-dir", str(run)])
    newest = run / runner.CHECKPOINTS / "00000006"
    target = _largest_data_file(newest)
    size = target.stat().st_size
    _damage_middle(target)
    assert target.stat().st_size == size
    before = _snapshot(run)
    code, err = _exit_code(["train", "--resume", str(run)], capsys)
    assert code == 2 and "00000006" in err and "do not match" in err and "left as it is" in err
    assert (
        f"--resume {run} --from-checkpoint 4" in err
        and "00000004 (after 4 updates) is intact" in err
    )
    assert _snapshot(run) == before  # nothing deleted, nothing rewritten
    # An unreadable index (orbax's own checksum fails) is refused the same way, in one message
    # without TensorStore's pybind internals.
    import shutil

    unreadable = tmp_path / "unreadable"
    shutil.copytree(run, unreadable)
    for index in (unreadable / runner.CHECKPOINTS / "00000006" / "d").iterdir():
        _damage_middle(index)
    code, err = _exit_code(["evaluate", str(unreadable)], capsys)
    assert (
        code == 2 and "cannot be read" in err and "pybind" not in err and "TensorStore(" not in err
    )
    # The intact older checkpoint resumes; the damaged one is set aside, never deleted, and the
    # run ends as an uninterrupted one.
    cli.main(["train", "--resume", str(run), "--from-checkpoint", "4"])
    assert list((run / runner.CHECKPOINTS / runner.DAMAGED).rglob(target.name))
    (a, history_a), (b, history_b) = _checkpoint(whole), _checkpoint(run)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert [r["eval_return"] for r in history_a] == [r["eval_return"] for r in history_b]


def test_a_checkpoint_that_does_not_read_back_is_refused_and_older_ones_are_kept(
    tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    cli.main(["train", *TINY, "--num-updates", "4", "--run-dir", str(run)])
    assert runner.checkpoint_steps(run) == [2, 4]
    read = runner._restore_raw
    reads = []

    def bit_rot(
        path, target
    ):  # after the resume's read, the disk returns other bytes than were written
        import jax

        reads.append(path)
        if len(reads) == 1:
            return read(path, target)
        return jax.tree.map(
            lambda x: np.asarray(x) + 1 if np.asarray(x).dtype.kind == "f" else x,
            read(path, target),
        )

    monkeypatch.setattr(runner, "_restore_raw", bit_rot)
    with pytest.raises(runner.RunDirError, match="does not read back as written"):
        cli.main(["train", "--resume", str(run), "--num-updates", "6"])
    monkeypatch.setattr(runner, "_restore_raw", read)
    # Both verified checkpoints are still there; the unverified one has no history file, so it is
    # not a checkpoint to resume from.
    assert runner.checkpoint_steps(run) == [2, 4]


def test_new_run_refuses_a_directory_holding_another_runs_files(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / runner.CONFIG).write_text('{"trainer": "unroll"}')
    (run / runner.METRICS).write_text("updates\n1\n")
    before = _snapshot(run)
    code, err = _exit_code(["train", *TINY, "--run-dir", str(run)], capsys)
    assert (
        code == 2
        and "already holds a run (config.json, metrics.csv)" in err
        and f"--resume {run}" in err
    )
    assert _snapshot(run) == before


def test_a_second_process_is_refused_while_a_run_holds_the_lock(tmp_path, capsys):
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from mbpo import runner; import pathlib, time; l = "
            f"runner.Lock(pathlib.Path({str(run)!r})); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _exit_code(["train", *TINY, "--run-dir", str(run)], capsys)
        assert code == 2 and f"in use by a running training (pid {holder.pid})" in err
        assert runner.run_files(run) == []
    finally:
        holder.kill()
        holder.wait()
    with runner.Lock(run):  # the kernel dropped the killed holder's lock
        pass


def test_seeds_runs_checkpoint_resume_and_refuse_another_seed_count(tmp_path, monkeypatch, capsys):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    argv = [*TINY, "--seeds", "2"]
    cli.main(["train", *argv, "--run-dir", str(whole)])
    assert runner.checkpoint_steps(whole) == [4, 6]
    assert (whole / runner.TENSORBOARD).is_dir()
    assert "6/6" in capsys.readouterr().out  # the progress bar
    kill_after_two_checkpoints(monkeypatch, ["train", *argv, "--run-dir", str(killed)])
    metrics = (killed / runner.METRICS).read_text()
    code, err = _exit_code(["train", "--resume", str(killed), "--seeds", "3"], capsys)
    assert code == 2 and "trains 2 seeds" in err
    assert (killed / runner.METRICS).read_text() == metrics  # nothing overwritten
    cli.main(["train", "--resume", str(killed)])  # all seeds, from the saved seed count
    assert (
        (whole / runner.METRICS).read_text().count("\n")
        == (killed / runner.METRICS).read_text().count("\n")
        == 1 + 3 * 2
    )
    whole_rows = [r.split(",") for r in (whole / runner.METRICS).read_text().splitlines()]
    killed_rows = [r.split(",") for r in (killed / runner.METRICS).read_text().splitlines()]
    column = whole_rows[0].index("eval_return")
    assert [r[column] for r in whole_rows] == [r[column] for r in killed_rows]


def test_resume_extends_with_num_updates_and_refuses_other_options_by_name(tmp_path, capsys):
    short, whole = tmp_path / "short", tmp_path / "whole"
    cli.main(["train", *TINY, "--num-updates", "4", "--run-dir", str(short)])
    config = (short / runner.CONFIG).read_text()
    for extra, named in (
        (["--horizon", "2"], "--horizon"),
        (["--gamma", "0.5", "--seed", "3"], "--gamma, --seed"),
        (["--algo", "bpo"], "--algo"),
    ):
        code, err = _exit_code(["train", "--resume", str(short), *extra], capsys)
        assert code == 2 and f"{named} would change it" in err
    assert (short / runner.CONFIG).read_text() == config
    code, err = _exit_code(["train", "--resume", str(short), "--num-updates", "2"], capsys)
    assert code == 2 and "fewer than the 4 updates" in err
    cli.main(["train", "--resume", str(short), "--num-updates", "6"])
    assert json.loads((short / runner.CONFIG).read_text())["num_updates"] == 6
    cli.main(["train", *TINY, "--run-dir", str(whole)])
    (a, history_a), (b, history_b) = _checkpoint(whole), _checkpoint(short)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert [r["eval_return"] for r in history_a] == [r["eval_return"] for r in history_b]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--estimator", "dpmb_sf", "--env", "pendulum"], "dpmb_sf needs the transition density"),
        (["--estimator", "svg", "--policy", "deterministic"], "defined for a stochastic policy"),
        (["--estimator", "bpo", "--policy", "gaussian"], "defined for a deterministic policy"),
        (["--hidden", "0"], "hidden must be a tuple of layer sizes >= 1, got (0,)"),
        (["--hidden", "8", "-4"], "hidden must be a tuple of layer sizes >= 1, got (8, -4)"),
        (
            ["--horizon", "64", "--episode-length", "20"],
            "horizon=64 is longer than episode_length=20",
        ),
        (
            ["--num-envs", "4096", "--horizon", "12", "--num-updates", "50000"],
            "more than the int32 counters hold",
        ),
        (["--algo", "sac", "--hidden", "0"], "hidden must be a tuple"),
        (
            ["--algo", "mbpo", "--horizon", "30", "--episode-length", "20"],
            "horizon=30 is longer than episode_length=20",
        ),
        (["--algo", "mbpo", "--model-hidden", "-1"], "model_hidden must be a tuple"),
        (["--mjx-iterations", "1"], "on 'generalized' has none (a Brax task with brax_backend mjx"),
        (["--algo", "ppo", "--mjx-iterations", "0"], "mjx_iterations must be an int >= 1"),
    ],
)
def test_trainer_and_task_mismatches_exit_2_before_anything_is_written(
    tmp_path, capsys, extra, message
):
    run = tmp_path / "run"
    base = [] if "--algo" in extra else TINY
    code, err = _exit_code(["train", *base, *extra, "--run-dir", str(run)], capsys)
    assert code == 2 and message in err
    assert not run.exists()


@pytest.mark.parametrize(
    "values,message",
    [
        ({"num_envs": "8"}, "field 'num_envs': expected int, got '8' (str)"),
        ({"num_envs": 8.0}, "field 'num_envs': expected int, got 8.0 (float)"),
        ({"hidden": 8}, "field 'hidden': expected a list of int, got 8 (int)"),
        (
            {"normalize_observations": 1},
            "field 'normalize_observations': expected bool, got 1 (int)",
        ),
        ({"horizon": "none"}, "field 'horizon': expected int or null"),
        ([1, 2], "must hold a JSON object of config fields, got a list"),
    ],
)
def test_config_values_are_type_checked_by_field(tmp_path, capsys, values, message):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"trainer": "unroll", **values} if isinstance(values, dict) else values)
    )
    code, err = _exit_code(
        ["train", "--config", str(path), "--run-dir", str(tmp_path / "run")], capsys
    )
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists()


def test_config_of_another_trainer_refuses_fields_whose_meaning_differs(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"trainer": "unroll", "env": "lqr", "tau": 0.3, "num_envs": 8, "seed": 2})
    )
    code, err = _exit_code(
        ["train", "--config", str(path), "--algo", "sac", "--run-dir", str(tmp_path / "run")],
        capsys,
    )
    assert code == 2
    assert "its tau means something else for OffPolicyConfig: give them explicitly (--tau)" in err
    assert not (tmp_path / "run").exists()
    # Given explicitly, the value is the user's; the fields both trainers have that the file
    # leaves at the unroll trainer's defaults (max_grad_norm, temperature_init, ...) take SAC's;
    # the shared fields carry over.
    from mbpo.agents.off_policy import OffPolicyConfig

    parser = cli.make_parser()
    defaults = cli._config_defaults(parser.commands["train"], path, OffPolicyConfig, {"tau"})
    assert defaults["env"] == "lqr" and defaults["num_envs"] == 8 and defaults["seed"] == 2
    assert "tau" not in defaults and set(defaults) <= set(cli.SHARED_FIELDS)


def test_help_lists_every_algorithm_and_documents_evaluate(capsys):
    from mbpo.agents.registry import ALGOS

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ALGOS)
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    out = capsys.readouterr().out
    parser = cli.make_parser().commands["evaluate"]
    for action in parser._actions:
        assert action.help, action.dest
    assert "mean action" in out and "a run directory written by" in out


def test_target_return_reports_when_it_is_first_reached(tmp_path, capsys):
    cli.main(
        [
            "train",
            *TINY,
            *"--num-updates 4 --target-return -1000 --run-dir".split(),
            str(tmp_path / "hit"),
        ]
    )
    assert "reached eval return" in capsys.readouterr().out
    cli.main(
        [
            "train",
            *TINY,
            *"--num-updates 4 --target-return 1000 --run-dir".split(),
            str(tmp_path / "miss"),
        ]
    )
    assert "never reached 1000" in capsys.readouterr().out


def test_compare_validates_everything_before_training_and_writes_after_each_estimator(
    tmp_path, monkeypatch, capsys
):
    from mbpo import compare

    trained = []
    real = compare.fit

    def counting(config, **kwargs):
        trained.append(config.estimator)
        if len(trained) == 2:
            raise RuntimeError("crash in the second estimator")
        return real(config, **kwargs)

    monkeypatch.setattr(compare, "fit", counting)
    tiny = [a for a in TINY if a not in ("--horizon", "3")]
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _exit_code(
        [
            "compare",
            "estimators",
            *tiny,
            *"--horizon 3 --estimators svg --out".split(),
            str(blocker / "x"),
        ],
        capsys,
    )
    assert code == 2 and "not writable" in err
    code, err = _exit_code(
        [
            "compare",
            "estimators",
            *tiny,
            *"--horizon 3 --env pendulum --estimators svg dpmb_sf --out".split(),
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2 and "dpmb_sf needs the transition density" in err and trained == []
    out = tmp_path / "cmp"
    with pytest.raises(RuntimeError, match="second estimator"):
        cli.main(
            [
                "compare",
                "estimators",
                *tiny,
                *"--horizon 3 --num-updates 2 --estimators svg bpo --seeds 2 --out".split(),
                str(out),
            ]
        )
    rows = (out / "curves.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 and all(r.startswith("svg,") for r in rows[1:])
    logged = [line for line in capsys.readouterr().out.splitlines() if "env steps, return" in line]
    assert len(logged) == 1 and logged[0].split()[0] == "svg:"  # one evaluation, two seeds
    assert len(logged[0].split("return ")[1].split("(")[0].split()) == 2
    code, _ = _exit_code(["compare", "estimators", "--estimator", "svg", "--out", str(out)], capsys)
    assert code == 2  # the dead --estimator flag is gone
    before = (out / "curves.csv").read_text()
    code, err = _exit_code(
        ["compare", "estimators", "--estimators", "svg", "--out", str(out)], capsys
    )
    assert code == 2 and "already holds curves.csv, curves.png, summary.json" in err
    assert (out / "curves.csv").read_text() == before  # the earlier comparison is kept
    with pytest.raises(SystemExit):
        cli.main(["compare", "estimators", "--help"])
    assert capsys.readouterr().out.startswith("usage: mbpo compare estimators")


def test_batch_methods_are_plotted_and_logged_against_updates(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from mbpo.agents.off_policy import OffPolicyConfig

    assert [
        runner.x_axis(OffPolicyConfig(algo=a))
        for a in ("nfqca", "fqi", "fqi_amortized", "sac", "td3")
    ] == ["updates"] * 3 + ["env_steps"] * 2
    rows = [{"updates": u, "env_steps": 8000, "eval_return": -500.0 + u} for u in (10, 20, 30)]
    saved = []
    real = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda self, *a, **k: (saved.append(self), real(self, *a, **k))[1]
    )
    runner.plot_learning_curve(
        tmp_path, rows, "nfqca", x=runner.x_axis(OffPolicyConfig(algo="nfqca"))
    )
    axes = saved[0].axes[0]
    assert axes.get_xlabel() == "updates" and list(axes.lines[0].get_xdata()) == [10, 20, 30]


def test_td3_metrics_carry_no_sac_columns():
    import jax

    from mbpo.agents.off_policy import OffPolicyConfig
    from mbpo.agents.registry import make_trainer

    columns = {}
    for algo in ("td3", "sac"):
        trainer = make_trainer(
            OffPolicyConfig(
                algo=algo, num_envs=2, hidden=(8,), batch_size=8, gradient_steps=2, warmup_steps=4
            )
        )
        state = jax.eval_shape(trainer.init, jax.random.key(0))
        columns[algo] = set(
            jax.eval_shape(trainer.update, state)[1]
        )  # shapes only: nothing compiles
    assert not {"alpha", "entropy"} & columns["td3"] and {"alpha", "entropy"} <= columns["sac"]


def test_brax_tasks_print_nothing_on_stdout():
    import subprocess
    import sys

    code = "import envs; envs.make('inverted_pendulum', backend='positional')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout


def test_preload_imports_on_a_thread_and_leaves_a_failing_import_to_its_user(tmp_path, monkeypatch):
    import sys

    (tmp_path / "mbpo_preload_ok.py").write_text("VALUE = 3\n")
    (tmp_path / "mbpo_preload_bad.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    runner.preload(("mbpo_preload_bad", "mbpo_preload_ok")).join(timeout=60)
    assert "mbpo_preload_bad" not in sys.modules
    assert "mbpo_preload_ok" not in sys.modules  # stops at the first failure
    runner.preload(("mbpo_preload_ok",)).join(timeout=60)
    assert sys.modules["mbpo_preload_ok"].VALUE == 3
    with pytest.raises(ImportError, match="broken on purpose"):
        import mbpo_preload_bad  # noqa: F401
    for name in ("mbpo_preload_ok", "mbpo_preload_bad"):
        sys.modules.pop(name, None)
