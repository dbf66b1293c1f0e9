"""SHA-256 of the metrics and final train state of tiny runs of svg, bpo, sac, td3 and mbpo: a
refactor that leaves every random stream unchanged must print the same metrics hashes before and
after (and the same state hash, unless it adds or drops state: the state hash ignores only how the
state's arrays are grouped).

    git worktree add /tmp/before HEAD~1
    (cd /tmp/before && PYTHONPATH=. python -m experiments.bit_identity) > before.txt
    python -m experiments.bit_identity > after.txt && diff before.txt after.txt

Name runs to hash only those (``python -m experiments.bit_identity sac td3``).
"""

from __future__ import annotations

import hashlib
import sys

import jax
import numpy as np

from mbpo.agents import loop
from mbpo.agents.model_based import ModelBasedConfig
from mbpo.agents.off_policy import OffPolicyConfig
from mbpo.agents.registry import make_trainer
from mbpo.agents.unroll_trainer import UnrollTrainerConfig

SMALL = {"num_updates": 6, "eval_every": 3, "eval_envs": 4, "hidden": (16,)}
UNROLL = {"env": "lqr", "horizon": 4, "num_envs": 8, "episode_length": 20, **SMALL}
ONLINE = {"env": "pendulum", "num_envs": 4, "episode_length": 20, "gradient_steps": 2}
ONLINE |= {"batch_size": 16, "warmup_steps": 8, **SMALL}
BATCH = {"env": "pendulum", "num_basepoints": 64, "basepoint_segment": 8, "gradient_steps": 2}
BATCH |= {"batch_size": 16, **SMALL}
MAXIMIZE = {"maximize_steps": 3, "maximize_restarts": 2}
MODEL = {"env": "pendulum", "horizon": 2, "num_envs": 2, "episode_length": 20, "members": 2}
MODEL |= {"elites": 1, "model_hidden": (16,), "model_steps": 2, "policy_steps": 2}
MODEL |= {"critic_steps": 2}
MODEL |= {"batch_size": 8, "warmup_steps": 4, **SMALL}
CONFIGS = {
    "svg": UnrollTrainerConfig(estimator="svg", critic_epochs=2, critic_minibatches=2, **UNROLL),
    "bpo": UnrollTrainerConfig(estimator="bpo", **UNROLL),
    "svg0": UnrollTrainerConfig(estimator="svg", **{**UNROLL, "horizon": 0}),
    "sac": OffPolicyConfig(algo="sac", **ONLINE),
    "td3": OffPolicyConfig(algo="td3", **{**ONLINE, "gradient_steps": 3}),
    "ddpg": OffPolicyConfig(algo="ddpg", **ONLINE),
    "sac-v": OffPolicyConfig(algo="sac", value_network=True, **ONLINE),
    "nfqca": OffPolicyConfig(algo="nfqca", **BATCH),
    "fqi": OffPolicyConfig(algo="fqi", **MAXIMIZE, **BATCH),
    "fqi_amortized": OffPolicyConfig(
        algo="fqi_amortized", num_optimized=8, window=2, **MAXIMIZE, **BATCH
    ),
    "mbpo": ModelBasedConfig(**MODEL),
    "mbpo-sac": ModelBasedConfig(policy_update="sac", model_rollouts=8, rollout_max=2, **MODEL),
    "mbpo-svg_er": ModelBasedConfig(policy_update="svg_er", **MODEL),
}


def metrics_digest(history: list[dict]) -> str:
    """SHA-256 of every record (the times, ``*_time``, excluded): the metrics a refactor must leave
    unchanged."""
    h = hashlib.sha256()
    for record in history:
        for k in sorted(record):
            if not k.endswith("_time"):
                h.update(f"{k}={record[k]!r};".encode())
    return h.hexdigest()


def state_digest(state) -> str:
    """SHA-256 of the sorted per-leaf hashes of ``state`` (keys as key data): independent of how
    the state's pytree is arranged, so a regrouped state with the same arrays hashes the same."""
    raw = jax.tree.map(
        lambda x: (
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        ),
        state,
    )
    leaves = sorted(
        hashlib.sha256(np.asarray(x).tobytes() + str(np.asarray(x).dtype).encode()).hexdigest()
        for x in jax.tree.leaves(raw)
    )
    return hashlib.sha256("".join(leaves).encode()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    names = (argv if argv is not None else sys.argv[1:]) or list(CONFIGS)
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"unknown runs {unknown}; allowed: {', '.join(CONFIGS)}")
    for name in names:
        config = CONFIGS[name]
        state, history = loop.train(make_trainer(config))
        returns = [round(r["eval_return"], 4) for r in history]
        print(
            f"{name:13s} metrics {metrics_digest(history)[:16]} state {state_digest(state)[:16]} "
            f"eval returns {returns}",
            flush=True,
        )


if __name__ == "__main__":
    main()
