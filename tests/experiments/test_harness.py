"""experiments.harness: preset overrides, --out checks, tables, statistics."""

import dataclasses

import pytest

from experiments import harness


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int = 4
    name: str = "a"


@dataclasses.dataclass(frozen=True)
class Outer:
    envs: int = 8
    minibatches: int = 4
    hidden: tuple[int, ...] = (64, 64)
    inner: Inner = Inner()

    def __post_init__(self):
        if self.envs % self.minibatches:
            raise ValueError(f"minibatches={self.minibatches} must divide envs={self.envs}")


def test_overrides_apply_together_nested_and_typed():
    # envs=6 alone would be refused (4 does not divide it): the assignments apply at once.
    new = harness.override(Outer(), ["envs=6", "minibatches=3", "hidden=[32]", "inner.name=b"])
    assert new == Outer(envs=6, minibatches=3, hidden=(32,), inner=Inner(name="b"))
    assert harness.override({"seeds": 2}, ["seeds=5"]) == {"seeds": 5}


@pytest.mark.parametrize(
    ("assignment", "error", "message"),
    [
        ("env=3", ValueError, "no field 'env'; the fields are envs, minibatches, hidden, inner"),
        ("inner.sise=3", ValueError, "no field 'sise'; the fields are size, name"),
        ("envs=many", TypeError, "expected a value like 8"),
        ("hidden=1.5", TypeError, "field 'hidden': expected a list of int"),
        ("envs", ValueError, "--set expects FIELD=VALUE"),
        ("envs=7", ValueError, "minibatches=4 must divide envs=7"),
    ],
)
def test_bad_overrides_name_the_value(assignment, error, message):
    with pytest.raises(error, match=message):
        harness.override(Outer(), [assignment])


def test_out_checks_create_nothing(tmp_path):
    assert harness._unwritable(tmp_path / "new" / "dir") is None
    assert not (tmp_path / "new").exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert harness._unwritable(blocker) == "exists and is not a directory"
    assert "is not a directory" in harness._unwritable(blocker / "below")
    with pytest.raises(Exception, match="expected a PATH.json"):
        harness.json_path("report.txt")


def test_table_and_statistics():
    lines = harness.table(
        [("name", 6, lambda r: r["n"]), ("value", 8, lambda r: f"{r['v']:.1f}")],
        [{"n": "a", "v": 1.0}, {"n": "bb", "v": 22.25}],
    )
    assert lines == ["name     value", "a          1.0", "bb        22.2"]
    stat = harness.mean_std([1.0, None, 3.0])
    assert stat == {"mean": 2.0, "std": pytest.approx(2**0.5), "n": 2}
    assert harness.pm(stat, digits=1) == "2.0 +- 1.4" and harness.pm(harness.mean_std([])) == "n/a"


def test_out_never_names_earlier_results(tmp_path):
    import argparse

    def holds(out, **extra):
        return harness._holds_results(argparse.Namespace(out=out, **extra))

    report = tmp_path / "report.json"
    assert holds(report) is None and holds(None) is None
    report.write_text("{}")
    assert "report is never overwritten" in holds(report)
    folder = tmp_path / "run"
    folder.mkdir()
    assert holds(folder) is None  # empty: nothing to lose
    for name in ("a.csv", "b.json", "c.png", "d.md", "e.txt"):
        (folder / name).write_text("")
    message = holds(folder)
    assert "already holds a.csv, b.json, c.png, d.md and 1 more" in message
    assert "--resume" not in message  # this script has none
    assert "pass --resume" in holds(folder, resume=False)
    assert holds(folder, resume=True) is None


def test_a_script_refuses_an_out_with_results_before_it_runs(tmp_path, capsys):
    experiment = harness.Experiment("x", "doc", {"cpu": Outer()}, out=harness.DIRECTORY)
    (tmp_path / "curves.csv").write_text("kept")
    with pytest.raises(SystemExit) as exit_info:
        experiment.parse(["--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "never overwritten" in capsys.readouterr().err
    assert (tmp_path / "curves.csv").read_text() == "kept"
