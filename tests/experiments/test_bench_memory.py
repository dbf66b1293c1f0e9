"""experiments/bench_memory on a small lqr: rematerialization cuts the compiled program's
scratch memory (XLA's own accounting, not a timing), and the table reads the rows."""

import dataclasses

import pytest

from experiments import bench_memory


def test_remat_cuts_the_scratch_memory_of_a_long_unroll():
    row = bench_memory.measure(bench_memory.Task("lqr", batch=4), 256, repeats=2)
    assert row["chunk"] == 16
    assert row["memory_ratio"] < 0.25, row
    assert row["remat"]["lower_bound_bytes"] < row["plain"]["lower_bound_bytes"] / 4
    text = bench_memory.format_table({"rows": [row]})
    assert "| lqr | 256 | 4 |" in text


def test_presets_reject_bad_values():
    with pytest.raises(ValueError, match="horizons"):
        dataclasses.replace(bench_memory.PRESETS["cpu"], horizons=(1,))
    with pytest.raises(ValueError, match="batch must be >= 1"):
        dataclasses.replace(
            bench_memory.PRESETS["cpu"], tasks=(bench_memory.Task("pendulum", batch=0),)
        )
