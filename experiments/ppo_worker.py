"""Brax's own PPO (``brax.training.agents.ppo.train``) on one seed, timed; prints one JSON line.

The reference side of :mod:`experiments.bench_vs_brax_ppo`. It runs in the jax-0.9 environment of
:mod:`experiments.apg_worker`, for the same reason and with the same imports (see there for how
to create it). Run from the repository root as

    /work/venv-apg/bin/python -m experiments.ppo_worker --env halfcheetah --num-envs 64 \\
        --unroll-length 20 --num-minibatches 16 --update-epochs 8 --env-steps 1024000 --seed 0

How brax's PPO is driven: ``train(environment, num_timesteps=env_steps, episode_length,
num_envs, unroll_length, batch_size=num_envs / num_minibatches, num_minibatches,
num_updates_per_batch=update_epochs, learning_rate, entropy_cost, discounting, gae_lambda,
clipping_epsilon, reward_scaling, normalize_observations, normalize_advantage,
bootstrap_on_timeout=False, num_evals, num_eval_envs, deterministic_eval, seed, network_factory=
make_ppo_networks(policy and value hidden sizes, activation))``: with that batch size every
training step collects one window of ``unroll_length`` steps of all ``num_envs`` envs and splits
it into ``num_minibatches``, as mbpo's PPO does. Timing and output as
:mod:`experiments.sac_worker` (``env_steps_per_s`` over the epochs that did not compile).
"""

from __future__ import annotations

import dataclasses

from experiments import _baselines, harness
from experiments._baselines import brax_option


@dataclasses.dataclass(frozen=True, kw_only=True)
class PpoSettings(_baselines.WorkerSettings):
    """One brax PPO run; the help of each field says which ``ppo.train`` argument it sets."""

    worker = "ppo_worker.py"

    env_steps: int = brax_option(40960, "Env steps in all", "num_timesteps")
    unroll_length: int = brax_option(20, "Steps of each env per training step", "unroll_length")
    num_minibatches: int = brax_option(16, "Minibatches per pass", "num_minibatches")
    update_epochs: int = brax_option(8, "Passes over each batch", "num_updates_per_batch")
    entropy_cost: float = brax_option(1e-2, "Entropy bonus weight", "entropy_cost")
    discount: float = brax_option(0.97, "Discount gamma", "discounting")
    gae_lambda: float = brax_option(0.95, "GAE lambda", "gae_lambda")
    clip: float = brax_option(0.3, "Ratio clipping epsilon", "clipping_epsilon")
    reward_scaling: float = brax_option(1.0, "Reward multiplier", "reward_scaling")
    normalize_advantage: bool = brax_option(True, "Normalize advantages", "normalize_advantage")

    def __post_init__(self):
        super().__post_init__()
        harness.check_positive(self, "env_steps", "unroll_length", "num_minibatches")
        harness.check_positive(self, "update_epochs")
        if self.num_envs % self.num_minibatches:
            raise ValueError(
                f"num_minibatches={self.num_minibatches} must divide num_envs={self.num_envs} "
                "(brax's batch_size is their ratio)"
            )

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.unroll_length


parse = PpoSettings.parse


def run(settings: PpoSettings) -> dict:
    """Trains brax PPO with ``settings`` and returns the report (see the module docstring)."""
    report, progress = _baselines.run_agent(
        settings,
        "ppo",
        network_sizes={
            "policy_hidden_layer_sizes": settings.hidden,
            "value_hidden_layer_sizes": settings.hidden,
        },
        batch_size=settings.num_envs // settings.num_minibatches,
        # Not a setting: true reads info['time_out'], which brax 0.14's EpisodeWrapper never sets
        # (KeyError after compiling); false masks a time-out step out of GAE by its truncation.
        bootstrap_on_timeout=False,
    )
    evals = report["evals"]
    epoch_steps = (evals[-1]["env_steps"] - evals[0]["env_steps"]) / max(len(evals) - 1, 1)
    return {**report, **_baselines.env_step_rates(progress, epoch_steps)}


main = _baselines.worker_entry(PpoSettings)


if __name__ == "__main__":
    main()
