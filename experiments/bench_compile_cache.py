"""How long a run takes to start, the first time and again with jax's persistent compilation
cache (:mod:`mbpo.compile_cache`), and what the compile of a Brax update is made of.

1. **Cache**: for each case, ``mbpo train ... --compile-cache DIR`` runs three times in fresh
   processes with the same configuration into a new, empty cache folder (two updates and one
   evaluation: what a run pays before it trains): the first start; a second with XLA's compiled
   programs only (the stored traced programs, ``programs/``, deleted before it: it traces and
   lowers again); a second with both. Reported: the wall times (process start to exit, Python
   imports included), their ratios to the first (goal: second <= 0.3x first) and the cache's
   size on disk.
2. **Anatomy** of the halfcheetah SVG(n) update (``--preset cpu``: a few shapes): for each Brax
   pipeline, horizon n and num_envs, the time to trace and lower ``jax.jit(update)``, the size
   of the lowered program (StableHLO text lines), the time XLA takes to compile it (wall and the
   process's CPU seconds, which other jobs on a shared machine disturb less) and the size of the
   program XLA made of it (optimized HLO lines and its ``while`` loops: a scan that XLA unrolled
   would show as more lines and fewer loops at a larger n). It shows what the minutes are spent
   on: the program's size does not grow with the number of envs (vmap) nor with the horizon (one
   scan body), so the compile is the physics step's and its derivative's, paid once per program,
   which is what the cache saves.

    python -m experiments.bench_compile_cache --preset cpu \\
        --out experiments/results/bench_compile_cache_cpu.json
    python -m experiments.bench_compile_cache --preset cpu --skip-starts \\
        --out experiments/results/bench_compile_cache_anatomy_cpu.json
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from experiments import harness
from mbpo.compile_cache import PROGRAMS, size_bytes


@dataclasses.dataclass(frozen=True)
class Case:
    """One configuration started twice.

    Attributes:
      name: its label.
      args: the ``mbpo train`` options (the run's sizes; the benchmark adds its own
        ``--num-updates 2 --eval-every 2 --run-dir --compile-cache``).
    """

    name: str
    args: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Preset:
    """What is measured.

    Attributes:
      cases: the configurations started twice.
      anatomy_horizons: the n of the SVG(n) updates lowered and compiled.
      anatomy_envs: their num_envs.
      anatomy_backends: their Brax pipelines (every n and num_envs on each).
      anatomy_env: their task.
    """

    cases: tuple[Case, ...]
    anatomy_horizons: tuple[int, ...] = ()
    anatomy_envs: tuple[int, ...] = ()
    anatomy_backends: tuple[str, ...] = ("positional",)
    anatomy_env: str = "halfcheetah"


HALFCHEETAH = (
    "--env halfcheetah --brax-backend positional --estimator svg --horizon 32 --num-envs 64 "
    "--episode-length 1000 --gamma 0.99 --eval-envs 2"
)
PRESETS = {
    "cpu": Preset(
        cases=(
            Case("pendulum svg-4", tuple("--env pendulum --eval-envs 4".split())),
            Case(
                "inverted_pendulum svg-4",
                tuple(
                    "--env inverted_pendulum --brax-backend positional --eval-envs 4 "
                    "--episode-length 100".split()
                ),
            ),
            Case("halfcheetah svg-32", tuple(HALFCHEETAH.split())),
        ),
        anatomy_horizons=(8, 32),
        anatomy_envs=(4, 64),
        anatomy_backends=("positional", "spring", "generalized"),
    ),
}
PRESETS["gpu"] = PRESETS["cpu"]


def start_twice(case: Case, root: pathlib.Path) -> dict:
    """The case's starts into one new cache folder under ``root``: the first, a second with jax's
    cache of compiled programs only (the stored programs and executables set aside before it, so
    it traces, lowers and looks up again, as before mbpo stored them) and a second with what the
    first stored (set back before it)."""
    cache = root / "cache"
    aside = root / "programs-set-aside"
    times = []
    for k in range(3):
        if k == 1:
            os.replace(cache / PROGRAMS, aside)
        if k == 2:
            shutil.rmtree(cache / PROGRAMS)
            os.replace(aside, cache / PROGRAMS)
        command = [
            sys.executable,
            "-m",
            "mbpo.main",
            "train",
            *case.args,
            "--num-updates",
            "2",
            "--eval-every",
            "2",
            "--run-dir",
            str(root / f"run{k}"),
            "--compile-cache",
            str(cache),
        ]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
        times.append(time.perf_counter() - start)
        if done.returncode:
            raise RuntimeError(f"{case.name}: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
        if k == 0:
            size = size_bytes(cache)
    return {
        "case": case.name,
        "first_s": round(times[0], 1),
        "second_compiled_only_s": round(times[1], 1),
        "second_s": round(times[2], 1),
        "ratio_compiled_only": times[1] / times[0],
        "ratio": times[2] / times[0],
        "cache_bytes": size,
        "programs_bytes": size_bytes(cache / PROGRAMS),
        "cache_bytes_after_second": size_bytes(cache),
    }


def anatomy(n: int, num_envs: int, backend: str, env: str = "halfcheetah") -> dict:
    """Trace+lower time, program size, compile time and compiled size of ``env``'s SVG(n) update."""
    import jax

    from experiments._objective import svg_update_config
    from mbpo.agents import loop
    from mbpo.agents.unroll_trainer import make_trainer

    trainer = make_trainer(svg_update_config(env, backend, n, num_envs))
    state = loop.initial_state(trainer)
    start = time.perf_counter()
    lowered = jax.jit(trainer.update).lower(state)
    lower_s = time.perf_counter() - start
    program = lowered.as_text()
    start, start_cpu = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    optimized = compiled.as_text()
    return {
        "horizon": n,
        "num_envs": num_envs,
        "backend": backend,
        "trace_and_lower_s": round(lower_s, 1),
        "program_lines": program.count("\n"),
        "program_loops": program.count("stablehlo.while"),
        "compile_s": round(compile_s, 1),
        "compile_cpu_s": round(compile_cpu_s, 1),
        "optimized_lines": optimized.count("\n"),
        "optimized_loops": optimized.count(" while("),
    }


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a new Python process: each compile starts from no earlier program, and the
    compiled Brax programs do not pile up in one process (the ninth in one process failed here
    with LLVM's "Unable to allocate section memory")."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def format_table(report: dict) -> str:
    lines = [
        "| case | first start s | second, compiled programs only: s (/ first) "
        "| second, with stored programs and executables: s (/ first) "
        "| cache MiB (stored programs and executables) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in report["starts"]:
        lines.append(
            f"| {r['case']} | {r['first_s']} | {r['second_compiled_only_s']} "
            f"({r['ratio_compiled_only']:.3f}) | {r['second_s']} ({r['ratio']:.3f}) | "
            f"{r['cache_bytes'] / 2**20:.1f} ({r['programs_bytes'] / 2**20:.2f}) |"
        )
    if report["anatomy"]:
        lines += [
            "",
            "| SVG(n) update: pipeline | n | num_envs | trace + lower s | StableHLO lines (loops) "
            "| XLA compile s | compile CPU s | optimized HLO lines (loops) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for a in report["anatomy"]:
            lines.append(
                f"| {a['backend']} | {a['horizon']} | {a['num_envs']} | {a['trace_and_lower_s']} | "
                f"{a['program_lines']} ({a.get('program_loops', '-')}) | {a['compile_s']} | "
                f"{a.get('compile_cpu_s', '-')} | {a.get('optimized_lines', '-')} "
                f"({a.get('optimized_loops', '-')}) |"
            )
    return "\n".join(lines)


EXPERIMENT = harness.Experiment("experiments.bench_compile_cache", __doc__, PRESETS)


def main(argv: list[str] | None = None) -> None:
    parser = EXPERIMENT.parser()
    parser.add_argument("--skip-anatomy", action="store_true", help="only the two starts")
    parser.add_argument("--skip-starts", action="store_true", help="only the anatomy")
    run = EXPERIMENT.parse(argv, parser)
    preset = run.preset
    starts = []
    for case in () if run.args.skip_starts else preset.cases:
        with tempfile.TemporaryDirectory(prefix="mbpo-cache-bench-") as root:
            starts.append(start_twice(case, pathlib.Path(root)))
        print(format_table({"starts": starts[-1:], "anatomy": []}).splitlines()[-1], flush=True)
    rows = []
    if not run.args.skip_anatomy:
        for backend in preset.anatomy_backends:
            for n in preset.anatomy_horizons:
                for num_envs in preset.anatomy_envs:
                    rows.append(in_fresh_process(anatomy, n, num_envs, backend, preset.anatomy_env))
                    print(rows[-1], flush=True)
    run.finish({**run.header(), "starts": starts, "anatomy": rows}, format_table)


if __name__ == "__main__":
    main()
