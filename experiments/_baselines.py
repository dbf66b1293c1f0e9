"""Pieces shared by the benchmarks against brax's own agents and by their workers.

:mod:`experiments.bench_vs_brax_apg` and :mod:`experiments.bench_vs_brax_sac` run mbpo in this
process and a brax agent (``brax.training.agents.*``) in a worker subprocess under a second
virtual environment, because brax 0.14.2's agents call ``jax.device_put_replicated``, which jax
0.10 (mbpo's) removed. The workers (:mod:`experiments.apg_worker`, :mod:`experiments.sac_worker`)
import this module too, so it imports only the standard library and the jax-free mbpo modules
(:mod:`mbpo.cli`, :mod:`mbpo.files`, through :mod:`experiments.harness`) at module level; jax is
imported where a listener is registered, mbpo's trainers only on our side.

A worker's settings are a frozen dataclass (a :class:`WorkerSettings`) whose fields carry their
``--help`` text (:func:`mbpo.cli.option`); :func:`command_line` writes one as the worker's command
line and :func:`mbpo.cli.parse` reads it back, so the bench and the worker cannot disagree on flags.
Our side trains through :func:`mbpo.runner.fit` with a :class:`ChunkLog` callback
(:func:`train_ours`), and :func:`compare` runs the two sides seed by seed into one report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from experiments import harness
from mbpo import cli
from mbpo.cli import option
from mbpo.files import write_json

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# Lowering to MLIR and XLA's compile (or a load from the persistent cache): one event each per
# program. Tracing is left out: jax 0.9 reports the traces of functions nested in a pmapped one as
# events of their own, inside the outer trace's, so summing them would count time twice.
COMPILE_PHASES = frozenset({"/jax/core/compile/jaxpr_to_mlir_module_duration", COMPILE_EVENT})
# Compiled by brax's agents outside their timed training epochs: the evaluation unroll, and the
# squeeze of the replicated parameters handed to it.
UNTIMED_PROGRAMS = frozenset({"jit(generate_eval_unroll)", "jit(squeeze)", "jit(_squeeze)"})


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


PROCESS_START = time.perf_counter()  # a worker's start: its report's total_s counts from here


def worker_main(parse: Callable, run: Callable, argv: list[str] | None) -> None:
    """A worker's entry point: ``run(parse(argv))``, its report (with ``total_s``, the process's
    time so far) printed as one JSON line on stdout; everything else printed meanwhile (brax and
    jax print warnings and notices on stdout too) goes to stderr."""
    settings = parse(argv)
    with contextlib.redirect_stdout(sys.stderr):
        report = run(settings)
    print(json.dumps({**report, "total_s": time.perf_counter() - PROCESS_START}), flush=True)


def worker_entry(settings_class) -> Callable:
    """A worker's ``main(argv=None)``: :func:`worker_main` with ``settings_class.parse`` and the
    worker module's ``run``."""
    module = sys.modules[settings_class.__module__]
    return lambda argv=None: worker_main(settings_class.parse, module.run, argv)


def env_step_rates(progress, epoch_env_steps: float) -> dict:
    """Env steps per second over the epochs that did not compile, and of the fastest (None
    without such an epoch)."""
    steady = progress.steady_times()
    return {
        "env_steps_per_s": len(steady) * epoch_env_steps / sum(steady) if steady else None,
        "fastest_env_steps_per_s": epoch_env_steps / min(steady) if steady else None,
    }


def import_jax(compilation_cache: str | None):
    """Imports jax, with its persistent compilation cache in the folder ``compilation_cache``
    (None: no cache), and returns it; call it before importing brax."""
    if compilation_cache:
        # Each program loaded from the cache makes XLA:CPU log two false "machine type doesn't
        # match" errors (about tuning flags of the very machine that compiled it). Not
        # setdefault: importing brax sets the variable to 1, and a parent that did passes it on.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import jax

    from mbpo import compile_cache

    if compilation_cache:
        compile_cache.enable(compilation_cache, min_compile_secs=0.5)
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


def alternate_seeds(
    seeds: int,
    sides: dict[str, Callable[[int], dict]],
    after: Callable[[dict], None] | None = None,
) -> dict:
    """Runs ``sides[name](seed)`` for seeds 0, ..., ``seeds`` - 1, every side for one seed before
    the next seed (so that load from other processes that drifts during the run falls on all
    sides alike), calling ``after(result so far)`` after each. Returns ``{name: [report of each
    seed], name + "_wall_s": its summed time}``."""
    result = {name: [] for name in sides} | {f"{name}_wall_s": 0.0 for name in sides}
    for seed in range(seeds):
        for name, run in sides.items():
            start = time.perf_counter()
            result[name].append(run(seed))
            result[f"{name}_wall_s"] += time.perf_counter() - start
            if after is not None:
                after(result)
    return result


ACTIVATIONS = ("relu", "tanh", "elu", "swish")


def brax_option(default: Any, help: str, name: str, **kwargs) -> Any:
    """A worker setting that brax's ``train`` takes as the argument ``name``
    (:func:`brax_arguments`); its ``--help`` says which."""
    return option(default, f"{help} (``{name}``).", brax=name, **kwargs)


def brax_arguments(settings) -> dict:
    """``{brax's argument: value}`` of every :func:`brax_option` field of ``settings``."""
    return {
        f.metadata["brax"]: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if "brax" in f.metadata
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """What every brax worker takes; each worker's settings add its agent's own fields."""

    worker = ""  # the worker's script, for --help
    min_evals = 3  # brax's first epoch compiles: a timed one needs a third evaluation

    env: str = option("inverted_pendulum", "Brax environment name (``brax.envs.get_environment``).")
    backend: str = option(
        "positional", "Brax physics pipeline: generalized | positional | spring | mjx."
    )
    num_envs: int = brax_option(16, "Parallel training environments", "num_envs")
    episode_length: int = brax_option(
        200,
        "Steps before an environment is truncated and reset, in training and evaluation",
        "episode_length",
    )
    num_evals: int = brax_option(
        5,
        "Evaluations, the one before training included; see the worker's minimum",
        "num_evals",
    )
    learning_rate: float = brax_option(1e-3, "Adam learning rate", "learning_rate")
    hidden: tuple[int, ...] = option(
        (64, 64), "Hidden layer sizes (``hidden_layer_sizes`` of the agent's networks)."
    )
    activation: str = option("relu", "Hidden activation: relu | tanh | elu | swish.")
    normalize_observations: bool = brax_option(
        False, "Running mean/std normalization of observations", "normalize_observations"
    )
    deterministic_eval: bool = brax_option(
        True, "Evaluate the mode tanh(mu) rather than a sample", "deterministic_eval"
    )
    eval_envs: int = brax_option(128, "Episodes per evaluation", "num_eval_envs")
    seed: int = brax_option(0, "Random seed", "seed")
    compilation_cache: str | None = option(
        None, "Folder of jax's persistent compilation cache; none: no cache."
    )

    def __post_init__(self):
        harness.check_positive(self, "num_envs", "episode_length", "eval_envs")
        if self.num_evals < self.min_evals:
            raise ValueError(
                f"num_evals must be >= {self.min_evals} (the first {self.min_evals - 2} "
                f"epoch(s) compile), got {self.num_evals}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; allowed: {', '.join(ACTIVATIONS)}"
            )
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be a non-empty tuple of sizes >= 1, got {self.hidden}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")

    @classmethod
    def of(cls, preset, seed: int, cache: str | None, **own):
        """The settings of ``seed``: every field the benchmark's ``preset`` has under the same
        name (so that the two sides cannot disagree on it), then ``own``."""
        names = [f.name for f in dataclasses.fields(cls) if hasattr(preset, f.name)]
        shared = {name: getattr(preset, name) for name in names}
        return cls(**{**shared, **own}, seed=seed, compilation_cache=cache)

    @classmethod
    def parse(cls, argv: list[str] | None = None):
        """``--field-name`` options for the fields (:func:`mbpo.cli.parse`); bad values exit 2."""
        return cli.parse(cls, argv, prog=cls.worker, description=cls.__doc__.splitlines()[0])


def run_agent(
    settings: WorkerSettings, agent: str, progress: BraxProgress | None = None, **kwargs
) -> tuple[dict, BraxProgress]:
    """Trains ``brax.training.agents.<agent>`` with ``settings`` (``kwargs``: the agent's own
    ``train`` arguments; ``network_kwargs``: its network factory's; ``network_sizes``: the
    factory's size arguments, by default ``hidden_layer_sizes=settings.hidden``), reporting to
    ``progress`` (None: one that counts env steps, labelled with the agent and seed).
    Returns the report (:func:`worker_header`, ``progress.report()`` and ``train_s``, the call)
    and ``progress``, for the worker's own rates."""
    import importlib

    if progress is None:
        label = f"brax {agent} seed {settings.seed}"
        progress = BraxProgress(label=label, x_name="env_steps", x_of_step=int)

    import_jax(settings.compilation_cache)
    from brax import envs
    from flax import linen

    module = f"brax.training.agents.{agent}"
    networks = importlib.import_module(f"{module}.networks")
    sizes = kwargs.pop("network_sizes", {"hidden_layer_sizes": settings.hidden})
    network_factory = functools.partial(
        getattr(networks, f"make_{agent}_networks"),
        activation=getattr(linen, settings.activation),
        **sizes,
        **kwargs.pop("network_kwargs", {}),
    )
    start = time.perf_counter()
    importlib.import_module(f"{module}.train").train(
        environment=envs.get_environment(settings.env, backend=settings.backend),
        network_factory=network_factory,
        progress_fn=progress,
        **brax_arguments(settings),
        **kwargs,
    )
    train_s = time.perf_counter() - start
    report = {**worker_header(module, settings), **progress.report(), "train_s": train_s}
    return report, progress


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchPreset:
    """What both sides of every benchmark against brax get; each benchmark's preset adds its
    agent's sizes.

    Attributes:
      env: a Brax task of ``envs.brax_tasks.TASKS``.
      backend: Brax physics pipeline.
      num_envs: parallel training environments.
      episode_length: steps before an environment is reset, in training and evaluation.
      learning_rate: Adam learning rate.
      hidden: hidden layer sizes of the networks.
      eval_envs: episodes per evaluation.
      seeds: seeds 0, ..., seeds - 1 of each side.
    """

    env: str
    backend: str = "positional"
    num_envs: int
    episode_length: int
    learning_rate: float
    hidden: tuple[int, ...] = (64, 64)
    eval_envs: int = 128
    seeds: int = 3

    def __post_init__(self):
        from envs import brax_tasks
        from mbpo.dynamics.brax_env import BACKENDS

        if self.env not in brax_tasks.TASKS:
            raise ValueError(
                f"env must be a Brax task ({', '.join(brax_tasks.TASKS)}), got {self.env!r}"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        harness.check_positive(self, "num_envs", "episode_length", "eval_envs", "seeds")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be a non-empty tuple of sizes >= 1, got {self.hidden}")

    def ours(self, config_class, **own):
        """Our side's config: the fields every benchmark shares, under our names, then ``own``."""
        shared = {"env": self.env, "brax_backend": self.backend, "num_envs": self.num_envs}
        sizes = {"hidden": self.hidden, "eval_envs": self.eval_envs}
        return config_class(**shared, episode_length=self.episode_length, **sizes, **own)


class ChunkLog:
    """The :func:`mbpo.runner.fit` callback of our side: the evaluations (the untrained policy's
    first, at ``x`` = 0), the time of each chunk's updates (evaluation excluded) and whether
    anything compiled during it.

    Args:
      compiles: the :class:`CompileLog` of this process.
      label: prefix of the line printed at each evaluation.
      x: the training progress of ``evals``: ``updates`` or ``env_steps``.
      unevaluated: the first chunks whose evaluation is left out of ``evals`` (a warmup chunk that
        brax does not evaluate).
    """

    def __init__(self, compiles: CompileLog, *, label: str, x: str, unevaluated: int = 0):
        self.compiles, self.label, self.x, self.unevaluated = compiles, label, x, unevaluated
        self.evals: list[dict] = []
        self.times: list[float] = []
        self.compiled: list[bool] = []
        self.last: dict = {}
        self.compile_start = compiles.seconds

    def begin(self, trainer, state) -> None:
        from mbpo.agents import loop

        key = loop.evaluation_keys(trainer.config)
        value = float(loop.evaluate(trainer, state, key))  # the program fit evaluates with
        self.evals.append({self.x: 0, "eval_return": value})
        self.mark = len(self.compiles.compiles)

    def __call__(self, record: dict, state) -> None:
        self.times.append(record["update_time"])
        self.compiled.append(len(self.compiles.compiles) > self.mark)
        self.mark = len(self.compiles.compiles)
        if len(self.times) > self.unevaluated:
            self.evals.append({self.x: record[self.x], "eval_return": record["eval_return"]})
        self.last = record
        print(
            f"[{self.label}] chunk {len(self.times)} {self.evals[-1]} {self.times[-1]:.2f} s "
            f"compiled {self.compiled[-1]}",
            flush=True,
        )

    def steady_times(self) -> list[float]:
        """The times of the evaluated chunks during which nothing compiled."""
        pairs = zip(self.times[self.unevaluated :], self.compiled[self.unevaluated :])
        return [t for t, compiled in pairs if not compiled]

    def report(self, seed: int) -> dict:
        """``seed``, ``evals``, ``eval_return`` (the last), ``chunk_times_s``, ``chunk_compiled``,
        ``compile_s`` (lowering and XLA compile time during this seed: all of it for the first
        seed run, as the later ones reuse its programs) and ``skipped_updates``."""
        return {
            "seed": seed,
            "evals": self.evals,
            "eval_return": self.evals[-1]["eval_return"],
            "chunk_times_s": self.times,
            "chunk_compiled": self.compiled,
            "compile_s": self.compiles.seconds - self.compile_start,
            "skipped_updates": int(self.last["skipped_updates"]),
        }


def train_ours(config, seed: int, compiles: CompileLog, **log) -> ChunkLog:
    """One seed of our side: ``config`` at ``seed`` through :func:`mbpo.runner.fit`; returns its
    :class:`ChunkLog` (``log``: its keyword arguments, the label aside)."""
    from mbpo.runner import fit

    chunks = ChunkLog(compiles, label=f"ours seed {seed}", **log)
    fit(dataclasses.replace(config, seed=seed), callbacks=[chunks], progress=False)
    return chunks


@dataclasses.dataclass(frozen=True)
class BraxSide:
    """The brax side of a benchmark.

    Attributes:
      name: its key in the report (``apg``, ``brax``).
      agent: what the messages call it (``Brax's APG``).
      worker: the worker's module (``experiments.apg_worker``).
      flag: the option naming the python of the brax environment (``--apg-python``).
      python: that option's default.
    """

    name: str
    agent: str
    worker: str
    flag: str
    python: str = "/work/venv-apg/bin/python"

    def parse(self, experiment: harness.Experiment, argv: list[str] | None) -> harness.Run:
        """The harness's options and :attr:`flag`; a python that is not executable exits with 2."""
        parser = experiment.parser()
        parser.add_argument(
            self.flag,
            default=self.python,
            dest="python",
            help=f"python of the jax-0.9 environment with brax 0.14.2 (default: {self.python})",
        )
        parser.add_argument(
            "--ours-python",
            help="run our side in this python's environment too (experiments.ours_worker; the "
            f"jax-0.9 one of {self.flag}: both sides on one jax); default: in this process",
        )
        run = experiment.parse(argv, parser)
        harness.executable(parser, self.flag, run.args.python, self.agent)
        if run.args.ours_python and not os.access(run.args.ours_python, os.X_OK):
            parser.error(
                f"--ours-python {run.args.ours_python} is not an executable file; put mbpo into "
                f"the environment of {self.flag} as the README's 'one jax for both sides' says"
            )
        return run

    def command(self, python: str, settings) -> list[str]:
        """The worker's command line for ``settings`` (run from the repository root)."""
        return command_line(python, self.worker, settings)


def compare(
    run: harness.Run,
    side: BraxSide,
    *,
    ours: Callable[[int, CompileLog], dict],
    settings: Callable[[int, str | None], WorkerSettings],
    summarize: Callable[[list[dict], list[dict]], dict],
    format_table: Callable[[dict], str],
    config,
) -> None:
    """Runs both sides seed by seed (:func:`alternate_seeds`; the brax side in workers sharing
    one compilation cache), summarizes them and finishes ``run``'s report. With ``--out`` the
    report so far (``"complete": false``, no summary) is written after each side's seed, so a
    run cut short, or a worker that fails, keeps what was measured."""
    import tempfile

    report = {**run.header(), "ours_config": dataclasses.asdict(config)}

    def partial(result: dict) -> None:
        if run.out is not None:
            write_json(run.out, {**report, **result, "complete": False})

    compiles = CompileLog()
    if run.args.ours_python:  # the same preset and overrides, parsed again by the worker
        preset_args = ["--preset", run.args.preset]
        preset_args += [a for o in run.args.overrides for a in ("--set", o)]

        def ours(seed, compiles):
            module = run.experiment.module
            command = [run.args.ours_python, "-m", "experiments.ours_worker", module]
            return run_worker([*command, "--seed", str(seed), *preset_args])

    with tempfile.TemporaryDirectory(prefix=f"{side.name}-jax-cache-") as cache:
        sides = {
            "ours": lambda seed: ours(seed, compiles),
            side.name: lambda seed: run_worker(
                side.command(run.args.python, settings(seed, cache))
            ),
        }
        report.update(alternate_seeds(run.preset.seeds, sides, partial))
    seed0 = side.command(run.args.python, settings(0, "CACHE_DIR"))
    report[f"{side.name}_command_seed0"] = " ".join(seed0)
    report[f"{side.name}_jax_version"] = report[side.name][0]["jax_version"]
    report["ours_jax_version"] = report["ours"][0].get("jax_version", report["jax_version"])
    report["brax_version"] = report[side.name][0]["brax_version"]
    report["summary"] = summarize(report["ours"], report[side.name])
    run.finish({**report, "complete": True}, format_table)


def curve(runs: list[dict], x: str) -> list[dict]:
    """Mean +- std over seeds of the return at each evaluation of ``runs``."""
    return [
        {x: e[x], **harness.mean_std([r["evals"][i]["eval_return"] for r in runs])}
        for i, e in enumerate(runs[0]["evals"])
    ]


def ours_jax(report: dict) -> str:
    """The jax our side ran on: the worker's (``--ours-python``), else this process's."""
    return report.get("ours_jax_version", report["jax_version"])


def met(goal: bool) -> str:
    return "met" if goal else "NOT met"


@dataclasses.dataclass(frozen=True)
class Table:
    """How a benchmark's report reads: its side's names, the x of its curve, the column widths.

    Attributes:
      side: the report's key of the other side ("apg", "brax").
      short: its short name, in the wall-time line and the ratio column ("APG", "brax").
      label: its column header ("brax APG", "brax SAC").
      algorithm: our algorithm's name ("bpo", "sac").
      x: the curve's x ("updates", "env_steps").
      width: the width of the label column.
      digits: the digits of the curve's returns.
    """

    side: str
    short: str
    label: str
    algorithm: str
    x: str
    width: int
    digits: int

    def row(self, summary: dict, label: str, stat: str, tail: str = "", **fmt) -> str:
        """A line: ``label``, mean +- std over seeds of ``stat`` for each side (``fmt``:
        :func:`experiments.harness.pm`'s scale and digits), then ``tail``."""
        ours, theirs = (harness.pm(summary[name][stat], **fmt) for name in ("ours", self.side))
        return f"{label:<{self.width}}{ours:>20}{theirs:>20}{tail}"

    def seconds_row(self, label: str, ours: float, theirs: float) -> str:
        """A line of one value per side (seconds of seed 0)."""
        return f"{label:<{self.width}}{ours:>20.1f}{theirs:>20.1f}"

    def ratio_row(
        self, summary: dict, label: str, stat: str, ratio: str, goal: str = "", **fmt
    ) -> str:
        """:meth:`row` with ours over theirs in the ratio column (``ratio``: a summary key) and
        the ``goal`` after it."""
        value = summary[ratio]
        tail = f"{'n/a' if value is None else f'{value:.2f}':>10}{goal}"
        return self.row(summary, label, stat, tail, **fmt)

    def return_row(self, summary: dict, goal: str, difference: bool = False) -> str:
        """The line of the final return, with the return ``goal``, whether it is met and (with
        ``difference``) ours minus theirs."""
        final = f"{summary['ours']['curve'][-1][self.x]} {self.x.replace('_', ' ')}"
        tail = f"{'':>10}  {goal}: {met(summary['return_goal_met'])}"
        if difference:
            mean = (summary[name]["eval_return"]["mean"] for name in ("ours", self.side))
            tail += f" (difference {next(mean) - next(mean):+.{self.digits}f})"
        return self.row(summary, f"eval return @ {final}", "eval_return", tail, digits=self.digits)

    def format(self, report: dict, settings: str, rows: list[str]) -> str:
        """The report as fixed-width text: the preset's ``settings``, the versions, the wall
        times and load, the goal ``rows``, then the return curves of both sides."""
        side, summary = self.side, report["summary"]
        lines = [
            f"preset {report['preset']}: {settings}",
            f"ours: mbpo {self.algorithm}, jax {ours_jax(report)}; {self.label}: brax "
            f"{report['brax_version']}, jax {report[side + '_jax_version']}; "
            f"device {report['device_kind']}",
            f"wall time {report['wall_s']:.0f} s (ours {report['ours_wall_s']:.0f} s, "
            f"{self.short} {report[side + '_wall_s']:.0f} s); load average "
            f"{report['load_average_1min_at_start']:.1f} at the start, "
            f"{report['load_average_1min_at_end']:.1f} at the end",
            "",
            f"{'':<{self.width}}{'ours':>20}{self.label:>20}{'ours/' + self.short:>10}  goal",
            *rows,
            "",
            f"{'eval return by ' + self.x.replace('_', ' '):<{self.width}}{'ours':>20}"
            f"{self.label:>20}",
        ]
        for o, b in zip(summary["ours"]["curve"], summary[side]["curve"]):
            mine, theirs = (harness.pm(c, digits=self.digits) for c in (o, b))
            lines.append(f"{o[self.x]:<{self.width}}{mine:>20}{theirs:>20}")
        return "\n".join([*lines, "(mean +- std over seeds)"])


def summarize(ours: list[dict], theirs: list[dict], side: str, x: str, stats: tuple) -> dict:
    """Per side, mean +- std over seeds of each of ``stats`` and of the final return, the compile
    time of seed 0 and the return curve; ``return_goal_met`` (ours >= theirs). The benchmark adds
    its ratios (:func:`ratio`) and goals.

    Raises ValueError if the two sides were evaluated at different ``x`` (updates, env steps).
    """
    sides = {"ours": ours, side: theirs}
    at = {name: [e[x] for e in runs[0]["evals"]] for name, runs in sides.items()}
    if at["ours"] != at[side]:
        raise ValueError(
            f"evaluated at different {x.replace('_', ' ')}: ours {at['ours']}, {side} {at[side]}"
        )
    summary = {
        name: {
            **{stat: harness.mean_std([r[stat] for r in runs]) for stat in stats},
            "eval_return": harness.mean_std([r["eval_return"] for r in runs]),
            "compile_s_seed0": runs[0].get("compile_s"),
            "curve": curve(runs, x),
        }
        for name, runs in sides.items()
    }
    mean = {name: summary[name]["eval_return"]["mean"] for name in sides}
    summary["return_goal_met"] = mean["ours"] >= mean[side]
    return summary


def ratio(summary: dict, stat: str, side: str) -> float | None:
    """Ours over theirs of the mean of ``stat`` (None when either side has no value)."""
    ours, theirs = summary["ours"][stat]["mean"], summary[side][stat]["mean"]
    return ours / theirs if ours is not None and theirs is not None else None


def script(module: str, doc: str, presets: dict):
    """The benchmark ``module``'s :class:`experiments.harness.Experiment` and its
    ``main(argv=None)`` (:func:`main` of that script)."""
    # Run as ``python -m``, the module is __main__; its workers and --help need its real name.
    spec = sys.modules[module].__spec__
    experiment = harness.Experiment(spec.name if spec else module, doc, presets)
    return experiment, lambda argv=None: main(sys.modules[module], argv)


def main(script, argv) -> None:
    """A benchmark's entry point: parse ``script.EXPERIMENT``'s options and ``script.SIDE``'s
    python (:meth:`BraxSide.parse`), then :func:`compare` with the script's
    ``trainer_config(preset)``, ``train_ours(config, preset, seed, compiles)``,
    ``worker_settings(preset, seed, cache)``, ``summarize`` and ``format_table``."""
    run = script.SIDE.parse(script.EXPERIMENT, argv)
    preset = run.preset
    config = script.trainer_config(preset)
    compare(
        run,
        script.SIDE,
        ours=lambda seed, compiles: script.train_ours(config, preset, seed, compiles),
        settings=lambda seed, cache: script.worker_settings(preset, seed, cache),
        summarize=script.summarize,
        format_table=script.format_table,
        config=config,
    )
