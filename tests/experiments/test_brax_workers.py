"""What each brax worker passes to brax's ``train``: the arguments are captured by replacing the
agent's ``train`` (brax's agents need jax 0.9; the benchmarks run them in a side environment),
so a change to how settings map onto brax's names is checked here, without training."""

import importlib

import pytest

from experiments import apg_worker, ppo_worker, sac_worker

pytest.importorskip("brax")

# Every settings field (defaults) -> the argument brax receives, per worker; network arguments
# are checked through the factory's keywords.
EXPECTED = {
    "ppo": {
        "num_timesteps": 40960,
        "unroll_length": 20,
        "batch_size": 1,
        "num_minibatches": 16,
        "num_updates_per_batch": 8,
        "entropy_cost": 1e-2,
        "discounting": 0.97,
        "gae_lambda": 0.95,
        "clipping_epsilon": 0.3,
        "reward_scaling": 1.0,
        "normalize_advantage": True,
        "bootstrap_on_timeout": False,
    },
    "sac": {
        "num_timesteps": 14336,
        "action_repeat": 1,
        "discounting": 0.99,
        "batch_size": 256,
        "reward_scaling": 1.0,
        "tau": 0.005,
        "min_replay_size": 2048,
        "max_replay_size": 100_000,
        "grad_updates_per_step": 8,
    },
    "apg": {
        "policy_updates": 60,
        "horizon_length": 16,
        "adam_b": (0.7, 0.95),
        "use_schedule": False,
        "max_gradient_norm": 1.0,
    },
}
COMMON = {
    "episode_length": 200,
    "num_envs": 16,
    "num_eval_envs": 128,
    "num_evals": 5,
    "learning_rate": 1e-3,
    "normalize_observations": False,
    "deterministic_eval": True,
    "seed": 0,
}
WORKERS = {"ppo": ppo_worker, "sac": sac_worker, "apg": apg_worker}


@pytest.mark.parametrize("agent", sorted(WORKERS))
def test_worker_passes_each_setting_under_brax_s_name(agent, monkeypatch):
    worker = WORKERS[agent]
    settings = worker.parse([])
    module = importlib.import_module(f"brax.training.agents.{agent}.train")
    captured = {}

    def fake_train(**kwargs):
        captured.update(kwargs)
        return None

    monkeypatch.setattr(module, "train", fake_train)
    try:
        worker.run(settings)
    except Exception:  # the report of a run that never trained may not build; the call is made
        pass
    network = captured.pop("network_factory")
    captured.pop("environment"), captured.pop("progress_fn")
    assert captured == {**COMMON, **EXPECTED[agent]}
    assert network.keywords["activation"].__name__ == settings.activation
    sizes = {k: v for k, v in network.keywords.items() if "hidden_layer_sizes" in k}
    assert set(sizes.values()) == {settings.hidden}
