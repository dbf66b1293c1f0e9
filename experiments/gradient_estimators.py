"""Bias and variance of three gradient estimators on J(theta) = E_{x ~ N(theta, 1)}[x^2 theta].

Reproduces the reference's "Numerical Analysis of Gradient Estimators". Since E[x^2] = 1 + theta^2,

    J(theta) = theta (1 + theta^2),    dJ/dtheta = 1 + 3 theta^2  (= 4 at theta = 1).

Each estimator is the `jax.grad` of a surrogate of the sample mean over a batch of N noise draws
eps_i ~ N(0, 1), x_i = theta + eps_i; all estimators see the same noise. Run as

    python -m experiments.gradient_estimators [--preset cpu] [--set trials=100000]
        [--out PATH.json] [--plot PATH.png]

(``--set`` takes any field of :class:`Preset`: batch, trials, theta, seed).
"""

import argparse
import dataclasses
import functools
import math
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from experiments import harness
from mbpo.cli import check_int
from mbpo.curves import save_png
from mbpo.distributions import normal_log_prob
from mbpo.types import PRNGKey, Scalar

Surrogate = Callable[[Scalar, Float[Array, " batch"]], Scalar]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    """Settings of one run; validated when built.

    Attributes:
      batch: samples N per gradient estimate (>= 1).
      trials: independent estimates per estimator (>= 2, for a variance).
      theta: the parameter at which dJ/dtheta is estimated.
      seed: seed of the noise shared by all estimators.
    """

    batch: int = 1000
    trials: int = 1000
    theta: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("batch", self.batch)
        if self.trials < 2:
            raise ValueError(f"trials must be an integer >= 2 (for a variance), got {self.trials}")
        if not math.isfinite(self.theta):
            raise ValueError(f"theta must be finite, got {self.theta}")


def objective(x: Float[Array, " batch"], theta: Scalar) -> Float[Array, " batch"]:
    """The integrand f(x, theta) = x^2 theta."""
    return x**2 * theta


def true_gradient(theta: float) -> float:
    """dJ/dtheta = d/dtheta [theta (1 + theta^2)] = 1 + 3 theta^2."""
    return 1.0 + 3.0 * theta**2


def naive_surrogate(theta: Scalar, eps: Float[Array, " batch"]) -> Scalar:
    """Sample mean with the samples held fixed; its gradient ignores that p(x; theta) moves.

    grad = (1/N) sum_i df/dtheta(x_i, theta) = (1/N) sum_i x_i^2,  expectation 1 + theta^2 (biased).

    Args:
      theta: the parameter.
      eps: standard normal noise, x_i = theta + eps_i.

    Returns:
      The surrogate whose gradient in theta is the naive estimate.
    """
    x = jax.lax.stop_gradient(theta + eps)
    return jnp.mean(objective(x, theta))


def score_function_surrogate(theta: Scalar, eps: Float[Array, " batch"]) -> Scalar:
    """Score-function (likelihood ratio, REINFORCE) surrogate.

    grad = (1/N) sum_i [f(x_i, theta) d log p(x_i; theta)/dtheta + df/dtheta(x_i, theta)]
         = (1/N) sum_i [x_i^2 theta (x_i - theta) + x_i^2]  for p = N(theta, 1)  (unbiased).

    Args:
      theta: the parameter.
      eps: standard normal noise, x_i = theta + eps_i.

    Returns:
      The surrogate whose gradient in theta is the score-function estimate.
    """
    x = jax.lax.stop_gradient(theta + eps)
    f = objective(x, theta)
    return jnp.mean(jax.lax.stop_gradient(f) * normal_log_prob(x, theta, 1.0) + f)


def reparameterization_surrogate(theta: Scalar, eps: Float[Array, " batch"]) -> Scalar:
    """Reparameterized sample mean, x_i = g(eps_i, theta) = theta + eps_i.

    grad = (1/N) sum_i [2 theta (theta + eps_i) + (theta + eps_i)^2]  (unbiased).

    Args:
      theta: the parameter.
      eps: standard normal noise.

    Returns:
      The surrogate whose gradient in theta is the reparameterization estimate.
    """
    return jnp.mean(objective(theta + eps, theta))


ESTIMATORS: dict[str, Surrogate] = {
    "naive": naive_surrogate,
    "score_function": score_function_surrogate,
    "reparameterization": reparameterization_surrogate,
}


@functools.partial(jax.jit, static_argnames=("batch", "trials"))
def estimate_gradients(
    key: PRNGKey, theta: Scalar, *, batch: int, trials: int
) -> dict[str, Float[Array, " trials"]]:
    """All trials of all estimators in one call, each trial on its own batch of noise.

    Args:
      key: random key of the noise eps ~ N(0, 1), shape (trials, batch), shared by the estimators.
      theta: the parameter.
      batch: samples N per estimate.
      trials: number of estimates per estimator.

    Returns:
      The estimates of dJ/dtheta, one array of length `trials` per estimator name.
    """
    eps = jax.random.normal(key, (trials, batch), dtype=theta.dtype)
    return {
        name: jax.vmap(jax.grad(surrogate), in_axes=(None, 0))(theta, eps)
        for name, surrogate in ESTIMATORS.items()
    }


def estimate(config: Preset) -> dict[str, np.ndarray]:
    """Runs `estimate_gradients` for a config; returns host arrays of shape (trials,)."""
    estimates = estimate_gradients(
        jax.random.key(config.seed),
        jnp.asarray(config.theta, dtype=jnp.result_type(float)),
        batch=config.batch,
        trials=config.trials,
    )
    return {name: np.asarray(estimates[name], dtype=np.float64) for name in ESTIMATORS}


def summarize(config: Preset, estimates: dict[str, np.ndarray]) -> dict:
    """Mean, bias, variance, MSE and standard error of the mean of each estimator.

    bias = mean - dJ/dtheta, variance over trials (ddof = 0), MSE = bias^2 + variance
    = mean of (estimate - dJ/dtheta)^2, standard error = std (ddof = 1) / sqrt(trials).

    Args:
      config: the run's settings.
      estimates: per estimator name, its `trials` estimates.

    Returns:
      A JSON-ready dict with the config, the true gradient and the statistics per estimator.
    """
    target = true_gradient(config.theta)
    statistics = {}
    for name, values in estimates.items():
        bias = float(np.mean(values) - target)
        variance = float(np.var(values))
        statistics[name] = {
            "mean": float(np.mean(values)),
            "bias": bias,
            "variance": variance,
            "mse": bias**2 + variance,
            "standard_error": float(np.std(values, ddof=1) / math.sqrt(values.size)),
        }
    return {
        "config": dataclasses.asdict(config),
        "true_gradient": target,
        "estimators": statistics,
    }


def run(batch: int = 1000, trials: int = 1000, theta: float = 1.0, seed: int = 0) -> dict:
    """Validates the settings, estimates and summarizes (see `summarize` for the result)."""
    preset = Preset(batch=batch, trials=trials, theta=theta, seed=seed)
    return summarize(preset, estimate(preset))


def format_table(summary: dict) -> str:
    """The summary as a fixed-width text table, one row per estimator."""
    config = summary["config"]
    lines = [
        f"theta = {config['theta']}, batch = {config['batch']}, trials = {config['trials']}, "
        f"true gradient = {summary['true_gradient']:.6f}",
        f"{'estimator':<20}{'mean':>12}{'bias':>12}{'variance':>12}{'MSE':>12}",
    ]
    for name, stats in summary["estimators"].items():
        lines.append(
            f"{name:<20}{stats['mean']:>12.6f}{stats['bias']:>12.6f}"
            f"{stats['variance']:>12.6f}{stats['mse']:>12.6f}"
        )
    return "\n".join(lines)


def plot(estimates: dict[str, np.ndarray], target: float) -> Figure:
    """Violin plot of each estimator's trials, with the true gradient as a dashed line."""
    figure = Figure(figsize=(10, 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    names = list(estimates)
    axes.violinplot([estimates[name] for name in names], showmedians=True)
    axes.axhline(target, color="red", linestyle="--", label="true gradient")
    axes.set_xticks(range(1, len(names) + 1), names)
    axes.set_ylabel("gradient estimate")
    axes.set_title(f"Gradient estimators of dJ/dtheta = {target:g}")
    axes.grid(alpha=0.3)
    axes.legend()
    return figure


# cpu is the reference's experiment (seconds here); gpu repeats it 100x for tighter statistics.
PRESETS = {"cpu": Preset(), "gpu": Preset(trials=100_000)}
EXPERIMENT = harness.Experiment("experiments.gradient_estimators", __doc__, PRESETS)


def png_path(text: str) -> pathlib.Path:
    """A ``--plot`` path: a PATH.png that does not exist yet (a plot is never overwritten)."""
    path = pathlib.Path(text)
    if path.suffix != ".png" or path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a PATH.png file, got {text!r}")
    if path.exists():
        raise argparse.ArgumentTypeError(f"{text} exists; a plot is never overwritten")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = EXPERIMENT.parser()
    parser.add_argument("--plot", type=png_path, metavar="PATH.png", help="violin plot")
    run = EXPERIMENT.parse(argv, parser)
    estimates = estimate(run.preset)
    report = {**run.header(), **summarize(run.preset, estimates)}
    if run.args.plot is not None:
        save_png(run.args.plot, plot(estimates, report["true_gradient"]))
        print(f"wrote {run.args.plot}")
    run.finish(report, format_table)


if __name__ == "__main__":
    main()
