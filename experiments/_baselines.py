"""Pieces shared by the benchmarks against brax's own agents and by their workers.

:mod:`experiments.bench_vs_brax_apg` and :mod:`experiments.bench_vs_brax_sac` run mbpo in this
process and a brax agent (``brax.training.agents.*``) in a worker subprocess under a second
virtual environment, because brax 0.14.2's agents call ``jax.device_put_replicated``, which jax
0.10 (mbpo's) removed. The workers (:mod:`experiments.apg_worker`, :mod:`experiments.sac_worker`)
import this module too, so it imports only the standard library at module level (jax is imported
where a listener is registered), and it never imports mbpo.

A worker's settings are a frozen dataclass whose fields carry their ``--help`` text
(:func:`option`); :func:`command_line` writes one as the worker's command line and
:func:`parse_settings` reads it back, so the bench and the worker cannot disagree on flags.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
import typing
from collections.abc import Callable

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# Lowering to MLIR and XLA's compile (or a load from the persistent cache): one event each per
# program. Tracing is left out: jax 0.9 reports the traces of functions nested in a pmapped one as
# events of their own, inside the outer trace's, so summing them would count time twice.
COMPILE_PHASES = frozenset({"/jax/core/compile/jaxpr_to_mlir_module_duration", COMPILE_EVENT})
# Compiled by brax's agents outside their timed training epochs: the evaluation unroll, and the
# squeeze of the replicated parameters handed to it.
UNTIMED_PROGRAMS = frozenset({"jit(generate_eval_unroll)", "jit(squeeze)", "jit(_squeeze)"})


def option(default, help: str):
    """A dataclass field with a default and its ``--help`` text (mbpo.cli.option, which the
    workers cannot import)."""
    return dataclasses.field(default=default, metadata={"help": help})


def boolean(text: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off) as a bool, for argparse."""
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_settings(cls: type, argv: list[str] | None, *, prog: str, description: str):
    """``--field-name VALUE`` options for the fields of the dataclass ``cls`` (tuples of ints take
    several values, bools take true/false); returns ``cls(**options)``. A value the constructor
    rejects (ValueError) exits with status 2 and its message."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    hints = typing.get_type_hints(cls)
    converters = {
        tuple[int, ...]: {"type": int, "nargs": "+"},
        bool: {"type": boolean},
        str | None: {"type": str},
    }
    for field in dataclasses.fields(cls):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            default=field.default,
            help=f"{field.metadata['help']} (default: {field.default})",
            **converters.get(hints[field.name], {"type": hints[field.name]}),
        )
    args = vars(parser.parse_args(argv))
    try:
        return cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in args.items()})
    except ValueError as error:
        parser.error(str(error))


def command_line(python: str, module: str, settings) -> list[str]:
    """The command that runs ``python -m module`` with every field of the dataclass ``settings``
    as ``--field-name VALUE`` (the inverse of :func:`parse_settings`; None fields are left out)."""
    command = [python, "-m", module]
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if value is None:
            continue
        if isinstance(value, bool):
            values = ["true" if value else "false"]
        elif isinstance(value, tuple):
            values = [str(v) for v in value]
        else:
            values = [str(value)]
        command += [f"--{field.name.replace('_', '-')}", *values]
    return command


def run_worker(command: list[str]) -> dict:
    """Runs a worker from the repository root (so that ``-m experiments.*`` resolves) and returns
    the JSON object on the last line of its stdout, with ``wall_s`` (the subprocess) added. Its
    stderr (brax's warnings, its progress) passes through to ours; a non-zero exit raises
    RuntimeError."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"the worker failed with exit code {done.returncode}: {' '.join(command)}"
        )
    return {
        **json.loads(done.stdout.strip().splitlines()[-1]),
        "wall_s": time.perf_counter() - start,
    }


def worker_main(parse: Callable, run: Callable, argv: list[str] | None) -> None:
    """A worker's entry point: ``run(parse(argv))``, its report printed as one JSON line on
    stdout; everything else printed meanwhile (brax and jax print warnings and notices on
    stdout too) goes to stderr."""
    settings = parse(argv)
    with contextlib.redirect_stdout(sys.stderr):
        report = run(settings)
    print(json.dumps(report), flush=True)


def import_jax(compilation_cache: str | None):
    """Imports jax, with its persistent compilation cache in the folder ``compilation_cache``
    (None: no cache), and returns it; call it before importing brax."""
    if compilation_cache:
        # Each program loaded from the cache makes XLA:CPU log two false "machine type doesn't
        # match" errors (about tuning flags of the very machine that compiled it). Not
        # setdefault: importing brax sets the variable to 1, and a parent that did passes it on.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import jax

    if compilation_cache:
        jax.config.update("jax_compilation_cache_dir", compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return jax


def worker_header(implementation: str, settings) -> dict:
    """What a worker's report starts with: the agent, its settings, the versions, the device."""
    import brax
    import jax

    return {
        "implementation": implementation,
        "settings": dataclasses.asdict(settings),
        "jax_version": jax.__version__,
        "brax_version": brax.__version__,
        "device": str(jax.devices()[0].device_kind),
    }


class CompileLog:
    """What jax compiles while this listener is registered (it stays registered).

    Attributes:
      compiles: ``[name, s]`` of each program XLA compiled or loaded from jax's persistent cache,
        in order; ``len(compiles)`` before and after a call tells whether the call compiled.
      seconds: the summed lowering and XLA compile time (:data:`COMPILE_PHASES`) so far.
    """

    def __init__(self):
        import jax

        self.compiles: list[list] = []
        self.seconds = 0.0
        jax.monitoring.register_event_duration_secs_listener(self)

    def __call__(self, event: str, duration: float, **kwargs) -> None:
        if event in COMPILE_PHASES:
            self.seconds += duration
        if event == COMPILE_EVENT:
            self.compiles.append([str(kwargs.get("fun_name", "?")), round(duration, 3)])


class BraxProgress:
    """The ``progress_fn`` of a brax agent's ``train``, which evaluates before training and after
    each training epoch (one compiled ``lax.scan``) and reports the cumulative training wall time
    ``training/walltime`` (evaluation excluded).

    Args:
      label: prefix of the line printed to stderr at each evaluation.
      x_name: the name of the training progress in ``evals`` (``updates``, ``env_steps``).
      x_of_step: maps the step brax passes to ``progress_fn`` to that progress.

    Attributes:
      evals: ``{x_name, eval_return, eval_return_std}`` of each evaluation.
      epoch_times: wall time of each epoch (the differences of ``training/walltime``).
      epoch_compiled: whether anything but :data:`UNTIMED_PROGRAMS` compiled during each epoch.
      compiles: ``[name, s]`` of each program compiled before each evaluation.
      log: the :class:`CompileLog` (registered when this is built).
    """

    def __init__(self, *, label: str, x_name: str, x_of_step: Callable[[int], int]):
        self.label, self.x_name, self.x_of_step = label, x_name, x_of_step
        self.log = CompileLog()
        self.evals: list[dict] = []
        self.epoch_times: list[float] = []
        self.epoch_compiled: list[bool] = []
        self.compiles: list[list] = []

    def __call__(self, step: int, metrics: dict) -> None:
        self.compiles.append(self.log.compiles[sum(map(len, self.compiles)) :])
        compiled = [name for name, _ in self.compiles[-1] if name not in UNTIMED_PROGRAMS]
        self.evals.append(
            {
                self.x_name: self.x_of_step(step),
                "eval_return": float(metrics["eval/episode_reward"]),
                "eval_return_std": float(metrics["eval/episode_reward_std"]),
            }
        )
        if len(self.evals) > 1:
            self.epoch_times.append(float(metrics["training/walltime"]) - sum(self.epoch_times))
            self.epoch_compiled.append(bool(compiled))
        print(f"[{self.label}] {self.evals[-1]} compiled {compiled}", file=sys.stderr, flush=True)

    def steady_times(self) -> list[float]:
        """The times of the epochs during which nothing timed compiled."""
        return [t for t, compiled in zip(self.epoch_times, self.epoch_compiled) if not compiled]

    def report(self) -> dict:
        """``evals``, ``eval_return`` (the last), ``epoch_times_s``, ``epoch_compiled``,
        ``compiles`` and ``compile_s`` (lowering and XLA compile time of every program so far)."""
        return {
            "evals": self.evals,
            "eval_return": self.evals[-1]["eval_return"],
            "epoch_times_s": self.epoch_times,
            "epoch_compiled": self.epoch_compiled,
            "compiles": self.compiles,
            "compile_s": self.log.seconds,
        }


def alternate_seeds(seeds: int, sides: dict[str, Callable[[int], dict]]) -> dict:
    """Runs ``sides[name](seed)`` for seeds 0, ..., ``seeds`` - 1, every side for one seed before
    the next seed (so that load from other processes that drifts during the run falls on all
    sides alike). Returns ``{name: [report of each seed], name + "_wall_s": its summed time}``."""
    result = {name: [] for name in sides} | {f"{name}_wall_s": 0.0 for name in sides}
    for seed in range(seeds):
        for name, run in sides.items():
            start = time.perf_counter()
            result[name].append(run(seed))
            result[f"{name}_wall_s"] += time.perf_counter() - start
    return result


def mean_std(values: list[float | None]) -> dict:
    """Mean and sample std (0 for one value) of the values that are not None."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def pm(stat: dict, scale: float = 1.0, digits: int = 2) -> str:
    """A :func:`mean_std` result as ``mean +- std`` (times ``scale``); ``n/a`` without values."""
    if stat["mean"] is None:
        return "n/a"
    return f"{scale * stat['mean']:.{digits}f} +- {scale * stat['std']:.{digits}f}"


def parse_bench_args(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    presets: dict,
    python_flag: str,
    default_python: str,
    agent: str,
) -> argparse.Namespace:
    """The command line of a benchmark against brax: ``--preset`` (a key of ``presets``), the
    python of the brax environment (``python_flag``, e.g. ``--brax-python``) and ``--out``. An
    unknown preset, or a python that is not executable, exits with 2."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--preset", choices=sorted(presets), default="cpu", help="the comparison's settings"
    )
    parser.add_argument(
        python_flag,
        default=default_python,
        help=f"python of the jax-0.9 environment with brax 0.14.2 (default: {default_python})",
    )
    parser.add_argument("--out", type=pathlib.Path, help="JSON file for the report")
    args = parser.parse_args(argv)
    path = getattr(args, python_flag.lstrip("-").replace("-", "_"))
    if not os.access(path, os.X_OK):
        parser.error(
            f"{python_flag} {path} is not an executable file. {agent} needs jax < 0.10; create "
            "its environment with: python3.11 -m venv /work/venv-apg && "
            '/work/venv-apg/bin/pip install "jax[cpu]<0.10" brax==0.14.2 '
            f"(or pass {python_flag} PATH to another such python)"
        )
    return args
