"""Our side of a brax benchmark in another Python environment: ``--ours-python`` of
``experiments.bench_vs_brax_*`` runs it there (the jax 0.9 environment of brax's agents, so that
both sides run on one jax and the ratio measures code, not versions).

    PYTHON -m experiments.ours_worker experiments.bench_vs_brax_apg --seed 0 [--preset cpu]
        [--set FIELD=VALUE ...]

parses the benchmark's own preset and overrides, trains one seed of our side exactly as the
benchmark does in its own process (``script.train_ours(script.trainer_config(preset), preset,
seed, compiles)``) and prints its report, with this environment's jax version, as one JSON line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from experiments import _baselines


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="python -m experiments.ours_worker", add_help=True)
    parser.add_argument("module", help="the benchmark, e.g. experiments.bench_vs_brax_apg")
    parser.add_argument("--seed", type=int, required=True)
    args, rest = parser.parse_known_args(argv)
    script = importlib.import_module(args.module)
    run = script.EXPERIMENT.parse(rest)
    return script, run.preset, args.seed


def run(parsed) -> dict:
    import jax

    script, preset, seed = parsed
    config = script.trainer_config(preset)
    report = script.train_ours(config, preset, seed, _baselines.CompileLog())
    return {**report, "jax_version": jax.__version__}


def main(argv: list[str] | None = None) -> None:
    _baselines.worker_main(parse, run, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
