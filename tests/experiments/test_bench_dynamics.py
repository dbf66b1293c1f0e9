"""A tiny run of experiments/bench_dynamics.py on pendulum only (Brax is never built: too slow)."""

import math

import diffrax
import pytest

from experiments import bench_dynamics
from mbpo.dynamics import ODESolver

TINY = bench_dynamics.TaskConfig(
    num_envs=(1, 4), rollout_steps=5, gradient_envs=4, gradient_steps=5, warmup=1, repeats=2
)
TIMES = ("adapter_compile_s", "raw_compile_s", "adapter_s", "raw_s", "ratio", "min_ratio")
KEYS = {"num_envs", "num_steps", "relative_difference", "adapter_times_s", "raw_times_s", *TIMES}


@pytest.fixture(scope="module")
def result() -> dict:
    # Euler traces and compiles in half the time of the task's Tsit5; the code measured is the same.
    subject = bench_dynamics.pendulum_subject(ODESolver(solver=diffrax.Euler()))
    return bench_dynamics.benchmark_task(subject, TINY)


def is_positive_finite(value: float) -> bool:
    return math.isfinite(value) and value > 0


def check_measurements(row: dict) -> None:
    """Every time and ratio is positive and finite, with one timed call per repeat."""
    assert all(is_positive_finite(row[key]) for key in TIMES)
    for name in ("adapter", "raw"):
        assert len(row[f"{name}_times_s"]) == TINY.repeats
        assert all(is_positive_finite(value) for value in row[f"{name}_times_s"])


def test_forward_rows_have_positive_finite_throughput(result):
    assert result["task"] == "pendulum"
    assert [row["num_envs"] for row in result["forward"]] == [1, 4]
    for row in result["forward"]:
        assert set(row) == {*KEYS, "adapter_steps_per_s", "raw_steps_per_s"}
        assert row["num_steps"] == 5
        check_measurements(row)
        assert is_positive_finite(row["adapter_steps_per_s"])
        assert is_positive_finite(row["raw_steps_per_s"])


def test_gradient_row_has_positive_finite_times(result):
    gradient = result["gradient"]
    assert set(gradient) == KEYS
    assert (gradient["num_envs"], gradient["num_steps"]) == (4, 5)
    check_measurements(gradient)


def test_adapter_and_raw_scan_compute_the_same_numbers(result):
    """The ratio compares equal work: the raw scan is the adapter without its bookkeeping."""
    for row in (*result["forward"], result["gradient"]):
        assert row["relative_difference"] < 1e-5


@pytest.mark.parametrize(
    "flag, value, allowed",
    [
        ("--preset", "tpu", "'cpu', 'gpu'"),
        ("--brax-task", "antt", "'inverted_pendulum'"),
        ("--backend", "warp", "'positional'"),
    ],
)
def test_cli_refuses_unknown_values_naming_the_allowed_ones(flag, value, allowed, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_dynamics.EXPERIMENT.parse([flag, value], bench_dynamics.parser())
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert f"invalid choice: '{value}'" in error and allowed in error


def test_presets_are_refused_when_sizes_are_invalid():
    with pytest.raises(ValueError, match="repeats must be an int >= 1, got 0"):
        bench_dynamics.TaskConfig(
            num_envs=(1,), rollout_steps=1, gradient_envs=1, gradient_steps=1, warmup=1, repeats=0
        )
