"""Brax's own SAC (``brax.training.agents.sac.train``) on one seed, timed; prints one JSON line.

The reference side of :mod:`experiments.bench_vs_brax_sac`. It runs in the jax-0.9 environment
of :mod:`experiments.apg_worker`, for the same reason and with the same imports (see there for
how to create it). Run from the repository root as

    /work/venv-apg/bin/python -m experiments.sac_worker --env inverted_pendulum \\
        --backend positional --num-envs 16 --env-steps 14336 --warmup-steps 2048 --num-evals 7
        --seed 0

How brax's SAC is driven: ``train(environment, num_timesteps=env_steps, episode_length,
action_repeat=1, num_envs, num_eval_envs, learning_rate, discounting, seed, batch_size, num_evals,
normalize_observations, reward_scaling, tau, min_replay_size=warmup_steps, max_replay_size,
grad_updates_per_step, deterministic_eval, network_factory=make_sac_networks(hidden_layer_sizes,
activation))``. It first fills the replay buffer with ``warmup_steps`` env steps of its initial
policy (one compiled ``lax.scan``, no gradient steps), then runs ``num_evals - 1`` training epochs
of ``(env_steps - warmup_steps) / ((num_evals - 1) num_envs)`` training steps (one compiled
``lax.scan`` each), a training step being one step of every env and then
``grad_updates_per_step`` gradient steps on batches of ``batch_size``; it evaluates before the
warmup and after each epoch.

How it is timed: brax reports the cumulative training wall time (``training/walltime``: the
warmup, then each epoch's compiled scan and a ``block_until_ready``, evaluation excluded); the
first epoch's time here includes the warmup. A listener on jax's compile events marks the epochs
during which anything but the evaluation programs compiled (with jax 0.9.2 only the first does).
``env_steps_per_s`` is the env steps of the other epochs over their summed time; it is None when
every epoch compiled (raise ``--num-evals``). ``fastest_env_steps_per_s`` is the rate of the
fastest of those epochs (on a shared machine, the one least slowed by others). ``compile_s``
sums the lowering and XLA compile time of every program of the run, evaluation included (not
the tracing: see ``experiments._baselines.COMPILE_PHASES``). ``--compilation-cache DIR`` shares
compiled programs between seeds through jax's persistent cache: it shortens the later runs, and a
program loaded from it still counts as a compile.

Output: one JSON line on stdout (everything else the libraries print goes to stderr) with the
settings, ``evals`` (``env_steps``, ``eval_return``, ``eval_return_std`` of each evaluation),
``eval_return`` (the last), ``epoch_times_s``, ``epoch_compiled``, ``compiles`` (``[name, s]`` of
each program compiled before each evaluation), ``compile_s``, ``env_steps_per_s``,
``fastest_env_steps_per_s``, ``steady_env_steps``, ``train_s`` (the ``train`` call) and ``total_s``
(the process, imports
included).
"""

from __future__ import annotations

import dataclasses

from experiments import _baselines, harness
from experiments._baselines import brax_option
from mbpo.cli import check_interval


@dataclasses.dataclass(frozen=True, kw_only=True)
class SacSettings(_baselines.WorkerSettings):
    """One brax SAC run; the help of each field says which ``sac.train`` argument it sets."""

    worker = "sac_worker.py"

    env_steps: int = brax_option(
        14336,
        "Env steps in all, the warmup included; env_steps - warmup_steps must be a multiple of "
        "(num_evals - 1) num_envs",
        "num_timesteps",
    )
    warmup_steps: int = brax_option(
        2048,
        "Env steps of the initial policy that fill the replay buffer before any gradient step; "
        "a multiple of num_envs",
        "min_replay_size",
    )
    batch_size: int = brax_option(256, "Transitions per gradient step", "batch_size")
    grad_updates_per_step: int = brax_option(
        8, "Gradient steps per step of all envs", "grad_updates_per_step"
    )
    discount: float = brax_option(0.99, "Discount gamma", "discounting")
    tau: float = brax_option(0.005, "Polyak rate of the target critics", "tau")
    max_replay_size: int = brax_option(100_000, "Replay buffer size", "max_replay_size")
    reward_scaling: float = brax_option(
        1.0, "Reward multiplier in the critic target", "reward_scaling"
    )

    def __post_init__(self):
        super().__post_init__()
        harness.check_positive(
            self, "env_steps", "warmup_steps", "batch_size", "grad_updates_per_step"
        )
        harness.check_positive(self, "max_replay_size")
        if self.warmup_steps % self.num_envs:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} must be a multiple of num_envs={self.num_envs} "
                "(brax rounds the warmup up to whole steps of all envs)"
            )
        per_epoch = (self.num_evals - 1) * self.num_envs
        if self.env_steps <= self.warmup_steps or (self.env_steps - self.warmup_steps) % per_epoch:
            raise ValueError(
                f"env_steps - warmup_steps = {self.env_steps - self.warmup_steps} must be a "
                f"positive multiple of (num_evals - 1) num_envs = {per_epoch} (brax rounds the "
                "steps per epoch up)"
            )
        check_interval(self, "(0, 1]", "discount", "tau")

    @property
    def steps_per_epoch(self) -> int:
        """Training steps (steps of all envs) per epoch."""
        return (self.env_steps - self.warmup_steps) // ((self.num_evals - 1) * self.num_envs)


parse = SacSettings.parse


def run(settings: SacSettings) -> dict:
    """Trains brax SAC with ``settings`` and returns the report (see the module docstring)."""
    report, progress = _baselines.run_agent(
        settings,
        "sac",
        action_repeat=1,
    )
    epoch_env_steps = settings.steps_per_epoch * settings.num_envs
    return {
        **report,
        **_baselines.env_step_rates(progress, epoch_env_steps),
        "steps_per_epoch": settings.steps_per_epoch,
        "steady_env_steps": len(progress.steady_times()) * epoch_env_steps,
    }


main = _baselines.worker_entry(SacSettings)


if __name__ == "__main__":
    main()
