"""Which XLA options shorten the compile of a Brax update, at what cost in speed and exactness.

Compiling the halfcheetah SVG(n) update takes minutes on a CPU, and the lowered program does not
grow with n or num_envs (``bench_compile_cache``'s anatomy): the time is XLA's and LLVM's work on
the physics step and its derivative. For each set of ``XLA_FLAGS`` of the preset, a fresh process
(XLA reads its flags once, when jax creates its client) builds the same trainer and initial
state, compiles ``jax.jit(update)``, runs ``updates`` updates and hashes the state after them
(:func:`experiments.bit_identity.state_digest`). Reported per flag set: the compile seconds (wall
and the process's CPU time, which other jobs on a shared machine disturb less), the steady update
time (the mean of all updates after the first), both as ratios to the first flag
set's (XLA's defaults), and whether the state is bit-identical to the defaults' one: a flag that
changes no bit of the training is safe to use for any run; one that changes bits changes the run
as a different seed would (floating-point reassociation), and is for debugging runs only.

    python -m experiments.bench_compile_flags --preset cpu \\
        --out experiments/results/bench_compile_flags_cpu.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from experiments import harness


@dataclasses.dataclass(frozen=True)
class Preset:
    """What is compiled and which flags are tried.

    Attributes:
      env: the Brax task of the SVG(n) update.
      backend: its pipeline.
      horizon: n.
      num_envs: envs per update.
      updates: updates run after the compile (>= 2: the first is not timed).
      flag_sets: (label, XLA_FLAGS) pairs; the first is the reference (XLA's defaults: "").
    """

    env: str
    backend: str
    horizon: int
    num_envs: int
    updates: int
    flag_sets: tuple[tuple[str, str], ...]

    def __post_init__(self):
        harness.check_positive(self, "horizon", "num_envs")
        harness.check_positive(self, "updates", minimum=2)
        if not self.flag_sets or self.flag_sets[0][1]:
            raise ValueError(
                f"flag_sets must start with XLA's defaults ('', the reference), got "
                f"{self.flag_sets!r}"
            )


_CPU = Preset(
    env="halfcheetah",
    backend="positional",
    horizon=8,
    num_envs=32,
    updates=4,
    flag_sets=(
        ("xla defaults", ""),
        ("no while-loop unrolling", "--xla_cpu_disable_loop_unrolling=true"),
        ("no expensive llvm passes", "--xla_llvm_disable_expensive_passes=true"),
        ("optimize for size", "--xla_cpu_optimize_for_size=true"),
        ("llvm O0", "--xla_backend_optimization_level=0"),
    ),
)
PRESETS = {
    "cpu": _CPU,
    # SVG(32) at 64 envs: the update whose compile took 7-8 minutes here.
    "cpu_svg32": dataclasses.replace(_CPU, horizon=32, num_envs=64, updates=3),
}


def probe(env: str, backend: str, horizon: int, num_envs: int, updates: int) -> dict:
    """In this process (its XLA flags already set): compile and run the update; its timings and
    the state's digest."""
    import jax

    from experiments._objective import svg_update_config
    from experiments.bit_identity import state_digest
    from mbpo.agents import loop
    from mbpo.agents.unroll_trainer import make_trainer

    trainer = make_trainer(svg_update_config(env, backend, horizon, num_envs, updates))
    state = jax.block_until_ready(loop.initial_state(trainer))
    lowered = jax.jit(trainer.update).lower(state)
    start, cpu_start = time.perf_counter(), time.process_time()
    update = lowered.compile()
    compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    times = []
    for _ in range(updates):
        start = time.perf_counter()
        state, _ = jax.block_until_ready(update(state))
        times.append(time.perf_counter() - start)
    return {
        "compile_s": compile_s,
        "compile_cpu_s": compile_cpu_s,
        "update_s": sum(times[1:]) / len(times[1:]),
        "state": state_digest(state),
    }


def measure(preset: Preset, label: str, flags: str) -> dict:
    """:func:`probe` in a fresh process whose ``XLA_FLAGS`` are ``flags`` (the caller's own
    XLA_FLAGS are replaced); an error there is recorded, not raised."""
    call = (
        "import json; from experiments.bench_compile_flags import probe; "
        f"print('PROBE', json.dumps(probe({preset.env!r}, {preset.backend!r}, "
        f"{preset.horizon}, {preset.num_envs}, {preset.updates})))"
    )
    environment = {**os.environ, "XLA_FLAGS": flags, "MBPO_COMPILE_CACHE": "off"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", call], capture_output=True, text=True, env=environment
    )
    row = {"label": label, "xla_flags": flags, "process_s": round(time.perf_counter() - start, 1)}
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    if done.returncode or not lines:
        return {**row, "error": (done.stderr or done.stdout)[-600:]}
    return {**row, **json.loads(lines[-1][len("PROBE ") :])}


def summarize(rows: list[dict]) -> list[dict]:
    """Each row with its ratios to the first (the defaults) and whether its state is the same."""
    reference = rows[0]
    out = []
    for row in rows:
        if "error" in row or "error" in reference:
            out.append(row)
            continue
        out.append(
            {
                **row,
                "compile_ratio": row["compile_s"] / reference["compile_s"],
                "compile_cpu_ratio": row["compile_cpu_s"] / reference["compile_cpu_s"],
                "update_ratio": row["update_s"] / reference["update_s"],
                "bit_identical": row["state"] == reference["state"],
            }
        )
    return out


def format_table(report: dict) -> str:
    p = report["config"]
    lines = [
        f"{p['env']} [{p['backend']}] SVG({p['horizon']}) update, {p['num_envs']} envs, "
        f"{p['updates']} updates per flag set",
        "",
        "| XLA flags | compile s | x defaults | compile CPU s | x defaults | update ms "
        "| x defaults | state bit-identical |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["rows"]:
        name = f"{r['label']} (`{r['xla_flags']}`)" if r["xla_flags"] else r["label"]
        if "error" in r:
            last = r["error"].strip().splitlines()[-1]
            lines.append(f"| {name} | failed: {last.split('] ', 1)[-1][:100]} | | | | | | |")
            continue
        lines.append(
            f"| {name} | {r['compile_s']:.1f} | {r.get('compile_ratio', 1.0):.2f} | "
            f"{r['compile_cpu_s']:.1f} | {r.get('compile_cpu_ratio', 1.0):.2f} | "
            f"{1e3 * r['update_s']:.0f} | {r.get('update_ratio', 1.0):.2f} | "
            f"{'yes' if r.get('bit_identical', True) else 'no'} |"
        )
    return "\n".join(lines)


EXPERIMENT = harness.Experiment("experiments.bench_compile_flags", __doc__, PRESETS)


def main(argv: list[str] | None = None) -> None:
    run = EXPERIMENT.parse(argv)
    rows = []
    for label, flags in run.preset.flag_sets:
        rows.append(measure(run.preset, label, flags))
        print(rows[-1], flush=True)
    run.finish({**run.header(), "rows": summarize(rows)}, format_table)


if __name__ == "__main__":
    main()
