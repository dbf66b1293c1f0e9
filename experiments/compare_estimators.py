"""Estimators compared on one task: learning curves of BPO, SVG(n), DPMB-R and DPMB-SF (seeds
vmapped).

Each estimator trains from scratch with the same task, horizon, environments and number of
updates; all seeds of one estimator run in one vmapped program. Writes ``curves.csv`` (one row
per estimator, evaluation and seed), ``summary.json`` and ``curves.png`` (mean with a min-max band
over seeds) to ``--out``.

    python -m experiments.compare_estimators --env pendulum --estimators svg dpmb_r bpo --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import numpy as np

from mbpo import estimators
from mbpo.agents.unroll_trainer import UnrollTrainerConfig, train_seeds
from mbpo.cli import add_arguments, build
from mbpo.files import csv_text, run_header, write_atomically, write_json, write_text
from mbpo.runner import RunDirError, check_writable
from mbpo.runner import seed_rows as runner_seed_rows


def seed_rows(label: str, result: dict, key: str = "estimator") -> list[dict]:
    """One row ``{key: label, updates, env_steps, wall_time, seed, eval_return}`` per evaluation and
    seed of a :func:`mbpo.agents.loop.train_seeds` result."""
    columns = ("updates", "env_steps", "wall_time", "seed", "eval_return")
    return [
        {key: label, **{c: row[c] for c in columns}} for row in runner_seed_rows(result["history"])
    ]


def compare(config: UnrollTrainerConfig, names: list[str], seeds: int, on_done=None) -> list[dict]:
    """Rows ``{estimator, updates, env_steps, wall_time, seed, eval_return}`` for every estimator;
    ``on_done(rows)`` is called with the rows so far after each estimator."""
    rows = []
    for name in names:
        _, result = train_seeds(dataclasses.replace(config, estimator=name), seeds)
        rows += seed_rows(name, result)
        final = np.asarray(result["eval_return"])
        print(
            f"{name:>12s}: return {final.mean():9.2f} +- {final.std():7.2f} after "
            f"{result['env_steps']} env steps ({result['wall_time']:.0f} s)",
            flush=True,
        )
        if on_done is not None:
            on_done(rows)
    return rows


def plot(
    rows: list[dict],
    title: str,
    key: str = "estimator",
    *,
    threshold: float | None = None,
    log_x: bool = False,
):
    """Evaluation return against env steps per ``key`` value: the mean with a min-max band over
    seeds; a dashed line at ``threshold``."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for i, name in enumerate(dict.fromkeys(r[key] for r in rows)):
        mine = [r for r in rows if r[key] == name]
        steps = sorted({r["env_steps"] for r in mine})
        values = np.array([[r["eval_return"] for r in mine if r["env_steps"] == s] for s in steps])
        axes.plot(steps, values.mean(1), "o-", color=f"C{i}", label=name, markersize=3)
        axes.fill_between(steps, values.min(1), values.max(1), color=f"C{i}", alpha=0.2)
    if threshold is not None:
        axes.axhline(
            threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:g}"
        )
    if log_x:
        axes.set_xscale("log")
    axes.set_xlabel("environment steps")
    axes.set_ylabel("evaluation return")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


# Defaults each preset gives the options (explicit options still override them).
PRESETS = {
    "cpu": {"num_envs": 64, "num_updates": 1500, "seeds": 2},  # minutes on a 2-core CPU (pendulum)
    "gpu": {"num_envs": 1024, "num_updates": 3000, "seeds": 8},  # one H100, well under 10 minutes
}


def main(
    argv: list[str] | None = None, prog: str = "python -m experiments.compare_estimators"
) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="cpu",
        help="sizes: cpu (minutes here) or gpu (one H100)",
    )
    add_arguments(parser, UnrollTrainerConfig, exclude=("estimator",))
    parser.add_argument(
        "--estimators",
        nargs="+",
        default=["svg", "dpmb_r", "bpo"],
        choices=tuple(estimators.ESTIMATORS),
    )
    parser.add_argument("--seeds", type=int, default=2, help="seeds per estimator (vmapped)")
    parser.add_argument(
        "--out", type=pathlib.Path, required=True, help="directory for CSV, JSON and PNG"
    )
    preset, _ = parser.parse_known_args(argv)
    parser.set_defaults(**PRESETS[preset.preset])
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    # Every estimator's config is validated, and --out checked writable, before anything trains.
    configs = [
        build(parser, UnrollTrainerConfig, argparse.Namespace(**{**vars(args), "estimator": name}))
        for name in args.estimators
    ]
    try:
        check_writable(args.out)
    except RunDirError as error:
        parser.error(f"--out: {error}")
    config = configs[0]
    title = f"{config.env}, horizon {config.horizon}, {args.seeds} seeds"

    def write(rows):  # after every estimator: a crash loses only the one in progress
        write_text(args.out / "curves.csv", csv_text(rows))
        header = run_header("experiments.compare_estimators", argv)
        write_json(
            args.out / "summary.json",
            {
                **header,
                "config": dataclasses.asdict(config),
                "estimators": args.estimators,
                "rows": rows,
            },
        )
        figure = plot(rows, title)
        write_atomically(
            args.out / "curves.png", lambda f: figure.savefig(f, format="png", dpi=110)
        )

    compare(config, args.estimators, args.seeds, on_done=write)
    print(f"wrote {args.out}/{{curves.csv, summary.json, curves.png}}")


if __name__ == "__main__":
    main()
