"""How mbpo's cost grows with its work: env steps per second of the forward pass and of
forward + backward against the batch (num_envs) and the horizon, with the fitted exponents.

For each task, num_envs B and horizon T, two programs are compiled: the forward pass of BPO's
objective (the mean T-step return of B start states under a Gaussian (64, 64) MLP policy,
:func:`experiments._objective.bpo_objective`) and its ``jax.value_and_grad``. Each is timed over
``repeats`` calls (median); throughput is B * T / time. Per task, mode and horizon the exponent
``b`` of time ~ B^b is fitted by least squares on log-log axes (b = 1: cost linear in the batch,
the device saturated; b < 1: the batch still runs in parallel for free), and per batch the
exponent of time ~ T^b; both are printed and plotted (``scaling_<task>.png``: steps/s against B,
one line per horizon and mode, and time against T). A user reads where the CPU saturates (the
batch past which steps/s stops growing) and that the unroll is linear in T.

    python -m experiments.bench_scaling --preset cpu --out experiments/results/bench_scaling_cpu
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np

from experiments import harness
from experiments._objective import bpo_objective


@dataclasses.dataclass(frozen=True)
class Task:
    """One task and its grid.

    Attributes:
      env: a registered task.
      backend: its Brax pipeline (Brax tasks only).
      num_envs: the batches B.
      horizons: the horizons T.
    """

    env: str
    num_envs: tuple[int, ...]
    horizons: tuple[int, ...]
    backend: str = "positional"


@dataclasses.dataclass(frozen=True)
class Preset:
    """The tasks and the timing.

    Attributes:
      tasks: the tasks and their grids.
      repeats: timed calls of each program (median), >= 1.
    """

    tasks: tuple[Task, ...]
    repeats: int

    def __post_init__(self):
        harness.check_positive(self, "repeats")
        for task in self.tasks:
            grid = (*task.num_envs, *task.horizons)
            if len(task.num_envs) < 2 or len(task.horizons) < 2 or min(grid) < 1:
                raise ValueError(
                    f"{task.env}: num_envs and horizons need >= 2 values each, all >= 1; got "
                    f"{task.num_envs}, {task.horizons}"
                )


ENVS, HORIZONS = (1, 16, 64, 256, 1024), (1, 8, 32, 128)
PRESETS = {
    # About 15 minutes on 2 cores: the full grid on pendulum, a smaller one on Brax (each of its
    # programs compiles for 10-40 s here).
    "cpu": Preset(
        tasks=(
            Task("pendulum", ENVS, HORIZONS),
            Task("inverted_pendulum", (1, 16, 64, 256), (1, 8, 32)),
        ),
        repeats=3,
    ),
    # One H200, <= 10 minutes.
    "gpu": Preset(
        tasks=(Task("pendulum", ENVS, HORIZONS), Task("halfcheetah", ENVS, HORIZONS)),
        repeats=5,
    ),
}
MODES = ("forward", "forward+backward")


def time_one(task: Task, B: int, T: int, mode: str, repeats: int) -> dict:
    """One cell: compile time, median call time, steps/s."""
    import jax

    J, args, _ = bpo_objective(task.env, task.backend, T, B)
    fn = J if mode == "forward" else jax.value_and_grad(J)
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "task": task.env,
        "num_envs": B,
        "horizon": T,
        "mode": mode,
        "compile_s": round(compile_s, 2),
        "time_s": median,
        "steps_per_s": B * T / median,
    }


def exponent(x, y) -> float:
    """b of y ~ x^b, least squares on log-log axes."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def fits(rows: list[dict]) -> list[dict]:
    """The exponents of time in the batch (per task, mode, horizon) and in the horizon (per task,
    mode, batch)."""
    out = []
    keys = {(r["task"], r["mode"]) for r in rows}
    for task, mode in sorted(keys):
        mine = [r for r in rows if (r["task"], r["mode"]) == (task, mode)]
        for axis, other in (("num_envs", "horizon"), ("horizon", "num_envs")):
            for value in sorted({r[other] for r in mine}):
                line = sorted((r for r in mine if r[other] == value), key=lambda r: r[axis])
                if len(line) >= 2:
                    b = exponent([r[axis] for r in line], [r["time_s"] for r in line])
                    out.append(
                        {"task": task, "mode": mode, "in": axis, other: value, "exponent": b}
                    )
    return out


def row_line(r: dict) -> str:
    return (
        f"| {r['task']} | {r['mode']} | {r['num_envs']} | {r['horizon']} | "
        f"{r['steps_per_s']:.3g} | {r['time_s']:.3g} | {r['compile_s']} |"
    )


def format_table(report: dict) -> str:
    lines = [
        "| task | mode | B | T | steps/s | time s | compile s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [row_line(r) for r in report["rows"]]
    lines += [
        "",
        "| task | mode | exponent of time in | at | b |",
        "| --- | --- | --- | --- | ---: |",
    ]
    for f in report["fits"]:
        at = f"T = {f['horizon']}" if f["in"] == "num_envs" else f"B = {f['num_envs']}"
        lines.append(f"| {f['task']} | {f['mode']} | {f['in']} | {at} | {f['exponent']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], exponents: list[dict], task: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    mine = [r for r in rows if r["task"] == task]
    panels = (
        (left, "num_envs", "horizon", "steps_per_s", "T"),
        (right, "horizon", "num_envs", "time_s", "B"),
    )
    for mode, style in zip(MODES, ("--", "-")):
        for ax, axis, other, y, short in panels:
            for value in sorted({r[other] for r in mine}):
                line = sorted(
                    (r for r in mine if r["mode"] == mode and r[other] == value),
                    key=lambda r: r[axis],
                )
                b = next(
                    f["exponent"]
                    for f in exponents
                    if (f["task"], f["mode"], f["in"], f.get(other)) == (task, mode, axis, value)
                )
                power = "B" if axis == "num_envs" else "T"
                ax.plot(
                    [r[axis] for r in line],
                    [r[y] for r in line],
                    style,
                    marker="o",
                    label=f"{mode}, {short}={value} (time ~ {power}^{b:.2f})",
                )
    for ax, xlabel, ylabel in (
        (left, "num_envs B", "env steps / s"),
        (right, "horizon T", "time per call, s"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    figure.suptitle(f"{task}: cost against batch and horizon", fontsize=10)
    figure.tight_layout()
    return figure


EXPERIMENT = harness.Experiment(
    "experiments.bench_scaling", __doc__, PRESETS, out=harness.DIRECTORY
)


def main(argv: list[str] | None = None) -> None:
    run = EXPERIMENT.parse(argv)
    rows = []
    for task in run.preset.tasks:
        for T in task.horizons:
            for B in task.num_envs:
                for mode in MODES:
                    rows.append(time_one(task, B, T, mode, run.preset.repeats))
                    print(
                        format_table({"rows": rows[-1:], "fits": []}).splitlines()[-4], flush=True
                    )
    exponents = fits(rows)
    report = {**run.header(), "rows": rows, "fits": exponents}
    text = (
        f"# Scaling ({run.args.preset} preset)\n\n`{report['command']}`\n\n{format_table(report)}\n"
    )
    files = {"summary.json": report, "summary.md": text}
    for task in run.preset.tasks:
        files[f"scaling_{task.env}.png"] = plot(rows, exponents, task.env)
    run.write(files)
    print(format_table(report))


if __name__ == "__main__":
    main()
