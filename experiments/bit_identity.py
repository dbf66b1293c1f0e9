"""SHA-256 of the metrics and final train state of tiny runs of svg, bpo, sac, td3 and mbpo: a
refactor that leaves every random stream unchanged must print the same hashes before and after.

    git worktree add /tmp/before HEAD~1
    (cd /tmp/before && PYTHONPATH=. python -m experiments.bit_identity) > before.txt
    python -m experiments.bit_identity > after.txt && diff before.txt after.txt
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np

from mbpo.agents import loop
from mbpo.agents.mbpo_loop import ModelBasedConfig
from mbpo.agents.off_policy import OffPolicyConfig
from mbpo.agents.registry import make_trainer
from mbpo.agents.unroll_trainer import UnrollTrainerConfig

SMALL = {"num_updates": 6, "eval_every": 3, "eval_envs": 4, "hidden": (16,)}
CONFIGS = {
    "svg": UnrollTrainerConfig(env="lqr", estimator="svg", horizon=4, num_envs=8, episode_length=20, critic_epochs=2, critic_minibatches=2, **SMALL),
    "bpo": UnrollTrainerConfig(env="lqr", estimator="bpo", horizon=4, num_envs=8, episode_length=20, **SMALL),
    "sac": OffPolicyConfig(algo="sac", env="pendulum", num_envs=4, episode_length=20, gradient_steps=2, batch_size=16, warmup_steps=8, **SMALL),
    "td3": OffPolicyConfig(algo="td3", env="pendulum", num_envs=4, episode_length=20, gradient_steps=3, batch_size=16, warmup_steps=8, **SMALL),
    "mbpo": ModelBasedConfig(env="pendulum", horizon=2, num_envs=2, episode_length=20, members=2, elites=1, model_hidden=(16,),
                             model_steps=2, policy_steps=2, critic_steps=2, batch_size=8, warmup_steps=4, **SMALL),
}  # fmt: skip


def digest(history: list[dict], state) -> str:
    """SHA-256 of every record (wall time excluded) and every leaf of ``state`` (keys as key data)."""
    h = hashlib.sha256()
    for record in history:
        for k in sorted(record):
            if k != "wall_time":
                h.update(f"{k}={record[k]!r};".encode())
    raw = jax.tree.map(lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x, state)
    for leaf in jax.tree.leaves(raw):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


def main() -> None:
    for name, config in CONFIGS.items():
        state, history = loop.train(make_trainer(config))
        print(f"{name:5s} {digest(history, state)[:16]} eval returns {[round(r['eval_return'], 4) for r in history]}", flush=True)


if __name__ == "__main__":
    main()
