"""Pictures of a trained policy: a Brax task to an interactive HTML file (``brax.io.html``), an
ODE task (pendulum, cartpole) to a PNG strip of frames; any other task to a PNG of its
observations."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from mbpo.dynamics.base import Dynamics, State
from mbpo.dynamics.brax_env import BraxDynamics
from mbpo.files import write_atomically, write_text
from mbpo.unroll import PolicyFn, rollout, sample_noise


def episode_states(
    dynamics: Dynamics, policy: PolicyFn, key, steps: int, eps_shape: tuple[int, ...]
) -> list[State]:
    """s_0..s_steps under the policy's mean action (eps = 0), the dynamics noise drawn by
    :func:`mbpo.unroll.sample_noise`, through :func:`mbpo.unroll.rollout`; on the host."""
    k_reset, k_noise = jax.random.split(key)
    state = jax.jit(dynamics.reset)(k_reset)
    noise = sample_noise(dynamics, k_noise, steps, eps_shape)
    noise = noise.replace(eps=jnp.zeros_like(noise.eps))
    run = jax.jit(lambda s, n: rollout(dynamics, policy, s, n, with_states=True))
    _, (_, states) = run(state, noise)
    return [state, *(jax.tree.map(lambda x, i=i: x[i], states) for i in range(steps))]


def _pendulum(ax, x, frame):
    theta = x[0]
    ax.plot([0, np.sin(theta)], [0, np.cos(theta)], "-", lw=3, color=f"C{frame % 10}")
    ax.plot([np.sin(theta)], [np.cos(theta)], "o", ms=10, color=f"C{frame % 10}")
    ax.set_xlim(-1.2, 1.2)
    ax.set_ylim(-1.2, 1.2)


def _cartpole(ax, x, frame):
    from matplotlib.patches import Rectangle

    pos, theta = x[0], x[2]
    ax.add_patch(Rectangle((pos - 0.2, -0.1), 0.4, 0.2, fill=False))
    ax.plot([pos, pos + np.sin(theta)], [0, np.cos(theta)], "-", lw=3, color=f"C{frame % 10}")
    ax.set_xlim(pos - 1.5, pos + 1.5)
    ax.set_ylim(-1.2, 1.2)


DRAW = {"pendulum": _pendulum, "cartpole": _cartpole}


def render(
    dynamics: Dynamics, states: list[State], path: pathlib.Path, *, frames: int = 8
) -> pathlib.Path:
    """Writes the picture of ``states`` to ``path`` (HTML for Brax, PNG otherwise); returns the
    path."""
    if isinstance(dynamics, BraxDynamics):
        from brax.io import html

        path = path.with_suffix(".html")
        write_text(
            path,
            html.render(
                dynamics.env.sys.tree_replace({"opt.timestep": dynamics.env.dt}),
                [s.x.pipeline_state for s in states],
            ),
        )
        return path
    from matplotlib.figure import Figure

    path = path.with_suffix(".png")
    name = getattr(dynamics, "name", "")
    if name in DRAW:
        figure = Figure(figsize=(2 * frames, 2.3))
        axes = figure.subplots(1, frames)
        for i, (ax, t) in enumerate(zip(axes, np.linspace(0, len(states) - 1, frames).astype(int))):
            DRAW[name](ax, np.asarray(states[t].x), i)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"t = {t}, r = {float(states[t].reward):.2f}", fontsize=8)
    else:
        figure = Figure(figsize=(7, 3))
        ax = figure.subplots()
        obs = np.stack([np.asarray(s.obs) for s in states])
        for i in range(obs.shape[1]):
            ax.plot(obs[:, i], label=f"obs[{i}]")
        ax.legend(fontsize=7, ncols=min(obs.shape[1], 6), loc="best")
        ax.set_title(f"{name or 'episode'}: observations under the mean action", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("observation")
        ax.grid(alpha=0.3)
    figure.tight_layout()
    write_atomically(path, lambda file: figure.savefig(file, format="png", dpi=100))
    return path
