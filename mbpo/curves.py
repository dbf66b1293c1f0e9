"""Learning curves: the evaluation records of one or several runs as rows, and their plot.

A run's history has one record per evaluation; with several seeds its per-seed values are lists.
:func:`seed_rows` turns either into one row per evaluation and seed, :func:`labelled_rows` adds
the name of the variant that made them (an estimator, a horizon, an algorithm), and :func:`plot`
draws the mean over seeds with a band from the lowest to the highest, one line per variant.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from mbpo.files import write_atomically

CURVE_COLUMNS = ("updates", "env_steps", "wall_time", "seed", "eval_return")


def seed_rows(history: list[dict]) -> list[dict]:
    """One row per evaluation and seed of a history: every list-valued field (``eval_return`` and
    the last update's metrics, one entry per seed) becomes that seed's value; a one-seed history
    (scalar values) gets ``seed`` 0."""
    rows = []
    for record in history:
        if not isinstance(record["eval_return"], list):
            rows.append({**record, "seed": 0})
            continue
        per_seed = {k: v for k, v in record.items() if isinstance(v, list)}
        shared = {k: v for k, v in record.items() if k not in per_seed}
        for seed in range(len(record["eval_return"])):
            rows.append({**shared, "seed": seed, **{k: v[seed] for k, v in per_seed.items()}})
    return rows


def labelled_rows(
    key: str, label: str, history: list[dict], columns: Sequence[str] = CURVE_COLUMNS
) -> list[dict]:
    """``{key: label, **columns}`` per evaluation and seed of ``history`` (a column the history
    lacks is left out)."""
    return [{key: label, **{c: row[c] for c in columns if c in row}} for row in seed_rows(history)]


def at_shared_points(rows: list[dict], x: str = "env_steps") -> dict:
    """``rows`` grouped by their ``x``, sorted, at the points where every seed of ``rows`` was
    evaluated (runs tabulated together may have evaluated on other grids); where they share
    none (wall-clock of two runs, say), at every point with the seeds evaluated there."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r[x], []).append(r)
    every = {r.get("seed") for r in rows}
    shared = [s for s, group in groups.items() if {r.get("seed") for r in group} == every]
    return {s: groups[s] for s in sorted(shared or groups)}


def plot(
    rows: list[dict],
    title: str,
    key: str | None = None,
    *,
    x: str = "env_steps",
    threshold: float | None = None,
    log_x: bool = False,
):
    """Evaluation return against ``x`` (env steps, or updates for the batch methods), one line per
    value of ``key`` (None: one run): the mean over seeds with a min-max band at the points of
    :func:`at_shared_points`; a dashed line at ``threshold``. Returns the matplotlib Figure."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    names = list(dict.fromkeys(r[key] for r in rows)) if key is not None else [None]
    for i, name in enumerate(names):
        mine = [r for r in rows if key is None or r[key] == name]
        groups = at_shared_points(mine, x)
        steps = list(groups)
        values = [np.array([r["eval_return"] for r in group]) for group in groups.values()]
        seeds = max(len(v) for v in values)
        line = name if name is not None else (f"mean of {seeds} seeds" if seeds > 1 else None)
        mean = [v.mean() for v in values]
        axes.plot(steps, mean, "o-", color=f"C{i}", label=line, markersize=3)
        if seeds > 1:
            band = "min-max over seeds" if name is None else None
            low, high = [v.min() for v in values], [v.max() for v in values]
            axes.fill_between(steps, low, high, color=f"C{i}", alpha=0.2, label=band)
    if threshold is not None:
        axes.axhline(
            threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:g}"
        )
    if log_x:
        axes.set_xscale("log")
    axes.set_xlabel("environment steps" if x == "env_steps" else x.replace("_", " "))
    axes.set_ylabel("evaluation return")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    if axes.get_legend_handles_labels()[1]:
        axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def save_png(path: str | os.PathLike, figure, dpi: int = 110) -> None:
    """``figure`` as a PNG at ``path``, written atomically."""
    write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=dpi))
