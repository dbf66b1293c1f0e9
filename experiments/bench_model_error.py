"""Prediction error of the probabilistic ensemble (:mod:`mbpo.models`) on pendulum and a Brax task.

For each task, ``episodes + test_episodes`` episodes of ``episode_length`` steps are rolled out in
the true dynamics (:func:`mbpo.unroll.rollout`, vmapped over episodes) under the uniformly random
policy a = low + (high - low) Phi(eps), eps ~ N(0, I). A :class:`mbpo.models.GaussianEnsemble` is
fitted (:func:`mbpo.models.fit`, holdout early stopping, elites) to the first ``episodes``; on the
test episodes, from every true s_t, the model is unrolled open loop on the true actions
a_t..a_{t+h-1} with :func:`mbpo.unroll.open_loop` through :class:`mbpo.models.EnsembleDynamics` with
the moment-matched elites (``ElitesMean``) and xi = 0, the mean prediction

    s^_{t+k} = s^_{t+k-1} + mu(s^_{t+k-1}, a_{t+k-1}),    s^_t = s_t,    k = 1..h.

Reported, for k = 1 (one step) and k = h (``horizon``, 10):

* raw RMSE: sqrt(mean over windows and dimensions of (s^_{t+k} - s_{t+k})^2);
* normalized RMSE: sqrt(mean over dimensions d of (RMSE_d / std_d)^2), with std_d the standard
  deviation of dimension d over the test observations (1 = as far off as a random state); the
  per-dimension figures RMSE_d / std_d are in the JSON;
* the normalized RMSE of the constant prediction s^_{t+k} = s_t, a reference for "no model";
* the model's normalized RMSE on the "alive" windows only, those in which the true episode has
  not terminated (Brax's inverted pendulum is done once the pole leaves +-0.2 rad; a random
  policy drops it within ~20 steps, and the fallen pole and the cart then hit the joint limits);
* calibration: mean over one-step test transitions and dimensions of xi^2, with xi the noise
  ``infer_noise`` recovers, (s' - s - mu) / sigma; 1 when the predicted sigma fits the errors.

Run as

    python -m experiments.bench_model_error [--preset cpu|gpu] [--tasks NAME ...] [--seed S]
        [--out PATH.json]
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr

import envs
from experiments import harness
from mbpo.dynamics import Dynamics
from mbpo.models import ElitesMean, GaussianEnsemble, ModelState, TrainConfig, fit, from_ensemble
from mbpo.models.ensemble import DoneFn, RewardFn
from mbpo.types import Array, Float, PRNGKey
from mbpo.unroll import Transition, open_loop, rollout, sample_noise


@dataclasses.dataclass(frozen=True)
class Task:
    """A true dynamics and its reward and termination in observation space.

    Attributes:
      name: the task's label.
      make: builds the true dynamics.
      reward: r(s, a, s') on observations, for the model's transitions.
      done: s' -> {0., 1.} on observations, or None.
    """

    name: str
    make: Callable[[], Dynamics]
    reward: RewardFn
    done: DoneFn | None = None


def pendulum_reward(obs, action, next_obs):
    """envs.pendulum's reward on the observation (cos theta, sin theta, omega)."""
    return -(2 * (1 - obs[0]) + 0.1 * obs[2] ** 2 + 0.001 * jnp.sum(action**2))


TASKS: dict[str, Task] = {
    "pendulum": Task("pendulum", lambda: envs.make("pendulum"), pendulum_reward),
    # Process noise N(0, 0.02^2) on (theta, omega) each step: a calibration check for sigma.
    "pendulum_noisy": Task(
        "pendulum[noise_std=0.02]", lambda: envs.make("pendulum", noise_std=0.02), pendulum_reward
    ),
    # Brax's inverted pendulum: reward 1 per step, done when the pole angle obs[1] leaves +-0.2.
    "inverted_pendulum": Task(
        "inverted_pendulum[positional]",
        lambda: envs.make("inverted_pendulum", backend="positional"),
        lambda obs, action, next_obs: jnp.ones((), next_obs.dtype),
        lambda next_obs: (jnp.abs(next_obs[1]) > 0.2).astype(next_obs.dtype),
    ),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    """The data, model and training sizes of one run; validated when built.

    Attributes:
      tasks: keys of ``TASKS``.
      episodes: training episodes per task, >= 1.
      test_episodes: test episodes per task, >= 1.
      episode_length: steps per episode, > horizon.
      horizon: h, the open-loop prediction length, >= 1.
      ensemble_hidden: hidden sizes of each ensemble member.
      num_members: ensemble size.
      num_elites: elites kept.
      train: the training settings of :func:`mbpo.models.fit`.
    """

    tasks: tuple[str, ...]
    episodes: int
    test_episodes: int
    episode_length: int
    horizon: int = 10
    ensemble_hidden: tuple[int, ...]
    num_members: int = 7
    num_elites: int = 5
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name in ("episodes", "test_episodes", "horizon"):
            harness.check_int(name, getattr(self, name))
        if not isinstance(self.episode_length, int) or self.episode_length <= self.horizon:
            raise ValueError(
                f"episode_length must be an int > horizon = {self.horizon}, got "
                f"{self.episode_length!r}"
            )
        unknown = [task for task in self.tasks if task not in TASKS]
        if not self.tasks or unknown:
            raise ValueError(f"tasks must be among {', '.join(TASKS)}, got {self.tasks!r}")


PRESETS: dict[str, Preset] = {
    # A few minutes on a 2-core CPU; the Brax task's rollout takes ~30 s to compile.
    "cpu": Preset(
        tasks=("pendulum", "pendulum_noisy", "inverted_pendulum"),
        episodes=80,
        test_episodes=20,
        episode_length=50,
        ensemble_hidden=(128, 128, 128),
        train=TrainConfig(max_epochs=100),
    ),
    # MBPO's model (7 members of four 200-unit layers) on 10x the data, on one GPU.
    "gpu": Preset(
        tasks=("pendulum", "pendulum_noisy", "inverted_pendulum"),
        episodes=800,
        test_episodes=100,
        episode_length=50,
        ensemble_hidden=(200, 200, 200, 200),
        train=TrainConfig(max_epochs=300),
    ),
}


def collect(dynamics: Dynamics, key: PRNGKey, episodes: int, length: int) -> Transition:
    """``episodes`` rollouts of the uniformly random policy, each field (episodes, length, ...)."""
    low, high = (jnp.asarray(bound) for bound in dynamics.action_bounds)

    def policy(obs, eps):
        return low + (high - low) * ndtr(eps)

    def episode(key):
        key_reset, key_noise = jax.random.split(key)
        noise = sample_noise(dynamics, key_noise, length, (dynamics.action_size,))
        return rollout(dynamics, policy, dynamics.reset(key_reset), noise)[1]

    return jax.jit(jax.vmap(episode))(jax.random.split(key, episodes))


def window_starts(length: int, horizon: int) -> np.ndarray:
    """Indices t of every window t..t+h-1 inside an episode, shape (length - h + 1, h)."""
    return np.arange(length - horizon + 1)[:, None] + np.arange(horizon)


def evaluate(
    task: Task, ensemble: GaussianEnsemble, model: ModelState, test: Transition, horizon: int
) -> dict:
    """The prediction errors of the module docstring on the test episodes."""
    dynamics = from_ensemble(
        ensemble,
        model,
        start_obs=test.obs[:, 0],
        member=ElitesMean(),
        reward=task.reward,
        done=task.done,
        name=f"ensemble[{task.name}]",
    )
    windows = window_starts(test.obs.shape[1], horizon)
    obs_0 = test.obs[:, windows[:, 0]].reshape(-1, ensemble.observation_size)
    actions = test.action[:, windows].reshape(-1, horizon, ensemble.action_size)
    true = test.next_obs[:, windows].reshape(-1, horizon, ensemble.observation_size)

    def predict(obs, actions):
        start = dynamics.reset(jax.random.key(0)).replace(x=obs, obs=obs)
        xi = jnp.zeros((horizon, *dynamics.noise_shape), obs.dtype)
        return open_loop(dynamics, start, actions, xi)[1].next_obs

    def calibration(obs, action, next_obs):
        state = dynamics.reset(jax.random.key(0))
        return dynamics.infer_noise(
            state.replace(x=obs, obs=obs), action, state.replace(x=next_obs, obs=next_obs)
        )

    predicted = np.asarray(jax.jit(jax.vmap(predict))(obs_0, actions))
    alive_t = np.cumprod(1.0 - np.asarray(test.done), axis=1)
    alive = alive_t[:, windows[:, -1]].reshape(-1) > 0
    xi = jax.jit(jax.vmap(calibration))(
        *(field.reshape(-1, field.shape[-1]) for field in (test.obs, test.action, test.next_obs))
    )
    scale = np.std(np.asarray(test.obs).reshape(-1, ensemble.observation_size), axis=0)
    true = np.asarray(true)
    model_error = prediction_errors(predicted, true, scale)
    constant_error = prediction_errors(
        np.broadcast_to(np.asarray(obs_0)[:, None], true.shape), true, scale
    )
    alive_error = prediction_errors(predicted[alive], true[alive], scale) if alive.any() else {}
    return {
        "windows": int(true.shape[0]),
        "alive_windows": int(alive.sum()),
        "obs_std": scale.tolist(),
        **{f"model_{key}": value for key, value in model_error.items()},
        **{f"constant_{key}": value for key, value in constant_error.items()},
        **{f"alive_model_{key}": value for key, value in alive_error.items()},
        "calibration_xi2": float(np.mean(np.asarray(xi) ** 2)),
    }


def prediction_errors(
    predicted: Float[Array, "W h obs"], true: Float[Array, "W h obs"], scale: Float[Array, " obs"]
) -> dict:
    """RMSE after each of the h steps: raw, normalized, and per dimension / std_d."""
    per_dimension = np.sqrt(np.mean((predicted - true) ** 2, axis=0))  # (h, obs)
    return {
        "rmse_raw": np.sqrt(np.mean(per_dimension**2, axis=1)).tolist(),
        "rmse_normalized": np.sqrt(np.mean((per_dimension / scale) ** 2, axis=1)).tolist(),
        "rmse_per_dimension_normalized": (per_dimension / scale).tolist(),
    }


def measure(task_key: str, preset: Preset, key: PRNGKey) -> dict:
    """Collects the data of one task, fits the ensemble and evaluates it (one row)."""
    task = TASKS[task_key]
    dynamics = task.make()
    start = time.perf_counter()
    data = collect(dynamics, key, preset.episodes + preset.test_episodes, preset.episode_length)
    data = jax.block_until_ready(data)
    collect_s = time.perf_counter() - start
    train = jax.tree.map(lambda x: x[: preset.episodes], data)
    test = jax.tree.map(lambda x: x[preset.episodes :], data)
    ensemble = GaussianEnsemble.for_dynamics(
        dynamics,
        num_members=preset.num_members,
        num_elites=preset.num_elites,
        hidden=preset.ensemble_hidden,
    )
    flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), train)
    start = time.perf_counter()
    model, metrics = fit(
        ensemble,
        jax.random.fold_in(key, 1),
        flat.obs,
        flat.action,
        flat.next_obs,
        config=preset.train,
    )
    model = jax.block_until_ready(model)
    fit_s = time.perf_counter() - start
    return {
        "task": task.name,
        "transitions": int(flat.obs.shape[0]),
        "observation_size": dynamics.observation_size,
        "collect_s": collect_s,
        "fit_s": fit_s,
        "epochs": int(metrics.num_epochs),
        "holdout_mse": np.asarray(metrics.holdout_mse).tolist(),
        "elites": np.asarray(model.elites).tolist(),
        "done_fraction": float(np.mean(np.asarray(data.done))),
        **evaluate(task, ensemble, model, test, preset.horizon),
    }


def benchmark(preset: Preset, seed: int = 0) -> list[dict]:
    """One :func:`measure` row per task of ``preset``."""
    key = jax.random.key(seed)
    return [
        measure(task, preset, jax.random.fold_in(key, i)) for i, task in enumerate(preset.tasks)
    ]


def _pair(values, digits: int) -> str:
    return "n/a" if values is None else f"{values[0]:.{digits}f}/{values[-1]:.{digits}f}"


def _columns(h: int) -> tuple:
    """The table's (header, width, cell) columns for an ``h``-step horizon."""
    return (
        ("task", 31, lambda r: r["task"]),
        ("N", 6, lambda r: f"{r['transitions']}"),
        ("epochs", 7, lambda r: f"{r['epochs']}"),
        ("fit s", 7, lambda r: f"{r['fit_s']:.1f}"),
        ("1-step raw", 11, lambda r: f"{r['model_rmse_raw'][0]:.4f}"),
        ("norm", 8, lambda r: f"{r['model_rmse_normalized'][0]:.4f}"),
        (f"{h}-step raw", 12, lambda r: f"{r['model_rmse_raw'][-1]:.4f}"),
        ("norm", 8, lambda r: f"{r['model_rmse_normalized'][-1]:.4f}"),
        (f"const 1/{h}", 13, lambda r: _pair(r["constant_rmse_normalized"], 3)),
        ("alive", 7, lambda r: f"{r['alive_windows']}"),
        (f"norm 1/{h}", 15, lambda r: _pair(r.get("alive_model_rmse_normalized"), 4)),
        ("xi^2", 7, lambda r: f"{r['calibration_xi2']:.2f}"),
    )


def format_table(report: dict) -> str:
    """The report as fixed-width text: a header, then one row per task."""
    h = report["config"]["horizon"]
    lines = [
        *harness.report_lines(report),
        "open-loop mean prediction (moment-matched elites, xi = 0) on the true actions;",
        f"RMSE after 1 and {h} steps, raw and normalized (per-dimension RMSE / test std, RMS over",
        "dimensions); const = the normalized RMSE of predicting s_t; alive = windows before the "
        "true",
        "episode terminates, and the model's normalized RMSE on them; xi^2 = mean squared inferred",
        "noise of the one-step test transitions (1 = calibrated sigma)",
        "",
        *harness.table(_columns(h), report["rows"]),
    ]
    return "\n".join(lines)


EXPERIMENT = harness.Experiment("experiments.bench_model_error", __doc__, PRESETS)


def main(argv: list[str] | None = None) -> None:
    parser = EXPERIMENT.parser()
    parser.add_argument(
        "--tasks", nargs="+", choices=list(TASKS), help="a subset of tasks (default: the preset's)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data, the split and the model"
    )
    run = EXPERIMENT.parse(argv, parser)
    preset = run.preset
    if run.args.tasks is not None:
        preset = run.preset = dataclasses.replace(preset, tasks=tuple(run.args.tasks))
    report = {**run.header(), "seed": run.args.seed, "rows": benchmark(preset, run.args.seed)}
    run.finish(report, format_table)


if __name__ == "__main__":
    main()
