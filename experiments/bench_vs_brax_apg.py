"""Our BPO against brax's own APG on one Brax task: time per update and return at equal updates.

Both train a policy by differentiating the return of ``horizon``-step windows through the same
Brax physics, ``num_envs`` environments at a time, with Adam (betas 0.7, 0.95), global-norm
clipping at 1, observation normalization and the same hidden sizes, for ``num_updates`` updates in
``num_evals - 1`` compiled chunks of ``num_updates / (num_evals - 1)`` updates, evaluated after each
chunk (and before training) on ``eval_envs`` episodes of ``episode_length`` steps with the mean
action. Ours is :mod:`mbpo.agents.unroll_trainer` with ``estimator="bpo"`` and ``gamma=1`` (APG
does not discount), in this process; APG is ``brax.training.agents.apg.train``, run by
``experiments/apg_worker.py`` in a second virtual environment (brax 0.14.2's agents need jax 0.9,
mbpo needs jax 0.10), one subprocess per seed. Create that environment once (about 1.5 minutes):

    python3.11 -m venv /work/venv-apg
    /work/venv-apg/bin/pip install "jax[cpu]<0.10" brax==0.14.2

(on a CUDA machine ``"jax[cuda12]<0.10"``; this installed jax 0.9.2). Then, from the repository
root, under mbpo's environment:

    python -m experiments.bench_vs_brax_apg --preset cpu [--apg-python /work/venv-apg/bin/python]
        [--out experiments/results/bench_vs_brax_apg_cpu.json]

What is the same: the Brax environment and backend, ``num_envs``, ``episode_length``, the window
(APG's ``horizon_length`` = our ``horizon``; the gradient is stopped between windows), the number
of updates, the hidden sizes with tanh layers (APG set to ``activation=tanh, layer_norm=False``;
brax's default is elu with layer norm), Adam(0.7, 0.95) at a constant rate (APG set to
``use_schedule=False``; brax's default decays it by 0.997 per update), global-norm clipping at 1
(APG's ``max_gradient_norm``, default 1e9), observation normalization, and the evaluation
(``eval_envs`` episodes from fresh resets, the mean action, rewards after a done not counted).

What differs, as brax 0.14.2's APG is written:

* objective: APG minimizes -mean over envs and steps of r_t; ours maximizes the mean over envs of
  sum_t alive_t r_t (gamma = 1). Same direction, but ours is ``horizon`` times larger, so the
  global-norm clip acts more often on ours (brax also clips each element to [-1, 1] after it, a
  no-op once the norm is <= 1).
* policy: APG's is a tanh-squashed Gaussian (std 0.1 softplus(.)) sampled, reparameterized, in
  training, with an orthogonal(0.01) last layer; ours is deterministic, tanh(d(s; w)), its last
  layer initialized at scale 0.1.
* resets: APG resets inside the window, at done or ``episode_length``, to that env's own first
  start state (``AutoResetWrapper``), and scatters the envs' start step counters over the episode;
  ours resets at the end of a window, to a fresh random start state, all envs in step, and does
  not count rewards after a done inside the window.
* training start states: hence APG trains on ``num_envs`` fixed start states (for reacher, targets)
  while ours draws new ones at every reset; both are evaluated on fresh ones.
* seeds: the same seed numbers, but different random streams (brax's ``PRNGKey(seed)`` split its
  way, ours ``jax.random.key(seed)``), so the initial policies differ.

How it is timed: time per update is the wall time of a compiled chunk of updates (a
``lax.scan``, waited for with ``block_until_ready``, evaluation excluded) divided by its updates,
summed over the chunks during which nothing compiled (ours: compile events counted around each
chunk; APG: see ``apg_worker.py``: with jax 0.9 its first two chunks compile), then averaged per
seed; the table gives the mean +- std over seeds. Our seeds share one compiled program; each APG
seed is a new process, sharing compiled programs through jax's persistent cache in a temporary
folder. The two sides never run at once: seeds alternate (ours 0, APG 0, ours 1, ...), so that
load from other processes that drifts during the run falls on both alike.
"""

from __future__ import annotations

import dataclasses

from experiments import _baselines, harness
from experiments.apg_worker import ApgSettings
from mbpo.agents.unroll_trainer import UnrollTrainerConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset(_baselines.BenchPreset):
    """One comparison; both sides get these settings (and those of
    :class:`experiments._baselines.BenchPreset`; its ``env``'s reward must depend smoothly on the
    actions: inverted_pendulum pays a constant 1 per step and ends by a threshold, so its analytic
    gradient is exactly 0 for both methods and only the timing would mean anything).

    Attributes:
      horizon: steps per differentiated window.
      num_updates: policy updates, a multiple of ``num_evals - 1``.
      num_evals: evaluations, the one before training included; >= 4 (APG's first two chunks
        compile, so at least one timed chunk needs a third).
    """

    horizon: int
    num_updates: int
    num_evals: int

    def __post_init__(self):
        super().__post_init__()
        harness.check_positive(self, "horizon", "num_updates")
        if self.num_evals < 4 or self.num_updates % (self.num_evals - 1):
            raise ValueError(
                "need num_evals >= 4 and num_updates a multiple of num_evals - 1; "
                f"got num_updates={self.num_updates}, num_evals={self.num_evals}"
            )

    @property
    def updates_per_chunk(self) -> int:
        return self.num_updates // (self.num_evals - 1)


# Reacher: no termination and a smooth reward (-distance - |a|^2). On a 2-core CPU most of the run
# is compiling Brax gradients (1-2 min per program).
_CPU = Preset(
    env="reacher",
    num_envs=32,
    episode_length=128,
    horizon=16,
    num_updates=60,
    num_evals=5,
    learning_rate=2e-3,
)
PRESETS: dict[str, Preset] = {
    "cpu": _CPU,
    # One GPU (not run yet): ant, whose reward has a forward-velocity term through the contacts.
    "gpu": dataclasses.replace(
        _CPU,
        env="ant",
        num_envs=256,
        episode_length=1000,
        horizon=32,
        num_updates=200,
        learning_rate=1e-3,
    ),
}

SIDE = _baselines.BraxSide("apg", "Brax's APG", "experiments.apg_worker", "--apg-python")
EXPERIMENT, main = _baselines.script(__name__, __doc__, PRESETS)


def trainer_config(preset: Preset) -> UnrollTrainerConfig:
    """Our settings for ``preset`` (each seed replaces ``seed``)."""
    return preset.ours(
        UnrollTrainerConfig,
        estimator="bpo",
        horizon=preset.horizon,
        num_updates=preset.num_updates,
        gamma=1.0,
        actor_lr=preset.learning_rate,
        max_grad_norm=1.0,
        normalize_observations=True,
        eval_every=preset.updates_per_chunk,
    )


# APG's own halfcheetah settings, the schedule off.
BRAX_APG = {"adam_b1": 0.7, "adam_b2": 0.95, "use_schedule": False, "max_grad_norm": 1.0}
BRAX_NETWORK = {"activation": "tanh", "layer_norm": False, "normalize_observations": True}


def worker_settings(preset: Preset, seed: int, cache: str | None) -> ApgSettings:
    """APG's settings for ``preset`` and ``seed``."""
    return ApgSettings.of(preset, seed, cache, **BRAX_APG, **BRAX_NETWORK)


def train_ours(config: UnrollTrainerConfig, preset: Preset, seed: int, compiles) -> dict:
    """One seed of our BPO in chunks of ``preset.updates_per_chunk`` updates, evaluated before
    training and after each chunk: the :class:`experiments._baselines.ChunkLog` report with
    ``time_per_update_s`` (over the chunks that did not compile, None if none)."""
    chunks = _baselines.train_ours(config, seed, compiles, x="updates")
    steady = chunks.steady_times()
    per_update = sum(steady) / (len(steady) * preset.updates_per_chunk) if steady else None
    return {**chunks.report(seed), "time_per_update_s": per_update}


def summarize(ours: list[dict], apg: list[dict]) -> dict:
    """Mean +- std over seeds of time per update and of the returns; the ratio and the goals."""
    summary = _baselines.summarize(ours, apg, "apg", "updates", ("time_per_update_s",))
    summary["time_ratio"] = _baselines.ratio(summary, "time_per_update_s", "apg")
    summary["time_goal_met"] = summary["time_ratio"] is not None and summary["time_ratio"] <= 1.0
    return summary


TABLE = _baselines.Table("apg", "APG", "brax APG", "bpo", "updates", width=34, digits=2)


def format_table(report: dict) -> str:
    """The report as fixed-width text: settings, the two goals, the return at each evaluation."""
    p, s = report["config"], report["summary"]
    chunk = p["num_updates"] // (p["num_evals"] - 1)
    time_goal = _baselines.met(s["time_goal_met"])
    ours_first = report["ours"][0]["chunk_times_s"][0]
    apg_first = report["apg"][0]["epoch_times_s"][0]
    settings = (
        f"{p['env']}[{p['backend']}], {p['num_envs']} envs, episode {p['episode_length']}, "
        f"horizon {p['horizon']}, hidden {tuple(p['hidden'])}, lr {p['learning_rate']}, "
        f"{p['num_updates']} updates in {p['num_evals'] - 1} chunks of {chunk}, "
        f"{p['seeds']} seeds, {p['eval_envs']} eval episodes"
    )
    rows = [
        TABLE.ratio_row(
            s,
            "time per update, ms (no compile)",
            "time_per_update_s",
            "time_ratio",
            f"  <= 1.0: {time_goal}",
            scale=1e3,
        ),
        TABLE.return_row(s, "ours >= APG", difference=True),
        TABLE.seconds_row("first chunk (compiles), s, seed 0", ours_first, apg_first),
    ]
    return TABLE.format(report, settings, rows)


if __name__ == "__main__":
    main()
