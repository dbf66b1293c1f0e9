"""The dynamics interface: determinism, vmap, bad input, NaN reporting, the adapters."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from mbpo.dynamics import NaNActionError, ODESolver, check_actions_finite, from_function, from_ode
from mbpo.unroll import RolloutNoise, open_loop, rollout, sample_noise

ODE_TASKS = ["pendulum", "cartpole", "lqr", "hybrid"]


def _linear_policy(dynamics):
    w = 0.1 * jnp.ones((dynamics.action_size, dynamics.observation_size))
    return lambda obs, eps: jnp.tanh(w @ obs) + 0.1 * eps


@pytest.mark.parametrize("name", ODE_TASKS)
def test_vmap_over_64_envs_equals_python_loop(name):
    dynamics = envs.make(name)
    policy = _linear_policy(dynamics)
    keys = jax.random.split(jax.random.key(0), 64)
    run = jax.jit(
        lambda key: rollout(
            dynamics,
            policy,
            dynamics.reset(key),
            sample_noise(dynamics, jax.random.fold_in(key, 1), 10, (dynamics.action_size,)),
        )
    )
    batched_final, batched_traj = jax.jit(jax.vmap(run))(keys)
    for i in range(64):
        final, traj = run(keys[i])
        np.testing.assert_allclose(batched_traj.reward[i], traj.reward, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(batched_final.obs[i], final.obs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ODE_TASKS)
def test_same_key_same_trajectory_and_different_key_differs(name):
    dynamics = envs.make(name)
    policy = _linear_policy(dynamics)

    def run(seed):
        key = jax.random.key(seed)
        noise = sample_noise(dynamics, key, 15, (dynamics.action_size,))
        return rollout(dynamics, policy, dynamics.reset(key), noise)[1].reward

    np.testing.assert_array_equal(run(3), run(3))
    assert not np.allclose(run(3), run(4))


def test_interface_metadata():
    for name in ODE_TASKS:
        d = envs.make(name)
        low, high = d.action_bounds
        assert low.shape == high.shape == (d.action_size,)
        assert np.all(low < high)
        s = d.reset(jax.random.key(0))
        assert s.obs.shape == (d.observation_size,)
        assert d.sample_noise(jax.random.key(0)).shape == d.noise_shape
    assert envs.make("pendulum").noise_shape == (0,)
    assert not envs.make("pendulum").has_log_prob
    assert envs.make("pendulum", noise_std=0.01).has_log_prob
    assert envs.make("lqr").has_log_prob and envs.make("hybrid").has_log_prob


def test_unknown_env_lists_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown env 'pendullum'.*pendulum.*cartpole.*lqr.*hybrid.*ant"
    ):
        envs.make("pendullum")


def test_wrong_action_shape_and_dtype_raise_at_trace_time():
    dynamics = envs.make("pendulum")
    state = dynamics.reset(jax.random.key(0))
    with pytest.raises(ValueError, match=r"action has shape \(2,\).*expects shape \(1,\)"):
        jax.jit(dynamics.step)(state, jnp.zeros(2), jnp.zeros(0))
    with pytest.raises(TypeError, match="action has dtype int32.*floating"):
        jax.jit(dynamics.step)(state, jnp.zeros(1, jnp.int32), jnp.zeros(0))
    with pytest.raises(ValueError, match=r"xi has shape \(3,\).*expects shape \(0,\)"):
        dynamics.step(state, jnp.zeros(1), jnp.zeros(3))


def test_vector_field_with_wrong_output_shape_is_refused():
    def bad_field(t, x, u, params):
        return jnp.concatenate([x, u])

    with pytest.raises(ValueError, match=r"vector_field.*returned shape \(3,\).*shape \(2,\)"):
        from_ode(bad_field, lambda x, u, xn: -x @ x, lambda key: jnp.zeros(2), action_size=1)


def test_bad_solver_settings_are_refused():
    with pytest.raises(ValueError, match="substeps must be an int >= 1, got 0"):
        ODESolver(substeps=0)
    with pytest.raises(ValueError, match="dt must be a positive"):
        ODESolver(dt=-0.1)
    with pytest.raises(TypeError, match="solver must be a diffrax solver"):
        ODESolver(solver="rk4")
    assert isinstance(ODESolver().adjoint, diffrax.RecursiveCheckpointAdjoint)


@pytest.mark.parametrize("num_steps", [0, -3, 2.5])
def test_step_count_below_one_is_refused(num_steps):
    dynamics = envs.make("pendulum")
    with pytest.raises(ValueError, match="num_steps must be"):
        sample_noise(dynamics, jax.random.key(0), num_steps)
    with pytest.raises(ValueError, match="num_steps must be an int >= 1, got 0"):
        open_loop(dynamics, dynamics.reset(jax.random.key(0)), jnp.zeros((0, 1)), jnp.zeros((0, 0)))


def test_nan_actions_are_reported():
    dynamics = envs.make("pendulum")
    state = dynamics.reset(jax.random.key(0))
    actions = jnp.zeros((5, 1)).at[2, 0].set(jnp.nan)
    final, _ = jax.jit(lambda s, a: open_loop(dynamics, s, a, jnp.zeros((5, 0))))(state, actions)
    assert bool(final.nan_action)
    with pytest.raises(NaNActionError, match="1 of 1 trajectories received a NaN action"):
        check_actions_finite(final)
    clean, _ = open_loop(dynamics, state, jnp.zeros((5, 1)), jnp.zeros((5, 0)))
    check_actions_finite(clean)


def test_function_adapter_validates_and_steps():
    dynamics = from_function(
        lambda s, a, xi: 0.9 * s + a + 0.1 * xi,
        lambda s, a, s_next: -jnp.sum(s_next**2),
        lambda key: jax.random.normal(key, (1,)),
        action_size=1,
        noise_shape=(1,),
        log_prob=lambda s, a, s_next: jax.scipy.stats.norm.logpdf(
            s_next - 0.9 * s - a, scale=0.1
        ).sum(),
    )
    state = dynamics.reset(jax.random.key(0))
    nxt = dynamics.step(state, jnp.array([0.5]), jnp.array([1.0]))
    np.testing.assert_allclose(nxt.x, 0.9 * state.x + 0.5 + 0.1, rtol=1e-6)
    np.testing.assert_allclose(nxt.reward, -(nxt.x[0] ** 2), rtol=1e-6)
    assert int(nxt.t) == 1
    np.testing.assert_allclose(
        dynamics.log_prob(state, jnp.array([0.5]), nxt),
        jax.scipy.stats.norm.logpdf(1.0) - np.log(0.1),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match=r"transition returned shape \(2,\)"):
        from_function(
            lambda s, a, xi: jnp.concatenate([s, a]),
            lambda s, a, sn: 0.0,
            lambda key: jnp.zeros(1),
            action_size=1,
        )
    with pytest.raises(NotImplementedError, match="no known transition density"):
        envs.make("pendulum").log_prob(state, jnp.zeros(1), nxt)


def test_ode_process_noise_density_is_the_gaussian_of_the_increment(x64):
    dynamics = envs.make("pendulum", noise_std=0.05)
    state = dynamics.reset(jax.random.key(0))
    a, xi = jnp.array([0.3]), jnp.array([0.4, -1.2])
    nxt = dynamics.step(state, a, xi)
    expected = np.sum(-0.5 * np.asarray(xi) ** 2 - np.log(0.05) - 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(dynamics.log_prob(state, a, nxt), expected, rtol=1e-10)


def test_rollout_noise_lengths_must_agree():
    dynamics = envs.make("lqr")
    with pytest.raises(ValueError, match="noise.eps has 3 steps but noise.xi has 4"):
        rollout(
            dynamics,
            lambda o, e: e,
            dynamics.reset(jax.random.key(0)),
            RolloutNoise(jnp.zeros((3, 1)), jnp.zeros((4, 2))),
        )


@pytest.mark.parametrize("dt,substeps", [(0.05, 1), (0.05, 3), (0.1, 7), (1 / 3, 10)])
def test_ode_takes_exactly_substeps_steps(dt, substeps):
    """Euler through the adapter equals a hand-written Euler loop of `substeps` steps."""
    from envs import pendulum

    dynamics = envs.make(
        "pendulum", solver=ODESolver(dt=dt, substeps=substeps, solver=diffrax.Euler())
    )
    state = dynamics.reset(jax.random.key(0))
    u = jnp.array([0.7])
    x, h = state.x, dt / substeps
    for _ in range(substeps):
        x = x + h * pendulum.vector_field(0.0, x, u, dynamics.params)
    np.testing.assert_allclose(dynamics.step(state, u, jnp.zeros(0)).x, x, rtol=1e-5, atol=1e-6)


def test_builders_refuse_an_option_they_set_themselves():
    """The builders share their interface options; one they set themselves (a deterministic
    ODE's log_prob, a function's noise sampler) is refused by name, not passed through."""
    field = lambda t, x, u, p: -x
    reward = lambda x, u, xn: -x @ x
    reset = lambda key: jnp.zeros(2)
    with pytest.raises(
        TypeError, match=r"from_ode\(\) got unexpected keyword arguments \['log_prob'\]"
    ):
        from_ode(field, reward, reset, action_size=1, log_prob=lambda x, u, xn: 0.0)
    with pytest.raises(TypeError, match=r"\['noise'\]"):
        from_function(lambda s, a, xi: s, reward, reset, action_size=1, noise=jnp.zeros)
    named = from_ode(field, reward, reset, action_size=1, name="decay", action_low=-2.0)
    assert named.name == "decay" and float(named.action_bounds[0][0]) == -2.0
    assert from_ode(field, reward, reset, action_size=1).name == "ode"


@pytest.mark.parametrize("name,substeps", [("pendulum", 1), ("cartpole", 2)])
def test_an_ode_task_takes_dt_and_substeps_or_a_solver_not_both(name, substeps):
    def next_x(dynamics):
        state = dynamics.reset(jax.random.key(0))
        return np.asarray(dynamics.step(state, jnp.array([0.7]), jnp.zeros(0)).x)

    longer = next_x(envs.make(name, dt=0.1))  # its default substeps, Tsit5
    np.testing.assert_array_equal(
        longer, next_x(envs.make(name, solver=ODESolver(dt=0.1, substeps=substeps)))
    )
    assert not np.allclose(longer, next_x(envs.make(name)))  # dt 0.05 by default
    solver = ODESolver(dt=0.02, substeps=3, solver=diffrax.Euler())
    with pytest.raises(ValueError, match=r"give a solver or dt and substeps, not both"):
        envs.make(name, solver=solver, dt=0.1, substeps=2)
    with pytest.raises(ValueError, match=r"give a solver or dt, not both.*dt=0.02, substeps=3"):
        envs.make(name, solver=solver, dt=0.1)
