"""Brax's own APG (``brax.training.agents.apg.train``) on one seed, timed; prints one JSON line.

The reference side of :mod:`experiments.bench_vs_brax_apg`. It runs under a second virtual
environment with jax 0.9: brax 0.14.2's training agents call ``jax.device_put_replicated``, which
jax 0.10 removed. For the same reason it imports from this repository only
:mod:`experiments._baselines`, :mod:`experiments.harness` and the jax-free :mod:`mbpo.cli` and
:mod:`mbpo.files`. Create that environment once (about 1.5 minutes):

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

from experiments import _baselines, harness
from experiments._baselines import brax_option
from mbpo.cli import option


@dataclasses.dataclass(frozen=True, kw_only=True)
class ApgSettings(_baselines.WorkerSettings):
    """One brax APG run; the help of each field says which ``apg.train`` argument it sets."""

    worker = "apg_worker.py"
    min_evals = 4  # its first two epochs compile

    horizon: int = brax_option(16, "Steps of each differentiated window", "horizon_length")
    num_updates: int = brax_option(
        60, "Policy updates; a multiple of ``num_evals - 1``", "policy_updates"
    )
    adam_b1: float = option(0.7, "Adam beta1 (``adam_b[0]``).")
    adam_b2: float = option(0.95, "Adam beta2 (``adam_b[1]``).")
    use_schedule: bool = brax_option(
        False,
        "Decay the learning rate by 0.997 per update (brax's default is True)",
        "use_schedule",
    )
    max_grad_norm: float = brax_option(
        1.0,
        "Global-norm gradient clipping (brax also always clips each element to [-1, 1], a no-op "
        "once the global norm is <= 1)",
        "max_gradient_norm",
    )
    layer_norm: bool = option(False, "Layer norm after each hidden layer (brax's default is True).")

    def __post_init__(self):
        super().__post_init__()
        harness.check_positive(self, "horizon", "num_updates")
        if self.num_updates % (self.num_evals - 1):
            raise ValueError(
                f"num_updates={self.num_updates} must be a multiple of num_evals - 1 = "
                f"{self.num_evals - 1} (brax rounds the updates per epoch)"
            )
        if self.max_grad_norm <= 0 or not (0 <= self.adam_b1 < 1 and 0 <= self.adam_b2 < 1):
            raise ValueError("need max_grad_norm > 0 and 0 <= adam_b1, adam_b2 < 1")

    @property
    def updates_per_epoch(self) -> int:
        return self.num_updates // (self.num_evals - 1)


parse = ApgSettings.parse


def run(settings: ApgSettings) -> dict:
    """Trains brax APG with ``settings`` and returns the report (see the module docstring)."""
    progress = _baselines.BraxProgress(
        label=f"apg seed {settings.seed}",
        x_name="updates",
        x_of_step=lambda step: step * settings.updates_per_epoch,
    )
    report, _ = _baselines.run_agent(
        settings,
        "apg",
        progress,
        network_kwargs={"layer_norm": settings.layer_norm},
        adam_b=(settings.adam_b1, settings.adam_b2),
    )
    steady_updates = len(progress.steady_times()) * settings.updates_per_epoch
    per_update = sum(progress.steady_times()) / steady_updates if steady_updates else None
    return {
        **report,
        "updates_per_epoch": settings.updates_per_epoch,
        "time_per_update_s": per_update,
        "steady_updates": steady_updates,
    }


main = _baselines.worker_entry(ApgSettings)


if __name__ == "__main__":
    main()
