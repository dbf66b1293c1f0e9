"""Our SAC against brax's own SAC on one Brax task: env steps per second and return at equal steps.

Both run soft actor-critic (Haarnoja et al. 2018, the automatic-temperature version) with twin
critics, ``num_envs`` environments at a time: every training step, each env steps once with an
action sampled from the tanh-Gaussian policy and stores the transition in a uniform replay
buffer, then ``gradient_steps`` gradient steps follow on batches of ``batch_size``; before that,
``warmup_steps`` env steps fill the buffer. Ours is :mod:`mbpo.agents.off_policy` with
``algo="sac"``, in this process, in compiled chunks of ``chunk_updates`` updates
(:func:`mbpo.agents.loop.run_updates`); brax's is ``brax.training.agents.sac.train``, run by
``experiments/sac_worker.py`` in a second virtual environment (brax 0.14.2's agents need jax 0.9,
mbpo needs jax 0.10), one subprocess per seed, in epochs of the same number of training steps.
Create that environment once (about 1.5 minutes):

    python3.11 -m venv /work/venv-apg
    /work/venv-apg/bin/pip install "jax[cpu]<0.10" brax==0.14.2

(on a CUDA machine ``"jax[cuda12]<0.10"``; this installed jax 0.9.2). Then, from the repository
root, under mbpo's environment:

    python -m experiments.bench_vs_brax_sac --preset cpu [--brax-python /work/venv-apg/bin/python]
        [--out experiments/results/bench_vs_brax_sac_cpu.json]

The run: one chunk of warmup (``warmup_steps = chunk_updates * num_envs``), then
``train_chunks`` training chunks, each followed by an evaluation on ``eval_envs`` episodes of
``episode_length`` steps from fresh resets with the mean action tanh(mu(s)) (brax:
``deterministic_eval=True``), rewards after a done not counted; one more before training. So
both sides are evaluated at the same env steps: 0 and ``warmup_steps + k * chunk_updates *
num_envs``, k = 1, ..., ``train_chunks``.

What is the same: the Brax environment and backend, ``num_envs``, ``episode_length`` (a time
limit; action repeat 1), the env steps of warmup and training, the buffer size (brax's
``max_replay_size`` = our ``buffer_capacity``; uniform sampling with replacement), ``batch_size``,
the gradient steps per training step (brax's ``grad_updates_per_step`` = our
``gradient_steps``), the discount (``discounting`` = ``gamma``), Adam at one constant learning
rate for policy and critics (``learning_rate`` = our ``actor_lr`` = ``critic_lr``), the Polyak
rate ``tau`` of the target critics, the hidden sizes of the policy and of each of the two critics
with relu layers (brax's ``make_sac_networks(hidden_layer_sizes=hidden)``), the twin-critic
target y = r + gamma (1 - done) (min_i q_i(s', a'; targ) - alpha log pi(a'|s')), a' ~ pi, the
loss 0.5 mean (q_i - y)^2 over batch and critics, the actor loss mean(alpha log pi - min_i q_i),
reward scaling 1, no observation normalization on either side (ours has none; brax's
``normalize_observations=False``), and the temperature: set to brax's fixed choices (alpha
starts at 1, its own Adam at 3e-4, target entropy -0.5 * action_size).

What differs, as brax 0.14.2's SAC is written:

* warmup actions: brax fills the buffer with its initial policy's samples; ours with uniform
  random actions. Ours also takes one round of ``gradient_steps`` at the last warmup update
  (learning starts once ``warmup_steps`` are stored), brax none.
* time limits: brax truncates at ``episode_length`` by auto-resetting, so the stored next
  observation is the reset one, and it drops those transitions from the critic loss; ours stores
  the true next observation and bootstraps through the time limit.
* resets: brax's ``AutoResetWrapper`` returns each env to its own first start state, so it trains
  on ``num_envs`` fixed start states; ours draws a fresh start state at every reset. Both are
  evaluated on fresh ones.
* temperature loss: brax's is alpha (-log pi - H) with its own fresh action sample, its gradient
  in log alpha scaled by alpha; ours is log alpha (-log pi - H) on the actor's sample (Haarnoja
  et al.'s form). Under Adam the two differ only in that per-step scale.
* networks: brax initializes every layer lecun-uniform and its std is softplus(.) + 0.001; our
  hidden layers are lecun-normal, the last ones glorot-uniform (the policy's scaled by 0.1), and
  our std is exp(clip(log_std + head, -5, 2)) from an initial std of 1.
* optimizer: ours clips the global gradient norm at ``max_grad_norm`` (set to 1e9: never acts)
  and skips non-finite updates; brax's Adam has neither.
* seeds: the same seed numbers, but different random streams, so the initial policies differ.

How it is timed: env steps per second is the env steps of a compiled chunk (a ``lax.scan`` of
``chunk_updates`` training steps, waited for with ``block_until_ready``, evaluation excluded)
over its wall time, summed over the training chunks during which nothing compiled (ours:
compile events counted around each chunk; brax: see ``sac_worker.py``: its first epoch, which
includes the warmup, compiles), per seed; the table gives the mean +- std over seeds, and also
that of each seed's fastest chunk (on a shared machine, the chunk least slowed by others). Compile
time is reported apart: the lowering and XLA compile time of every program of seed 0 (training
and evaluation; tracing is not in it, see ``experiments._baselines.COMPILE_PHASES``), and the
wall time of the warmup and first training chunk, which includes everything. Our seeds share one
compiled program; each brax seed is a new
process, sharing compiled programs through jax's persistent cache in a temporary folder. The two
sides never run at once: seeds alternate (ours 0, brax 0, ours 1, ...), so that load from other
processes that drifts during the run falls on both alike.
"""

from __future__ import annotations

import dataclasses

import envs
from experiments import _baselines, harness
from experiments.sac_worker import SacSettings
from mbpo.agents.off_policy import OffPolicyConfig

NO_CLIPPING = 1e9  # our optimizer always clips the global norm; brax's never does
BRAX_ALPHA = {"temperature_init": 1.0, "temperature_lr": 3e-4, "entropy_target_per_action": -0.5}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset(_baselines.BenchPreset):
    """One comparison; both sides get these settings (and those of
    :class:`experiments._baselines.BenchPreset`: ``num_envs`` are each stepped once per training
    step, ``hidden`` sizes the policy and each critic).

    Attributes:
      chunk_updates: training steps per compiled chunk (brax: per epoch); the warmup is one
        chunk of env steps.
      train_chunks: training chunks, each followed by an evaluation; >= 2 (brax's first
        compiles, so at least one timed chunk needs a second).
      batch_size: transitions per gradient step.
      gradient_steps: gradient steps per training step.
      discount: gamma.
      tau: Polyak rate of the target critics.
      buffer_capacity: replay buffer size.
    """

    chunk_updates: int
    train_chunks: int
    batch_size: int
    gradient_steps: int
    discount: float
    tau: float
    buffer_capacity: int

    def __post_init__(self):
        super().__post_init__()
        harness.check_positive(self, "chunk_updates", "batch_size", "gradient_steps")
        if self.train_chunks < 2:
            raise ValueError(
                f"train_chunks must be >= 2 (brax's first epoch compiles), got {self.train_chunks}"
            )
        if self.buffer_capacity < self.num_envs:
            raise ValueError(
                f"buffer_capacity={self.buffer_capacity} must hold one step of all "
                f"num_envs={self.num_envs} envs"
            )
        harness.check_interval(self, "(0, 1]", "discount", "tau")

    @property
    def chunk_env_steps(self) -> int:
        return self.chunk_updates * self.num_envs

    @property
    def warmup_steps(self) -> int:
        return self.chunk_env_steps

    @property
    def env_steps(self) -> int:
        """All env steps, the warmup included."""
        return (1 + self.train_chunks) * self.chunk_env_steps


# inverted_pendulum: reward 1 per step until |angle| > 0.2, so the return is the steps balanced (at
# most episode_length). Both sides go from ~40 to the 100s within 4k env steps.
_CPU = Preset(
    env="inverted_pendulum",
    num_envs=16,
    episode_length=200,
    chunk_updates=128,
    train_chunks=6,
    batch_size=256,
    gradient_steps=8,
    learning_rate=1e-3,
    discount=0.99,
    tau=0.005,
    buffer_capacity=100_000,
)
PRESETS: dict[str, Preset] = {
    "cpu": _CPU,
    # One GPU (not run yet): halfcheetah, brax's default network sizes, 106k env steps.
    "gpu": dataclasses.replace(
        _CPU,
        env="halfcheetah",
        num_envs=128,
        episode_length=1000,
        chunk_updates=64,
        train_chunks=12,
        batch_size=512,
        gradient_steps=32,
        learning_rate=6e-4,
        buffer_capacity=1_000_000,
        hidden=(256, 256),
    ),
}

SIDE = _baselines.BraxSide("brax", "Brax's SAC", "experiments.sac_worker", "--brax-python")
EXPERIMENT, main = _baselines.script(__name__, __doc__, PRESETS)


def trainer_config(preset: Preset, action_size: int | None = None) -> OffPolicyConfig:
    """Our settings for ``preset`` on a task with ``action_size`` actions (None: the task's)."""
    if action_size is None:
        action_size = envs.make(preset.env, backend=preset.backend).action_size
    return preset.ours(
        OffPolicyConfig,
        algo="sac",
        num_updates=(1 + preset.train_chunks) * preset.chunk_updates,
        gradient_steps=preset.gradient_steps,
        batch_size=preset.batch_size,
        buffer_capacity=preset.buffer_capacity,
        warmup_steps=preset.warmup_steps,
        gamma=preset.discount,
        tau=preset.tau,
        actor_lr=preset.learning_rate,
        critic_lr=preset.learning_rate,
        max_grad_norm=NO_CLIPPING,
        temperature_init=BRAX_ALPHA["temperature_init"],
        tune_temperature=True,
        temperature_lr=BRAX_ALPHA["temperature_lr"],
        entropy_target=BRAX_ALPHA["entropy_target_per_action"] * action_size,
        eval_every=preset.chunk_updates,
    )


BRAX_SAC = {"activation": "relu", "reward_scaling": 1.0, "normalize_observations": False}


def worker_settings(preset: Preset, seed: int, cache: str | None) -> SacSettings:
    """Brax's settings for ``preset`` and ``seed``."""
    sizes = {
        "grad_updates_per_step": preset.gradient_steps,
        "max_replay_size": preset.buffer_capacity,
    }
    return SacSettings.of(
        preset, seed, cache, num_evals=1 + preset.train_chunks, **sizes, **BRAX_SAC
    )


def train_ours(config: OffPolicyConfig, preset: Preset, seed: int, compiles) -> dict:
    """One seed of our SAC: a warmup chunk, then ``preset.train_chunks`` chunks, evaluated before
    training and after each training chunk: the :class:`experiments._baselines.ChunkLog` report
    (the warmup chunk first in ``chunk_times_s``) with ``env_steps_per_s`` (over the training
    chunks that did not compile, None if none), ``fastest_env_steps_per_s`` (the fastest of those
    chunks) and the last ``alpha``."""
    chunks = _baselines.train_ours(config, seed, compiles, x="env_steps", unevaluated=1)
    steady = chunks.steady_times()
    return {
        **chunks.report(seed),
        "env_steps_per_s": len(steady) * preset.chunk_env_steps / sum(steady) if steady else None,
        "fastest_env_steps_per_s": preset.chunk_env_steps / min(steady) if steady else None,
        "alpha": float(chunks.last["alpha"]),
    }


def summarize(ours: list[dict], brax: list[dict]) -> dict:
    """Mean +- std over seeds of env steps per second and of the returns; the ratio and the goals.

    Raises ValueError if the two sides were evaluated at different env steps.
    """
    rates = ("env_steps_per_s", "fastest_env_steps_per_s")
    summary = _baselines.summarize(ours, brax, "brax", "env_steps", rates)
    summary["speed_ratio"] = _baselines.ratio(summary, "env_steps_per_s", "brax")
    summary["fastest_speed_ratio"] = _baselines.ratio(summary, "fastest_env_steps_per_s", "brax")
    summary["speed_goal_met"] = summary["speed_ratio"] is not None and summary["speed_ratio"] >= 1.0
    return summary


TABLE = _baselines.Table("brax", "brax", "brax SAC", "sac", "env_steps", width=38, digits=1)


def format_table(report: dict) -> str:
    """The report as fixed-width text: settings, the two goals, compile time, the return curve."""
    p, s = report["config"], report["summary"]
    chunk_steps = p["chunk_updates"] * p["num_envs"]
    # Both include the warmup: ours runs it as a chunk of its own, brax's timed first epoch
    # starts with it.
    ours_first = sum(report["ours"][0]["chunk_times_s"][:2])
    brax_first = report["brax"][0]["epoch_times_s"][0]
    settings = (
        f"{p['env']}[{p['backend']}], {p['num_envs']} envs, episode {p['episode_length']}, "
        f"batch {p['batch_size']}, {p['gradient_steps']} gradient steps per training step, "
        f"hidden {tuple(p['hidden'])}, lr {p['learning_rate']}, gamma {p['discount']}, "
        f"tau {p['tau']}, buffer {p['buffer_capacity']}, warmup {chunk_steps} env steps, "
        f"{p['train_chunks']} chunks of {p['chunk_updates']} training steps ({chunk_steps} env "
        f"steps), {p['seeds']} seeds, {p['eval_envs']} eval episodes"
    )
    compile_s = (s[n]["compile_s_seed0"] for n in ("ours", "brax"))
    speed_goal = f"  >= 1.0: {_baselines.met(s['speed_goal_met'])}"
    rows = [
        TABLE.ratio_row(
            s,
            "env steps per s (no compile)",
            "env_steps_per_s",
            "speed_ratio",
            speed_goal,
            digits=0,
        ),
        TABLE.ratio_row(
            s,
            "  fastest chunk of each seed",
            "fastest_env_steps_per_s",
            "fastest_speed_ratio",
            digits=0,
        ),
        TABLE.seconds_row("lower + XLA compile s, seed 0", *compile_s),
        TABLE.seconds_row("warmup + first chunk s, seed 0", ours_first, brax_first),
        TABLE.return_row(s, "ours >= brax", difference=True),
    ]
    return TABLE.format(report, settings, rows)


if __name__ == "__main__":
    main()
