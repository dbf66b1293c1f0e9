"""Memory and time of backpropagating through an unroll against its horizon T, with and without
rematerialization (``remat``, :func:`mbpo.unroll.rollout`).

For each task and horizon T, the objective is BPO's (the whole window, no critic): the mean over
``batch`` start states of sum_{t<T} gamma^t r_t with a Gaussian (64, 64) MLP policy, and the
program measured is ``jax.jit(jax.value_and_grad(J))``, the forward and backward pass of one
update. For the plain scan and for ``remat="sqrt"`` (the state kept every ceil(sqrt T) steps,
each chunk recomputed in the backward pass) it reports

* the compiled program's scratch memory, ``memory_analysis().temp_size_in_bytes``: what XLA
  allocates beside the inputs and outputs, where the saved intermediates of the scan live;
* the measured peak where the backend reports one (``device.memory_stats()``: GPUs; None on a
  CPU);
* the lower bound of a method that keeps ``checkpoints`` states: state bytes x batch x
  checkpoints, with T checkpoints for the plain scan and T / k + k for chunks of k;
* the median time of one call, the two variants alternating within the repeats so that machine
  load hits both alike; ``ratio`` columns are remat / plain, measured side by side.

Goal (issue: long horizons in bounded memory): at T = 1000, remat's memory <= 1/8 of the plain
scan's at <= 1.5x its time. ``--preset gpu`` also finds, for T = 1000, the largest batch each
variant compiles within the GPU's memory (doubling the batch until the compiled program's
memory exceeds what the device has). Run as

    python -m experiments.bench_memory --preset cpu --out experiments/results/bench_memory_cpu.json
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from experiments import harness
from experiments._objective import bpo_objective


@dataclasses.dataclass(frozen=True)
class Task:
    """One task measured.

    Attributes:
      env: a registered task (pendulum, or a Brax task such as halfcheetah).
      backend: its Brax pipeline (Brax tasks only).
      batch: start states per call.
    """

    env: str
    backend: str = "positional"
    batch: int = 8


@dataclasses.dataclass(frozen=True)
class Preset:
    """Sizes of one run.

    Attributes:
      tasks: the tasks.
      horizons: the T measured.
      repeats: timed calls per variant (alternating), >= 2.
      max_batch_search: largest batch tried by the fit search (0: no search).
    """

    tasks: tuple[Task, ...]
    horizons: tuple[int, ...]
    repeats: int
    max_batch_search: int = 0

    def __post_init__(self):
        harness.check_positive(self, "repeats")
        if not self.horizons or min(self.horizons) < 2:
            raise ValueError(f"horizons must be ints >= 2, got {self.horizons}")
        for task in self.tasks:
            if task.batch < 1:
                raise ValueError(f"batch must be >= 1, got {task.batch} for {task.env}")


HORIZONS = (32, 128, 512, 1000)
PRESETS = {
    # About 10 minutes on 2 cores, most of it compiling halfcheetah's four horizons twice.
    "cpu": Preset(
        tasks=(Task("pendulum", batch=64), Task("halfcheetah", batch=4)),
        horizons=HORIZONS,
        repeats=4,
    ),
    # One H200, <= 10 minutes: the same at GPU batches, and the largest batch at T = 1000.
    "gpu": Preset(
        tasks=(Task("pendulum", batch=4096), Task("halfcheetah", batch=256)),
        horizons=HORIZONS,
        repeats=6,
        max_batch_search=1 << 16,
    ),
}


def _compile(task: Task, T: int, remat: int | None, batch: int):
    import jax

    J, args, state_bytes = bpo_objective(task.env, task.backend, T, batch, remat=remat)
    start = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(J)).lower(*args).compile()
    return compiled, args, state_bytes, time.perf_counter() - start


def _peak(device) -> int | None:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return None if not stats else stats.get("peak_bytes_in_use")


def measure(task: Task, T: int, repeats: int) -> dict:
    """Both variants at horizon ``T``: memory, lower bounds, times side by side."""
    import jax

    from mbpo.unroll import remat_steps

    k = remat_steps("sqrt", T)
    variants = {"plain": None, "remat": k}
    compiled = {name: _compile(task, T, chunk, task.batch) for name, chunk in variants.items()}
    times = {name: [] for name in variants}
    peaks = {}
    device = jax.devices()[0]
    for name, (fn, args, _, _) in compiled.items():
        jax.block_until_ready(fn(*args))  # warm
        peaks[name] = _peak(device)
    for r in range(repeats):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in order:
            fn, args, _, _ = compiled[name]
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - start)
    state_bytes = compiled["plain"][2]
    row = {"task": task.env, "T": T, "batch": task.batch, "chunk": k, "state_bytes": state_bytes}
    for name, chunk in variants.items():
        fn, _, _, compile_s = compiled[name]
        checkpoints = T if chunk is None else -(-T // chunk) + chunk
        row[name] = {
            "temp_bytes": int(fn.memory_analysis().temp_size_in_bytes),
            "peak_bytes": peaks[name],
            "lower_bound_bytes": state_bytes * task.batch * checkpoints,
            "time_s": statistics.median(times[name]),
            "times_s": times[name],
            "compile_s": round(compile_s, 1),
        }
    row["memory_ratio"] = row["remat"]["temp_bytes"] / max(row["plain"]["temp_bytes"], 1)
    row["time_ratio"] = row["remat"]["time_s"] / row["plain"]["time_s"]
    return row


def largest_batch(task: Task, T: int, remat: int | None, limit: int) -> int | None:
    """The largest power-of-two batch <= ``limit`` whose compiled program (arguments, outputs
    and scratch) fits in the device's memory; None where the backend does not say how much it
    has."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    capacity = stats.get("bytes_limit")
    if not capacity:
        return None
    best, batch = None, 1
    while batch <= limit:
        fn = _compile(task, T, remat, batch)[0]
        m = fn.memory_analysis()
        need = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
        if need > capacity:
            break
        best, batch = batch, batch * 2
    return best


def format_table(report: dict) -> str:
    mib = 2**20
    lines = [
        "| task | T | batch | plain MiB | remat MiB (chunk) | memory ratio | lower bound plain / "
        "remat MiB | plain s | remat s | time ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        p, m = r["plain"], r["remat"]
        lines.append(
            f"| {r['task']} | {r['T']} | {r['batch']} | {p['temp_bytes'] / mib:.1f} | "
            f"{m['temp_bytes'] / mib:.1f} ({r['chunk']}) | {r['memory_ratio']:.3f} | "
            f"{p['lower_bound_bytes'] / mib:.2f} / {m['lower_bound_bytes'] / mib:.2f} | "
            f"{p['time_s']:.3g} | {m['time_s']:.3g} | {r['time_ratio']:.2f} |"
        )
    for f in report.get("fits", []):
        lines.append(f"\nlargest batch at T = {f['T']} on {f['task']}: {f['largest_batch']}")
    return "\n".join(lines)


EXPERIMENT = harness.Experiment("experiments.bench_memory", __doc__, PRESETS)


def main(argv: list[str] | None = None) -> None:
    run = EXPERIMENT.parse(argv)
    preset = run.preset
    rows = []
    for task in preset.tasks:
        for T in preset.horizons:
            rows.append(measure(task, T, preset.repeats))
            print(format_table({"rows": rows[-1:]}), flush=True)
    fits = []
    if preset.max_batch_search:
        from mbpo.unroll import remat_steps

        T = max(preset.horizons)
        for task in preset.tasks:
            for name, chunk in (("plain", None), ("remat", remat_steps("sqrt", T))):
                batch = largest_batch(task, T, chunk, preset.max_batch_search)
                fits.append({"task": task.env, "T": T, "variant": name, "largest_batch": batch})
    run.finish({**run.header(), "rows": rows, "fits": fits}, format_table)


if __name__ == "__main__":
    main()
