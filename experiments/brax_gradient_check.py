"""Are a Brax pipeline's first-order gradients usable, and over how many steps? Autodiff against
central finite differences of the same n-step return, in float64, per pipeline and horizon.

For each task, pipeline and horizon n, with ``num_envs`` start states and a fixed open-loop
perturbation e_t ~ N(0, noise_std^2), the return of the actions a_t = tanh(u + e_t),

    R_n(u) = mean over envs of sum_{t<n} r_t,

is differentiated at u = 0 by ``jax.grad`` through the physics (the first-order estimate every
SHAC-like method takes) and by central differences (R(u + h d_i) - R(u - h d_i)) / 2h along each
action coordinate d_i, for several h. Where the return is smooth the two agree for every small h;
through stiff contact the autodiff gradient is the derivative of one branch of a nearly
discontinuous function: it stops matching finite differences at any h, and its norm grows
with n (the empirical bias of first-order gradients, Suh et al. 2022). The table gives the
relative error |g_ad - g_fd(h)| / |g_fd(h)| per h and |g_ad|, so a user can choose a pipeline and
a horizon (SHAC's 32, AHAC's 8-64) before paying for a run.

    python -m experiments.brax_gradient_check --preset cpu \
        --out experiments/results/brax_gradient_check.json
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from experiments import harness
from mbpo.files import write_json


@dataclasses.dataclass(frozen=True)
class Preset:
    """What is measured.

    Attributes:
      tasks: Brax task names.
      backends: their physics pipelines.
      horizons: the n of the n-step returns.
      num_envs: start states averaged over.
      noise_std: standard deviation of the open-loop perturbation of the actions.
      steps: the finite-difference steps h.
    """

    tasks: tuple[str, ...]
    backends: tuple[str, ...]
    horizons: tuple[int, ...]
    num_envs: int
    noise_std: float
    steps: tuple[float, ...]

    def __post_init__(self):
        harness.check_positive(self, "num_envs")
        from mbpo.dynamics.brax_env import BACKENDS

        if unknown := set(self.backends) - set(BACKENDS):
            raise ValueError(f"unknown backends {sorted(unknown)}; allowed: {', '.join(BACKENDS)}")
        if self.noise_std <= 0:
            raise ValueError(f"noise_std must be > 0, got {self.noise_std}")
        if not self.horizons or min(self.horizons) < 1 or not self.steps or min(self.steps) <= 0:
            raise ValueError(
                f"horizons must be ints >= 1 and steps > 0, got {self.horizons}, {self.steps}"
            )


PRESETS = {
    "cpu": Preset(
        tasks=("halfcheetah",),
        backends=("positional", "spring"),
        horizons=(1, 4, 8, 16, 32, 64),
        num_envs=8,
        noise_std=0.3,
        steps=(1e-1, 1e-2, 1e-3, 1e-5),
    ),
}
PRESETS["gpu"] = dataclasses.replace(
    PRESETS["cpu"],
    tasks=("halfcheetah", "ant", "hopper"),
    backends=("positional", "spring", "generalized"),
    num_envs=64,
)


def check(task: str, backend: str, n: int, preset: Preset, seed: int = 0) -> dict:
    """One row: autodiff against finite differences of R_n on ``task[backend]``."""
    import jax
    import jax.numpy as jnp

    import envs

    dynamics = envs.make(task, backend=backend)
    states = jax.vmap(dynamics.reset)(jax.random.split(jax.random.key(seed), preset.num_envs))
    states = jax.tree.map(
        lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, states
    )
    shape = (preset.num_envs, n, dynamics.action_size)
    perturbation = preset.noise_std * jax.random.normal(jax.random.key(seed + 1), shape)
    xi = jnp.zeros((0,))

    def ret(u):
        def one(state, e):
            def body(s, e_t):
                s = dynamics.step(s, jnp.tanh(u + e_t), xi)
                return s, s.reward

            return jnp.sum(jax.lax.scan(body, state, e)[1])

        return jnp.mean(jax.vmap(one)(states, perturbation))

    start = time.perf_counter()
    u = jnp.zeros(dynamics.action_size)
    value, grad = jax.block_until_ready(jax.jit(jax.value_and_grad(ret))(u))
    compile_s = time.perf_counter() - start
    returns = jax.jit(ret)
    eye = np.eye(dynamics.action_size)
    row = {
        "task": task,
        "backend": backend,
        "n": n,
        "return": float(value),
        "grad_norm": float(jnp.linalg.norm(grad)),
        "compile_and_first_s": round(compile_s, 1),
        "relative_error": {},
    }
    for h in preset.steps:
        fd = np.array([(returns(u + h * d) - returns(u - h * d)) / (2 * h) for d in eye])
        row["relative_error"][f"{h:g}"] = float(
            np.linalg.norm(np.asarray(grad) - fd) / max(np.linalg.norm(fd), 1e-300)
        )
    return row


def measure(preset: Preset, report=None) -> tuple[list[dict], list[dict]]:
    """Every row; a pipeline that fails is a finding (``failures``), not a crash."""
    import jax

    jax.config.update("jax_enable_x64", True)
    rows, failures = [], []
    for task in preset.tasks:
        for backend in preset.backends:
            for n in preset.horizons:
                try:
                    rows.append(check(task, backend, n, preset))
                except Exception as error:
                    failures.append(
                        {"task": task, "backend": backend, "n": n, "error": repr(error)[:400]}
                    )
                    break
                print(format_rows(rows[-1:], preset, header=not rows[:-1]), flush=True)
                if report:
                    report(rows, failures)
    return rows, failures


def format_rows(rows: list[dict], preset: Preset, header: bool = True) -> str:
    steps = [f"{h:g}" for h in preset.steps]
    lines = []
    if header:
        lines += [
            "| task | pipeline | n | |g_ad| | "
            + " | ".join(f"rel. err. h={h}" for h in steps)
            + " |",
            "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in steps) + " |",
        ]
    for r in rows:
        errors = " | ".join(f"{r['relative_error'][h]:.3g}" for h in steps)
        lines.append(
            f"| {r['task']} | {r['backend']} | {r['n']} | {r['grad_norm']:.3g} | {errors} |"
        )
    return "\n".join(lines)


EXPERIMENT = harness.Experiment("experiments.brax_gradient_check", __doc__, PRESETS)


def main(argv: list[str] | None = None) -> None:
    run = EXPERIMENT.parse(argv)

    def report(rows, failures):
        return {**run.header(), "rows": rows, "failures": failures}

    def partial(rows, failures):  # rewritten after every row: a cut run keeps what it measured
        if run.out:
            write_json(run.out, report(rows, failures))

    rows, failures = measure(run.preset, report=partial)
    run.finish(report(rows, failures), lambda rep: format_rows(rep["rows"], run.preset))


if __name__ == "__main__":
    main()
