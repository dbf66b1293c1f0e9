"""Noise inference with a Gaussian and with a flow residual model, on dynamics with bimodal noise.

The task is one-dimensional, so that the noise behind each transition is identifiable (the
increasing map from N(0, 1) onto a 1-D law is unique) and known exactly:

    s' = A s + B a + w,    w | s, a ~ p(a) N(m(s), sigma^2) + (1 - p(a)) N(-m(s), sigma^2),
    p(a) = sigmoid(k a),    m(s) = m_0 + m_1 tanh(s),
    xi = Phi^-1(F(w | s, a))  (F the mixture's CDF), so that w = F^-1(Phi(xi) | s, a).

Transitions come from s ~ N(0, 1), a ~ U(-1, 1). Two residual models with the known mean
mu(s, a) = A s + B a, each a :func:`mbpo.flows.flow_dynamics` fitted by :func:`mbpo.flows.fit_flow`
on the same data:

* ``gaussian``: s' = mu(s, a) + m(s, a) + sigma(s, a) xi (a ``ConditionalFlow`` with no coupling);
* ``flow``: s' = mu(s, a) + f(xi; (s, a)), rational-quadratic spline layers then location-scale.

On held-out transitions (the ``oracle`` row is the true model with the true xi) it reports:

* the log-likelihood per transition, log p(s' | s, a);
* how Gaussian the inferred xi = f^-1(s' - mu(s, a); (s, a)) (``mbpo.noise_inference``) is: mean,
  std, skewness, excess kurtosis and the Kolmogorov-Smirnov distance to N(0, 1) (the 5 % critical
  value is ~1.36 / sqrt(n)), and its RMS distance to the true xi;
* the SVG(1) value gradient of each transition at the inferred noise,
  g = d/da [r(s, a) + gamma V(s'(s, a, xi))], with r = -(s^2 + 0.1 a^2) and V(s') = -s'^2,
  against the same gradient with the true noise, where ds'/da = B + dw/da and
  dw/da = -(dF/da) / (dF/dw) at the observed w: the relative RMS error per transition (over all
  transitions, and over the 95 % with the highest true density, i.e. without the gaps between the
  modes), the median absolute error over the median |g|, and the error of the batch mean (the
  SVG(1) estimate) in standard errors of the true batch mean.

Runs in float64 (Phi^-1(F) of a tail sample needs it). Run as

    python -m experiments.flow_noise_inference [--preset cpu] [--out PATH.json]
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm

from experiments import harness
from mbpo.dynamics import FunctionDynamics, State
from mbpo.flows import ConditionalFlow, fit_flow, flow_dynamics
from mbpo.noise_inference import infer_dynamics_noise
from mbpo.types import Array, Float, PRNGKey


@dataclasses.dataclass(frozen=True, kw_only=True)
class Task:
    """The bimodal-noise system (see the module docstring).

    Attributes:
      A, B: the linear mean s' = A s + B a.
      k: slope of the mode weight p(a) = sigmoid(k a).
      m_0, m_1: the mode offset m(s) = m_0 + m_1 tanh(s).
      sigma: the std of each mode.
      gamma: the discount of the one-step value.
    """

    A: float = 0.9
    B: float = 0.5
    k: float = 2.0
    m_0: float = 0.5
    m_1: float = 0.25
    sigma: float = 0.1
    gamma: float = 0.9


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    """The sizes of one run; validated when built.

    Attributes:
      n_train: training transitions per seed, >= 1.
      n_test: held-out transitions per seed, >= 2.
      seeds: independent data sets and fits, >= 1.
      steps: Adam steps of each fit, >= 1.
      batch_size: transitions per Adam step (drawn with replacement), >= 1.
      learning_rate: Adam's step size, > 0.
      hidden: the conditioners' hidden sizes.
      num_layers: spline layers of the flow model, >= 1.
      num_bins: bins of each spline, >= 2.
    """

    n_train: int
    n_test: int
    seeds: int
    steps: int
    batch_size: int = 512
    learning_rate: float = 3e-3
    hidden: tuple[int, ...] = (32, 32)
    num_layers: int = 2
    num_bins: int = 8

    def __post_init__(self) -> None:
        minimum = {
            "n_train": 1,
            "n_test": 2,
            "seeds": 1,
            "steps": 1,
            "batch_size": 1,
            "num_layers": 1,
            "num_bins": 2,
        }
        for name, low in minimum.items():
            harness.check_int(name, getattr(self, name), low)
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")


PRESETS: dict[str, Preset] = {
    # A few minutes on a 2-core CPU, most of it the flow fits.
    "cpu": Preset(n_train=4096, n_test=4096, seeds=3, steps=3000),
}


class Transitions(NamedTuple):
    """A batch of transitions of the task, with the noise that produced them."""

    s: Float[Array, " N"]
    a: Float[Array, " N"]
    w: Float[Array, " N"]
    xi: Float[Array, " N"]


# --- the true model ------------------------------------------------------------------------
def mode_weight_and_offset(task: Task, s, a):
    return jax.nn.sigmoid(task.k * a), task.m_0 + task.m_1 * jnp.tanh(s)


def true_cdf(task: Task, s, a, w):
    """F(w | s, a) = p Phi((w - m) / sigma) + (1 - p) Phi((w + m) / sigma)."""
    p, m = mode_weight_and_offset(task, s, a)
    return p * norm.cdf((w - m) / task.sigma) + (1 - p) * norm.cdf((w + m) / task.sigma)


def true_log_prob(task: Task, s, a, w):
    """log p(s' | s, a) = log dF/dw at w = s' - A s - B a."""
    p, m = mode_weight_and_offset(task, s, a)
    upper = jnp.log(p) + norm.logpdf(w, m, task.sigma)
    lower = jnp.log1p(-p) + norm.logpdf(w, -m, task.sigma)
    return jnp.logaddexp(upper, lower)


def true_dw_da(task: Task, s, a, w):
    """dw/da at fixed xi: F(w(a) | s, a) = Phi(xi) gives dw/da = -(dF/da) / (dF/dw)."""
    dF_da = jax.grad(true_cdf, argnums=2)(task, s, a, w)
    return -dF_da / jnp.exp(true_log_prob(task, s, a, w))


def sample_transitions(task: Task, key: PRNGKey, n: int) -> Transitions:
    k_s, k_a, k_mode, k_n = jax.random.split(key, 4)
    s = jax.random.normal(k_s, (n,))
    a = jax.random.uniform(k_a, (n,), minval=-1.0, maxval=1.0)
    p, m = mode_weight_and_offset(task, s, a)
    upper = jax.random.bernoulli(k_mode, p)
    w = jnp.where(upper, m, -m) + task.sigma * jax.random.normal(k_n, (n,))
    xi = norm.ppf(jax.vmap(true_cdf, (None, 0, 0, 0))(task, s, a, w))
    return Transitions(s, a, w, xi)


# --- the models ----------------------------------------------------------------------------
def reward(s, a, s_next):
    return -(jnp.sum(s**2) + 0.1 * jnp.sum(a**2))


def value(s):
    return -jnp.sum(s**2)


def models(preset: Preset) -> dict[str, ConditionalFlow]:
    """The two residual models; init_std 0.5 is about the residual's std."""
    common = {"dim": 1, "context_dim": 2, "hidden": preset.hidden, "init_std": 0.5}
    return {
        "gaussian": ConditionalFlow(num_layers=0, **common),
        "flow": ConditionalFlow(num_layers=preset.num_layers, num_bins=preset.num_bins, **common),
    }


def make_dynamics(task: Task, flow: ConditionalFlow, params) -> FunctionDynamics:
    return flow_dynamics(
        lambda s, a, _: task.A * s + task.B * a,
        reward,
        lambda key: jax.random.normal(key, (1,)),
        flow=flow,
        flow_params=params,
        action_size=1,
    )


def _states(s: Float[Array, "N 1"]) -> State:
    """A batch of :class:`State` at the state vectors ``s`` (the observation is the state)."""
    n = s.shape[0]
    zero = jnp.zeros(n, s.dtype)
    return State(
        x=s, obs=s, reward=zero, done=zero, t=jnp.zeros(n, jnp.int32), nan_action=jnp.zeros(n, bool)
    )


def svg1_gradients(task: Task, dynamics: FunctionDynamics, data: Transitions) -> dict[str, Array]:
    """Per transition: the log-likelihood, the inferred xi and g = d/da [r + gamma V(s')] at it."""
    s, a = data.s[:, None], data.a[:, None]
    state = _states(s)
    next_state = _states(task.A * s + task.B * a + data.w[:, None])
    xi = infer_dynamics_noise(dynamics, state, a, next_state)

    def q(a_t, state_t, xi_t):
        next_t = dynamics.step(state_t, a_t, xi_t)
        return next_t.reward + task.gamma * value(next_t.x)

    return {
        "log_prob": jax.vmap(dynamics.log_prob)(state, a, next_state),
        "xi": xi[:, 0],
        "gradient": jax.vmap(jax.grad(q))(a, state, xi)[:, 0],
    }


def oracle(task: Task, data: Transitions) -> dict[str, Array]:
    """The same quantities with the true model and the true noise."""
    s_next = task.A * data.s + task.B * data.a + data.w
    ds_da = task.B + jax.vmap(true_dw_da, (None, 0, 0, 0))(task, data.s, data.a, data.w)
    gradient = -0.2 * data.a + task.gamma * (-2 * s_next) * ds_da
    return {
        "log_prob": jax.vmap(true_log_prob, (None, 0, 0, 0))(task, data.s, data.a, data.w),
        "xi": data.xi,
        "gradient": gradient,
    }


# --- statistics ----------------------------------------------------------------------------
def ks_distance(x: np.ndarray) -> float:
    """sup_x |F_n(x) - Phi(x)|, the Kolmogorov-Smirnov distance to N(0, 1)."""
    x = np.sort(x)
    n = x.size
    cdf = np.asarray(norm.cdf(x))
    return float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))


def summarize(found: dict[str, Array], truth: dict[str, Array]) -> dict[str, float]:
    """The numbers of one model on one held-out set (see the module docstring)."""
    xi, xi_true = np.asarray(found["xi"]), np.asarray(truth["xi"])
    g, g_true = np.asarray(found["gradient"]), np.asarray(truth["gradient"])
    centred = (xi - xi.mean()) / xi.std()
    standard_error = g_true.std(ddof=1) / np.sqrt(g_true.size)
    # The 95 % of transitions where the true density is highest: outside them lie the gaps between
    # the modes, where dw/da = -(dF/da) / p(w) is large and a fitted model's derivative is least
    # constrained by data.
    core = np.asarray(truth["log_prob"]) > np.quantile(np.asarray(truth["log_prob"]), 0.05)
    return {
        "log_likelihood": float(np.mean(found["log_prob"])),
        "xi_mean": float(xi.mean()),
        "xi_std": float(xi.std()),
        "xi_skewness": float(np.mean(centred**3)),
        "xi_excess_kurtosis": float(np.mean(centred**4) - 3),
        "xi_ks": ks_distance(xi),
        "xi_rms_error": float(np.sqrt(np.mean((xi - xi_true) ** 2))),
        "gradient_relative_rms_error": float(
            np.sqrt(np.mean((g - g_true) ** 2) / np.mean(g_true**2))
        ),
        "gradient_relative_rms_error_core": float(
            np.sqrt(np.mean((g - g_true)[core] ** 2) / np.mean(g_true[core] ** 2))
        ),
        "gradient_median_relative_error": float(
            np.median(np.abs(g - g_true)) / np.median(np.abs(g_true))
        ),
        "mean_gradient_error_se": float((g.mean() - g_true.mean()) / standard_error),
        "mean_gradient": float(g.mean()),
    }


def run_seed(task: Task, preset: Preset, seed: int) -> list[dict]:
    """Fits both models on one data set and evaluates them (and the oracle) on held-out data."""
    key_train, key_test, key_init = jax.random.split(jax.random.key(seed), 3)
    train = sample_transitions(task, key_train, preset.n_train)
    test = sample_transitions(task, key_test, preset.n_test)
    truth = oracle(task, test)
    rows = [{"model": "oracle", "seed": seed, "fit_s": 0.0, **summarize(truth, truth)}]
    context = jnp.stack([train.s, train.a], -1)
    for name, flow in models(preset).items():
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), flow.init(key_init))
        start = time.perf_counter()
        fit = fit_flow(
            flow,
            params,
            train.w[:, None],
            context,
            steps=preset.steps,
            learning_rate=preset.learning_rate,
            batch_size=preset.batch_size,
            key=key_init,
        )
        jax.block_until_ready(fit)
        fit_s = time.perf_counter() - start
        found = jax.jit(svg1_gradients, static_argnums=0)(
            task, make_dynamics(task, flow, fit.params), test
        )
        rows.append(
            {
                "model": name,
                "seed": seed,
                "fit_s": fit_s,
                "train_nll_final": float(fit.loss_t[-1]),
                **summarize(found, truth),
            }
        )
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean and std over seeds of every number, per model."""
    out = []
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == model]
        keys = [k for k, v in mine[0].items() if isinstance(v, float)]
        summary = {"model": model, "seeds": len(mine)}
        for key in keys:
            values = np.array([row[key] for row in mine])
            summary[key] = float(values.mean())
            summary[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        out.append(summary)
    return out


COLUMNS = [  # (key, header, format)
    ("log_likelihood", "held-out LL", "{:+.3f}"),
    ("xi_skewness", "xi skew", "{:+.2f}"),
    ("xi_excess_kurtosis", "xi ex.kurt", "{:+.2f}"),
    ("xi_ks", "xi KS", "{:.3f}"),
    ("xi_rms_error", "|xi - xi*|", "{:.3f}"),
    ("gradient_relative_rms_error", "g rel RMS", "{:.3f}"),
    ("gradient_relative_rms_error_core", "g rel RMS 95%", "{:.3f}"),
    ("gradient_median_relative_error", "g median rel", "{:.3f}"),
    ("mean_gradient_error_se", "mean g err/SE", "{:+.1f}"),
]
WIDTH = 17


def format_table(report: dict) -> str:
    """The summary as fixed-width text: mean over seeds (std over seeds in brackets)."""
    preset = report["config"]
    lines = [
        *harness.report_lines(report),
        f"date {report['date']}",
        f"{preset['seeds']} seeds x ({preset['n_train']} train, {preset['n_test']} held-out) "
        "transitions; "
        + f"KS 5% critical value {1.36 / np.sqrt(preset['n_test']):.3f}; mean over seeds [std]",
        "",
        f"{'model':<10}" + "".join(f"{header:>{WIDTH}}" for _, header, _ in COLUMNS),
    ]
    for row in report["summary"]:
        cells = [f"{fmt.format(row[key])} [{row[key + '_std']:.2g}]" for key, _, fmt in COLUMNS]
        lines.append(f"{row['model']:<10}" + "".join(f"{cell:>{WIDTH}}" for cell in cells))
    return "\n".join(lines)


EXPERIMENT = harness.Experiment("experiments.flow_noise_inference", __doc__, PRESETS)


def main(argv: list[str] | None = None) -> None:
    run = EXPERIMENT.parse(argv)
    jax.config.update("jax_enable_x64", True)
    task = Task()
    rows = [row for seed in range(run.preset.seeds) for row in run_seed(task, run.preset, seed)]
    report = {
        **run.header(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "task": dataclasses.asdict(task),
        "summary": aggregate(rows),
        "rows": rows,
    }
    run.finish(report, format_table)


if __name__ == "__main__":
    main()
