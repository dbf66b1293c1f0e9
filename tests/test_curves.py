"""mbpo.curves: learning-curve rows and their plot."""

import numpy as np

from mbpo import curves


def test_plot_averages_the_seeds_evaluated_at_each_point_when_runs_used_other_grids():
    # Seeds 0 and 1 evaluated every 10 steps, seeds 2 and 3 (another run) every 20: each point
    # is the mean (and min-max band) of the seeds evaluated there.
    rows = [
        {"algorithm": "a", "env_steps": s, "seed": seed, "eval_return": float(s + seed)}
        for seed in (0, 1)
        for s in (10, 20, 30, 40)
    ]
    rows += [
        {"algorithm": "a", "env_steps": s, "seed": seed, "eval_return": float(s + seed)}
        for seed in (2, 3)
        for s in (20, 40)
    ]
    rows += [{"algorithm": "b", "env_steps": 10, "seed": 0, "eval_return": 5.0}]
    axes = curves.plot(rows, "title", "algorithm").axes[0]
    a, b = axes.lines[:2]
    np.testing.assert_array_equal(a.get_xdata(), [10, 20, 30, 40])
    np.testing.assert_allclose(a.get_ydata(), [10.5, 21.5, 30.5, 41.5])
    band = axes.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == 10.0 and band.max() == 43.0
    assert list(b.get_ydata()) == [5.0] and len(axes.collections) == 1  # one seed: no band
