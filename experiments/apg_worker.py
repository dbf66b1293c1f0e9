"""Brax's own APG (``brax.training.agents.apg.train``) on one seed, timed; prints one JSON line.

The reference side of :mod:`experiments.bench_vs_brax_apg`. It runs under a second virtual
environment with jax 0.9: brax 0.14.2's training agents call ``jax.device_put_replicated``, which
jax 0.10 removed. For the same reason it imports nothing from mbpo (and nothing else from this
repository). Create that environment once (from any folder; about 1.5 minutes):

    python3.11 -m venv /work/venv-apg
    /work/venv-apg/bin/pip install "jax[cpu]<0.10" brax==0.14.2

(on a CUDA machine ``"jax[cuda12]<0.10"``; this installed jax 0.9.2, the newest 0.9.*). Run as

    /work/venv-apg/bin/python experiments/apg_worker.py --env reacher --backend positional \\
        --num-envs 32 --episode-length 128 --horizon 16 --num-updates 60 --num-evals 5 --seed 0

How brax's APG is driven: ``train(environment, episode_length, policy_updates=num_updates,
horizon_length=horizon, num_envs, num_evals, learning_rate, adam_b=(b1, b2), use_schedule,
max_gradient_norm, normalize_observations, deterministic_eval, num_eval_envs, seed,
network_factory=make_apg_networks(hidden_layer_sizes=hidden, activation, layer_norm))``. It runs
``num_evals - 1`` training epochs of ``num_updates / (num_evals - 1)`` updates (one compiled
``lax.scan`` each) and evaluates after each, and once before training. The defaults here match
mbpo's ``UnrollTrainerConfig`` for ``estimator="bpo"`` where brax lets them (tanh layers without
layer norm, constant learning rate, global-norm clipping at 1), not brax's own defaults (elu with
layer norm, learning rate decayed by 0.997 per update, no global-norm clipping).

How it is timed: brax reports each epoch's training wall time (``training/walltime``, the
compiled scan and a ``block_until_ready``, evaluation excluded). A listener on jax's
backend-compile events marks the epochs during which anything but the evaluation program compiled
(with jax 0.9, the first *two* epochs do: the second call of the pmapped epoch sees differently
sharded inputs and compiles again). ``time_per_update_s`` is the summed time of the other epochs
over their updates; it is None when no epoch ran without compiling (raise ``--num-evals``).
``--compilation-cache DIR`` shares compiled programs between seeds through jax's persistent cache:
it shortens the later runs, and a program loaded from it still counts as a compile.

Output: one JSON line on stdout (everything else the libraries print goes to stderr) with the
settings, ``evals`` (``updates``, ``eval_return``, ``eval_return_std`` of each evaluation),
``eval_return`` (the last), ``epoch_times_s``, ``epoch_compiled``, ``compiles`` (``[name, s]``
of each program compiled before each evaluation), ``time_per_update_s``,
``steady_updates``, ``train_s`` (the ``train`` call) and ``total_s`` (the process, imports
included).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
import typing

START = time.perf_counter()

ACTIVATIONS = ("tanh", "elu", "relu", "swish")
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
# Compiled outside brax's timed epoch: the evaluation unroll, and the squeeze of the replicated
# parameters handed to it.
UNTIMED_PROGRAMS = frozenset({"jit(generate_eval_unroll)", "jit(squeeze)"})


def option(default, help: str):
    """A dataclass field with a default and its ``--help`` text (mbpo.cli.option, which this
    script cannot import)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ApgSettings:
    """One brax APG run; the help of each field says which ``apg.train`` argument it sets."""

    env: str = option("reacher", "Brax environment name (``brax.envs.get_environment``).")
    backend: str = option(
        "positional", "Brax physics pipeline: generalized | positional | spring | mjx."
    )
    num_envs: int = option(32, "Parallel training environments (``num_envs``).")
    episode_length: int = option(
        128, "Steps before an environment is truncated and reset, in training and evaluation."
    )
    horizon: int = option(16, "Steps of each differentiated window (``horizon_length``).")
    num_updates: int = option(
        60, "Policy updates (``policy_updates``); a multiple of ``num_evals - 1``."
    )
    num_evals: int = option(
        5,
        "Evaluations, the one before training included (``num_evals``); >= 4, since with "
        "jax 0.9 the first two training epochs compile.",
    )
    learning_rate: float = option(2e-3, "Adam learning rate (``learning_rate``).")
    adam_b1: float = option(0.7, "Adam beta1 (``adam_b[0]``).")
    adam_b2: float = option(0.95, "Adam beta2 (``adam_b[1]``).")
    use_schedule: bool = option(
        False,
        "Decay the learning rate by 0.997 per update (``use_schedule``; brax's default is True).",
    )
    max_grad_norm: float = option(
        1.0,
        "Global-norm gradient clipping (``max_gradient_norm``; brax also always clips each "
        "element to [-1, 1], a no-op once the global norm is <= 1).",
    )
    hidden: tuple[int, ...] = option(
        (64, 64),
        "Hidden layer sizes of the policy (``hidden_layer_sizes`` of ``make_apg_networks``).",
    )
    activation: str = option(
        "tanh", "Hidden activation: tanh | elu | relu | swish (brax's default is elu)."
    )
    layer_norm: bool = option(False, "Layer norm after each hidden layer (brax's default is True).")
    normalize_observations: bool = option(
        True, "Running mean/std normalization of observations (``normalize_observations``)."
    )
    deterministic_eval: bool = option(
        True, "Evaluate the mode tanh(mu) rather than a sample (``deterministic_eval``)."
    )
    eval_envs: int = option(128, "Episodes per evaluation (``num_eval_envs``).")
    seed: int = option(0, "Random seed (``seed``).")
    compilation_cache: str | None = option(
        None, "Folder of jax's persistent compilation cache; none: no cache."
    )

    def __post_init__(self):
        for name in ("num_envs", "episode_length", "horizon", "num_updates", "eval_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_evals < 4:
            raise ValueError(
                f"num_evals must be >= 4 (the first two epochs compile), got {self.num_evals}"
            )
        if self.num_updates % (self.num_evals - 1):
            raise ValueError(
                f"num_updates={self.num_updates} must be a multiple of num_evals - 1 = "
                f"{self.num_evals - 1} (brax rounds the updates per epoch)"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; allowed: {', '.join(ACTIVATIONS)}"
            )
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be a non-empty tuple of sizes >= 1, got {self.hidden}")
        if min(self.learning_rate, self.max_grad_norm) <= 0 or not (
            0 <= self.adam_b1 < 1 and 0 <= self.adam_b2 < 1
        ):
            raise ValueError(
                "need learning_rate > 0, max_grad_norm > 0 and 0 <= adam_b1, adam_b2 < 1"
            )

    @property
    def updates_per_epoch(self) -> int:
        return self.num_updates // (self.num_evals - 1)


def _boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse(argv: list[str] | None = None) -> ApgSettings:
    """``--field-name`` options for the fields of :class:`ApgSettings`; bad values exit with 2."""
    parser = argparse.ArgumentParser(prog="apg_worker.py", description=__doc__.splitlines()[0])
    hints = typing.get_type_hints(ApgSettings)
    converters = {
        tuple[int, ...]: {"type": int, "nargs": "+"},
        bool: {"type": _boolean},
        str | None: {"type": str},
    }
    for field in dataclasses.fields(ApgSettings):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            default=field.default,
            help=f"{field.metadata['help']} (default: {field.default})",
            **converters.get(hints[field.name], {"type": hints[field.name]}),
        )
    args = vars(parser.parse_args(argv))
    try:
        return ApgSettings(
            **{name: tuple(v) if isinstance(v, list) else v for name, v in args.items()}
        )
    except ValueError as error:
        parser.error(str(error))


class CompileLog:
    """The programs jax compiled (or loaded from its persistent cache): ``[name, s]`` in order."""

    def __init__(self):
        self.compiles: list[list] = []

    def __call__(self, event: str, duration: float, **kwargs) -> None:
        if event == COMPILE_EVENT:
            self.compiles.append([str(kwargs.get("fun_name", "?")), round(duration, 3)])

    def take(self) -> list[list]:
        compiles, self.compiles = self.compiles, []
        return compiles


def run(settings: ApgSettings) -> dict:
    """Trains brax APG with ``settings`` and returns the report (see the module docstring)."""
    if settings.compilation_cache:
        # Each program loaded from the cache makes XLA:CPU log two false "machine type doesn't
        # match" errors (about tuning flags of the very machine that compiled it). Not
        # setdefault: importing brax sets the variable to 1, and a parent that did passes it on.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import jax

    if settings.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", settings.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    import brax
    from brax import envs
    from brax.training.agents.apg import networks as apg_networks
    from brax.training.agents.apg import train as apg
    from flax import linen

    compile_log = CompileLog()
    jax.monitoring.register_event_duration_secs_listener(compile_log)
    evals: list[dict] = []
    epoch_times: list[float] = []
    epoch_compiled: list[bool] = []
    compiles: list[list] = []

    def progress(step: int, metrics: dict) -> None:
        compiles.append(compile_log.take())
        compiled = [name for name, _ in compiles[-1] if name not in UNTIMED_PROGRAMS]
        evals.append(
            {
                "updates": step * settings.updates_per_epoch,
                "eval_return": float(metrics["eval/episode_reward"]),
                "eval_return_std": float(metrics["eval/episode_reward_std"]),
            }
        )
        if step > 0:
            epoch_times.append(float(metrics["training/walltime"]) - sum(epoch_times))
            epoch_compiled.append(bool(compiled))
        print(
            f"[apg seed {settings.seed}] eval {step}: {evals[-1]} compiled {compiled}",
            file=sys.stderr,
            flush=True,
        )

    network_factory = functools.partial(
        apg_networks.make_apg_networks,
        hidden_layer_sizes=settings.hidden,
        activation=getattr(linen, settings.activation),
        layer_norm=settings.layer_norm,
    )
    start = time.perf_counter()
    apg.train(
        environment=envs.get_environment(settings.env, backend=settings.backend),
        episode_length=settings.episode_length,
        policy_updates=settings.num_updates,
        horizon_length=settings.horizon,
        num_envs=settings.num_envs,
        num_evals=settings.num_evals,
        num_eval_envs=settings.eval_envs,
        learning_rate=settings.learning_rate,
        adam_b=(settings.adam_b1, settings.adam_b2),
        use_schedule=settings.use_schedule,
        max_gradient_norm=settings.max_grad_norm,
        normalize_observations=settings.normalize_observations,
        deterministic_eval=settings.deterministic_eval,
        seed=settings.seed,
        network_factory=network_factory,
        progress_fn=progress,
    )
    train_s = time.perf_counter() - start
    steady = [t for t, compiled in zip(epoch_times, epoch_compiled) if not compiled]
    steady_updates = len(steady) * settings.updates_per_epoch
    return {
        "implementation": "brax.training.agents.apg",
        "settings": dataclasses.asdict(settings),
        "jax_version": jax.__version__,
        "brax_version": brax.__version__,
        "device": str(jax.devices()[0].device_kind),
        "updates_per_epoch": settings.updates_per_epoch,
        "evals": evals,
        "eval_return": evals[-1]["eval_return"],
        "epoch_times_s": epoch_times,
        "epoch_compiled": epoch_compiled,
        "compiles": compiles,
        "time_per_update_s": sum(steady) / steady_updates if steady_updates else None,
        "steady_updates": steady_updates,
        "train_s": train_s,
        "total_s": time.perf_counter() - START,
    }


def main(argv: list[str] | None = None) -> None:
    settings = parse(argv)
    # stdout carries only the JSON line; brax and jax print warnings and notices there too.
    with contextlib.redirect_stdout(sys.stderr):
        report = run(settings)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
