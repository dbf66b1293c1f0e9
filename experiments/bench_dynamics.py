"""Throughput and gradient cost of the mbpo dynamics adapter, against a hand-written scan.

For ``pendulum`` (a diffrax ODE) and one Brax task, with the fixed policy a_t = tanh(W o_t):

1. forward throughput: env steps per second (num_envs * rollout_steps / time) of one jitted call
   that ``jax.vmap``s :func:`mbpo.unroll.rollout` over ``num_envs`` start states and returns
   G = sum_t r_t - |o_n|^2 per env (the terminal cost on the last observation makes G depend on
   the physics even where the reward is constant);
2. gradient cost: the time of ``jax.grad`` with respect to W of J(W) = mean_envs G through
   ``gradient_steps`` steps of ``gradient_envs`` envs, and its compile time;
3. adapter overhead: the same two measurements for a "raw" ``jax.lax.scan`` that calls the
   underlying step directly, with no :class:`mbpo.dynamics.State` bookkeeping (step count, done,
   NaN-action flag, shape checks). For pendulum the raw step is
   ``ODESolver.integrate(vector_field, x, u, params)`` followed by ``reward`` and ``observation``;
   for Brax it is ``env.step(brax_state, action)`` of the wrapped brax environment.

How it is timed: each function is jitted, lowered and compiled once ahead of time (the compile
time reported includes tracing), called ``warmup`` times, then called ``repeats`` times with
``jax.block_until_ready``; the adapter and the raw scan alternate within the repeats (the order
flips every repeat) so that drift in machine load hits both alike. Times are medians.

How to read the ratio: ``ratio`` is the median over repeats of adapter time / raw time of two
calls made back to back, with the same policy, start states, batch and number of steps. 1.00
means the adapter is free; the goal is <= 1.05. Values below 1 are timing noise, whose size the
spread of ``{adapter,raw}_times_s`` in the JSON shows: on a shared CPU (see the load average) a
burst of load can move the median ratio by tens of percent, and ``min_ratio``, the ratio of the
fastest calls, is the steadier figure. Run as

    python -m experiments.bench_dynamics [--preset cpu|gpu] [--brax-task inverted_pendulum]
        [--backend generalized] [--out PATH.json]
"""

from __future__ import annotations

import dataclasses
import pathlib
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import envs
from envs import brax_tasks, pendulum
from experiments import harness
from mbpo.dynamics import BACKENDS, Dynamics, ODESolver, State
from mbpo.types import Action, Array, Float, Observation, PyTree, Scalar
from mbpo.unroll import RolloutNoise, rollout, sample_noise

# (x_t, a_t) -> (x_{t+1}, o_{t+1}, r_t): one step of the underlying simulator, no mbpo State.
RawStep = Callable[[PyTree, Action], tuple[PyTree, Observation, Scalar]]
Weights = Float[Array, "act obs"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """How much one task is measured; validated when built.

    Attributes:
      num_envs: the parallel env counts of the forward-throughput rows, each >= 1.
      rollout_steps: steps per forward rollout, >= 1.
      gradient_envs: parallel envs of the gradient measurement, >= 1.
      gradient_steps: steps the gradient is taken through, >= 1.
      warmup: untimed calls of each compiled function before timing, >= 1.
      repeats: timed calls of each compiled function, >= 1; the median is reported.
    """

    num_envs: tuple[int, ...]
    rollout_steps: int
    gradient_envs: int
    gradient_steps: int
    warmup: int
    repeats: int

    def __post_init__(self) -> None:
        if not self.num_envs or any(not isinstance(n, int) or n < 1 for n in self.num_envs):
            raise ValueError(
                f"num_envs must be a non-empty tuple of ints >= 1, got {self.num_envs!r}"
            )
        for name in ("rollout_steps", "gradient_envs", "gradient_steps", "warmup", "repeats"):
            harness.check_int(name, getattr(self, name))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    """The measurement sizes of one run.

    Attributes:
      pendulum: sizes for the pendulum ODE (cheap per step: more steps and repeats).
      brax: sizes for the Brax task (expensive to compile, and on a CPU also to run). Rollouts
        stay within 32 steps: the episode is never reset, and inverted_pendulum on the
        generalized pipeline diverges to NaN after ~60 steps.
    """

    pendulum: TaskConfig
    brax: TaskConfig


# About 2-3 minutes on a 2-core CPU, most of it compiling the Brax rollouts and gradients.
_CPU = TaskConfig(
    num_envs=(1, 64, 1024),
    rollout_steps=100,
    gradient_envs=64,
    gradient_steps=32,
    warmup=3,
    repeats=30,
)
_GPU = dataclasses.replace(_CPU, num_envs=(1, 64, 1024, 4096))  # a few minutes on one H100
PRESETS: dict[str, Preset] = {
    "cpu": Preset(
        pendulum=_CPU, brax=dataclasses.replace(_CPU, rollout_steps=10, warmup=2, repeats=10)
    ),
    "gpu": Preset(
        pendulum=dataclasses.replace(_GPU, rollout_steps=1000),
        brax=dataclasses.replace(_GPU, rollout_steps=32, repeats=20),
    ),
}


@dataclasses.dataclass(frozen=True)
class Subject:
    """A task measured through the adapter (``dynamics``) and through its ``raw_step``."""

    name: str
    dynamics: Dynamics
    raw_step: RawStep


# The pendulum task's own solver: Tsit5, dt = 0.05, one step per control interval.
PENDULUM_SOLVER = ODESolver(dt=0.05, substeps=1)


def pendulum_subject(solver: ODESolver = PENDULUM_SOLVER) -> Subject:
    """The pendulum ODE; its raw step integrates the same vector field with the same ``solver``."""
    dynamics = envs.make("pendulum", solver=solver)

    def raw_step(x, a):
        x_next = solver.integrate(pendulum.vector_field, x, a, dynamics.params)
        return x_next, pendulum.observation(x_next), pendulum.reward(x, a, x_next)

    return Subject("pendulum", dynamics, raw_step)


def brax_subject(task: str, backend: str) -> Subject:
    """The Brax task ``task``; its raw step is the wrapped brax env's own ``step``."""
    dynamics = envs.make(task, backend=backend)

    def raw_step(brax_state, a):
        brax_state = dynamics.env.step(brax_state, a)
        return brax_state, brax_state.obs, brax_state.reward

    return Subject(dynamics.name, dynamics, raw_step)


def tanh_policy(w: Weights, obs: Observation) -> Action:
    """The fixed policy a = tanh(W o) shared by the adapter and the raw scan."""
    return jnp.tanh(w @ obs)


# G(W; s_0) of one trajectory. Its terminal term -|o_n|^2 makes G depend on every step's physics:
# Brax's inverted_pendulum pays r = 1 per step, so with sum_t r_t alone XLA would delete the
# simulation and dG/dW would be 0.
Objective = Callable[[Subject, Weights, State, RolloutNoise], Scalar]


def adapter_objective(subject: Subject, w: Weights, state: State, noise: RolloutNoise) -> Scalar:
    """G = sum_t r_t - |o_n|^2 of one trajectory through :func:`mbpo.unroll.rollout`."""
    final, trajectory = rollout(
        subject.dynamics, lambda obs, eps: tanh_policy(w, obs), state, noise
    )
    return jnp.sum(trajectory.reward) - jnp.sum(final.obs**2)


def raw_objective(subject: Subject, w: Weights, state: State, noise: RolloutNoise) -> Scalar:
    """G = sum_t r_t - |o_n|^2 of one trajectory by a hand-written scan of ``subject.raw_step``.

    Takes the adapter's start state and noise only to share its signature: it starts from
    ``(state.x, state.obs)`` and uses the noise for its length (both tasks are deterministic).
    """

    def body(carry, _):
        x, obs = carry
        x_next, obs_next, reward = subject.raw_step(x, tanh_policy(w, obs))
        return (x_next, obs_next), reward

    (_, obs_final), rewards = jax.lax.scan(
        body, (state.x, state.obs), None, length=noise.xi.shape[0]
    )
    return jnp.sum(rewards) - jnp.sum(obs_final**2)


def batched_objective(subject: Subject, objective: Objective) -> Callable[..., Float[Array, " B"]]:
    """(W, batched start states, batched noise) -> G per env.

    The subject (dynamics and raw step) is closed over, identically for the adapter and the raw
    scan, so that both see their parameters as compile-time constants.
    """
    return jax.vmap(
        lambda w, state, noise: objective(subject, w, state, noise), in_axes=(None, 0, 0)
    )


def mean_objective_gradient(subject: Subject, objective: Objective) -> Callable[..., Weights]:
    """dJ/dW of J(W) = mean over envs of G."""
    objectives = batched_objective(subject, objective)
    return jax.grad(lambda w, states, noise: jnp.mean(objectives(w, states, noise)))


def start_states(subject: Subject, num_envs: int) -> State:
    """``num_envs`` start states s_0 ~ rho_0 (one compiled reset: for Brax it takes seconds)."""
    keys = jax.random.split(jax.random.key(1), num_envs)
    return jax.jit(jax.vmap(subject.dynamics.reset))(keys)


def inputs(
    subject: Subject, states: State, num_envs: int, num_steps: int
) -> tuple[Weights, State, RolloutNoise]:
    """The fixed policy weights W, the first ``num_envs`` of ``states`` and their rollout noise."""
    dynamics = subject.dynamics
    key_w, key_noise = jax.random.split(jax.random.key(0))
    # Small gains keep Brax finite: inverted_pendulum is never reset here, and on the generalized
    # pipeline it overflows to NaN after ~60 steps with these gains (~45 with 0.1 N(0, 1)).
    w = 0.02 * jax.random.normal(key_w, (dynamics.action_size, dynamics.observation_size))
    noise = jax.jit(jax.vmap(lambda key: sample_noise(dynamics, key, num_steps)))(
        jax.random.split(key_noise, num_envs)
    )
    return w, jax.tree.map(lambda leaf: leaf[:num_envs], states), noise


def compare(
    adapter: Callable, raw: Callable, args: tuple, *, warmup: int, repeats: int
) -> dict[str, float]:
    """Compiles, warms up and times ``adapter(*args)`` and ``raw(*args)``, interleaving repeats.

    Returns:
      For name in (adapter, raw): ``{name}_compile_s`` (trace + compile), ``{name}_times_s`` (the
      timed calls) and ``{name}_s`` (their median). ``ratio``, the median over repeats of
      adapter time / raw time of the two calls made back to back (robust to load that drifts
      between repeats); ``min_ratio``, the ratio of the fastest calls (robust to bursts of load
      that slow a few calls); and ``relative_difference`` = max |adapter - raw| / max |raw| of
      the outputs: ~0 when both do the same work, NaN when the simulation diverged.
    """
    functions = {"adapter": adapter, "raw": raw}
    compiled, outputs, result = {}, {}, {}
    for name, function in functions.items():
        start = time.perf_counter()
        compiled[name] = jax.jit(function).lower(*args).compile()
        result[f"{name}_compile_s"] = time.perf_counter() - start
        for _ in range(warmup):
            outputs[name] = np.asarray(compiled[name](*args))
    times: dict[str, list[float]] = {name: [] for name in functions}
    for repeat in range(repeats):
        # Flipping the order cancels any advantage of running first (or second) in a pair.
        for name in list(functions)[:: 1 if repeat % 2 == 0 else -1]:
            start = time.perf_counter()
            jax.block_until_ready(compiled[name](*args))
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        result[f"{name}_times_s"] = values
        result[f"{name}_s"] = statistics.median(values)
    result["ratio"] = statistics.median(a / r for a, r in zip(times["adapter"], times["raw"]))
    result["min_ratio"] = min(times["adapter"]) / min(times["raw"])
    result["relative_difference"] = float(
        np.max(np.abs(outputs["adapter"] - outputs["raw"])) / np.max(np.abs(outputs["raw"]))
    )
    return result


def benchmark_task(subject: Subject, config: TaskConfig) -> dict:
    """Forward throughput at each ``config.num_envs`` and the gradient cost, adapter vs raw.

    Returns:
      ``{"task", "config", "forward": [row per num_envs], "gradient": row}``; a forward row has
      ``num_envs``, ``num_steps``, ``adapter_steps_per_s``, ``raw_steps_per_s`` and the entries
      of :func:`compare`; the gradient row has ``num_envs``, ``num_steps`` and those of
      :func:`compare`.
    """
    states = start_states(subject, max(*config.num_envs, config.gradient_envs))
    forward = []
    for num_envs in config.num_envs:
        row = {"num_envs": num_envs, "num_steps": config.rollout_steps}
        row |= compare(
            batched_objective(subject, adapter_objective),
            batched_objective(subject, raw_objective),
            inputs(subject, states, num_envs, config.rollout_steps),
            warmup=config.warmup,
            repeats=config.repeats,
        )
        for name in ("adapter", "raw"):
            row[f"{name}_steps_per_s"] = num_envs * config.rollout_steps / row[f"{name}_s"]
        forward.append(row)
    gradient = {"num_envs": config.gradient_envs, "num_steps": config.gradient_steps}
    gradient |= compare(
        mean_objective_gradient(subject, adapter_objective),
        mean_objective_gradient(subject, raw_objective),
        inputs(subject, states, config.gradient_envs, config.gradient_steps),
        warmup=config.warmup,
        repeats=config.repeats,
    )
    return {
        "task": subject.name,
        "config": dataclasses.asdict(config),
        "forward": forward,
        "gradient": gradient,
    }


def format_row(label: str, row: dict, adapter: str, raw: str) -> str:
    """One line of the table: ``adapter`` and ``raw`` are the already formatted measurements."""
    return (
        f"{label:<34}{row['num_envs']:>6}{row['num_steps']:>7}{adapter:>16}{raw:>14}"
        f"{row['ratio']:>7.3f}{row['min_ratio']:>7.3f}{row['relative_difference']:>10.1e}"
        f"{row['adapter_compile_s']:>10.2f} /{row['raw_compile_s']:>6.2f}"
    )


def format_table(report: dict) -> str:
    """The report as fixed-width text: a header, then forward and gradient rows per task."""
    columns = (
        f"{'envs':>6}{'steps':>7}{{:>16}}{{:>14}}{'ratio':>7}{'min':>7}{'rel diff':>10}"
        f"{'compile s a/r':>17}"
    )
    lines = [
        *harness.report_lines(report),
        "ratio = adapter time / raw lax.scan time, median over back-to-back pairs (goal <= 1.05);",
        "min = ratio of the fastest calls (the steadier figure when other jobs load the machine);",
        "times are medians; rel diff = max |adapter - raw| / max |raw| of the outputs "
        + "(~0: both do the same work, nan: the simulation diverged)",
        "",
        f"{'forward rollout':<34}" + columns.format("adapter steps/s", "raw steps/s"),
    ]
    for task in report["tasks"]:
        for row in task["forward"]:
            adapter, raw = (f"{row[f'{name}_steps_per_s']:.4g}" for name in ("adapter", "raw"))
            lines.append(format_row(task["task"], row, adapter, raw))
    lines += ["", f"{'gradient dJ/dW':<34}" + columns.format("adapter ms", "raw ms")]
    for task in report["tasks"]:
        row = task["gradient"]
        adapter, raw = (f"{1e3 * row[f'{name}_s']:.4g}" for name in ("adapter", "raw"))
        lines.append(format_row(task["task"], row, adapter, raw))
    return "\n".join(lines)


EXPERIMENT = harness.Experiment("experiments.bench_dynamics", __doc__, PRESETS, out=None)


def parser():
    """The harness's options, with ``--out`` (any path) and the Brax task and pipeline measured;
    unknown presets, tasks or backends exit with code 2."""
    parser = EXPERIMENT.parser()
    parser.add_argument(
        "--brax-task",
        choices=brax_tasks.TASKS,
        default="inverted_pendulum",
        help="the Brax task measured",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="generalized",
        # positional is stable on long rollouts but its gradient takes ~3x longer to compile.
        help="Brax physics pipeline",
    )
    parser.add_argument("--out", type=pathlib.Path, help="JSON file for the report")
    return parser


def main(argv: list[str] | None = None) -> None:
    run = EXPERIMENT.parse(argv, parser())
    report = {
        **run.header(),
        "tasks": [
            benchmark_task(pendulum_subject(), run.preset.pendulum),
            benchmark_task(brax_subject(run.args.brax_task, run.args.backend), run.preset.brax),
        ],
    }
    run.finish(report, format_table)


if __name__ == "__main__":
    main()
