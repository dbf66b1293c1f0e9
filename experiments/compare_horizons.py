"""Unroll horizons compared: SVG(n) for n in {0, 1, 2, 4, ..., full} on lqr, pendulum and a Brax
task.

For each task and horizon n this measures, side by side in one run:

* gradient statistics of the SVG(n) estimator at one fixed (policy, critic) pair, over ``seeds``
  independent batch-mean estimates of ``batch`` start states each: the norm of the mean, the
  variance (E ||g - mean g||^2 of one batch-mean estimate), and on lqr the bias against the
  closed-form gradient of the infinite-horizon return, ||E g - grad J|| / ||grad J||.
  On lqr the policy is the linear Gaussian a = -K s + sigma eps and the critic is the exact q of a
  stale gain K' != K (a critic lagging behind its policy), so short horizons inherit the critic's
  error and long ones pay in variance. On pendulum and Brax the policy and critic come from a
  short SVG training run; "full" unrolls a whole episode with no critic (SVG(inf)).
* the evaluation return after a fixed budget of environment steps, training each n from scratch
  with :mod:`mbpo.agents.unroll_trainer` (seeds vmapped in one program).

Writes ``gradients.csv``, ``returns.csv``, ``summary.json`` and ``horizons.png`` to ``--out``
after each part (the ODE tasks; then for each Brax task and pipeline its gradient statistics and
its return at each n), each file whole; ``--resume`` goes on with a stopped run there, keeping
its finished parts. A run never overwrites another.

    python -m experiments.compare_horizons --preset cpu --out experiments/results/horizons_cpu
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import envs
from envs import lqr as lqr_lib
from experiments import harness
from mbpo import curves, estimators
from mbpo.agents import loop
from mbpo.agents.loop import run_updates
from mbpo.agents.unroll_trainer import UnrollTrainerConfig, make_trainer
from mbpo.dynamics.brax_env import BACKENDS
from mbpo.files import csv_text
from mbpo.policies import GaussianPolicy
from mbpo.runner import fit

FULL = None  # the "full" horizon: the whole episode, no critic


@dataclasses.dataclass(frozen=True)
class Preset:
    """Sizes of one run.

    Attributes:
      horizons: the n to compare (None is "full").
      gradient_seeds: independent batch-mean gradient estimates per n.
      gradient_batch: start states per estimate.
      lqr_episode: steps of a "full" lqr unroll.
      task: the trained task (an ODE task: pendulum, cartpole; lqr for quick checks).
      ode_episode: its episode length (and the length of "full").
      pretrain_updates: SVG(16) updates that give the pendulum policy and critic measured.
      budget: environment steps per training run for the return comparison.
      return_horizons: the n trained for the return comparison.
      return_seeds: seeds per n (vmapped).
      num_envs: parallel environments while training.
      brax_tasks: the Brax tasks (none to skip Brax).
      brax_backends: the physics pipelines each is measured on (a gradient through contact is
        only as usable as the pipeline's: Suh et al. 2022); a pipeline that fails is reported.
      brax_horizons: the n measured on Brax (gradient statistics).
      brax_episode: steps of a "full" Brax unroll.
      brax_budget: environment steps per Brax training run (0 skips Brax returns).
      brax_gradients: measure the gradient statistics on Brax (False: returns only).
      mjx_iterations: the constraint-solver iterations of the mjx pipeline (None: the task's
        own; halfcheetah, hopper and walker2d need 1 to be reverse differentiable there).
    """

    horizons: tuple[int | None, ...]
    gradient_seeds: int
    gradient_batch: int
    lqr_episode: int
    task: str
    ode_episode: int
    pretrain_updates: int
    budget: int
    return_horizons: tuple[int | None, ...]
    return_seeds: int
    num_envs: int
    brax_tasks: tuple[str, ...]
    brax_backends: tuple[str, ...]
    brax_horizons: tuple[int | None, ...]
    brax_episode: int
    brax_budget: int
    brax_gradients: bool = True
    mjx_iterations: int | None = None

    def __post_init__(self) -> None:
        sizes = ("gradient_seeds", "gradient_batch", "lqr_episode", "ode_episode", "return_seeds")
        for name in (*sizes, "num_envs", "brax_episode", "budget"):
            harness.check_int(name, getattr(self, name))
        harness.check_int("pretrain_updates", self.pretrain_updates, 0)
        harness.check_int("brax_budget", self.brax_budget, 0)
        for name in ("horizons", "return_horizons", "brax_horizons"):
            values = getattr(self, name)
            if not values or any(not (n is None or (type(n) is int and n >= 0)) for n in values):
                raise ValueError(
                    f"{name} must be a non-empty list of ints >= 0 or null (full), got {values!r}"
                )
        envs.check(self.task)
        unknown = [t for t in self.brax_tasks if t not in envs.names() or not envs.is_brax(t)]
        if unknown:
            brax = [t for t in envs.names() if envs.is_brax(t)]
            raise ValueError(
                f"brax_tasks: {unknown} are not Brax tasks; they are {', '.join(brax)}"
            )
        wrong = [b for b in self.brax_backends if b not in BACKENDS]
        if wrong:
            raise ValueError(f"brax_backends: unknown {wrong}; allowed: {', '.join(BACKENDS)}")
        if self.mjx_iterations is not None:
            harness.check_int("mjx_iterations", self.mjx_iterations)


ALL_HORIZONS = (0, 1, 2, 4, 8, 16, 32, 64, FULL)
_CPU = Preset(
    horizons=ALL_HORIZONS,
    gradient_seeds=16,
    gradient_batch=64,
    lqr_episode=200,
    task="pendulum",
    ode_episode=200,
    pretrain_updates=100,
    budget=200_000,
    return_horizons=(0, 4, 16, 32, 64, FULL),
    return_seeds=2,
    num_envs=32,
    brax_tasks=("inverted_pendulum",),
    brax_backends=("positional",),
    brax_horizons=(1, 8, 32),
    brax_episode=64,
    brax_budget=0,
)
PRESETS = {
    "cpu": _CPU,
    # Gradients through contact on 2 cores: halfcheetah and ant on each pipeline that
    # differentiates, at a policy after 20 SVG(16) updates there (use with --skip-ode; about 5
    # minutes a task and pipeline, most of it compiling). Returns after a budget: gpu preset.
    "cpu_contact": dataclasses.replace(
        _CPU,
        gradient_seeds=8,
        gradient_batch=16,
        num_envs=16,
        brax_tasks=("halfcheetah", "ant"),
        brax_backends=("positional", "spring", "generalized"),
        brax_horizons=(1, 8, 32),
    ),
    # Returns through contact on 2 cores: SVG(1), SVG(8) and SVG(32) trained from scratch for
    # 32k simulator steps (64-step episodes, 2 seeds) on halfcheetah and ant, on each pipeline
    # (mjx where it runs), without the gradient statistics of cpu_contact (use with --skip-ode).
    # 64 envs: 512 updates for SVG(1) (16 envs made it 2048: 12 minutes for positional SVG(1)
    # on 2 cores shared with another run).
    "cpu_contact_returns": dataclasses.replace(
        _CPU,
        num_envs=64,
        brax_tasks=("halfcheetah", "ant"),
        brax_backends=("positional", "spring", "generalized", "mjx"),
        brax_horizons=(1, 8, 32),
        brax_budget=32_768,
        brax_gradients=False,
    ),
    # One H100: < 10 minutes for pendulum, and about as long again for each Brax task and
    # pipeline (select some with --set brax_backends='["positional"]').
    "gpu": dataclasses.replace(
        _CPU,
        gradient_seeds=64,
        gradient_batch=256,
        lqr_episode=400,
        pretrain_updates=300,
        budget=2_000_000,
        return_horizons=ALL_HORIZONS,
        return_seeds=4,
        num_envs=256,
        brax_tasks=("halfcheetah", "ant"),
        brax_backends=("positional", "spring", "generalized", "mjx"),
        brax_horizons=(1, 4, 16, 64, FULL),
        brax_episode=256,
        brax_budget=2_000_000,
        mjx_iterations=1,  # halfcheetah's 4 loop (no reverse mode); ant already has 1
    ),
}


def label(n: int | None) -> str:
    return "full" if n is None else str(n)


def gradient_statistics(samples: np.ndarray, true: np.ndarray | None = None) -> dict:
    """Statistics of ``samples`` (seeds, P) of batch-mean gradient estimates: over the finite
    ones (through contact a gradient can overflow), with the fraction that was finite."""
    finite = np.isfinite(samples).all(axis=1)
    samples = samples[finite] if finite.sum() >= 2 else np.full((2, samples.shape[1]), np.nan)
    mean = samples.mean(0)
    out = {
        "norm": float(np.linalg.norm(mean)),
        "variance": float(np.sum(samples.var(0, ddof=1))),
        "finite_fraction": float(finite.mean()),
    }
    out["relative_variance"] = out["variance"] / max(out["norm"], 1e-30) ** 2
    if true is not None:
        se = np.sqrt(out["variance"] / samples.shape[0])
        out["bias"] = float(np.linalg.norm(mean - true) / np.linalg.norm(true))
        out["bias_se"] = float(se / np.linalg.norm(true))
    return out


def _gradient_samples(
    dynamics, policy_fn, params, q, states, n, episode, seeds, batch, eps_shape, gamma, key
):
    """(seeds, P) batch-mean SVG(n) gradients with start states drawn from ``states``."""
    estimator = estimators.svg(n)
    steps = estimator.num_steps(episode)

    def one(k):
        k_idx, k_noise = jax.random.split(k)
        idx = jax.random.randint(k_idx, (batch,), 0, states.t.shape[0])
        start = jax.tree.map(lambda x: x[idx], states)
        noise = estimators.draw_noise(estimator, dynamics, k_noise, eps_shape, steps, batch)
        grad = jax.grad(
            lambda w: estimators.surrogate(
                estimator,
                dynamics,
                policy_fn(w),
                start,
                noise,
                gamma=gamma,
                q=q if estimator.bootstrap else None,
            )[0]
        )(params)
        return ravel_pytree(grad)[0]

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(key, seeds)))


def lqr_gradients(preset: Preset, key) -> list[dict]:
    """SVG(n) on lqr against the closed-form gradient (float64)."""
    task = envs.make("lqr")
    gamma, sigma = 0.95, 0.3
    K = jnp.array([[1.0, 1.5]])
    stale = K + jnp.array([[0.3, -0.4]])
    policy = GaussianPolicy(2, 1, (-math.inf,), (math.inf,), hidden=(), use_bias=False)
    params = {
        "net": {"params": {"Dense_0": {"kernel": -K.T}}},
        "log_std": jnp.log(jnp.array([sigma])),
    }
    q = lambda obs, a: lqr_lib.q_value(task, stale, gamma, obs, a, sigma)
    dK = lqr_lib.return_gradient(task, K, gamma, sigma)
    # d J / d kernel = -(d J / d K)^T; the log-std gradient comes from autodiff of the closed form.
    dlog_std = jax.grad(lambda ls: lqr_lib.expected_return(task, K, gamma, policy_std=jnp.exp(ls)))(
        jnp.log(sigma)
    )
    true = np.asarray(
        ravel_pytree(
            {"net": {"params": {"Dense_0": {"kernel": -dK.T}}}, "log_std": jnp.atleast_1d(dlog_std)}
        )[0]
    )
    states = jax.vmap(task.reset)(jax.random.split(key, 4096))
    rows = []
    for n in preset.horizons:
        samples = _gradient_samples(
            task,
            lambda w: lambda o, e: policy.sample(w, o, e),
            params,
            q,
            states,
            n,
            preset.lqr_episode,
            preset.gradient_seeds,
            preset.gradient_batch,
            policy.eps_shape,
            gamma,
            jax.random.fold_in(key, 1_000 if n is None else n),
        )
        rows.append({"env": "lqr", "n": label(n), **gradient_statistics(samples, true)})
        print(_format_row(rows[-1]), flush=True)
    return rows


def trained_gradients(
    env: str, preset: Preset, horizons, episode: int, key, label_as=None, **env_kwargs
) -> list[dict]:
    """SVG(n) gradient statistics at the policy and critic of a short SVG(16) run on ``env``."""
    config = UnrollTrainerConfig(
        env=env,
        estimator="svg",
        horizon=16,
        gamma=0.95,
        num_envs=preset.num_envs,
        episode_length=episode,
    )
    trainer = make_trainer(config, envs.make(env, **env_kwargs))
    ts = jax.jit(trainer.init)(key)
    if preset.pretrain_updates:
        ts, _ = run_updates(trainer, ts, preset.pretrain_updates)
    q = lambda obs, a: trainer.critic.min_q(ts.critic.target, obs, a)
    rows = []
    for n in horizons:
        samples = _gradient_samples(
            trainer.dynamics,
            lambda w: trainer.act(ts.replace(policy=ts.policy.replace(params=w))),
            ts.policy.params,
            q,
            ts.env_states,
            n,
            episode,
            preset.gradient_seeds,
            preset.gradient_batch,
            trainer.policy.eps_shape,
            config.gamma,
            jax.random.fold_in(key, 1_000 if n is None else n),
        )
        rows.append({"env": label_as or env, "n": label(n), **gradient_statistics(samples)})
        print(_format_row(rows[-1]), flush=True)
    return rows


UNTRAINED = "untrained"  # the n of the rows of the policies before training


def untrained_returns(trainer, state, seeds: int) -> list[float]:
    """The evaluation return of each seed's policy in ``state`` (a run's initial state), with the
    evaluation keys and program of :func:`mbpo.runner.fit`'s run of ``trainer``: where every
    SVG(n) run of the comparison starts (the policy's kind and initialization do not depend on
    n)."""
    keys = loop.evaluation_keys(trainer.config, seeds)
    returns = loop.evaluate_stored(trainer, state, keys, seeds=seeds > 1)
    return np.atleast_1d(np.asarray(returns)).tolist()


class _Untrained:
    """A :func:`mbpo.runner.fit` callback that evaluates the run's initial policies before the
    first update (``returns``, ``seconds``), with fit's own trainer: nothing compiles twice."""

    def __init__(self, seeds: int):
        self.seeds, self.returns, self.seconds = seeds, [], 0.0

    def begin(self, trainer, state) -> None:
        start = time.perf_counter()
        self.returns = untrained_returns(trainer, state, self.seeds)
        self.seconds = time.perf_counter() - start

    def __call__(self, record: dict, state) -> None:
        pass


def returns_after_budget(
    env: str,
    preset: Preset,
    horizons,
    episode: int,
    budget: int,
    label_as=None,
    untrained: bool = True,
    seed: int = 0,
    **env_kwargs,
) -> list[dict]:
    """Evaluation return of SVG(n) trained from scratch for ``budget`` environment steps, after
    the rows (n ``untrained``) of the policies they start from (unless ``untrained`` is off);
    ``return_seeds`` seeds split from ``seed``."""
    rows = []
    for n in horizons:
        config = UnrollTrainerConfig(
            env=env,
            estimator="svg",
            horizon=n,
            gamma=0.95,
            num_envs=preset.num_envs,
            episode_length=episode,
            seed=seed,
        )
        config = dataclasses.replace(
            config, num_updates=max(1, budget // (config.num_envs * config.steps_per_update))
        )
        dynamics = envs.make(env, **env_kwargs)
        starts = _Untrained(preset.return_seeds) if untrained and not rows else None
        _, history = fit(
            config,
            seeds=preset.return_seeds,
            dynamics=dynamics,
            stop_on_divergence=False,
            callbacks=() if starts is None else (starts,),
        )
        if starts is not None:
            rows += [
                {"env": label_as or env, "n": UNTRAINED, "seed": index, "return": value}
                | {"env_steps": 0, "wall_time": starts.seconds}
                for index, value in enumerate(starts.returns)
            ]
            print(f"{env:>18s}  untrained  return {np.mean(starts.returns):9.2f}", flush=True)
        last = curves.seed_rows(history[-1:])
        for row in last:
            rows.append(
                {
                    "env": label_as or env,
                    "n": label(n),
                    "seed": row["seed"],
                    "return": float(row["eval_return"]),
                    "env_steps": row["env_steps"],
                    "wall_time": row["wall_time"],
                }
            )
        r = np.asarray([row["eval_return"] for row in last])
        print(
            f"{env:>18s}  n = {label(n):>4s}  return {r.mean():9.2f} +- {r.std():7.2f}  "
            f"({last[0]['env_steps']} env steps, {last[0]['wall_time']:.0f} s)",
            flush=True,
        )
    return rows


def _format_row(row: dict) -> str:
    bias = f"  bias {row['bias']:.4f} +- {row['bias_se']:.4f}" if "bias" in row else ""
    head = f"{row['env']:>18s}  n = {row['n']:>4s}"
    spread = f"var {row['variance']:10.4g} (x |E g|^2: {row['relative_variance']:8.3g})"
    finite = f"  finite {row['finite_fraction']:.0%}" if row["finite_fraction"] < 1 else ""
    return f"{head}  |E g| {row['norm']:10.4g}  {spread}{bias}{finite}"


def plot(gradient_rows: list[dict], return_rows: list[dict]):
    """One panel per statistic that has data (``--skip-ode`` leaves no lqr bias and, without
    ``brax_budget``, no returns)."""
    from matplotlib.figure import Figure

    order = [label(n) for n in ALL_HORIZONS]
    titles = {
        "bias": "lqr: relative bias ||E g - grad J|| / ||grad J||",
        "variance": "relative variance var / |E g|^2",
        "norm": "|E g|",
        "return": "return after the budget (dashed: untrained)",
    }
    shown = [
        name
        for name, present in [
            ("bias", any("bias" in r for r in gradient_rows)),
            ("variance", bool(gradient_rows)),
            ("norm", bool(gradient_rows)),
            ("return", bool(return_rows)),
        ]
        if present
    ]
    columns = max(len(shown), 1)
    figure = Figure(figsize=(4 * columns, 4))
    axes = dict(zip(shown, np.atleast_1d(figure.subplots(1, columns))))
    for env in dict.fromkeys(r["env"] for r in gradient_rows):
        rows = sorted(
            (r for r in gradient_rows if r["env"] == env), key=lambda r: order.index(r["n"])
        )
        x = [order.index(r["n"]) for r in rows]
        axes["variance"].semilogy(
            x, [r["variance"] / max(r["norm"], 1e-12) ** 2 for r in rows], "o-", label=env
        )
        axes["norm"].semilogy(x, [r["norm"] for r in rows], "o-", label=env)
        exact = [(xi, r) for xi, r in zip(x, rows) if "bias" in r]
        if exact:
            axes["bias"].errorbar(
                [xi for xi, _ in exact],
                [r["bias"] for _, r in exact],
                yerr=[2 * r["bias_se"] for _, r in exact],
                fmt="o-",
                label=env,
            )
    for env in dict.fromkeys(r["env"] for r in return_rows):
        rows = [r for r in return_rows if r["env"] == env and r["n"] != UNTRAINED]
        ns = sorted(dict.fromkeys(r["n"] for r in rows), key=order.index)
        means = [np.mean([r["return"] for r in rows if r["n"] == n]) for n in ns]
        stds = [np.std([r["return"] for r in rows if r["n"] == n]) for n in ns]
        drawn = axes["return"].errorbar(
            [order.index(n) for n in ns], means, yerr=stds, fmt="o-", label=env
        )
        untrained = [r["return"] for r in return_rows if r["env"] == env and r["n"] == UNTRAINED]
        if untrained:  # runs written before the untrained rows have none
            axes["return"].axhline(np.mean(untrained), ls="--", color=drawn[0].get_color())
    for name, ax in axes.items():
        ax.set_xticks(range(len(order)), order)
        ax.set_xlabel("unroll horizon n")
        ax.set_title(titles[name], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def replot(directory: str) -> None:
    """Redraw ``horizons.png`` in ``directory`` from its ``summary.json`` (no rerun)."""
    import pathlib

    from mbpo.curves import save_png

    folder = pathlib.Path(directory)
    summary = json.loads((folder / "summary.json").read_text())
    save_png(folder / "horizons.png", plot(summary["gradients"], summary["returns"]))


def _brax_part_fields(part: str) -> tuple[str, str, str]:
    """(task, backend, what) of a Brax part ``task[backend] what`` of :func:`_parts`."""
    name, what = part.split(" ")
    task, backend = name.rstrip("]").split("[")
    return task, backend, what


def brax_part(preset: Preset, part: str, seed: int) -> tuple[list, list]:
    """The gradient and return rows of one Brax part of :func:`_parts`, labelled ``task[backend]``:
    ``task[backend] gradients``, the gradient statistics of SVG(n) for every n of
    ``brax_horizons`` at one policy and critic; or ``task[backend] n=N``, the return of SVG(N)
    after ``brax_budget`` steps (the part of the first n also writes the untrained rows)."""
    task, backend, what = _brax_part_fields(part)
    name = f"{task}[{backend}]"
    key = jax.random.fold_in(jax.random.key(seed), 2)
    pipeline = {"backend": backend}
    if backend == "mjx" and preset.mjx_iterations is not None:
        pipeline["mjx_iterations"] = preset.mjx_iterations
    if what == "gradients":
        pretrained = dataclasses.replace(preset, pretrain_updates=min(preset.pretrain_updates, 20))
        rows = trained_gradients(
            task,
            pretrained,
            preset.brax_horizons,
            preset.brax_episode,
            key,
            label_as=name,
            **pipeline,
        )
        return rows, []
    n = next(h for h in preset.brax_horizons if what == f"n={label(h)}")
    rows = returns_after_budget(
        task,
        preset,
        (n,),
        preset.brax_episode,
        preset.brax_budget,
        label_as=name,
        untrained=n == preset.brax_horizons[0],
        seed=seed,
        **pipeline,
    )
    return [], rows


EXPERIMENT = harness.Experiment(
    "experiments.compare_horizons", __doc__, PRESETS, out=harness.DIRECTORY
)


def _parts(preset: Preset, args) -> list[str]:
    """The run's parts, each written when it finishes: ``ode`` (lqr and the ODE task), then for
    each Brax task and pipeline ``task[backend] gradients`` (with ``brax_gradients``) and
    ``task[backend] n=N`` for each n of ``brax_horizons`` (with a ``brax_budget``)."""
    parts = [] if args.skip_ode else ["ode"]
    for task, backend in [(t, b) for t in preset.brax_tasks for b in preset.brax_backends]:
        if args.skip_brax:
            break
        parts += [f"{task}[{backend}] gradients"] * preset.brax_gradients
        returns = preset.brax_horizons if preset.brax_budget else ()
        parts += [f"{task}[{backend}] n={label(n)}" for n in returns]
    return parts


def _earlier(run: harness.Run) -> dict:
    """What an earlier run in ``--out`` finished, to go on from (``--resume``): its summary, whose
    preset and seed must be this run's (without ``--resume`` the harness refuses an ``--out``
    with files in it). Exits with code 2 before anything is compiled."""
    path = run.out / "summary.json"
    if not run.args.resume:
        return {"finished": [], "gradients": [], "returns": [], "wall_time": 0.0}
    if not path.exists():
        run.parser.error(f"--resume: {path} does not exist (no run to go on with)")
    earlier = json.loads(path.read_text())
    if "finished" not in earlier:
        run.parser.error(f"--resume: {path} was written without its parts; name another --out")
    now = json.loads(json.dumps(dataclasses.asdict(run.preset)))  # as summary.json holds it
    changed = [k for k in now if earlier["config"].get(k) != now[k]]
    changed += [
        f"{flag} ({earlier[flag]} there)"
        for flag in ("seed", "skip_ode", "skip_brax")
        if earlier[flag] != getattr(run.args, flag)
    ]
    if changed:
        run.parser.error(
            f"--resume: the run in {run.out} has other settings: {', '.join(changed)}; resume it "
            "with its own --preset, --set and --seed, or name another --out"
        )
    return earlier


def _measure(part: str, preset: Preset, seed: int) -> tuple[list, list]:
    """The gradient and return rows of one part of :func:`_parts`."""
    if part != "ode":
        return brax_part(preset, part, seed)
    key = jax.random.key(seed)
    jax.config.update("jax_enable_x64", True)
    gradients = lqr_gradients(preset, jax.random.fold_in(key, 0))
    jax.config.update("jax_enable_x64", False)
    gradients += trained_gradients(
        preset.task, preset, preset.horizons, preset.ode_episode, jax.random.fold_in(key, 1)
    )
    returns = returns_after_budget(
        preset.task, preset, preset.return_horizons, preset.ode_episode, preset.budget, seed=seed
    )
    return gradients, returns


def main(argv=None) -> None:
    parser = EXPERIMENT.parser()
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the gradient samples and the trained runs"
    )
    parser.add_argument("--skip-brax", action="store_true", help="leave out the Brax tasks")
    parser.add_argument(
        "--skip-ode", action="store_true", help="leave out lqr and the ODE task: Brax only"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on with the run in --out: keep its finished parts (the files are rewritten after "
        "each part), run the rest (a failed part again)",
    )
    run = EXPERIMENT.parse(argv, parser)
    preset, earlier = run.preset, _earlier(run)
    parts = _parts(preset, run.args)
    summary = {
        **run.header(),
        **{flag: getattr(run.args, flag) for flag in ("seed", "skip_ode", "skip_brax")},
        "parts": parts,
        "finished": earlier["finished"],
        "gradients": earlier["gradients"],
        "returns": earlier["returns"],
        "failures": [],
    }
    for part in parts:
        if part in summary["finished"]:
            print(f"{part}: finished in the earlier run, kept", flush=True)
            continue
        try:
            gradients, returns = _measure(part, preset, run.args.seed)
        except Exception as error:  # a pipeline that does not run here is a finding, not a crash
            if part == "ode":
                raise
            task, backend, _ = _brax_part_fields(part)
            failure = {"env": task, "backend": backend, "part": part, "error": repr(error)[:500]}
            summary["failures"].append(failure)
            print(f"{part} failed: {error!r}"[:300], flush=True)
            continue
        summary["gradients"] += gradients
        summary["returns"] += returns
        summary["finished"].append(part)
        _save(run, summary, earlier["wall_time"])
    _save(run, summary, earlier["wall_time"])
    print(
        f"wrote {run.out}/{{gradients.csv, returns.csv, summary.json, horizons.png}} "
        f"({len(summary['finished'])} of {len(parts)} parts) in {summary['wall_time']:.0f} s"
    )


def _save(run: harness.Run, summary: dict, earlier_wall_time: float) -> None:
    """Writes the run so far, each file whole; summary.json last (``--resume`` reads it)."""
    summary["wall_time"] = earlier_wall_time + time.perf_counter() - run.start
    summary["complete"] = len(summary["finished"]) == len(summary["parts"])
    gradients, returns = summary["gradients"], summary["returns"]
    run.write(
        {
            "gradients.csv": csv_text(gradients),
            "returns.csv": csv_text(returns),
            "horizons.png": plot(gradients, returns),
            "summary.json": summary,
        }
    )


if __name__ == "__main__":
    main()
