"""One cheap Brax check: gradients flow through a few steps of differentiable physics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from mbpo.dynamics import from_brax
from mbpo.unroll import open_loop


@pytest.mark.slow
def test_gradient_through_brax_steps_is_finite_and_nonzero():
    # generalized compiles its gradient about 3x faster than positional on a CPU.
    task = envs.make("inverted_pendulum", backend="generalized")
    assert task.noise_shape == (0,) and task.action_size == 1 and task.observation_size == 4
    state = jax.jit(task.reset)(jax.random.key(0))  # op by op, a Brax reset takes seconds

    def total_reward(actions):
        _, traj = open_loop(task, state, actions, jnp.zeros((3, 0)))
        return jnp.sum(traj.reward) - jnp.sum(traj.next_obs[:, 1] ** 2)

    grad = jax.jit(jax.grad(total_reward))(0.3 * jnp.ones((3, 1)))
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_unknown_backend_and_env_are_refused():
    with pytest.raises(
        ValueError,
        match="unknown Brax backend 'warp'; allowed: generalized, positional, spring, mjx",
    ):
        from_brax("ant", backend="warp")
    with pytest.raises(ValueError, match="unknown Brax environment 'antt'"):
        from_brax("antt")
