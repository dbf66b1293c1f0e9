"""Data parallelism: sharded over 4 CPU devices equals one device (run in a subprocess, since the
device count is fixed when jax starts)."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from mbpo.agents.loop import run_updates
    from mbpo.agents.unroll_trainer import UnrollTrainerConfig, make_trainer
    from mbpo.runner import fit
    from mbpo.parallel import make_mesh, shard_train_state
    assert jax.device_count() == 4
    config = UnrollTrainerConfig(env="lqr", estimator="svg", horizon=3, num_envs=16,
    episode_length=12, hidden=(8,),
                                 critic_epochs=1, critic_minibatches=2, num_updates=4, eval_every=2,
                                 eval_envs=4)
    trainer = make_trainer(config)
    ts = jax.jit(trainer.init)(jax.random.key(0))
    single, _ = run_updates(trainer, jax.device_put(ts, jax.devices()[0]), 3)
    sharded, _ = run_updates(trainer, shard_train_state(ts, make_mesh()), 3)
    assert len(sharded.env_states.obs.sharding.device_set) == 4
    for a, b in zip(jax.tree.leaves((single.policy.params, single.critic.params)),
    jax.tree.leaves((sharded.policy.params, sharded.critic.params))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    final, history = fit(config)  # fit() shards by itself over every device
    assert len(final.env_states.obs.sharding.device_set) == 4 and len(history) == 2
    try:
        fit(config.__class__(**{**config.__dict__, "num_envs": 6}))
    except ValueError as error:
        assert "num_envs=6 must be a multiple of the 4 devices" in str(error)
    else:
        raise AssertionError("num_envs=6 over 4 devices was accepted")
    print("ok")
    """
)


@pytest.mark.slow
def test_sharded_over_4_cpu_devices_equals_one_device():
    env = {
        **os.environ,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
