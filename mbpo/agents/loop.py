"""The one training loop of mbpo: chunks of jitted updates, evaluation, seeds vmapped.

Every trainer (:mod:`mbpo.agents.unroll_trainer` for BPO/SVG(n)/DPMB, :mod:`mbpo.agents.off_policy`
for NFQCA/FQI/DDPG/TD3/SAC, :mod:`mbpo.agents.model_based` for model-based policy optimization) is
a :class:`Trainer`: pure ``init(key) -> state``, ``update(state) -> (state, metrics)`` and
``evaluate(state, key) -> return``. This module runs any of them: ``eval_every`` updates in one
compiled ``lax.scan``, then an evaluation, with checkpoint callbacks and resumption.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import numpy as np

import envs
from mbpo import compile_cache
from mbpo.cli import check_int, option
from mbpo.dynamics.base import Dynamics
from mbpo.dynamics.brax_env import BACKENDS
from mbpo.parallel import make_mesh, shard_train_state
from mbpo.types import PRNGKey, PyTree


class LoopConfig(Protocol):
    """The fields of a trainer config that the loop reads."""

    num_envs: int
    num_updates: int
    eval_every: int
    seed: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskFields:
    """The fields every trainer config declares once, here: the task, evaluation and seed (they
    mean the same in every trainer, so ``mbpo train --config`` carries them across trainers)."""

    env: str = option("pendulum", "task name (see `envs.names()`)")
    brax_backend: str = option(
        "generalized", "physics pipeline of Brax tasks: generalized | positional | spring | mjx"
    )
    eval_every: int = option(25, "updates (iterations) between evaluations")
    eval_envs: int = option(32, "episodes per evaluation")
    seed: int = option(0, "random seed")
    target_return: float | None = option(
        None, "report the env steps and wall-clock at which the eval return first reaches this"
    )
    mjx_iterations: int | None = option(
        None,
        "mjx pipeline: iterations of MJX's constraint solver (none: the task's own; 1 makes "
        "halfcheetah, hopper and walker2d reverse differentiable there)",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnrollFields(TaskFields):
    """The fields of every trainer that backpropagates through an unroll."""

    remat: str = option(
        "auto",
        "rematerialize the differentiated unroll: auto (sqrt for windows of >= 128 steps, such "
        "as whole-episode BPO/SVG(inf); off for shorter) | off | sqrt (O(sqrt n) memory for one "
        "more forward pass) | K (keep the state every K steps); gradients are unchanged",
    )


def check_task(config: TaskFields) -> None:
    """Raises ValueError naming an unknown task or Brax backend, or solver iterations where there
    is no mjx pipeline (every trainer config's check)."""
    envs.check(config.env)
    if config.brax_backend not in BACKENDS:
        raise ValueError(
            f"unknown brax_backend {config.brax_backend!r}; allowed: {', '.join(BACKENDS)}"
        )
    if config.mjx_iterations is not None:
        check_int("mjx_iterations", config.mjx_iterations)
        if not envs.is_brax(config.env) or config.brax_backend != "mjx":
            raise ValueError(
                f"mjx_iterations={config.mjx_iterations} sets the mjx pipeline's solver; "
                f"{config.env!r} on {config.brax_backend!r} has none (a Brax task with "
                "brax_backend mjx has)"
            )


INT32_MAX = 2**31 - 1


def check_counters(max_env_steps: int, num_updates: int) -> None:
    """Raises ValueError when the run's env-step or update count would wrap the int32 counters of
    the train state (JAX's default integers: at 4096 envs x 32-step windows that is ~16k
    updates)."""
    for name, value in (("env steps", max_env_steps), ("updates", num_updates)):
        if value > INT32_MAX:
            raise ValueError(
                f"this run would count {value:,} {name}, more than the int32 counters hold "
                f"({INT32_MAX:,}); "
                "lower num_updates or num_envs"
            )


class Diverged(RuntimeError):
    """Training stopped: every update of an evaluation chunk was skipped as non-finite, or the
    evaluation return was not finite. ``record`` is that chunk's record (not checkpointed);
    ``last_finite`` the update count of the last finite evaluation (0: none)."""

    def __init__(self, message: str, record: dict, last_finite: int):
        super().__init__(message)
        self.record, self.last_finite = record, last_finite


def _check_finite(
    record: dict,
    metrics: dict,
    skipped_before,
    num: int,
    history: list[dict],
    seed: int | None = None,
) -> None:
    """Raises :class:`Diverged` for a chunk whose updates were all skipped or whose evaluation
    return is not finite (``metrics``: the chunk's stacked metrics of one seed; ``history``: the
    records before this chunk)."""
    where = "" if seed is None else f" (seed {seed})"
    value = record["eval_return"] if seed is None else record["eval_return"][seed]
    skipped = metrics.get("skipped_updates")
    all_skipped = False
    if skipped is not None:
        counts = np.concatenate([[skipped_before], np.asarray(skipped)])
        all_skipped = bool(np.all(np.diff(counts) > 0))
    if all_skipped or not math.isfinite(value):
        why = (
            f"all {num} updates before update {record['updates']} were skipped as non-finite"
            if all_skipped
            else (f"the evaluation return after {record['updates']} updates is {value}")
        )
        last_finite = _last_finite(history)
        raise Diverged(
            f"training diverged{where}: {why}; the last finite evaluation was after {last_finite} "
            "updates",
            record,
            last_finite,
        )


# Config fields that shape the run (how long, how often to evaluate, which seed, what to report)
# but not the compiled programs: trainers that differ only in them share their compilations.
RUN_FIELDS = {"num_updates": 1, "eval_every": 1, "seed": 0, "target_return": None}


def build_trainer(
    build: Callable[[Any, Dynamics], Trainer], config, dynamics: Dynamics | None = None
) -> Trainer:
    """``build(config, dynamics)``; without ``dynamics`` the registered task ``config.env`` (with
    ``config.brax_backend`` for Brax tasks), and then the trainer is cached per (build, config
    without its :data:`RUN_FIELDS`), so its compiled programs are reused: a resumed, extended or
    evaluated run, or another seed, in the same process compiles nothing again. A run field the
    programs do read (``config.program_run_fields``: the length of a learning-rate schedule)
    stays in the key: building with a placeholder there would bake it into the programs."""
    if dynamics is None:
        read = getattr(config, "program_run_fields", ())  # run fields its programs read
        present = {k: v for k, v in RUN_FIELDS.items() if hasattr(config, k) and k not in read}
        shared = _registered_task_trainer(build, dataclasses.replace(config, **present))
        return dataclasses.replace(shared, config=config)
    return build(config, dynamics)


@functools.lru_cache(maxsize=48)
def _registered_task_trainer(build: Callable[[Any, Dynamics], Trainer], config) -> Trainer:
    kwargs = {"backend": config.brax_backend} if envs.is_brax(config.env) else {}
    if config.mjx_iterations is not None:
        kwargs["mjx_iterations"] = config.mjx_iterations
    trainer = build(config, envs.make(config.env, **kwargs))
    return dataclasses.replace(trainer, programs=(build, config))


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a static argument of jax.jit
class Trainer:
    """The pure functions of one configuration.

    Attributes:
      config: the trainer's config (a frozen dataclass with the :class:`LoopConfig` fields).
      dynamics: the environment the policy acts in.
      policy: the policy (mbpo.policies).
      critic: the critic (mbpo.critics.QCritic), or None.
      act: ``state -> ((obs, eps) -> action)``: the policy of a train state (eps = 0: its mean).
      init: ``key -> state``.
      update: ``state -> (state, metrics)``; one jitted pure function.
      evaluate: ``(state, key) -> mean return`` with the mean action.
      programs: what the pure functions were built from (``(build, config without its
        RUN_FIELDS)``) when they are shared; None otherwise.
    """

    config: Any
    dynamics: Dynamics
    policy: Any
    critic: Any
    act: Callable[[PyTree], Callable]
    init: Callable[[PRNGKey], PyTree]
    update: Callable[[PyTree], tuple[PyTree, dict]]
    evaluate: Callable[[PyTree, PRNGKey], jax.Array]
    programs: Any = None

    @classmethod
    def of(cls, parts, *, policy, critic) -> Trainer:
        """The trainer of ``parts``: a frozen object with ``config``, ``dynamics`` and the methods
        ``act``, ``init``, ``update`` and ``evaluate`` (each trainer module's own dataclass)."""
        return cls(
            config=parts.config,
            dynamics=parts.dynamics,
            policy=policy,
            critic=critic,
            act=parts.act,
            init=parts.init,
            update=parts.update,
            evaluate=parts.evaluate,
        )

    # A static argument of jax.jit: trainers built from the same programs (a shared cache entry
    # of build_trainer, whatever their RUN_FIELDS) are equal, so they share compilations; any
    # other trainer is equal only to itself.
    def __hash__(self):
        return hash(self.programs) if self.programs is not None else id(self)

    def __eq__(self, other):
        if not isinstance(other, Trainer):
            return NotImplemented
        if self.programs is not None:
            return self.programs == other.programs
        return self is other


def _scan_updates(trainer: Trainer, ts: PyTree, num: int) -> tuple[PyTree, dict]:
    return jax.lax.scan(lambda s, _: trainer.update(s), ts, None, length=num)


@functools.partial(jax.jit, static_argnames=("trainer", "num"))
def run_updates(trainer: Trainer, ts: PyTree, num: int) -> tuple[PyTree, dict]:
    """``num`` updates in one compiled ``lax.scan``; returns the last state and stacked metrics."""
    return _scan_updates(trainer, ts, num)


def program_key(trainer: Trainer, name: str, **static) -> str | None:
    """The name under which :func:`mbpo.compile_cache.call_stored` keeps the trainer's program
    ``name`` with these static arguments: its build function and config (without its
    RUN_FIELDS); None for a trainer that shares no programs (one built on given dynamics, whose
    functions no config describes) or whose build function has no importable name."""
    if trainer.programs is None:
        return None
    build, config = trainer.programs
    where = f"{getattr(build, '__module__', '')}.{getattr(build, '__qualname__', '<?>')}"
    if "<" in where:  # a lambda, a local function or a partial: its name does not say what it is
        return None
    return f"{name}|{where}|{config!r}|{sorted(static.items())}"


def _stored_updates(trainer: Trainer, ts: PyTree, num: int, seeds: bool) -> tuple[PyTree, dict]:
    """:func:`run_updates` (or, with ``seeds``, its vmap over stacked states) through the
    program store of :mod:`mbpo.compile_cache`."""
    if seeds:
        body = jax.vmap(functools.partial(_scan_updates, trainer, num=num))
        jitted = functools.partial(_run_updates_seeds, trainer, num=num)
    else:
        body = functools.partial(_scan_updates, trainer, num=num)
        jitted = functools.partial(run_updates, trainer, num=num)
    key = program_key(trainer, "updates_seeds" if seeds else "updates", num=num)
    return compile_cache.call_stored(key, body, jitted, ts)


def evaluate_stored(trainer: Trainer, ts: PyTree, key: PRNGKey, seeds: bool = False) -> jax.Array:
    """:func:`evaluate` (with ``seeds``: :func:`evaluate_seeds`, keys per seed) through the
    program store of :mod:`mbpo.compile_cache`: a later process loads it instead of tracing."""
    body = jax.vmap(trainer.evaluate) if seeds else trainer.evaluate
    jitted = functools.partial(evaluate_seeds if seeds else evaluate, trainer)
    name = program_key(trainer, "evaluate_seeds" if seeds else "evaluate")
    return compile_cache.call_stored(name, body, jitted, ts, key, keeps_state=False)


def _chunks(config: LoopConfig, done: int):
    """(updates in the chunk, updates done after it) for chunks of ``eval_every`` from ``done``."""
    while done < config.num_updates:
        num = min(config.eval_every, config.num_updates - done)
        done += num
        yield num, done


# The trainer is a static argument of these jits, as for run_updates: a trainer that shares its
# programs (build_trainer's cache) finds them traced and compiled by an earlier run, evaluation
# or seed in the same process.
@functools.partial(jax.jit, static_argnames=("trainer", "seeds"))
def _init(trainer: Trainer, key: PRNGKey, seeds: int) -> PyTree:
    if seeds > 1:
        return jax.vmap(trainer.init)(jax.random.split(key, seeds))
    return trainer.init(key)


def evaluation_keys(config: LoopConfig, seeds: int = 1) -> PRNGKey:
    """The key every evaluation of a run of ``config`` uses (:func:`train`), or the keys of its
    ``seeds`` seeds trained side by side (:func:`train_seeds`), so that anything evaluated with
    them (an untrained policy, say) is scored on the run's own episodes."""
    key = jax.random.key(config.seed + 10_000)
    return key if seeds == 1 else jax.random.split(key, seeds)


@functools.partial(jax.jit, static_argnames=("trainer",))
def evaluate(trainer: Trainer, ts: PyTree, key: PRNGKey) -> jax.Array:
    """``trainer.evaluate(ts, key)``, jitted once per trainer's programs."""
    return trainer.evaluate(ts, key)


@functools.partial(jax.jit, static_argnames=("trainer",))
def evaluate_seeds(trainer: Trainer, ts: PyTree, keys: PRNGKey) -> jax.Array:
    """``trainer.evaluate`` vmapped over stacked states and their keys (one return per seed)."""
    return jax.vmap(trainer.evaluate)(ts, keys)


def initial_state(trainer: Trainer, seeds: int = 1) -> PyTree:
    """``trainer.init`` at ``config.seed`` (one seed), or vmapped over ``seeds`` keys split from
    it: the state every run starts from, and the template its checkpoints are restored into
    (through the program store of :mod:`mbpo.compile_cache`)."""
    body = functools.partial(_init.__wrapped__, trainer, seeds=seeds)
    return compile_cache.call_stored(
        program_key(trainer, "init", seeds=seeds),
        body,
        functools.partial(_init, trainer, seeds=seeds),
        jax.random.key(trainer.config.seed),
        keeps_state=False,
        out_def=lambda: jax.tree.structure(jax.eval_shape(body, jax.random.key(0))),
    )


def train(
    trainer: Trainer,
    *,
    callback: Callable[[dict, PyTree], None] | None = None,
    resume: tuple[PyTree, list[dict]] | None = None,
    stop_on_divergence: bool = True,
) -> tuple[PyTree, list[dict]]:
    """Trains one seed in chunks of ``eval_every`` updates, evaluating after each chunk.

    Args:
      trainer: the pure functions of one configuration.
      callback: called as ``callback(record, state)`` after each evaluation (a checkpoint hook).
      resume: (state, history) saved by a callback of an earlier run of the same config; the run
        continues from there and ends bit-identical to an uninterrupted one (same chunks, same
        keys).
      stop_on_divergence: raise :class:`Diverged` (before the callback) when every update of a
        chunk was skipped as non-finite or the evaluation return is not finite.

    With several JAX devices the environment batch is split over all of them (:mod:`mbpo.parallel`)
    and gradients are averaged across devices; ``num_envs`` must divide evenly.

    Returns:
      The final state and the history: one record per evaluation with ``updates``, ``env_steps``,
      ``wall_time`` (s, compilation included, summed over resumed runs), ``eval_return``, the
      last update's metrics and ``update_time`` (s spent in this chunk's updates, evaluation
      excluded, compilation included).
    """
    config = trainer.config
    devices = jax.device_count()
    if config.num_envs % devices:
        raise ValueError(
            f"num_envs={config.num_envs} must be a multiple of the {devices} devices it is split "
            "over"
        )
    if resume is None:
        ts, history = initial_state(trainer), []
    else:
        ts, history = resume[0], list(resume[1])
    if devices > 1:
        ts = shard_train_state(ts, make_mesh())
    eval_key = evaluation_keys(config)
    offset = history[-1]["wall_time"] if history else 0.0
    start = time.perf_counter()
    for num, done in _chunks(config, int(ts.updates)):
        skipped_before = history[-1].get("skipped_updates", 0) if history else 0
        chunk_start = time.perf_counter()
        ts, metrics = jax.block_until_ready(_stored_updates(trainer, ts, num, seeds=False))
        update_time = time.perf_counter() - chunk_start
        record = {
            "updates": done,
            "env_steps": int(ts.env_steps),
            "eval_return": float(evaluate_stored(trainer, ts, eval_key, seeds=False)),
            **{k: float(v[-1]) for k, v in metrics.items()},
            "update_time": update_time,
        }
        record["wall_time"] = offset + time.perf_counter() - start
        if stop_on_divergence:
            _check_finite(record, metrics, skipped_before, num, history)
        history.append(record)
        if callback is not None:
            callback(record, ts)
    return ts, history


def _last_finite(history: list[dict]) -> int:
    for record in reversed(history):
        returns = np.atleast_1d(record["eval_return"])
        if np.all(np.isfinite(returns)):
            return record["updates"]
    return 0


@functools.partial(jax.jit, static_argnames=("trainer", "num"))
def _run_updates_seeds(trainer: Trainer, ts: PyTree, num: int) -> tuple[PyTree, dict]:
    return jax.vmap(lambda t: _scan_updates(trainer, t, num))(ts)


def train_seeds(
    trainer: Trainer,
    num_seeds: int,
    *,
    callback: Callable[[dict, PyTree], None] | None = None,
    resume: tuple[PyTree, list[dict]] | None = None,
    stop_on_divergence: bool = False,
) -> tuple[PyTree, dict]:
    """Trains ``num_seeds`` seeds (keys split from ``config.seed``) in one vmapped, jitted program,
    evaluating every seed after each chunk of ``eval_every`` updates.

    Args:
      trainer, callback, resume: as :func:`train`; the state is the stacked state of all seeds.
      stop_on_divergence: raise :class:`Diverged` when any seed's chunk diverged (off by default:
        a comparison keeps the seeds that did not).

    Returns the stacked final states and a dict with the final ``eval_return`` per seed (shape
    (num_seeds,)), ``env_steps``, ``wall_time`` (s, compilation included) and ``history``: one
    record per evaluation with ``updates``, ``env_steps``, ``wall_time`` and, as lists over seeds,
    ``eval_return`` and the last update's metrics.
    """
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
    config = trainer.config
    if resume is None:
        ts, history = initial_state(trainer, num_seeds), []
    else:
        ts, history = resume[0], list(resume[1])
    eval_keys = jax.random.split(evaluation_keys(config), num_seeds)
    offset = history[-1]["wall_time"] if history else 0.0
    start = time.perf_counter()
    for num, done in _chunks(config, int(ts.updates[0])):
        skipped_before = (
            history[-1].get("skipped_updates", [0] * num_seeds) if history else [0] * num_seeds
        )
        chunk_start = time.perf_counter()
        ts, metrics = jax.block_until_ready(_stored_updates(trainer, ts, num, seeds=True))
        update_time = time.perf_counter() - chunk_start
        metrics = jax.device_get(metrics)
        record = {
            "updates": done,
            "env_steps": int(ts.env_steps[0]),
            "wall_time": offset + time.perf_counter() - start,
            "eval_return": jax.device_get(
                evaluate_stored(trainer, ts, eval_keys, seeds=True)
            ).tolist(),
            **{k: np.asarray(v)[:, -1].tolist() for k, v in metrics.items()},
            "update_time": update_time,
        }
        if stop_on_divergence:
            for seed in range(num_seeds):
                one = {k: np.asarray(v)[seed] for k, v in metrics.items()}
                _check_finite(record, one, skipped_before[seed], num, history, seed=seed)
        history.append(record)
        if callback is not None:
            callback(record, ts)
    last = history[-1]
    returns = np.asarray(last["eval_return"])
    return ts, {
        "eval_return": returns,
        "env_steps": last["env_steps"],
        "wall_time": last["wall_time"],
        "history": history,
    }


def first_to_reach(history: list[dict], threshold: float) -> dict | None:
    """The first record whose ``eval_return`` is >= ``threshold`` (None if never)."""
    return next((r for r in history if r["eval_return"] >= threshold), None)
