"""mbpo.curves: learning-curve rows and their plot."""

import numpy as np

from mbpo import curves


def test_plot_averages_over_every_seed_where_runs_evaluated_on_other_grids():
    # Seeds 0 and 1 evaluated every 10 steps, seeds 2 and 3 (another run) every 20: the line
    # keeps the points where all four were evaluated; on grids that share no point (wall-clock
    # of two runs) each point is the mean of the seeds evaluated there.
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
    np.testing.assert_array_equal(a.get_xdata(), [20, 40])
    np.testing.assert_allclose(a.get_ydata(), [21.5, 41.5])
    band = axes.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == 20.0 and band.max() == 43.0
    assert list(b.get_ydata()) == [5.0] and len(axes.collections) == 1  # one seed: no band
    wall = [{**r, "wall_time": r["env_steps"] + 0.5 * (r["seed"] > 1)} for r in rows]
    line = curves.plot(wall, "title", "algorithm", x="wall_time").axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), [10.5, 20.5, 22.5, 30.5, 40.5, 42.5])
