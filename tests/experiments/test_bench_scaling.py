"""experiments/bench_scaling on a tiny lqr grid: rows, fitted exponents, table and plot."""

import dataclasses

import numpy as np
import pytest

from experiments import bench_scaling as bs


def test_exponent_recovers_a_power_law():
    x = np.array([1, 4, 16, 64])
    assert bs.exponent(x, 3.0 * x**0.8) == pytest.approx(0.8)


def test_a_small_grid_end_to_end():
    task = bs.Task("lqr", num_envs=(1, 4), horizons=(2, 8))
    rows = [
        bs.time_one(task, B, T, m, 1)
        for T in task.horizons
        for B in task.num_envs
        for m in bs.MODES
    ]
    assert len(rows) == 8 and all(r["steps_per_s"] > 0 for r in rows)
    exponents = bs.fits(rows)
    assert {(f["mode"], f["in"]) for f in exponents} == {
        (m, a) for m in bs.MODES for a in ("num_envs", "horizon")
    }
    text = bs.format_table({"rows": rows, "fits": exponents})
    assert "| lqr | forward+backward | 4 | 8 |" in text
    assert bs.plot(rows, exponents, "lqr") is not None


def test_presets_need_two_values_per_axis():
    with pytest.raises(ValueError, match="need >= 2 values"):
        dataclasses.replace(bs.PRESETS["cpu"], tasks=(bs.Task("pendulum", (1,), (1, 8)),))
