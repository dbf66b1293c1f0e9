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


@pytest.mark.slow  # four MJX models built (no compile): seconds each
def test_an_mjx_system_whose_solver_loops_is_refused_before_backpropagating_through_it():
    from mbpo.agents.registry import make_trainer
    from mbpo.agents.unroll_trainer import UnrollTrainerConfig

    # brax 0.14 ships halfcheetah on mjx with 4 solver iterations (a lax.while_loop: no reverse
    # mode) and ant with 1.
    looping = envs.make("halfcheetah", backend="mjx")
    assert not looping.reverse_differentiable
    assert envs.make("ant", backend="mjx").reverse_differentiable
    assert envs.make("halfcheetah", backend="positional").reverse_differentiable
    one = envs.make("halfcheetah", backend="mjx", mjx_iterations=1)
    assert one.reverse_differentiable and "1 solver iterations" in one.name
    config = UnrollTrainerConfig(env="halfcheetah", brax_backend="mjx", estimator="svg", horizon=4)
    with pytest.raises(ValueError, match="not reverse differentiable .*mjx_iterations=1"):
        make_trainer(config, looping)
    make_trainer(config, one)  # builds (nothing is compiled here)
    make_trainer(UnrollTrainerConfig(env="halfcheetah", estimator="svg", horizon=0), looping)
    with pytest.raises(ValueError, match="mjx_iterations is an option of backend 'mjx'"):
        envs.make("halfcheetah", backend="spring", mjx_iterations=1)


@pytest.mark.slow  # builds MJX's halfcheetah twice (no compile)
def test_mbpo_train_refuses_a_looping_mjx_system_by_name_and_takes_one_iteration(tmp_path, capsys):
    import dataclasses

    from mbpo import main as cli
    from mbpo.agents.registry import make_trainer
    from mbpo.agents.unroll_trainer import UnrollTrainerConfig

    argv = ["train", "--env", "halfcheetah", "--brax-backend", "mjx", "--algo", "shac"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "not reverse differentiable" in err
    assert "--mjx-iterations 1" in err and not (tmp_path / "run").exists()
    looping = UnrollTrainerConfig(env="halfcheetah", brax_backend="mjx", estimator="svg", horizon=4)
    trainer = make_trainer(dataclasses.replace(looping, mjx_iterations=1))  # builds
    assert trainer.config.mjx_iterations == 1
