"""Pictures of an episode: PNG strips for ODE tasks, observation plots otherwise, HTML for Brax."""

import jax
import jax.numpy as jnp
import pytest

import envs
from mbpo.render import episode_states, render


@pytest.mark.parametrize("name", ["pendulum", "cartpole", "lqr"])
def test_ode_and_other_tasks_render_to_png(name, tmp_path):
    task = envs.make(name)
    states = episode_states(
        task, lambda obs, eps: jnp.zeros(task.action_size), jax.random.key(0), 10, (0,)
    )
    assert len(states) == 11
    path = render(task, states, tmp_path / "episode")
    assert path.suffix == ".png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_brax_renders_to_html(tmp_path):
    task = envs.make("inverted_pendulum", backend="generalized")
    states = episode_states(
        task, lambda obs, eps: jnp.zeros(task.action_size), jax.random.key(0), 5, (0,)
    )
    path = render(task, states, tmp_path / "episode")
    text = path.read_text()
    assert path.suffix == ".html" and "<html" in text.lower() and len(text) > 1000


def test_observation_plot_has_a_legend_per_observation(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    task = envs.make("hybrid")
    states = episode_states(
        task, lambda obs, eps: jnp.zeros(task.action_size), jax.random.key(0), 10, (0,)
    )
    saved = []
    real = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda self, *a, **k: (saved.append(self), real(self, *a, **k))[1]
    )
    render(task, states, tmp_path / "episode")
    legend = saved[0].axes[0].get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == [
        f"obs[{i}]" for i in range(task.observation_size)
    ]
