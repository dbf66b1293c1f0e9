"""The compile benchmark's anatomy of an update, on lqr (a Brax update compiles for a minute)."""

import dataclasses
import json

import pytest

from experiments import bench_compile_cache as bcc


@pytest.mark.slow  # two fresh processes
def test_anatomy_counts_the_loops_of_the_lowered_and_compiled_update(tmp_path, monkeypatch, capsys):
    tiny = dataclasses.replace(
        bcc.PRESETS["cpu"],
        anatomy_horizons=(2, 6),
        anatomy_envs=(4,),
        anatomy_backends=("positional",),
        anatomy_env="lqr",
    )
    monkeypatch.setitem(bcc.PRESETS, "cpu", tiny)
    out = tmp_path / "anatomy.json"
    bcc.main(["--preset", "cpu", "--skip-starts", "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["starts"] == []
    rows = report["anatomy"]
    assert [(r["horizon"], r["num_envs"]) for r in rows] == [(2, 4), (6, 4)]
    for row in rows:
        # The window is a scan in the lowered program and stays a loop after XLA's passes.
        assert row["program_loops"] >= 1 and row["optimized_loops"] >= 1
        assert row["compile_s"] > 0 and row["compile_cpu_s"] > 0
    # The horizon is the scan's trip count: three times the steps, about the same program.
    assert rows[1]["program_lines"] < 1.2 * rows[0]["program_lines"]
    assert rows[1]["optimized_lines"] < 1.2 * rows[0]["optimized_lines"]
    assert "| positional | 6 | 4 |" in capsys.readouterr().out
