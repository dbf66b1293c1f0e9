"""Registry, hybrid task probabilities and the README custom-dynamics example."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import hybrid


def test_names_cover_the_required_tasks():
    required = {
        "pendulum",
        "cartpole",
        "lqr",
        "hybrid",
        "inverted_pendulum",
        "reacher",
        "halfcheetah",
        "hopper",
        "ant",
    }
    assert required <= set(envs.names())
    assert envs.is_brax("ant") and not envs.is_brax("pendulum")


def test_hybrid_mode_frequencies_match_known_probabilities():
    task = envs.make("hybrid")
    state = task.reset(jax.random.key(0))
    a = jnp.array([0.4])
    xis = jax.vmap(task.sample_noise)(jax.random.split(jax.random.key(1), 20000))
    modes = np.asarray(jax.vmap(lambda xi: task.step(state, a, xi).x[2])(xis)).astype(int)
    probs = np.asarray(hybrid.mode_probs(state.x, a, task.params))
    freq = np.bincount(modes, minlength=hybrid.NUM_MODES) / modes.size
    se = np.sqrt(probs * (1 - probs) / modes.size)
    assert np.all(np.abs(freq - probs) < 4 * se), (freq, probs)
    assert probs.min() > 0.05  # every branch matters in the default task


def test_hybrid_mode_probabilities_depend_differentiably_on_the_action():
    task = envs.make("hybrid")
    state = task.reset(jax.random.key(0))
    jac = jax.jacobian(lambda a: hybrid.mode_probs(state.x, a, task.params))(jnp.array([0.1]))
    assert np.abs(jac).min() > 1e-3
    np.testing.assert_allclose(jac.sum(axis=0), 0.0, atol=1e-6)


def test_hybrid_log_prob_integrates_to_one_over_modes_and_positions(x64):
    task = envs.make("hybrid")
    state = task.reset(jax.random.key(2))
    a = jnp.array([-0.3])
    total = 0.0
    for mode in range(hybrid.NUM_MODES):
        mean = hybrid.next_x_mean(state.x, a, mode, task.params)
        grid = jnp.linspace(-0.3, 0.3, 121)
        g0, g1 = jnp.meshgrid(mean[0] + grid, mean[1] + grid, indexing="ij")
        points = jnp.stack([g0.ravel(), g1.ravel(), jnp.full(g0.size, float(mode))], axis=1)
        dens = jnp.exp(jax.vmap(lambda x: task.log_prob(state, a, state.replace(x=x)))(points))
        total += float(dens.sum() * (grid[1] - grid[0]) ** 2)
    np.testing.assert_allclose(total, 1.0, rtol=1e-4)


def test_hybrid_rejects_unknown_parameters():
    with pytest.raises(ValueError, match=r"unknown hybrid parameters \['temperature'\]"):
        envs.make("hybrid", temperature=1.0)


def _readme_block(heading: str) -> str:
    text = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    section = text.split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_custom_dynamics_example_runs_and_is_short():
    code = _readme_block("## Plug in your own dynamics")
    assert len(code.strip().splitlines()) < 20
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    grad = namespace["grad"]
    assert np.all(np.isfinite(np.asarray(grad))) and np.abs(np.asarray(grad)).max() > 0
