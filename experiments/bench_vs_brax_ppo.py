"""Our PPO beside brax's PPO on the same Brax task: env steps per second and return at equal env
steps, seeds alternating.

    python -m experiments.bench_vs_brax_ppo --preset cpu --brax-python /work/venv-apg/bin/python \\
        --out experiments/results/bench_vs_brax_ppo_cpu.json

Both sides get the task and pipeline, ``num_envs`` envs each rolled ``unroll_length`` steps per
update (brax: ``batch_size = num_envs / num_minibatches``, so one training step collects one such
window), ``num_minibatches`` x ``update_epochs`` Adam steps per update on the clipped surrogate
(epsilon ``clip``), GAE(``gae_lambda``) (ours once per window, brax's recomputed for each minibatch
of env windows with the current value network; ours does that with ``advantages=minibatch``), the
discount, entropy cost, value weight 0.5, one learning rate, observation normalization, advantages
normalized per minibatch, time-outs that do not count as terminations (ours bootstraps v at a
time-out; brax masks the time-out step out of GAE with its ``truncation`` flag, as its
``bootstrap_on_timeout`` needs an ``info['time_out']`` that brax's own wrappers never set), policy
and value MLPs of ``hidden`` sizes (brax's ``make_ppo_networks`` with both sizes set; swish
activations on both sides: ours ``policy_activation``, ``value_activation``), and ``train_chunks``
chunks of ``chunk_updates`` updates, evaluated before training and after each chunk. What differs:
brax's value loss clips nothing either, but its policy is a tanh-normal with std softplus(.) + 0.001
and ours a tanh-squashed Gaussian with std exp(learned offset + a network head), clipped; its
entropy term is the distribution's (sampled), ours -log pi at the data's actions; ours resets an env
at the end of a window once it reached the time limit (windows run across it), brax's at the step.
Timing as :mod:`experiments.bench_vs_brax_sac`.
"""

from __future__ import annotations

import dataclasses

from experiments import _baselines, harness
from experiments.ppo_worker import PpoSettings
from mbpo.agents.ppo import PPOConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset(_baselines.BenchPreset):
    """One comparison; both sides get these settings (and those of
    :class:`experiments._baselines.BenchPreset`).

    Attributes:
      unroll_length: steps of each env per update.
      num_minibatches: minibatches of each update's window (divides num_envs).
      update_epochs: passes over each window.
      chunk_updates: updates per compiled chunk (brax: per epoch).
      train_chunks: chunks, each followed by an evaluation; >= 2 (brax's first compiles).
      discount, gae_lambda, clip, entropy_cost: PPO's.
      advantages: ours: :class:`mbpo.agents.ppo.PPOConfig`'s ``advantages``, its default
        "window"; "minibatch" is brax's way (advantages and value targets recomputed per
        minibatch of env windows): ``--set advantages=minibatch``.
      policy_activation, value_activation: ours: the networks' hidden activations (default:
        our PPO's, swish as brax's; until 2026-12-04 tanh and relu).
    """

    unroll_length: int
    num_minibatches: int
    update_epochs: int
    chunk_updates: int
    train_chunks: int
    discount: float = 0.97
    gae_lambda: float = 0.95
    clip: float = 0.3
    entropy_cost: float = 1e-2
    advantages: str = PPOConfig.advantages
    policy_activation: str = PPOConfig.policy_activation
    value_activation: str = PPOConfig.value_activation

    def __post_init__(self):
        super().__post_init__()
        harness.check_positive(self, "unroll_length", "num_minibatches", "update_epochs")
        harness.check_positive(self, "chunk_updates")
        if self.train_chunks < 2:
            raise ValueError(f"train_chunks must be >= 2, got {self.train_chunks}")
        if self.num_envs % self.num_minibatches:
            raise ValueError(
                f"num_minibatches={self.num_minibatches} must divide num_envs={self.num_envs}"
            )

    @property
    def chunk_env_steps(self) -> int:
        return self.chunk_updates * self.num_envs * self.unroll_length


# The brax measurement: halfcheetah, positional, 64 envs, unroll 20, 16 minibatches x 8
# epochs; 2 cores: about 1000 env steps/s for brax's side (compile and evaluations included).
_CPU = Preset(
    env="halfcheetah",
    num_envs=64,
    episode_length=1000,
    learning_rate=3e-4,
    unroll_length=20,
    num_minibatches=16,
    update_epochs=8,
    chunk_updates=40,
    train_chunks=5,
    eval_envs=16,
)
PRESETS: dict[str, Preset] = {
    "cpu": _CPU,
    # One GPU (not run yet): brax's halfcheetah envs and steps.
    "gpu": dataclasses.replace(_CPU, num_envs=2048, num_minibatches=32, chunk_updates=50),
}

SIDE = _baselines.BraxSide("brax", "Brax's PPO", "experiments.ppo_worker", "--brax-python")
EXPERIMENT, main = _baselines.script(__name__, __doc__, PRESETS)


def trainer_config(preset: Preset) -> PPOConfig:
    """Our settings for ``preset`` (each seed replaces ``seed``)."""
    return preset.ours(
        PPOConfig,
        unroll_length=preset.unroll_length,
        num_updates=preset.chunk_updates * preset.train_chunks,
        update_epochs=preset.update_epochs,
        num_minibatches=preset.num_minibatches,
        gamma=preset.discount,
        gae_lambda=preset.gae_lambda,
        clip=preset.clip,
        entropy_cost=preset.entropy_cost,
        advantages=preset.advantages,
        policy_activation=preset.policy_activation,
        value_activation=preset.value_activation,
        learning_rate=preset.learning_rate,
        eval_every=preset.chunk_updates,
    )


BRAX_PPO = {"activation": "swish", "normalize_observations": True}


def worker_settings(preset: Preset, seed: int, cache: str | None) -> PpoSettings:
    """Brax's settings for ``preset`` and ``seed``."""
    steps = {"env_steps": preset.train_chunks * preset.chunk_env_steps}
    return PpoSettings.of(
        preset, seed, cache, **steps, num_evals=1 + preset.train_chunks, **BRAX_PPO
    )


def train_ours(config: PPOConfig, preset: Preset, seed: int, compiles) -> dict:
    """One seed of our PPO, evaluated before training and after each chunk: the
    :class:`experiments._baselines.ChunkLog` report with ``env_steps_per_s`` (over the chunks
    that did not compile) and ``fastest_env_steps_per_s``."""
    chunks = _baselines.train_ours(config, seed, compiles, x="env_steps")
    steady = chunks.steady_times()
    return {
        **chunks.report(seed),
        "env_steps_per_s": len(steady) * preset.chunk_env_steps / sum(steady) if steady else None,
        "fastest_env_steps_per_s": preset.chunk_env_steps / min(steady) if steady else None,
    }


def summarize(ours: list[dict], brax: list[dict]) -> dict:
    """Mean +- std over seeds of env steps per second and of the returns; the ratios and goals
    (env steps/s >= 1.0x brax's, return >= 0.9x brax's at equal steps)."""
    rates = ("env_steps_per_s", "fastest_env_steps_per_s")
    summary = _baselines.summarize(ours, brax, "brax", "env_steps", rates)
    summary["speed_ratio"] = _baselines.ratio(summary, "env_steps_per_s", "brax")
    summary["speed_goal_met"] = summary["speed_ratio"] is not None and summary["speed_ratio"] >= 1.0
    mine, theirs = (summary[n]["eval_return"]["mean"] for n in ("ours", "brax"))
    summary["return_ratio"] = mine / theirs if theirs else None
    summary["return_goal_met"] = mine >= 0.9 * theirs if theirs > 0 else mine >= theirs
    return summary


TABLE = _baselines.Table("brax", "brax", "brax PPO", "ppo", "env_steps", width=38, digits=1)


def format_table(report: dict) -> str:
    """The report as fixed-width text: settings, the two goals, the return curve."""
    p, s = report["config"], report["summary"]
    rows = [
        TABLE.ratio_row(
            s,
            "env steps per s (no compile)",
            "env_steps_per_s",
            "speed_ratio",
            f"  >= 1.0: {_baselines.met(s['speed_goal_met'])}",
            digits=0,
        ),
        TABLE.return_row(s, "ours >= 0.9 brax"),
    ]
    return TABLE.format(report, ", ".join(f"{k} {v}" for k, v in p.items()), rows)


if __name__ == "__main__":
    main()
