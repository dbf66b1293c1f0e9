"""The README's "Train on your own dynamics" section, run as written (tiny budgets)."""

import json
import pathlib
import re
import shlex

import pytest

from mbpo import main as cli
from mbpo import runner

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section() -> str:
    text = README.read_text()
    return text[text.index("## Train on your own dynamics") : text.index("## Training\n")]


@pytest.mark.slow
def test_readme_user_task_trains_evaluates_and_resumes(tmp_path, monkeypatch, capsys):
    section = _section()
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    commands = [
        line.split("#")[0].strip()
        for line in re.search(r"```bash\n(.*?)```", section, re.S).group(1).splitlines()
    ]
    (tmp_path / "my_tasks.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny = (
        "--num-envs 4 --eval-every 2 --eval-envs 2 --hidden 8 --critic-epochs 1 "
        "--critic-minibatches 1"
    ).split()
    train, evaluate, resume = (shlex.split(c)[1:] for c in commands if c)
    train = [a if a != "200" else "2" for a in train]  # --num-updates 200 -> 2
    cli.main([*train, *tiny])
    run = tmp_path / "runs" / "point_mass"
    assert json.loads((run / runner.CONFIG).read_text())["env"] == "my_tasks:point_mass"
    cli.main(evaluate)
    assert "mean return" in capsys.readouterr().out
    cli.main([a if a != "400" else "4" for a in resume])
    assert runner.checkpoint_steps(run)[-1] == 4


@pytest.mark.slow
def test_readme_compares_horizons_on_the_user_task(tmp_path, monkeypatch):
    from experiments import compare_horizons

    section = _section()
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "my_tasks.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    command = re.search(r"`(python -m experiments\.compare_horizons.*?)`", section, re.S).group(1)
    argv = shlex.split(command)[3:]
    tiny = {"horizons": "[0,4]", "gradient_seeds": 2, "gradient_batch": 4, "lqr_episode": 20}
    tiny |= {"pretrain_updates": 2, "budget": 256, "return_horizons": "[4]", "num_envs": 16}
    compare_horizons.main([*argv, *(a for k, v in tiny.items() for a in ("--set", f"{k}={v}"))])
    summary = json.loads((tmp_path / "runs" / "point_mass_horizons" / "summary.json").read_text())
    assert {r["env"] for r in summary["gradients"]} == {"lqr", "my_tasks:point_mass"}
    assert [r["n"] for r in summary["returns"]] == ["untrained", "untrained", "4", "4"]
