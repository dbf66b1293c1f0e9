"""What the trainer tests share: the small LQR configuration and the Riccati policy's returns."""

import jax
import numpy as np

from envs import lqr as lqr_lib
from mbpo.agents.env_batch import evaluate
from mbpo.agents.unroll_trainer import UnrollTrainerConfig

# Tests that train it with the same changes share its compiled programs.
SMALL_LQR = UnrollTrainerConfig(
    env="lqr",
    estimator="svg",
    horizon=4,
    num_envs=16,
    episode_length=40,
    num_updates=4,
    hidden=(16,),
    eval_envs=8,
    eval_every=2,
    critic_epochs=2,
    critic_minibatches=2,
)


def riccati_returns(trainer, keys) -> np.ndarray:
    """The evaluation return of the optimal (Riccati) gain of ``trainer``'s LQR task, one per key
    of ``keys``, on the evaluation episodes of the trainer's own evaluations with those keys."""
    config = trainer.config
    gain, _ = lqr_lib.riccati(trainer.dynamics, config.gamma)

    def optimal(key):
        return evaluate(
            trainer.dynamics,
            lambda o, e: -gain @ o,
            key,
            num_envs=config.eval_envs,
            episode_length=config.episode_length,
            eps_shape=(1,),
        )

    return np.asarray(jax.vmap(optimal)(keys))
