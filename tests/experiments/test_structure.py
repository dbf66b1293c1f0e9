"""experiments.structure on this checkout: issue 11's shape holds (no function in mbpo/ over 80
lines, no algorithm-name branch in mbpo/agents/); it finds both in a planted file; it refuses a
folder without mbpo/."""

import pathlib

import pytest

from experiments import structure

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _report(capsys, root) -> dict[str, str]:
    structure.main([str(root)])
    lines = capsys.readouterr().out.splitlines()
    return dict(line.split(": ", 1) for line in lines if not line.startswith(" "))


def test_this_checkout_has_no_long_function_and_no_algorithm_branch(capsys):
    report = _report(capsys, ROOT)
    assert report["functions over 80 lines"] == "[]"
    assert report["algorithm-name branches in mbpo/agents/"] == "0"
    assert report["lines over 100 columns in mbpo/"] == "0"


def test_a_planted_long_function_and_branch_are_found(tmp_path, capsys):
    agents = tmp_path / "mbpo" / "agents"
    agents.mkdir(parents=True)
    body = "\n".join(f"    x{i} = {i}" for i in range(85))
    source = f'def long(algo):\n{body}\n    if algo == "sac":\n        pass\n'
    (agents / "bad.py").write_text(source)
    report = _report(capsys, tmp_path)
    assert "'long'" in report["functions over 80 lines"]
    assert report["algorithm-name branches in mbpo/agents/"] == "1"


def test_a_folder_without_mbpo_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="no mbpo/ in"):
        structure.main([str(tmp_path)])
