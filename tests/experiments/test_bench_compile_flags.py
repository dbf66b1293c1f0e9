"""experiments.bench_compile_flags: the probe on lqr in this process (a Brax update compiles for
minutes), a flag XLA does not know recorded in its own process rather than raised, and the
ratios and bit-identity against the first flag set."""

import pytest

from experiments import bench_compile_flags as bench


def test_probe_compiles_runs_and_hashes_deterministically():
    first = bench.probe("lqr", "positional", horizon=2, num_envs=4, updates=2)
    again = bench.probe("lqr", "positional", horizon=2, num_envs=4, updates=3)
    assert first["compile_s"] > 0 and first["compile_cpu_s"] > 0 and first["update_s"] > 0
    assert len(first["state"]) == 64 and first["state"] != again["state"]  # one more update
    assert (
        bench.probe("lqr", "positional", horizon=2, num_envs=4, updates=2)["state"]
        == (first["state"])
    )


def _preset(flag_sets=(("xla defaults", ""),)) -> bench.Preset:
    return bench.Preset(
        env="lqr", backend="positional", horizon=2, num_envs=4, updates=2, flag_sets=flag_sets
    )


def test_an_unknown_flag_is_recorded_in_its_row():
    row = bench.measure(_preset(), "unknown", "--no_such_xla_flag=1")
    assert "Unknown flag" in row["error"] and "compile_s" not in row


def test_summary_gives_ratios_to_the_defaults_and_bit_identity():
    rows = [
        {
            "label": "xla defaults",
            "xla_flags": "",
            "compile_s": 100.0,
            "compile_cpu_s": 90.0,
            "update_s": 0.2,
            "state": "a",
        },
        {
            "label": "O0",
            "xla_flags": "--o0",
            "compile_s": 50.0,
            "compile_cpu_s": 45.0,
            "update_s": 1.0,
            "state": "b",
        },
        {
            "label": "bad",
            "xla_flags": "--bad",
            "error": "F1203 09:12:52 6833 flags.cc:234] Unknown flag in XLA_FLAGS: --bad\n",
        },
    ]
    reference, fast, bad = bench.summarize(rows)
    assert (reference["compile_ratio"], reference["bit_identical"]) == (1.0, True)
    assert (fast["compile_ratio"], fast["update_ratio"], fast["bit_identical"]) == (0.5, 5.0, False)
    assert bad == rows[2]
    config = {"env": "lqr", "backend": "positional", "horizon": 2, "num_envs": 4, "updates": 2}
    table = bench.format_table({"config": config, "rows": [reference, fast, bad]})
    assert "| O0 (`--o0`) | 50.0 | 0.50 | 45.0 | 0.50 | 1000 | 5.00 | no |" in table
    assert "| bad (`--bad`) | failed: Unknown flag in XLA_FLAGS: --bad |" in table


def test_preset_must_start_with_the_defaults():
    with pytest.raises(ValueError, match="must start with XLA's defaults"):
        _preset((("O0", "--xla_backend_optimization_level=0"),))
