"""The `mbpo` command end to end on tiny runs: run directory, resume, refusals."""

import json
import shutil

import jax
import numpy as np
import pytest

from mbpo import main as cli
from mbpo import runner

TINY = (
    "--env lqr --horizon 3 --num-envs 8 --episode-length 12 --num-updates 6 "
    "--eval-every 2 --eval-envs 4 --hidden 8 --critic-epochs 1 --critic-minibatches 1"
).split()


def _checkpoint(run_dir):
    """(leaves with PRNG keys as key data, history) of the run's newest checkpoint."""
    from mbpo.agents.registry import make_trainer

    trainer = make_trainer(runner.load_config(run_dir))
    state, history = runner.load_checkpoint(run_dir, jax.jit(trainer.init)(jax.random.key(0)))
    keys_as_data = jax.tree.map(
        lambda x: (
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        ),
        state,
    )
    return [np.asarray(x) for x in jax.tree.leaves(keys_as_data)], history


def kill_after_two_checkpoints(monkeypatch, argv) -> None:
    """Runs ``mbpo`` with ``argv`` and kills it (KeyboardInterrupt) right after its second
    checkpoint."""
    saved = runner.save_checkpoint
    calls = []

    def dies_after_two(*args):
        saved(*args)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner, "save_checkpoint", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        cli.main(argv)
    monkeypatch.setattr(runner, "save_checkpoint", saved)


def _history(run_dir):
    return _checkpoint(run_dir)[1]


def _tensorboard_scalars(run_dir) -> dict:
    """Reads the TFRecord event files back: 8-byte length, 4-byte crc, payload, 4-byte crc."""
    from tensorboardX.proto import event_pb2

    scalars: dict = {}
    for path in sorted((run_dir / runner.TENSORBOARD).iterdir()):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            length = int.from_bytes(data[offset : offset + 8], "little")
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 16 + length
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append(
                    pytest.approx(value.simple_value, rel=1e-6)
                )
    return scalars


def test_train_writes_the_run_directory_and_evaluate_reads_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cli.main(["train", *TINY, "--run-dir", str(run_dir)])
    assert {p.name for p in run_dir.iterdir() if not p.name.startswith(".")} == {
        runner.CONFIG,
        runner.METRICS,
        runner.CHECKPOINTS,
        runner.CURVE,
        runner.TENSORBOARD,
    }
    # After 3 evaluations the newest two checkpoints are kept.
    assert sorted(p.name for p in (run_dir / runner.CHECKPOINTS).iterdir()) == [
        "00000004",
        "00000004.json",
        "00000006",
        "00000006.json",
    ]
    assert _tensorboard_scalars(run_dir)["eval_return"] == [
        r["eval_return"] for r in _history(run_dir)
    ]
    assert json.loads((run_dir / runner.CONFIG).read_text())["horizon"] == 3
    rows = (run_dir / runner.METRICS).read_text().splitlines()
    assert rows[0].startswith("updates,env_steps,eval_return") and len(rows) == 4
    cli.main(["evaluate", str(run_dir), "--episodes", "4"])
    assert "mean return" in capsys.readouterr().out
    # --config replays the settings; an explicit option still overrides them.
    replay = tmp_path / "replay"
    cli.main(
        [
            "train",
            "--config",
            str(run_dir / runner.CONFIG),
            "--num-updates",
            "2",
            "--run-dir",
            str(replay),
        ]
    )
    assert json.loads((replay / runner.CONFIG).read_text())["horizon"] == 3
    assert json.loads((replay / runner.CONFIG).read_text())["num_updates"] == 2


SAC_TINY = (
    "--algo sac --env pendulum --num-envs 4 --episode-length 20 --num-updates 6 "
    "--eval-every 2 --eval-envs 4 --hidden 8 --gradient-steps 2 --batch-size 16 "
    "--warmup-steps 8 --buffer-capacity 64"
).split()
MBPO_TINY = (
    "--algo mbpo --env lqr --horizon 2 --num-envs 2 --episode-length 20 --num-updates "
    "4 --eval-every 2 --eval-envs 4 --hidden 8 --model-hidden 8 --members 2 --elites "
    "1 --model-steps 2 --policy-steps 2 --critic-steps 2 --batch-size 8 "
    "--warmup-steps 4"
).split()


@pytest.mark.slow
@pytest.mark.parametrize("argv", [TINY, SAC_TINY], ids=["svg", "sac"])
def test_killed_run_resumes_bit_identical(tmp_path, monkeypatch, argv):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    TINY = argv
    cli.main(["train", *TINY, "--run-dir", str(whole)])

    kill_after_two_checkpoints(monkeypatch, ["train", *TINY, "--run-dir", str(killed)])
    assert _history(killed)[-1]["updates"] == 4
    cli.main(["train", "--resume", str(killed)])
    (a, history_a), (b, history_b) = _checkpoint(whole), _checkpoint(killed)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert [r["eval_return"] for r in history_a] == [r["eval_return"] for r in history_b]


def test_corrupted_or_missing_checkpoint_is_refused_and_left_alone(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cli.main(["train", *TINY, "--num-updates", "2", "--run-dir", str(run_dir)])
    data_files = [
        p
        for p in (run_dir / runner.CHECKPOINTS / "00000002").rglob("*")
        if p.is_file() and p.parent.name == "d"
    ]
    assert data_files
    for path in data_files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    damaged = {p: p.read_bytes() for p in data_files}
    for argv in (["evaluate", str(run_dir)], ["train", "--resume", str(run_dir)]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2 and "corrupted" in capsys.readouterr().err
    assert all(p.read_bytes() == content for p, content in damaged.items())
    shutil.rmtree(run_dir / runner.CHECKPOINTS)
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--resume", str(run_dir)])
    assert info.value.code == 2 and "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--estimator", "ppo"], "invalid choice: 'ppo'"),
        (["--env", "moon_lander"], "unknown env 'moon_lander'"),
        (["--horizon", "-1"], "horizon must be >= 0"),
        (["--seeds", "0"], "--seeds must be >= 1, got 0"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, extra, message):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *TINY, *extra, "--run-dir", str(run_dir)])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not run_dir.exists()


def test_unwritable_run_directory_exits_2(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep")
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *TINY, "--run-dir", str(blocker / "run")])
    assert info.value.code == 2 and "not writable" in capsys.readouterr().err
    assert blocker.read_text() == "keep"


def test_seeds_train_in_one_program_with_a_row_per_seed_and_evaluation(tmp_path, capsys):
    run_dir = tmp_path / "seeds"
    cli.main(["train", *TINY, "--seeds", "3", "--run-dir", str(run_dir)])
    rows = (run_dir / runner.METRICS).read_text().splitlines()
    header = rows[0].split(",")
    assert header[:3] == ["updates", "env_steps", "wall_time"] and {
        "seed",
        "eval_return",
        "grad_norm",
    } <= set(header)
    assert len(rows) == 1 + 3 * 3
    column = header.index("grad_norm")
    assert all(
        np.isfinite(float(r.split(",")[column])) for r in rows[1:]
    )  # one seed's value per row, not the list
    assert (run_dir / runner.CURVE).stat().st_size > 10_000
    assert "3 seeds (one vmapped program)" in capsys.readouterr().out


@pytest.mark.slow
def test_compare_estimators_writes_curves(tmp_path, capsys):
    out = tmp_path / "cmp"
    cli.main(
        [
            "compare",
            "estimators",
            *TINY,
            *"--num-updates 4 --estimators svg bpo --seeds 2 --out".split(),
            str(out),
        ]
    )
    rows = (out / "curves.csv").read_text().splitlines()
    assert (
        rows[0] == "estimator,updates,env_steps,wall_time,seed,eval_return"
        and len(rows) == 1 + 2 * 2 * 2
    )
    assert (out / "curves.png").stat().st_size > 10_000
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "algorithms"])
    assert info.value.code == 2 and "horizons, estimators" in capsys.readouterr().err


@pytest.mark.slow
def test_algo_picks_the_trainer_and_its_options(tmp_path, capsys):
    sac, mbpo, svg = tmp_path / "sac", tmp_path / "mbpo", tmp_path / "svg"
    cli.main(["train", *SAC_TINY, "--run-dir", str(sac)])
    config = json.loads((sac / runner.CONFIG).read_text())
    assert (
        config["trainer"] == "off_policy"
        and config["algo"] == "sac"
        and config["gradient_steps"] == 2
    )
    cli.main(["train", *MBPO_TINY, "--policy-update", "svg_er", "--run-dir", str(mbpo)])
    config = json.loads((mbpo / runner.CONFIG).read_text())
    assert (
        config["trainer"] == "mbpo"
        and config["policy_update"] == "svg_er"
        and config["members"] == 2
    )
    assert len((mbpo / runner.METRICS).read_text().splitlines()) == 3
    for run in (sac, mbpo):
        cli.main(["evaluate", str(run), "--episodes", "2"])
        assert "mean return" in capsys.readouterr().out
    # The estimators are algorithms of the unroll trainer: --algo svg is --estimator svg.
    cli.main(["train", *TINY, "--algo", "dpmb_r", "--num-updates", "2", "--run-dir", str(svg)])
    assert json.loads((svg / runner.CONFIG).read_text())["estimator"] == "dpmb_r"
    # --config (and --resume: test_killed_run_resumes_bit_identical[sac]) find the trainer from the
    # saved config.
    assert (
        cli._train_config_class(["train", "--config", str(sac / runner.CONFIG)]).__name__
        == "OffPolicyConfig"
    )
    assert cli._train_config_class(["train", "--resume", str(mbpo)]).__name__ == "ModelBasedConfig"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--algo", "trpo"], "unknown algo 'trpo'"),
        (["--algo", "sac", "--tau", "2"], "tau must be in (0, 1], got 2.0"),
        (["--algo", "sac", "--estimator", "svg"], "unrecognized arguments: --estimator"),
        (["--algo", "mbpo", "--elites", "9"], "elites must be <= members"),
    ],
)
def test_bad_algorithm_options_exit_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *argv, "--run-dir", str(tmp_path / "run")])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_envs_lists_every_task(capsys):
    import envs

    cli.main(["envs"])
    out = capsys.readouterr().out
    assert all(name in out for name in envs.names())


def test_task_fields_are_declared_once_and_carry_across_trainers():
    import dataclasses

    from mbpo.agents import loop, registry

    task_fields = {f.name for f in dataclasses.fields(loop.TaskFields)}
    assert task_fields <= set(cli.SHARED_FIELDS)
    for name in ("svg", "sac", "mbpo"):
        config_class = registry.config_class(name)
        assert issubclass(config_class, loop.TaskFields)
        own = set(config_class.__annotations__)  # fields the class itself declares
        assert not own & task_fields, (config_class.__name__, own & task_fields)


def _readme_train_commands() -> list[str]:
    """The ``mbpo train`` lines of README.md's Training section that start a new run."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Training", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in section.splitlines()]
    return [
        line
        for line in lines
        if line.startswith("mbpo train") and not re.search(r"--(resume|config|help)\b", line)
    ]


def _built_config(monkeypatch, argv: list[str]):
    """The config that ``mbpo ARGV`` builds; nothing is trained or written."""

    class Built(Exception):
        pass

    def fit(config, **kwargs):
        raise Built(config)

    monkeypatch.setattr(runner, "fit", fit)
    monkeypatch.setattr(cli, "_enable_cache", lambda parser, setting: None)
    with pytest.raises(Built) as built:
        cli.main(argv)
    return built.value.args[0]


@pytest.mark.parametrize("command", _readme_train_commands())
def test_readme_train_commands_build_valid_configs(monkeypatch, command):
    """Each documented command parses and builds its config (every option and value it names
    exists and is allowed); nothing is trained or written."""
    import shlex

    argv = shlex.split(command)
    config = _built_config(monkeypatch, argv[1:])
    if "--algo" in argv:  # its trainer, with what --algo sets where the line does not override it
        from mbpo.agents import registry

        algo = argv[argv.index("--algo") + 1]
        assert type(config) is registry.config_class(algo)
        given = {arg[2:].replace("-", "_") for arg in argv if arg.startswith("--")}
        for name, value in registry.algo_defaults(algo).items():
            assert name in given or getattr(config, name) == value, (name, value)


def test_readme_lists_train_commands():
    assert len(_readme_train_commands()) >= 10


def test_mbpo_train_takes_an_option_by_its_former_name(monkeypatch):
    for flag in ("--init-alpha", "--temperature-init"):  # SAC's --init-alpha until 2026-12-06
        argv = ["train", "--algo", "sac", flag, "0.5", "--alpha-lr", "0.01"]
        config = _built_config(monkeypatch, argv)
        assert (config.temperature_init, config.temperature_lr) == (0.5, 0.01)


def test_mbpo_train_refuses_an_option_given_under_its_new_and_former_name(capsys):
    argv = ["train", "--algo", "sac", "--init-alpha", "0.5", "--temperature-init", "0.3"]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert "--init-alpha and --temperature-init name the same option: give one" in err
