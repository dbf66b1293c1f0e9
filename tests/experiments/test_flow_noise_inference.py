"""The bimodal-noise experiment: its closed-form truth (CDF, density, dw/da) checked independently,
and a tiny run whose oracle row is exact."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

from experiments import flow_noise_inference as fni

TASK = fni.Task()
POINTS = [(-1.2, -0.7), (0.3, 0.1), (1.5, 0.9)]  # (s, a)


@pytest.mark.parametrize("s,a", POINTS)
def test_the_log_density_is_the_log_derivative_of_the_cdf(x64, s, a):
    for w in np.linspace(-1.5, 1.5, 13):
        density = jax.grad(fni.true_cdf, argnums=3)(TASK, s, a, w)
        np.testing.assert_allclose(fni.true_log_prob(TASK, s, a, w), np.log(density), rtol=1e-10)


def _inverse_cdf(s: float, a: float, u: float) -> float:
    """w with F(w | s, a) = u, by bisection (independent of the implicit derivative)."""
    low, high = -5.0, 5.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if fni.true_cdf(TASK, s, a, mid) < u else (low, mid)
    return 0.5 * (low + high)


@pytest.mark.parametrize("s,a", POINTS)
@pytest.mark.parametrize("xi", [-1.0, 0.2, 1.3])
def test_dw_da_at_fixed_noise_matches_finite_differences_of_the_inverse_cdf(x64, s, a, xi):
    u, h = float(norm.cdf(xi)), 1e-5
    w = _inverse_cdf(s, a, u)
    finite = (_inverse_cdf(s, a + h, u) - _inverse_cdf(s, a - h, u)) / (2 * h)
    np.testing.assert_allclose(fni.true_dw_da(TASK, s, a, w), finite, rtol=1e-5, atol=1e-8)


def test_the_true_noise_of_sampled_transitions_is_standard_normal(x64):
    data = fni.sample_transitions(TASK, jax.random.key(0), 8000)
    # Phi^-1(F(w)) of the mixture's own samples: N(0, 1) up to sampling error.
    assert fni.ks_distance(np.asarray(data.xi)) < 1.36 / np.sqrt(8000)
    np.testing.assert_allclose(
        [float(jnp.mean(data.xi)), float(jnp.std(data.xi))], [0.0, 1.0], atol=0.04
    )


def test_ks_distance_of_a_quantile_grid_and_of_its_shift():
    n = 1000
    grid = np.asarray(norm.ppf((np.arange(n) + 0.5) / n))
    assert fni.ks_distance(grid) == pytest.approx(0.5 / n, abs=1e-6)
    # Shifted by 3: sup |Phi(x - 3) - Phi(x)| = 2 Phi(1.5) - 1, up to the grid's 1 / n.
    assert fni.ks_distance(grid + 3.0) == pytest.approx(2 * float(norm.cdf(1.5)) - 1, abs=1.0 / n)


def test_a_tiny_run_writes_its_report_and_the_oracle_row_is_exact(x64, tmp_path, capsys):
    # x64: main turns float64 on (its Phi^-1(F) needs it); the fixture turns it off again.
    out = tmp_path / "flow.json"
    argv = ["--set", "n_train=256", "--set", "n_test=64", "--set", "seeds=1"]
    fni.main([*argv, "--set", "steps=20", "--set", "hidden=[8]", "--out", str(out)])
    report = json.loads(out.read_text())
    rows = {row["model"]: row for row in report["summary"]}
    assert set(rows) == {"oracle", "gaussian", "flow"}
    oracle = rows["oracle"]
    assert oracle["xi_rms_error"] == 0 and oracle["gradient_relative_rms_error"] == 0
    for model in ("gaussian", "flow"):
        assert all(np.isfinite(v) for v in rows[model].values() if isinstance(v, float))
        # A model is never more likely than the truth by much on held-out data.
        assert rows[model]["log_likelihood"] < oracle["log_likelihood"] + 0.5
    assert "held-out LL" in capsys.readouterr().out


def test_a_bad_preset_value_exits_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        fni.main(["--set", "n_test=1"])
    assert (
        exit_info.value.code == 2 and "n_test must be an int >= 2, got 1" in capsys.readouterr().err
    )
