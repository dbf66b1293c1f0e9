"""Brax locomotion learned through its differentiable physics: SHAC, AHAC, SAPO, SVG(32) and BPO
beside PPO and SAC, on halfcheetah (and hopper and ant on a GPU), with the health of the
gradients.

    python -m experiments.locomotion --preset cpu --out experiments/results/locomotion_cpu

Each algorithm is a name of :func:`mbpo.agents.registry.config_for` (``shac``, ``ahac``,
``sapo``, ``svg-32``, ``bpo-32``, ``ppo``, ``sac``) with the task's sizes; its seeds train in one
vmapped program (:func:`mbpo.compare.compare`). Every simulated step counts, the steps of the
differentiated windows included, so the x axis is simulator steps for every method. Writes
``curves.csv`` (one row per algorithm, task, evaluation and seed), ``summary.json``,
``summary.md`` (the return at the largest step count every algorithm reached, the steps and
seconds to a common return, the fraction of skipped updates and of guarded envs, gradient-norm
percentiles) and, per task, ``curves_<task>.png`` (return against simulator steps) and
``wallclock_<task>.png`` (against seconds, compilation included), rewritten after every
algorithm so a cut run keeps what it did.

The reference point (the issue's, brax 0.14.2's PPO with its halfcheetah settings, 64 envs, 2
cores): eval return 321 at 205k simulator steps, 1237 at 410k, 2211 at 1.02M.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from experiments import harness
from mbpo import curves
from mbpo.agents import registry

METRIC_COLUMNS = ("grad_norm", "skipped_updates", "guarded_envs")


@dataclasses.dataclass(frozen=True)
class Task:
    """One Brax task of the comparison.

    Attributes:
      env: a Brax task (``envs.brax_tasks.TASKS``).
      backend: its physics pipeline.
      episode_length: steps per episode, in training and evaluation.
      common_return: the return whose first crossing (mean over seeds) the table times.
      algorithms: (name, config overrides) pairs.
      checkpoints: simulator steps at which the table also gives each algorithm's return (its
        last evaluation at or before them, if it reached 90% of them): the reference points of
        brax's PPO.
      variants: more (name, config overrides) pairs, trained only where ``--only`` names them
        (outside the preset's time budget: another schedule, another seed of a recorded run).
    """

    env: str
    backend: str
    episode_length: int
    common_return: float
    algorithms: tuple[tuple[str, dict], ...]
    checkpoints: tuple[int, ...] = ()
    variants: tuple[tuple[str, dict], ...] = ()

    def selected(self, only: list[str] | None) -> Task:
        """This task with the variants that ``only`` names among its algorithms."""
        named = tuple(v for v in self.variants if only and v[0] in only)
        return dataclasses.replace(self, algorithms=self.algorithms + named, variants=())


@dataclasses.dataclass(frozen=True)
class Preset:
    """Tasks and seeds of one run.

    Fields:
      tasks: the tasks and their algorithms.
      seeds: seeds per algorithm, trained side by side in one vmapped program.
      first_seed: the configs' ``seed`` (their keys are split from it) and the ``seed`` column
        of the first of them: a run with ``first_seed=1`` adds independent seeds to an earlier
        run with ``first_seed=0`` and ``seeds=1``, and ``--from`` tabulates the two together.
    """

    tasks: tuple[Task, ...]
    seeds: int
    first_seed: int = 0

    def __post_init__(self):
        harness.check_positive(self, "seeds")
        if isinstance(self.first_seed, bool) or not isinstance(self.first_seed, int):
            raise ValueError(f"first_seed must be an integer, got {self.first_seed!r}")
        harness.check_positive(self, "first_seed", minimum=0)


def first_order(updates: int, **extra) -> dict:
    """SHAC's sizes (64 envs x 32-step windows: 2048 simulator steps per update)."""
    return {"num_updates": updates, "eval_every": max(updates // 8, 1), "eval_envs": 16, **extra}


def ppo(updates: int, **extra) -> dict:
    """Our PPO at brax's settings (64 envs x 20 steps: 1280 simulator steps per update)."""
    return {"num_updates": updates, "eval_every": max(updates // 8, 1), "eval_envs": 16, **extra}


def sac(updates: int) -> dict:
    """SAC at brax's halfcheetah sizes, 64 envs (one simulator step each per update)."""
    return {
        "num_updates": updates,
        "eval_every": max(updates // 8, 1),
        "eval_envs": 16,
        "num_envs": 64,
        "gradient_steps": 8,
        "batch_size": 256,
        "hidden": (256, 256),
        "warmup_steps": 8192,
        "gamma": 0.99,
        "buffer_capacity": 1_000_000,
    }


# SAPO at the constant rate on 4-step windows of 32 envs (128 simulator steps an update) with
# etaoxing/mineral's networks: LayerNorm before each SiLU in policy and critic.
SAPO_H4_LN = {
    "num_envs": 32,
    "horizon": 4,
    "lr_schedule": "constant",
    "layer_norm": True,
    "policy_activation": "swish",
    "critic_activation": "swish",
}

PRESETS = {
    # 2 cores. Positional halfcheetah's first-order gradients stop matching finite differences
    # between 8 and 16 steps and are noise at SHAC's 32 (experiments/results/
    # brax_gradient_check.md), so the first-order methods run short windows (SHAC, SAPO: 8; AHAC
    # cut within 16) on 32 envs: 256 simulator steps and one actor step per update, 1600 updates
    # to 410k steps. The recipes' own 32-step windows (64 envs, 195 updates) are recorded in
    # experiments/results/locomotion_cpu and locomotion_cpu_ahac (spoiled by the schedule bug
    # their NOTE.md describes); SHAC's 8-step windows at a constant rate in locomotion_cpu_const.
    # A learning SHAC-h8 takes about 42 minutes for its 410k steps on 2 cores (backpropagating
    # through positional physics costs about 9x its forward step here), so AHAC and SAPO get
    # 205k (brax PPO: 321 there) to keep the preset near 100 minutes. SAPO runs the best
    # first-order recipe found on this budget, 4-step windows (variants below: what led to it).
    "cpu": Preset(
        seeds=1,
        tasks=(
            Task(
                env="halfcheetah",
                backend="positional",
                episode_length=1000,
                common_return=300.0,
                checkpoints=(102_400, 204_800, 409_600),
                algorithms=(
                    ("shac-h8", first_order(1600, num_envs=32, horizon=8)),  # 410k
                    (
                        "ahac-h16",
                        first_order(
                            400, num_envs=32, horizon=16, horizon_min=4, contact_threshold=48.0
                        ),
                    ),  # 205k
                    # SAPO at the constant rate on 4-step windows, mineral's LayerNorm/SiLU
                    # networks, the temperature tuned to entropy -9 (-1.5 per action dimension;
                    # SAPO's -0.5 keeps the training actions noisier than the evaluated mean) and
                    # a target critic (target <- 0.8 target + 0.2 critic after each update; SAPO
                    # has none): 1774 / 2244 / 2684 at 51k / 102k / 205k on six seeds (2894 at
                    # 410k, resumed), the best first-order row
                    # (results/locomotion_cpu_sapo_h4_ln_e9_tau02).
                    (
                        "sapo-h4-ln-e9-tau02",
                        first_order(1600, **SAPO_H4_LN, entropy_target=-9.0, tau=0.2),
                    ),  # 205k
                    ("ppo", ppo(312)),  # 400k; brax PPO's 321 at 205k and 1237 at 410k
                    ("sac", sac(1600)),  # 102k
                ),
                # SHAC-h8 at a constant rate (SHAC decays it linearly to 1e-5): 2761 at 410k on
                # seed 0 (experiments/results/locomotion_cpu_const); about 40 minutes a seed.
                variants=(
                    # SAPO's own settings on 8-step windows, its rate decayed linearly to 1e-5
                    # (the preset's SAPO row before the 4-step recipes): 1156 / 1420 at 102k / 205k
                    # on two seeds (locomotion_cpu_fixed_ahac_sapo, locomotion_cpu_seed1_sapo).
                    ("sapo-h8", first_order(800, num_envs=32, horizon=8)),
                    (
                        "shac-h8-const",
                        first_order(1600, num_envs=32, horizon=8, lr_schedule="constant"),
                    ),
                    # SAPO-h8 at the constant rate to 410k (the sapo-h8 row above decays it to
                    # 1e-5 over 205k, as SHAC's schedule does): 1506 / 2458 / 3064 at 102k /
                    # 205k / 410k on two seeds, the best first-order row
                    # (experiments/results/locomotion_cpu_sapo_const).
                    (
                        "sapo-h8-const",
                        first_order(1600, num_envs=32, horizon=8, lr_schedule="constant"),
                    ),
                    # SAPO-h8 at the constant rate on 16 envs: twice the actor steps per simulator
                    # step (128 simulator steps an update, 3200 updates to 410k): 383 / 1218 / 2872
                    # at 102k / 205k / 410k on two seeds, noisier and no faster early
                    # (experiments/results/locomotion_cpu_sapo_e16).
                    (
                        "sapo-h8-e16",
                        first_order(3200, num_envs=16, horizon=8, lr_schedule="constant"),
                    ),
                    # ... and on 64 envs: half the updates per simulator step, each on a smoother
                    # gradient (512 simulator steps an update, 800 updates to 410k): 841 at 102k
                    # on two seeds, where it was stopped (locomotion_cpu_sapo_probes).
                    (
                        "sapo-h8-e64",
                        first_order(800, num_envs=64, horizon=8, lr_schedule="constant"),
                    ),
                    # SAPO at the constant rate on 4-step windows of the same 32 envs (128
                    # simulator steps an update, 3200 updates to 410k): 1606 at 51k and 1591 at
                    # 102k on two seeds, in its first 800 updates (locomotion_cpu_sapo_probes).
                    (
                        "sapo-h4-const",
                        first_order(3200, num_envs=32, horizon=4, lr_schedule="constant"),
                    ),
                    # ... with mineral's SAPO networks (LayerNorm before each SiLU): 1818 / 2451 /
                    # 2920 at 102k / 205k / 410k on four seeds, the gradient norms halved
                    # (experiments/results/locomotion_cpu_sapo_h4_ln and its _seed23).
                    ("sapo-h4-ln", first_order(3200, **SAPO_H4_LN)),
                    # ... with the temperature tuned to entropy -9, without the target critic of
                    # the preset's row: 1948 +- 251 / 2145 +- 491 at 102k / 205k on six seeds, fast
                    # and unstable (seed 4: 1854 at 77k, 769 at 102k, -233 at 205k; critic-loss
                    # spikes beside the drops) (experiments/results/locomotion_cpu_sapo_h4_ln_e9).
                    ("sapo-h4-ln-e9", first_order(1600, **SAPO_H4_LN, entropy_target=-9.0)),
                    # The same with SHAC's ELU networks (DiffRL's actor and critic; above: a tanh
                    # actor and a relu critic, the trainer's defaults): 613 at 410k on two seeds,
                    # unstable, gradient norms several times larger (locomotion_cpu_elu).
                    (
                        "shac-h8-elu",
                        first_order(
                            1600,
                            num_envs=32,
                            horizon=8,
                            lr_schedule="constant",
                            policy_activation="elu",
                            critic_activation="elu",
                        ),
                    ),
                ),
            ),
        ),
    ),
    # One H200: SHAC's budgets (about 4M steps for ant), SVG(32) and BPO beside, 3 seeds; the
    # recipes' 32-step windows and the short windows that positional physics differentiates
    # (256 envs x 8 steps: the recipes' 2048 simulator steps per update).
    "gpu": Preset(
        seeds=3,
        tasks=tuple(
            Task(
                env=env,
                backend="positional",
                episode_length=1000,
                common_return=threshold,
                algorithms=(
                    ("shac", first_order(updates)),
                    ("shac-h8", first_order(updates, num_envs=256, horizon=8)),
                    ("ahac", first_order(updates // 2)),
                    (
                        "ahac-h16",
                        first_order(
                            updates // 2,
                            num_envs=256,
                            horizon=16,
                            horizon_min=4,
                            contact_threshold=48.0,
                        ),
                    ),
                    ("sapo", first_order(updates)),
                    ("sapo-h8", first_order(updates, num_envs=256, horizon=8)),
                    ("svg-32", first_order(updates, num_envs=64, gamma=0.99)),
                    ("bpo-32", first_order(updates, num_envs=64, gamma=0.99)),
                    ("ppo", ppo(100, num_envs=2048, num_minibatches=32)),  # 4.1M steps
                ),
            )
            for env, threshold, updates in (
                ("halfcheetah", 1000.0, 1000),
                ("hopper", 1000.0, 1000),
                ("ant", 1000.0, 2000),
            )
        ),
    ),
}


def make_config(task: Task, name: str, overrides: dict):
    """The config of algorithm ``name`` on ``task``."""
    common = {"env": task.env, "brax_backend": task.backend, "episode_length": task.episode_length}
    return registry.config_for(name, **common, **overrides)


def train(preset: Preset, only: list[str] | None = None, report=None) -> list[dict]:
    """Trains every algorithm of every task (``only``: a subset of names) through
    :func:`experiments.harness.train_tasks`; after each, ``report(rows so far)``."""

    def numbered(rows: list[dict]) -> list[dict]:
        return [{**r, "seed": r["seed"] + preset.first_seed} for r in rows]

    rows = harness.train_tasks(
        tuple(task.selected(only) for task in preset.tasks),
        preset.seeds,
        lambda task, name, overrides: make_config(
            task, name, {"seed": preset.first_seed, **overrides}
        ),
        only=only,
        report=None if report is None else lambda rows: report(numbered(rows)),
        extra=METRIC_COLUMNS,
    )
    return numbered(rows)


def _mean_over_seeds(rows: list[dict], key: str) -> dict[int, float]:
    """The mean of ``key`` over the seeds at the step counts of :func:`mbpo.curves.at_shared_points`
    (where every seed was evaluated)."""
    return {
        s: float(np.mean([r[key] for r in g])) for s, g in curves.at_shared_points(rows).items()
    }


def summarize(rows: list[dict], preset: Preset) -> list[dict]:
    """Per task and algorithm: its number of seeds, the return (mean over them) at the largest
    step count all reached, the steps and seconds to the task's common return (mean over seeds),
    the skipped-update and guarded-env fractions and the gradient-norm percentiles (over
    evaluations and seeds)."""
    table = []
    for task in preset.tasks:
        mine = [r for r in rows if r["task"] == task.env]
        names = list(dict.fromkeys(r["algorithm"] for r in mine))
        common = min(
            (max(r["env_steps"] for r in mine if r["algorithm"] == n) for n in names), default=0
        )
        for name in names:
            runs = [r for r in mine if r["algorithm"] == name]
            curve = _mean_over_seeds(runs, "eval_return")
            at = max((s for s in curve if s <= common), default=min(curve))
            hit = next((s for s, v in curve.items() if v >= task.common_return), None)
            seconds = _mean_over_seeds(runs, "wall_time")
            last = max(r["updates"] for r in runs)
            grads = np.asarray([r.get("grad_norm", np.nan) for r in runs], float)
            guarded = [r.get("guarded_envs") for r in runs]
            near = {c: max((s for s in curve if s <= c), default=None) for c in task.checkpoints}
            table.append(
                {
                    "task": task.env,
                    "algorithm": name,
                    "seeds": harness.seed_count(runs),
                    "return_at_common_steps": round(curve[at], 1),
                    "common_steps": at,
                    "final_return": round(curve[max(curve)], 1),
                    "final_steps": max(curve),
                    "steps_to_common_return": hit,
                    "seconds_to_common_return": hit and round(seconds[hit], 1),
                    "skipped_fraction": float(
                        np.mean([r["skipped_updates"] for r in runs if r["updates"] == last])
                    )
                    / last,
                    "guarded_envs": None if None in guarded else float(np.mean(guarded)),
                    "grad_norm_p50_p90_max": [
                        float(np.nanpercentile(grads, q)) if np.isfinite(grads).any() else None
                        for q in (50, 90, 100)
                    ],
                    "return_at_checkpoints": {
                        c: round(curve[at], 1) if at is not None and at >= 0.9 * c else None
                        for c, at in near.items()
                    },
                }
            )
    return table


def format_table(table: list[dict], preset: Preset) -> str:
    """``summarize``'s rows as Markdown."""
    thresholds = {t.env: t.common_return for t in preset.tasks}
    checkpoints = sorted({c for t in preset.tasks for c in t.checkpoints})
    lines = [
        "| task | algorithm | seeds | return at equal steps | "
        + "".join(f"return @ {c / 1000:g}k | " for c in checkpoints)
        + "final return (steps) | steps to the common return | seconds to it | skipped updates "
        "| guarded envs | grad norm p50 / p90 / max |",
        "| --- | --- | ---: | ---: | "
        + "---: | " * len(checkpoints)
        + "---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for t in table:
        grads = " / ".join("-" if v is None else f"{v:.3g}" for v in t["grad_norm_p50_p90_max"])
        guarded = "-" if t["guarded_envs"] is None else f"{100 * t['guarded_envs']:.2f}%"
        at = t.get("return_at_checkpoints", {})
        cells = "".join(f"{'-' if at.get(c) is None else at[c]} | " for c in checkpoints)
        lines.append(
            f"| {t['task']} | {t['algorithm']} | {t['seeds']} | {t['return_at_common_steps']} "
            f"(@{t['common_steps']}) | {cells}{t['final_return']} ({t['final_steps']}) | "
            f"{t['steps_to_common_return'] or 'not reached'} (>= {thresholds[t['task']]:g}) | "
            f"{t['seconds_to_common_return'] or '-'} | {100 * t['skipped_fraction']:.2f}% | "
            f"{guarded} | {grads} |"
        )
    return "\n".join(lines)


def write_results(run: harness.Run, rows: list[dict]) -> str:
    """The run's files (module docstring); returns the Markdown table."""
    preset = run.preset
    table = summarize(rows, preset)
    text = format_table(table, preset)
    files = run.curve_files(rows, table, text, "Brax locomotion")
    for task in preset.tasks:
        mine = [r for r in rows if r["task"] == task.env]
        if mine:
            seeds = harness.seed_count(mine)
            title = f"{task.env} [{task.backend}], {seeds} seed{'s' * (seeds > 1)}"
            for name, x in (("curves", "env_steps"), ("wallclock", "wall_time")):
                files[f"{name}_{task.env}.png"] = curves.plot(
                    mine, title, "algorithm", x=x, threshold=task.common_return
                )
    run.write(files)
    return text


NUMERIC = ("updates", "env_steps", "wall_time", "seed", "eval_return", *METRIC_COLUMNS)


# Fields in which an `mbpo train` run may differ from the preset's algorithm it is read as: its
# length, its evaluation cadence and its first seed.
RUN_FREE = ("num_updates", "eval_every", "seed")


def read_curves(parser, sources: list[str], preset: Preset, only=None) -> list[dict]:
    """The rows of each of ``sources`` whose task is one of ``preset``'s, numbers parsed: a
    ``DIR`` or ``DIR:name,name`` (those algorithms of it) holding this experiment's
    ``curves.csv``, or ``DIR:name``, an ``mbpo train`` run directory (config.json, metrics.csv:
    a run that was resumed, say) read as the preset's algorithm ``name`` (:func:`read_run`).
    ``only`` selects algorithms where a source names none. An algorithm may come from several
    sources that hold different seeds of it (runs with different first seeds); the same seed of
    an algorithm in two sources, one a source names but does not hold, or a source without its
    files exits with code 2 naming it."""
    import csv
    import pathlib

    tasks = {t.env for t in preset.tasks}
    rows, seen = [], {}
    for index, source in enumerate(sources):
        folder, _, names = source.partition(":")
        path = pathlib.Path(folder) / "curves.csv"
        named = set(names.split(",")) if names else set()
        if path.is_file():
            with path.open() as file:
                found = [r for r in csv.DictReader(file) if r["task"] in tasks]
        elif (path.parent / "metrics.csv").is_file():
            found = read_run(parser, path.parent, named, preset)
        else:
            parser.error(f"--from: {path} does not exist (nor an `mbpo train` run's metrics.csv)")
        wanted = named or set(only or ())
        missing = sorted(named - {r["algorithm"] for r in found})
        if missing:
            parser.error(f"--from: {folder} has no {missing} on {sorted(tasks)}")
        for row in found:
            if wanted and row["algorithm"] not in wanted:
                continue
            key = (row["task"], row["algorithm"], str(row.get("seed", "0")))
            if seen.setdefault(key, index) != index:
                first = sources[seen[key]]
                parser.error(
                    f"--from: seed {key[2]} of {key[1]} on {key[0]} is in both {first} and {source}"
                )
            for name in NUMERIC:
                if row.get(name) not in (None, ""):
                    row[name] = float(row[name])
                    if name in ("updates", "env_steps", "seed"):
                        row[name] = int(row[name])
                else:
                    row.pop(name, None)
            rows.append(row)
    return rows


def read_run(parser, folder, named: set[str], preset: Preset) -> list[dict]:
    """The evaluations of the ``mbpo train`` run in ``folder`` as curve rows of the preset's
    algorithm in ``named`` (exactly one), whose config the run's must equal but for
    :data:`RUN_FREE`: same task, pipeline, episode length and every training setting, so a run
    cannot be tabulated under another algorithm's name. Its seed ``i`` is ``config.seed + i``, as
    the harness numbers seeds."""
    import csv

    from mbpo import runner

    if len(named) != 1:
        parser.error(
            f"--from: {folder} is an `mbpo train` run: name the preset's algorithm it trained, "
            f"{folder}:NAME (got {sorted(named) or 'none'})"
        )
    (name,) = named
    try:
        config, _ = runner.load_run(folder)
    except runner.RunDirError as error:
        parser.error(f"--from: {error}")
    task = next((t for t in preset.tasks if t.env == getattr(config, "env", None)), None)
    entries = dict((*task.algorithms, *task.variants)) if task else {}
    if name not in entries:
        parser.error(
            f"--from: {folder} trained {getattr(config, 'env', '?')}; the preset has no {name!r} "
            f"there (its names: {sorted(entries) or 'none'})"
        )
    expected = dataclasses.asdict(make_config(task, name, entries[name]))
    actual = dataclasses.asdict(config)
    differ = sorted(k for k in expected if k not in RUN_FREE and expected[k] != actual.get(k))
    if differ:
        shown = ", ".join(f"{k}={actual.get(k)!r} (expected {expected[k]!r})" for k in differ)
        parser.error(f"--from: {folder} is not the preset's {name!r}: {shown}")
    with (folder / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    return [
        {
            "task": task.env,
            "algorithm": name,
            **{k: row[k] for k in NUMERIC if k in row and k != "seed"},
            "seed": config.seed + int(row.get("seed") or 0),
        }
        for row in rows
    ]


EXPERIMENT = harness.Experiment("experiments.locomotion", __doc__, PRESETS, out=harness.DIRECTORY)


def main(argv: list[str] | None = None) -> None:
    parser = EXPERIMENT.parser()
    parser.add_argument("--only", nargs="+", help="run only these algorithm names of the preset")
    parser.add_argument(
        "--from",
        nargs="+",
        dest="sources",
        metavar="DIR",
        help="train nothing: tabulate and plot the curves.csv of earlier runs of this preset "
        "together (DIR, or DIR:name,name for some of its algorithms; --only selects algorithms "
        "where a DIR names none), or an `mbpo train` run directory as DIR:name, the preset's "
        "algorithm whose config it has (a resumed run, say)",
    )
    run = EXPERIMENT.parse(argv, parser)
    if run.args.sources:
        rows = read_curves(parser, run.args.sources, run.preset, run.args.only)
        print(write_results(run, rows))
        return
    names = {n for t in run.preset.tasks for n, _ in (*t.algorithms, *t.variants)}
    if run.args.only and set(run.args.only) - names:
        parser.error(
            f"--only: unknown names {sorted(set(run.args.only) - names)}; the preset "
            f"has {sorted(names)}"
        )
    rows = train(run.preset, run.args.only, report=lambda rows: write_results(run, rows))
    print(write_results(run, rows))
    print(f"wrote {run.out}/{{curves.csv, summary.json, summary.md, curves_<task>.png, ...}}")


if __name__ == "__main__":
    main()
