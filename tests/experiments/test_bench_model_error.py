"""The model-error benchmark: its error statistics in closed form, and a tiny run end to end."""

import json

import numpy as np
import pytest

from experiments import bench_model_error as bme


def test_window_starts_cover_every_window_inside_an_episode():
    np.testing.assert_array_equal(bme.window_starts(5, 2), [[0, 1], [1, 2], [2, 3], [3, 4]])
    assert bme.window_starts(7, 7).shape == (1, 7)


def test_prediction_errors_of_a_constant_offset():
    true = np.random.default_rng(0).normal(size=(50, 3, 2))
    offset = np.array([0.3, -0.4])  # the same error in every window and step
    scale = np.array([0.5, 2.0])
    errors = bme.prediction_errors(true + offset, true, scale)
    np.testing.assert_allclose(errors["rmse_raw"], [np.sqrt(np.mean(offset**2))] * 3)
    np.testing.assert_allclose(
        errors["rmse_normalized"], [np.sqrt(np.mean((offset / scale) ** 2))] * 3
    )
    np.testing.assert_allclose(
        errors["rmse_per_dimension_normalized"], [np.abs(offset) / scale] * 3
    )


def test_a_tiny_run_reports_every_window_and_finite_errors(tmp_path, capsys):
    out = tmp_path / "model_error.json"
    sizes = {"episodes": 4, "test_episodes": 2, "episode_length": 12, "horizon": 3}
    sizes |= {"ensemble_hidden": "[8]", "num_members": 2, "num_elites": 1, "train.max_epochs": 2}
    argv = [arg for key, value in sizes.items() for arg in ("--set", f"{key}={value}")]
    bme.main([*argv, "--tasks", "pendulum", "--out", str(out)])
    [row] = json.loads(out.read_text())["rows"]
    assert row["task"] == "pendulum" and row["transitions"] == 4 * 12
    assert row["windows"] == 2 * (12 - 3 + 1) == row["alive_windows"]  # pendulum never ends
    for key in ("model_rmse_raw", "model_rmse_normalized", "constant_rmse_normalized"):
        assert len(row[key]) == 3 and np.all(np.isfinite(row[key]))
    # Predicting s_t for s_{t+k} is off by the motion of k steps: more after 3 steps than after 1.
    assert 0 < row["constant_rmse_normalized"][0] < row["constant_rmse_normalized"][-1]
    assert np.isfinite(row["calibration_xi2"]) and row["calibration_xi2"] > 0
    assert "1-step raw" in capsys.readouterr().out


def test_an_episode_no_longer_than_the_horizon_exits_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bme.main(["--set", "episode_length=10"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "episode_length must be an int > horizon = 10" in err
