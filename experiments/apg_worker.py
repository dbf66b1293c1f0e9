"""Brax's own APG (``brax.training.agents.apg.train``) on one seed, timed; prints one JSON line.

The reference side of :mod:`experiments.bench_vs_brax_apg`. It runs under a second virtual
environment with jax 0.9: brax 0.14.2's training agents call ``jax.device_put_replicated``, which
jax 0.10 removed. For the same reason it imports nothing from mbpo; from this repository only
:mod:`experiments._baselines` (standard library only). Create that environment once (about 1.5
minutes):

    python3.11 -m venv /work/venv-apg
    /work/venv-apg/bin/pip install "jax[cpu]<0.10" brax==0.14.2

(on a CUDA machine ``"jax[cuda12]<0.10"``; this installed jax 0.9.2, the newest 0.9.*). Run from
the repository root as

    /work/venv-apg/bin/python -m experiments.apg_worker --env reacher --backend positional \\
        --num-envs 32 --episode-length 128 --horizon 16 --num-updates 60 --num-evals 5 --seed 0

How brax's APG is driven: ``train(environment, episode_length, policy_updates=num_updates,
horizon_length=horizon, num_envs, num_evals, learning_rate, adam_b=(b1, b2), use_schedule,
max_gradient_norm, normalize_observations, deterministic_eval, num_eval_envs, seed,
network_factory=make_apg_networks(hidden_layer_sizes=hidden, activation, layer_norm))``. It runs
``num_evals - 1`` training epochs of ``num_updates / (num_evals - 1)`` updates (one compiled
``lax.scan`` each) and evaluates after each, and once before training. The defaults here match
mbpo's ``UnrollTrainerConfig`` for ``estimator="bpo"`` where brax lets them (tanh layers without
layer norm, constant learning rate, global-norm clipping at 1), not brax's own defaults (elu with
layer norm, learning rate decayed by 0.997 per update, no global-norm clipping).

How it is timed: brax reports each epoch's training wall time (``training/walltime``, the
compiled scan and a ``block_until_ready``, evaluation excluded). A listener on jax's
backend-compile events marks the epochs during which anything but the evaluation program compiled
(with jax 0.9, the first *two* epochs do: the second call of the pmapped epoch sees differently
sharded inputs and compiles again). ``time_per_update_s`` is the summed time of the other epochs
over their updates; it is None when no epoch ran without compiling (raise ``--num-evals``).
``--compilation-cache DIR`` shares compiled programs between seeds through jax's persistent cache:
it shortens the later runs, and a program loaded from it still counts as a compile.

Output: one JSON line on stdout (everything else the libraries print goes to stderr) with the
settings, ``evals`` (``updates``, ``eval_return``, ``eval_return_std`` of each evaluation),
``eval_return`` (the last), ``epoch_times_s``, ``epoch_compiled``, ``compiles`` (``[name, s]``
of each program compiled before each evaluation), ``compile_s`` (lowering and XLA compile time of
every program), ``time_per_update_s``, ``steady_updates``, ``train_s`` (the ``train`` call) and
``total_s`` (the process, imports included).
"""

from __future__ import annotations

import dataclasses
import functools
import time

from experiments._baselines import (
    BraxProgress,
    import_jax,
    option,
    parse_settings,
    worker_header,
    worker_main,
)

START = time.perf_counter()

ACTIVATIONS = ("tanh", "elu", "relu", "swish")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ApgSettings:
    """One brax APG run; the help of each field says which ``apg.train`` argument it sets."""

    env: str = option("reacher", "Brax environment name (``brax.envs.get_environment``).")
    backend: str = option(
        "positional", "Brax physics pipeline: generalized | positional | spring | mjx."
    )
    num_envs: int = option(32, "Parallel training environments (``num_envs``).")
    episode_length: int = option(
        128, "Steps before an environment is truncated and reset, in training and evaluation."
    )
    horizon: int = option(16, "Steps of each differentiated window (``horizon_length``).")
    num_updates: int = option(
        60, "Policy updates (``policy_updates``); a multiple of ``num_evals - 1``."
    )
    num_evals: int = option(
        5,
        "Evaluations, the one before training included (``num_evals``); >= 4, since with "
        "jax 0.9 the first two training epochs compile.",
    )
    learning_rate: float = option(2e-3, "Adam learning rate (``learning_rate``).")
    adam_b1: float = option(0.7, "Adam beta1 (``adam_b[0]``).")
    adam_b2: float = option(0.95, "Adam beta2 (``adam_b[1]``).")
    use_schedule: bool = option(
        False,
        "Decay the learning rate by 0.997 per update (``use_schedule``; brax's default is True).",
    )
    max_grad_norm: float = option(
        1.0,
        "Global-norm gradient clipping (``max_gradient_norm``; brax also always clips each "
        "element to [-1, 1], a no-op once the global norm is <= 1).",
    )
    hidden: tuple[int, ...] = option(
        (64, 64),
        "Hidden layer sizes of the policy (``hidden_layer_sizes`` of ``make_apg_networks``).",
    )
    activation: str = option(
        "tanh", "Hidden activation: tanh | elu | relu | swish (brax's default is elu)."
    )
    layer_norm: bool = option(False, "Layer norm after each hidden layer (brax's default is True).")
    normalize_observations: bool = option(
        True, "Running mean/std normalization of observations (``normalize_observations``)."
    )
    deterministic_eval: bool = option(
        True, "Evaluate the mode tanh(mu) rather than a sample (``deterministic_eval``)."
    )
    eval_envs: int = option(128, "Episodes per evaluation (``num_eval_envs``).")
    seed: int = option(0, "Random seed (``seed``).")
    compilation_cache: str | None = option(
        None, "Folder of jax's persistent compilation cache; none: no cache."
    )

    def __post_init__(self):
        for name in ("num_envs", "episode_length", "horizon", "num_updates", "eval_envs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_evals < 4:
            raise ValueError(
                f"num_evals must be >= 4 (the first two epochs compile), got {self.num_evals}"
            )
        if self.num_updates % (self.num_evals - 1):
            raise ValueError(
                f"num_updates={self.num_updates} must be a multiple of num_evals - 1 = "
                f"{self.num_evals - 1} (brax rounds the updates per epoch)"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; allowed: {', '.join(ACTIVATIONS)}"
            )
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be a non-empty tuple of sizes >= 1, got {self.hidden}")
        if min(self.learning_rate, self.max_grad_norm) <= 0 or not (
            0 <= self.adam_b1 < 1 and 0 <= self.adam_b2 < 1
        ):
            raise ValueError(
                "need learning_rate > 0, max_grad_norm > 0 and 0 <= adam_b1, adam_b2 < 1"
            )

    @property
    def updates_per_epoch(self) -> int:
        return self.num_updates // (self.num_evals - 1)


def parse(argv: list[str] | None = None) -> ApgSettings:
    """``--field-name`` options for the fields of :class:`ApgSettings`; bad values exit with 2."""
    return parse_settings(
        ApgSettings, argv, prog="apg_worker.py", description=__doc__.splitlines()[0]
    )


def run(settings: ApgSettings) -> dict:
    """Trains brax APG with ``settings`` and returns the report (see the module docstring)."""
    import_jax(settings.compilation_cache)
    from brax import envs
    from brax.training.agents.apg import networks as apg_networks
    from brax.training.agents.apg import train as apg
    from flax import linen

    progress = BraxProgress(
        label=f"apg seed {settings.seed}",
        x_name="updates",
        x_of_step=lambda step: step * settings.updates_per_epoch,
    )
    network_factory = functools.partial(
        apg_networks.make_apg_networks,
        hidden_layer_sizes=settings.hidden,
        activation=getattr(linen, settings.activation),
        layer_norm=settings.layer_norm,
    )
    start = time.perf_counter()
    apg.train(
        environment=envs.get_environment(settings.env, backend=settings.backend),
        episode_length=settings.episode_length,
        policy_updates=settings.num_updates,
        horizon_length=settings.horizon,
        num_envs=settings.num_envs,
        num_evals=settings.num_evals,
        num_eval_envs=settings.eval_envs,
        learning_rate=settings.learning_rate,
        adam_b=(settings.adam_b1, settings.adam_b2),
        use_schedule=settings.use_schedule,
        max_gradient_norm=settings.max_grad_norm,
        normalize_observations=settings.normalize_observations,
        deterministic_eval=settings.deterministic_eval,
        seed=settings.seed,
        network_factory=network_factory,
        progress_fn=progress,
    )
    train_s = time.perf_counter() - start
    steady_updates = len(progress.steady_times()) * settings.updates_per_epoch
    return {
        **worker_header("brax.training.agents.apg", settings),
        "updates_per_epoch": settings.updates_per_epoch,
        **progress.report(),
        "time_per_update_s": sum(progress.steady_times()) / steady_updates
        if steady_updates
        else None,
        "steady_updates": steady_updates,
        "train_s": train_s,
        "total_s": time.perf_counter() - START,
    }


def main(argv: list[str] | None = None) -> None:
    worker_main(parse, run, argv)


if __name__ == "__main__":
    main()
