"""Tests of experiments/gradient_estimators.py: J(theta) = E_{x ~ N(theta, 1)}[x^2 theta] at 1.

Statistical checks use 4 standard errors (SE) over 200 trials of batch 1000.
"""

import json
import math
import pathlib
import subprocess
import sys

import pytest

from experiments import gradient_estimators

REPOSITORY = pathlib.Path(__file__).resolve().parents[2]
TOLERANCE_SE = 4.0
BATCH = 1000
TRIALS = 200
TRUE_GRADIENT = 4.0  # 1 + 3 theta^2 at theta = 1
# Per-draw variances at theta = 1: naive x^2, score function x^2 (x - 1) + x^2 = x^3 and
# reparameterization 2x + x^2 = (x + 1)^2 - 1 with x ~ N(1, 1), from the normal moments.
PER_DRAW_VARIANCE = {"naive": 6.0, "score_function": 60.0, "reparameterization": 18.0}


@pytest.fixture(scope="module")
def summary() -> dict:
    return gradient_estimators.run(batch=BATCH, trials=TRIALS, theta=1.0, seed=0)


@pytest.mark.parametrize("name", ["score_function", "reparameterization"])
def test_unbiased_estimators_match_true_gradient(summary, name):
    stats = summary["estimators"][name]
    assert summary["true_gradient"] == TRUE_GRADIENT
    assert abs(stats["mean"] - TRUE_GRADIENT) <= TOLERANCE_SE * stats["standard_error"]


def test_naive_estimator_is_biased(summary):
    """E[x^2] = 1 + theta^2 = 2, a bias of -2; the true gradient is far outside its interval."""
    stats = summary["estimators"]["naive"]
    assert abs(stats["mean"] - 2.0) <= TOLERANCE_SE * stats["standard_error"]
    assert abs(stats["bias"] + 2.0) <= TOLERANCE_SE * stats["standard_error"]
    assert abs(stats["mean"] - TRUE_GRADIENT) > 100 * stats["standard_error"]


@pytest.mark.parametrize("name", PER_DRAW_VARIANCE)
def test_variances_match_closed_forms(summary, name):
    """Var of a batch mean is the per-draw variance / N; the sample variance of approximately
    normal estimates has SE ~ Var sqrt(2 / (trials - 1))."""
    stats = summary["estimators"][name]
    exact = PER_DRAW_VARIANCE[name] / BATCH
    assert abs(stats["variance"] - exact) <= TOLERANCE_SE * exact * math.sqrt(2 / (TRIALS - 1))
    assert stats["mse"] == pytest.approx(stats["bias"] ** 2 + stats["variance"])


def test_reparameterization_has_lower_variance_than_score_function(summary):
    estimators = summary["estimators"]
    assert estimators["reparameterization"]["variance"] < estimators["score_function"]["variance"]


def test_jitted_estimates_do_not_retrace_for_new_seed_or_theta(summary):
    size = gradient_estimators.estimate_gradients._cache_size()
    gradient_estimators.run(batch=BATCH, trials=TRIALS, theta=0.5, seed=1)
    assert gradient_estimators.estimate_gradients._cache_size() == size


@pytest.mark.parametrize(
    "settings, message",
    [({"batch": 0}, "batch must be an int >= 1, got 0"), ({"trials": 1}, "got 1")],
)
def test_run_rejects_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        gradient_estimators.run(**settings)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "experiments.gradient_estimators", *args],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_summary_and_plot(tmp_path):
    out = tmp_path / "tmp" / "x.json"
    figure = tmp_path / "plots" / "x.png"
    result = run_cli(
        "--set", "trials=50", "--set", "batch=100", "--out", str(out), "--plot", str(figure)
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.read_text())
    assert summary["config"] == {"batch": 100, "trials": 50, "theta": 1.0, "seed": 0}
    assert summary["true_gradient"] == TRUE_GRADIENT
    assert list(summary["estimators"]) == ["naive", "score_function", "reparameterization"]
    for name, stats in summary["estimators"].items():
        assert set(stats) == {"mean", "bias", "variance", "mse", "standard_error"}
        assert name in result.stdout
    assert figure.read_bytes().startswith(b"\x89PNG")
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["plots", "tmp", "x.json", "x.png"]


def test_cli_rejects_zero_batch_without_writing(tmp_path):
    out = tmp_path / "x.json"
    result = run_cli("--set", "batch=0", "--out", str(out))
    assert result.returncode == 2
    assert "batch must be an int >= 1, got 0" in result.stderr
    assert not out.exists()


def test_cli_never_overwrites_a_report_or_a_plot(tmp_path):
    out, figure = tmp_path / "x.json", tmp_path / "x.png"
    for existing in (out, figure):
        existing.write_text("earlier results")
        result = run_cli("--set", "trials=2", "--out", str(out), "--plot", str(figure))
        assert result.returncode == 2 and "never overwritten" in result.stderr
        assert existing.read_text() == "earlier results"
        existing.unlink()
