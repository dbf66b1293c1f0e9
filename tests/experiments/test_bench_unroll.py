"""A tiny run of experiments/bench_unroll.py on lqr only (pendulum's ODE is slower to compile)."""

import math

import numpy as np
import pytest

from experiments import bench_unroll

REPEATS = 2


@pytest.fixture(scope="module")
def checked_row() -> tuple[dict, list]:
    """One measured row, and the (engine, scan) outputs that ``check_same`` was called with."""
    calls = []
    check_same = bench_unroll.check_same

    def spy(engine, scan, **kwargs):
        calls.append((engine, scan))
        check_same(engine, scan, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench_unroll, "check_same", spy)
        row = bench_unroll.measure(
            bench_unroll.make_subject("lqr"),
            batch=4,
            horizon=2,
            warmup=1,
            repeats=REPEATS,
            gamma=0.9,
        )
    return row, calls


def test_engine_and_scan_are_checked_equal_before_timing(checked_row):
    row, calls = checked_row
    assert len(calls) == 1
    engine, scan = calls[0]
    # [J, dJ/dw]: the value, then the 2-64-64-1 MLP's (2 + 1) * 64 + (64 + 1) * 64 + (64 + 1) * 1
    # weights and biases and its one log-std.
    assert engine.shape == scan.shape == (1 + 4418,)
    assert row["value"] == pytest.approx(float(scan[0]))
    assert row["relative_difference"] < 1e-5


def test_ratio_and_times_are_positive_and_finite(checked_row):
    row, _ = checked_row
    assert (row["task"], row["batch"], row["horizon"]) == ("lqr", 4, 2)
    for key in ("ratio", "engine_s", "scan_s", "engine_compile_s", "scan_compile_s"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    for name in ("engine", "scan"):
        assert len(row[f"{name}_times_s"]) == REPEATS
    low, high = row["ratio_quartiles"]
    assert 0 < low <= row["ratio"] <= high


def test_check_same_refuses_a_different_gradient():
    engine = np.array([1.0, 2.0, -3.0])
    with pytest.raises(AssertionError, match="dJ/dw differs"):
        bench_unroll.check_same(engine, engine * [1.0, 1.0, 1.01])
    with pytest.raises(AssertionError, match="J_n differs"):
        bench_unroll.check_same(engine, engine * [1.01, 1.0, 1.0])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "tpu"], "invalid choice: 'tpu'"),
        (["--out", "report.txt"], "expected a PATH.json file, got 'report.txt'"),
    ],
)
def test_cli_refuses_bad_values(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_unroll.EXPERIMENT.parse(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_presets_are_refused_when_sizes_are_invalid():
    with pytest.raises(ValueError, match="horizons must be a non-empty tuple of ints >= 1"):
        bench_unroll.Preset(batch=4, horizons=(0,), warmup=1, repeats=2)
    with pytest.raises(ValueError, match="repeats must be an int >= 2, got 1"):
        bench_unroll.Preset(batch=4, horizons=(1,), warmup=1, repeats=1)
