"""Variants of one configuration trained side by side: ``mbpo compare estimators`` and
``mbpo compare horizons``.

    mbpo compare estimators --env pendulum --estimators svg dpmb_r bpo --seeds 3 --out DIR
    mbpo compare horizons --env pendulum --horizons 0 1 4 16 full --env-steps 200000 --out DIR

Each variant (an estimator, or an unroll horizon of one estimator) trains its seeds in one vmapped
program (:func:`mbpo.runner.fit`). Every variant's config is built, and so validated, and ``--out``
checked writable before anything trains; after each variant DIR/curves.csv (one row per variant,
evaluation and seed), DIR/summary.json (the command, the configs and the rows) and DIR/curves.png
(mean and min-max band over seeds) are rewritten whole, so that a crash loses only the variant in
progress; an ``--out`` that already holds files is refused, so no earlier comparison is lost.
The gradient study of the horizons (bias and variance on LQR) is an experiment:
``python -m experiments.compare_horizons``.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shlex
import sys

from mbpo import curves, estimators
from mbpo.agents.unroll_trainer import UnrollTrainerConfig
from mbpo.cli import add_arguments, build
from mbpo.files import csv_text, full_folder_refusal, run_header, write_json, write_text
from mbpo.runner import RunDirError, check_writable, fit

# Sizes each preset gives the options; options written out override them.
PRESETS = {
    "cpu": {"num_envs": 64, "num_updates": 1500, "seeds": 2},  # minutes on a 2-core CPU (pendulum)
    "gpu": {"num_envs": 1024, "num_updates": 3000, "seeds": 8},  # one H100, well under 10 minutes
}
FULL = "full"  # the whole episode, no critic


def horizon(text: str) -> int | None:
    """A ``--horizons`` value: an integer >= 0, or ``full``."""
    if text == FULL:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0 or {FULL!r}, got {text!r}")
    return value


def _log_evaluation(label: str):
    """A :func:`mbpo.runner.fit` callback printing each evaluation (the return of every seed), so
    the log of a long comparison shows its progress before the variant ends."""

    def log(record: dict, state) -> None:
        returns = record["eval_return"]
        returns = returns if isinstance(returns, list) else [returns]
        print(
            f"{label:>12s}: {record['env_steps']} env steps, return "
            + " ".join(f"{r:.1f}" for r in returns)
            + f" ({record['wall_time']:.0f} s)",
            flush=True,
        )

    return log


def compare(
    variants: dict[str, object], seeds: int, key: str, on_done=None, extra: tuple = ()
) -> list[dict]:
    """Trains every config of ``variants`` (label -> config) with ``seeds`` seeds; returns rows
    ``{key: label, updates, env_steps, wall_time, seed, eval_return}`` (and the metrics ``extra``
    names, where a trainer logs them) and calls ``on_done(rows)`` with the rows so far after each
    variant. A diverged seed is kept (its returns are not finite): a comparison reports it rather
    than stopping."""
    rows = []
    for label, config in variants.items():
        _, history = fit(
            config, seeds=seeds, stop_on_divergence=False, callbacks=(_log_evaluation(label),)
        )
        rows += curves.labelled_rows(key, label, history, (*curves.CURVE_COLUMNS, *extra))
        final = [r["eval_return"] for r in curves.seed_rows(history[-1:])]
        mean = sum(final) / len(final)
        print(
            f"{label:>12s}: mean return {mean:9.2f} over {len(final)} seeds after "
            f"{history[-1]['env_steps']} env steps ({history[-1]['wall_time']:.0f} s)",
            flush=True,
        )
        if on_done is not None:
            on_done(rows)
    return rows


def write(out: pathlib.Path, rows: list[dict], key: str, title: str, header: dict) -> None:
    """DIR/curves.csv, DIR/summary.json and DIR/curves.png of ``rows`` (each written atomically)."""
    write_text(out / "curves.csv", csv_text(rows))
    write_json(out / "summary.json", {**header, "rows": rows})
    curves.save_png(out / "curves.png", curves.plot(rows, title, key))


def _parser(kind: str, prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__.splitlines()[0], allow_abbrev=False
    )
    parser.add_argument(
        "--preset", choices=tuple(PRESETS), default="cpu", help="sizes: cpu or gpu (one H100)"
    )
    if kind == "estimators":
        add_arguments(parser, UnrollTrainerConfig, exclude=("estimator",), defaults=PRESETS["cpu"])
        parser.add_argument(
            "--estimators",
            nargs="+",
            default=["svg", "dpmb_r", "bpo"],
            choices=tuple(estimators.ESTIMATORS),
        )
    else:
        add_arguments(parser, UnrollTrainerConfig, exclude=("horizon",), defaults=PRESETS["cpu"])
        parser.add_argument(
            "--horizons", nargs="+", type=horizon, default=[0, 1, 4, 16, None], metavar="N|full"
        )
        parser.add_argument(
            "--env-steps",
            type=int,
            help="the budget of every horizon in env steps (default: the same --num-updates)",
        )
    parser.add_argument("--seeds", type=int, help="seeds per variant, vmapped (default: preset's)")
    parser.add_argument(
        "--out", type=pathlib.Path, required=True, help="directory for CSV, JSON and PNG"
    )
    return parser


def _variants(parser, kind: str, args, defaults: dict) -> dict[str, UnrollTrainerConfig]:
    """label -> config of every variant, each built and validated."""
    if kind == "estimators":
        return {
            name: build(parser, UnrollTrainerConfig, args, defaults, estimator=name)
            for name in args.estimators
        }
    variants = {}
    for n in args.horizons:
        config = build(parser, UnrollTrainerConfig, args, defaults, horizon=n)
        if args.env_steps is not None:
            per_update = config.num_envs * config.steps_per_update
            if args.env_steps < per_update:
                parser.error(
                    f"--env-steps {args.env_steps} is less than one update of horizon "
                    f"{FULL if n is None else n} ({per_update} env steps)"
                )
            config = dataclasses.replace(config, num_updates=args.env_steps // per_update)
        variants[FULL if n is None else f"n={n}"] = config
    return variants


def main(argv: list[str] | None = None, prog: str = "mbpo compare") -> None:
    """``mbpo compare estimators|horizons [options]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    kinds = {"estimators": "estimator", "horizons": "horizon"}
    if not argv or argv[0] not in kinds:
        argparse.ArgumentParser(prog=prog).error(
            f"mbpo compare needs one of: {', '.join(sorted(kinds, reverse=True))} (then --help), "
            f"got {argv[:1]}"
        )
    kind, argv = argv[0], argv[1:]
    parser = _parser(kind, f"{prog} {kind}")
    args = parser.parse_args(argv)
    defaults = {k: v for k, v in PRESETS[args.preset].items() if k != "seeds"}
    seeds = PRESETS[args.preset]["seeds"] if args.seeds is None else args.seeds
    if seeds < 1:
        parser.error(f"--seeds must be >= 1, got {seeds}")
    variants = _variants(parser, kind, args, defaults)
    problem = full_folder_refusal(args.out)
    if problem:
        parser.error(problem)
    try:
        check_writable(args.out)
    except RunDirError as error:
        parser.error(f"--out: {error}")
    first = next(iter(variants.values()))
    title = f"{first.env}, {first.estimator if kind == 'horizons' else f'horizon {first.horizon}'}"
    header = {
        **run_header(f"mbpo compare {kind}", argv),
        "command": shlex.join(["mbpo", "compare", kind, *argv]),
        "seeds": seeds,
        "configs": {label: dataclasses.asdict(c) for label, c in variants.items()},
    }
    compare(
        variants,
        seeds,
        kinds[kind],
        on_done=lambda rows: write(args.out, rows, kinds[kind], f"{title}, {seeds} seeds", header),
    )
    print(f"wrote {args.out}/{{curves.csv, summary.json, curves.png}}")
