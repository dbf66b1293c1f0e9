"""Cost of the unroll engine's surrogate gradient, against a hand-written scan of the same J_n.

For ``pendulum`` (a diffrax ODE) and ``lqr``, with a Gaussian MLP policy a = d(s, eps; w) (hidden
(64, 64)) and a twin critic min_i q_i(s, a; theta), this times one jitted call of
``jax.value_and_grad`` with respect to w of the batch mean over B start states of

    J_n(w) = sum_{t<n} gamma^t r(s_t, a_t) + gamma^n min_i q_i(s_n, a_n; theta),
    a_t = d(s_t, eps_t; w),    s_{t+1} = f(s_t, a_t, xi_t),

computed two ways with the same parameters, start states and noise:

1. engine: ``estimators.surrogate(estimators.svg(n), ...)``, i.e. :func:`mbpo.unroll.unroll`
   vmapped over the batch, with its :class:`mbpo.dynamics.State` bookkeeping (reward, done, step
   count, NaN-action flag, the stacked :class:`mbpo.unroll.Transition`) and its done masking;
2. scan: a ``jax.lax.scan`` of the raw step, carrying only (x_t, o_t). For pendulum the raw step
   is ``ODESolver.integrate(pendulum.vector_field, x, a, dynamics.params)`` followed by
   ``pendulum.reward`` and ``pendulum.observation`` (the raw step of
   :mod:`experiments.bench_dynamics`); for lqr it is s' = A s + B a + W xi with
   r = -(s^T Q s + a^T R a).

Before anything is timed, both are compiled once and their value and gradient are asserted equal
(allclose). Then :func:`experiments.bench_dynamics.compare` warms both up and times them in
interleaved repeats (engine, scan, scan, engine, ...), so drift in machine load hits both alike.
``ratio`` is the median over repeats of engine time / scan time of two calls made back to back
(goal <= 1.05); its quartiles show how much the machine's load blurs it. ``temp MiB`` is the
scratch memory XLA reserves for one call (``memory_analysis().temp_size_in_bytes``), the cheap
proxy for peak memory. Run as

    python -m experiments.bench_unroll [--preset cpu|gpu] [--out PATH.json]
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import envs
from experiments import harness
from experiments.bench_dynamics import compare, pendulum_subject
from mbpo import estimators
from mbpo.critics import QCritic
from mbpo.dynamics import Dynamics, State
from mbpo.policies import GaussianPolicy
from mbpo.types import Action, Array, Float, Noise, Observation, Params, Scalar
from mbpo.unroll import RolloutNoise

# (x_t, a_t, xi_t) -> (x_{t+1}, o_{t+1}, r_t): one step of the task with no mbpo State.
RawStep = Callable[[Array, Action, Noise], tuple[Array, Observation, Scalar]]
# (subject, w, theta, batched start states, batched noise, *, gamma) -> the batch mean of J_n.
Surrogate = Callable[..., Scalar]
TASKS = ("pendulum", "lqr")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    """The measurement sizes of one run; validated when built.

    Attributes:
      batch: start states B per call, >= 1.
      horizons: the unroll lengths n measured, each an int >= 1.
      warmup: untimed calls of each compiled function before timing, >= 1.
      repeats: timed calls of each compiled function, >= 2 (at least one pair in each order).
      gamma: the discount, in (0, 1].
    """

    batch: int
    horizons: tuple[int, ...]
    warmup: int
    repeats: int
    gamma: float = 0.99

    def __post_init__(self) -> None:
        minimum = {"batch": 1, "warmup": 1, "repeats": 2}
        for name, low in minimum.items():
            harness.check_int(name, getattr(self, name), low)
        if not self.horizons or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.horizons
        ):
            raise ValueError(
                f"horizons must be a non-empty tuple of ints >= 1, got {self.horizons!r}"
            )
        harness.check_interval(self, "(0, 1]", "gamma")


PRESETS: dict[str, Preset] = {
    # About 1-2 minutes on a 2-core CPU, a third of it compiling.
    "cpu": Preset(batch=256, horizons=(1, 16, 64), warmup=3, repeats=60),
    # A few minutes on one H100.
    "gpu": Preset(batch=4096, horizons=(1, 16, 64), warmup=5, repeats=50),
}


@dataclasses.dataclass(frozen=True)
class Subject:
    """A task with the policy and critic whose J_n is differentiated.

    Attributes:
      name: the task's registry name.
      dynamics: the task as mbpo dynamics (what the engine unrolls).
      raw_step: the same transition without mbpo (what the hand-written scan unrolls).
      policy: the Gaussian MLP policy d(s, eps; w).
      critic: the twin critic q_i(s, a; theta).
    """

    name: str
    dynamics: Dynamics
    raw_step: RawStep
    policy: GaussianPolicy
    critic: QCritic


def make_subject(task: str) -> Subject:
    """``pendulum`` or ``lqr`` with a Gaussian (64, 64) MLP policy and a twin (64, 64) critic."""
    if task == "pendulum":
        pendulum = pendulum_subject()
        dynamics = pendulum.dynamics

        def raw_step(x, a, xi):
            # Deterministic dynamics: xi has shape (0,).
            return pendulum.raw_step(x, a)

    elif task == "lqr":
        dynamics = envs.make("lqr")

        def raw_step(s, a, xi):
            s_next = dynamics.A @ s + dynamics.B @ a + dynamics.W @ xi
            return s_next, s_next, -(s @ dynamics.Q @ s + a @ dynamics.R @ a)

    else:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}")
    return Subject(
        name=task,
        dynamics=dynamics,
        raw_step=raw_step,
        policy=GaussianPolicy.for_dynamics(dynamics, hidden=(64, 64)),
        critic=QCritic(dynamics.observation_size, dynamics.action_size, num_q=2),
    )


def engine_surrogate(
    subject: Subject, w: Params, theta: Params, states: State, noise: RolloutNoise, *, gamma: float
) -> Scalar:
    """mean_b J_n through ``estimators.surrogate(estimators.svg(n), ...)``, n = len(xi)."""
    value, _ = estimators.surrogate(
        estimators.svg(noise.xi.shape[1]),
        subject.dynamics,
        lambda obs, eps: subject.policy.sample(w, obs, eps),
        states,
        noise,
        gamma=gamma,
        q=lambda obs, a: subject.critic.min_q(theta, obs, a),
    )
    return value


def scan_surrogate(
    subject: Subject, w: Params, theta: Params, states: State, noise: RolloutNoise, *, gamma: float
) -> Scalar:
    """mean_b J_n by a ``lax.scan`` of ``subject.raw_step`` carrying (x_t, o_t) only."""

    def one(
        x_0: Array, obs_0: Observation, eps_t: Float[Array, "T act"], xi_t: Float[Array, "T ..."]
    ) -> Scalar:
        n = xi_t.shape[0]

        def body(carry, noise_t):
            x, obs = carry
            eps, xi = noise_t
            x_next, obs_next, r = subject.raw_step(x, subject.policy.sample(w, obs, eps), xi)
            return (x_next, obs_next), r

        (_, obs_n), r_t = jax.lax.scan(body, (x_0, obs_0), (eps_t[:n], xi_t))
        a_n = subject.policy.sample(w, obs_n, eps_t[n])
        discount_t = gamma ** jnp.arange(n, dtype=r_t.dtype)
        return jnp.sum(discount_t * r_t) + gamma**n * subject.critic.min_q(theta, obs_n, a_n)

    return jnp.mean(jax.vmap(one)(states.x, states.obs, noise.eps, noise.xi))


def value_and_gradient(
    subject: Subject, surrogate: Surrogate, gamma: float
) -> Callable[[Params, Params, State, RolloutNoise], Float[Array, " P"]]:
    """(w, theta, states, noise) -> [J, dJ/dw] as one flat vector (what ``compare`` needs)."""
    value_and_grad = jax.value_and_grad(functools.partial(surrogate, subject, gamma=gamma))
    return lambda *args: ravel_pytree(value_and_grad(*args))[0]


def make_inputs(
    subject: Subject, batch: int, horizon: int
) -> tuple[Params, Params, State, RolloutNoise]:
    """Fresh policy and critic parameters, ``batch`` start states and their SVG(n) noise."""

    def draw(key):
        key_w, key_theta, key_s, key_noise = jax.random.split(key, 4)
        states = jax.vmap(subject.dynamics.reset)(jax.random.split(key_s, batch))
        noise = estimators.draw_noise(
            estimators.svg(horizon),
            subject.dynamics,
            key_noise,
            subject.policy.eps_shape,
            horizon,
            batch,
        )
        return subject.policy.init(key_w), subject.critic.init(key_theta), states, noise

    # One program, run once, so compiled unoptimized: op by op, or optimized, the network
    # initializers alone take seconds to compile on a CPU.
    key = jax.random.key(0)
    return jax.jit(draw).lower(key).compile({"xla_backend_optimization_level": 0})(key)


def check_same(engine: np.ndarray, scan: np.ndarray, *, rtol: float = 1e-4) -> None:
    """Asserts that [J, dJ/dw] of the engine and of the scan agree (AssertionError otherwise).

    float32 sums taken in another order differ by a few ulps of the largest entry, hence the
    absolute tolerance on the gradient scaled by its largest magnitude.
    """
    np.testing.assert_allclose(engine[0], scan[0], rtol=rtol, err_msg="J_n differs")
    atol = rtol * float(np.max(np.abs(scan[1:])))
    np.testing.assert_allclose(engine[1:], scan[1:], rtol=rtol, atol=atol, err_msg="dJ/dw differs")


def temp_bytes(compiled: jax.stages.Compiled) -> int | None:
    """XLA's scratch memory for one call, or None where the backend does not report it."""
    stats = compiled.memory_analysis()
    return None if stats is None else getattr(stats, "temp_size_in_bytes", None)


def measure(
    subject: Subject, *, batch: int, horizon: int, warmup: int, repeats: int, gamma: float
) -> dict:
    """Compiles, checks and times the engine and the scan on one (task, B, n).

    Returns:
      ``task``, ``batch``, ``horizon``, ``value`` (J_n), for name in (engine, scan):
      ``{name}_compile_s`` (trace + compile), ``{name}_temp_bytes``, ``{name}_times_s`` and their
      median ``{name}_s``; ``ratio`` (median engine / scan time of back-to-back pairs),
      ``ratio_quartiles`` and ``relative_difference`` (max |engine - scan| / max |scan| of
      [J, dJ/dw]).

    Raises:
      AssertionError: if the engine and the scan disagree on J_n or its gradient.
    """
    args = make_inputs(subject, batch, horizon)
    functions = {
        "engine": value_and_gradient(subject, engine_surrogate, gamma),
        "scan": value_and_gradient(subject, scan_surrogate, gamma),
    }
    row: dict = {"task": subject.name, "batch": batch, "horizon": horizon}
    outputs = {}
    for name, function in functions.items():
        start = time.perf_counter()
        compiled = jax.jit(function).lower(*args).compile()
        row[f"{name}_compile_s"] = time.perf_counter() - start
        row[f"{name}_temp_bytes"] = temp_bytes(compiled)
        outputs[name] = np.asarray(compiled(*args))
    check_same(outputs["engine"], outputs["scan"])
    row["value"] = float(outputs["scan"][0])
    # `compare` compiles again, from jax's cache: its compile times are not reported.
    timed = compare(functions["engine"], functions["scan"], args, warmup=warmup, repeats=repeats)
    for key, value in timed.items():
        if not key.endswith("_compile_s"):
            row[key.replace("adapter", "engine").replace("raw", "scan")] = value
    pair_ratios = [e / s for e, s in zip(row["engine_times_s"], row["scan_times_s"])]
    row["ratio_quartiles"] = [float(q) for q in np.quantile(pair_ratios, [0.25, 0.75])]
    return row


def benchmark(preset: Preset, tasks: tuple[str, ...] = TASKS) -> list[dict]:
    """One :func:`measure` row per task and horizon of ``preset``."""
    rows = []
    for task in tasks:
        subject = make_subject(task)
        for horizon in preset.horizons:
            rows.append(
                measure(
                    subject,
                    batch=preset.batch,
                    horizon=horizon,
                    warmup=preset.warmup,
                    repeats=preset.repeats,
                    gamma=preset.gamma,
                )
            )
    return rows


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.2f}"


def _quartiles(row: dict) -> str:
    low, high = row["ratio_quartiles"]
    return f"[{low:.2f}, {high:.2f}]"


COLUMNS = (  # (header, width, cell)
    ("task", 10, lambda r: r["task"]),
    ("B", 6, lambda r: f"{r['batch']}"),
    ("n", 4, lambda r: f"{r['horizon']}"),
    ("engine ms", 11, lambda r: f"{1e3 * r['engine_s']:.3f}"),
    ("scan ms", 10, lambda r: f"{1e3 * r['scan_s']:.3f}"),
    ("ratio", 7, lambda r: f"{r['ratio']:.3f}"),
    ("quartiles", 14, _quartiles),
    ("rel diff", 10, lambda r: f"{r['relative_difference']:.1e}"),
    (
        "temp MiB e/s",
        16,
        lambda r: f"{_mib(r['engine_temp_bytes'])} / {_mib(r['scan_temp_bytes'])}",
    ),
    ("compile s e/s", 16, lambda r: f"{r['engine_compile_s']:.2f} / {r['scan_compile_s']:.2f}"),
)


def format_table(report: dict) -> str:
    """The report as fixed-width text: a header, then one row per task and horizon."""
    lines = [
        *harness.report_lines(report),
        "time of one jitted value_and_grad of mean_b J_n w.r.t. the policy parameters (median);",
        "ratio = engine time / scan time, median [quartiles] over back-to-back pairs "
        + "(goal <= 1.05);",
        "rel diff = max |engine - scan| / max |scan| of [J_n, dJ_n/dw]; temp = XLA scratch memory",
        "",
        *harness.table(COLUMNS, report["rows"]),
    ]
    return "\n".join(lines)


EXPERIMENT = harness.Experiment("experiments.bench_unroll", __doc__, PRESETS)


def main(argv: list[str] | None = None) -> None:
    run = EXPERIMENT.parse(argv)
    run.finish({**run.header(), "rows": benchmark(run.preset)}, format_table)


if __name__ == "__main__":
    main()
