"""The unroll engine (mbpo/unroll.py): rewards and the bootstrap masked after termination, by hand
and in gradient; n = 0 is the critic; its input checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from mbpo.dynamics import from_function
from mbpo.policies import GaussianPolicy
from mbpo.unroll import RolloutNoise, rollout, unroll

pytestmark = pytest.mark.usefixtures("x64")
GAMMA = 0.9
DONE_AT = 3  # the transition s_2 -> s_3 terminates: done_2 = 1


# A counter task: s = (x, k), x' = x + a, k' = k + 1, r = x' + 1, done once k' >= DONE_AT.
def _counter_task():
    return from_function(
        lambda s, a, xi: jnp.stack([s[0] + a[0], s[1] + 1.0]),
        lambda s, a, s_next: s_next[0] + 1.0,
        lambda key: jnp.zeros(2),
        action_size=1,
        done=lambda s_next: (s_next[1] >= DONE_AT).astype(s_next.dtype),
    )


def _policy(w):
    return lambda obs, eps: jnp.array([w - 0.1 * obs[0]])


def _q(obs, a):
    return 10.0 + obs[0] + a[0]


def _by_hand(w, n, with_q):
    """sum_{t<n} gamma^t r_t up to and including the terminating step, then gamma^n q(s_n, a_n) if
    alive."""
    x, total = 0.0, 0.0
    for t in range(n):
        x = x + (w - 0.1 * x)
        total += GAMMA**t * (x + 1.0)
        if t + 1 >= DONE_AT:
            return total
    return total + (GAMMA**n * (10.0 + x + (w - 0.1 * x)) if with_q else 0.0)


@pytest.mark.parametrize("n", [2, 3, 7])  # alive at the end, done at the last step, done midway
@pytest.mark.parametrize("with_q", [True, False])
def test_unroll_masks_rewards_and_the_bootstrap_after_done(n, with_q):
    task = _counter_task()
    state = task.reset(jax.random.key(0))
    noise = RolloutNoise(eps=jnp.zeros((n + with_q, 0)), xi=jnp.zeros((n, 0)))
    w = 0.7

    def objective(w):
        return unroll(task, _policy(w), state, noise, gamma=GAMMA, q=_q if with_q else None)

    (value, result), grad = jax.value_and_grad(objective, has_aux=True)(w)
    assert float(value) == pytest.approx(_by_hand(w, n, with_q), rel=1e-12)
    np.testing.assert_array_equal(
        result.trajectory.done, (np.arange(1, n + 1) >= DONE_AT).astype(float)
    )
    assert float(result.discount_n) == pytest.approx(GAMMA**n if n < DONE_AT else 0.0)
    # The gradient also ignores what happens after termination: compare with the hand computation's
    # slope.
    h = 1e-6
    slope = (_by_hand(w + h, n, with_q) - _by_hand(w - h, n, with_q)) / (2 * h)
    assert float(grad) == pytest.approx(slope, rel=1e-8)


def test_unroll_with_no_model_steps_is_the_critic():
    """n = 0 with q is SVG(0): J_0 = q(s_0, d(s_0, eps_0; w)), gradient included."""
    task = envs.make("hybrid")
    policy = GaussianPolicy.for_dynamics(task, hidden=())
    params = jax.jit(policy.init)(jax.random.key(0))
    state = task.reset(jax.random.key(1))
    eps0 = jnp.array([0.7])
    noise = RolloutNoise(eps=eps0[None], xi=jnp.zeros((0, *task.noise_shape)))
    q = lambda obs, a: jnp.sum(obs) * a[0] - a[0] ** 2

    def objective(w):
        return unroll(task, lambda o, e: policy.sample(w, o, e), state, noise, gamma=GAMMA, q=q)

    value, result = objective(params)
    direct = lambda w: q(state.obs, policy.sample(w, state.obs, eps0))
    assert float(value) == pytest.approx(float(direct(params)), rel=1e-12)
    assert result.trajectory is None and float(result.discount_n) == 1.0
    got, want = jax.grad(lambda w: objective(w)[0])(params), jax.grad(direct)(params)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, r, rtol=1e-12)


def test_noise_length_mismatch_raises():
    task = _counter_task()
    state = task.reset(jax.random.key(0))
    xi = jnp.zeros((3, 0))
    with pytest.raises(
        ValueError, match=r"noise.eps has 3 steps and noise.xi has 3: eps needs n \+ 1"
    ):
        unroll(
            task, _policy(0.5), state, RolloutNoise(eps=jnp.zeros((3, 0)), xi=xi), gamma=GAMMA, q=_q
        )
    with pytest.raises(
        ValueError, match=r"noise.eps has 4 steps and noise.xi has 3: eps needs n \(no bootstrap\)"
    ):
        unroll(task, _policy(0.5), state, RolloutNoise(eps=jnp.zeros((4, 0)), xi=xi), gamma=GAMMA)
    with pytest.raises(ValueError, match="a horizon of 0 needs a critic q"):
        unroll(
            task,
            _policy(0.5),
            state,
            RolloutNoise(eps=jnp.zeros((0, 0)), xi=jnp.zeros((0, 0))),
            gamma=GAMMA,
        )
    with pytest.raises(ValueError, match="noise.eps has 2 steps but noise.xi has 3"):
        rollout(task, _policy(0.5), state, RolloutNoise(eps=jnp.zeros((2, 0)), xi=xi))


@pytest.mark.parametrize("gamma", [0.0, 1.5])
def test_bad_gamma_raises(gamma):
    task = _counter_task()
    noise = RolloutNoise(eps=jnp.zeros((1, 0)), xi=jnp.zeros((1, 0)))
    with pytest.raises(ValueError, match=rf"gamma must be in \(0, 1\], got {gamma}"):
        unroll(task, _policy(0.5), task.reset(jax.random.key(0)), noise, gamma=gamma)


def test_unknown_dynamics_gradient_raises():
    task = _counter_task()
    noise = RolloutNoise(eps=jnp.zeros((1, 0)), xi=jnp.zeros((1, 0)))
    with pytest.raises(ValueError, match="unknown dynamics_gradient 'reinforce'"):
        unroll(
            task,
            _policy(0.5),
            task.reset(jax.random.key(0)),
            noise,
            gamma=GAMMA,
            dynamics_gradient="reinforce",
        )


@pytest.mark.parametrize("cut", [1, 3, 5])
def test_truncated_window_is_the_shorter_unroll_in_value_and_gradient(cut):
    """J_T of a 5-step window cut at T equals unroll's J_T on the same noise prefix (value and
    gradient, float64): the gradient crosses no step at or after the cut. T = n is J_n itself."""
    from mbpo.unroll import truncated

    task = envs.make("lqr")
    policy = GaussianPolicy.for_dynamics(task, hidden=(8,), init_std=0.3)
    params = jax.tree.map(lambda x: x.astype(jnp.float64), policy.init(jax.random.key(0)))
    state = task.reset(jax.random.key(1))
    n = 5
    k_eps, k_xi = jax.random.split(jax.random.key(2))
    noise = RolloutNoise(
        eps=jax.random.normal(k_eps, (n + 1, *policy.eps_shape)),
        xi=jax.random.normal(k_xi, (n, *task.noise_shape)),
    )

    def q(obs, a):
        return -jnp.sum(obs**2) + 0.5 * jnp.sum(a * obs[:1])

    def full_then_cut(w):
        _, result = unroll(
            task, lambda o, e: policy.sample(w, o, e), state, noise, gamma=GAMMA, q=q
        )
        return truncated(result.trajectory, result.final_action, jnp.asarray(cut), gamma=GAMMA, q=q)

    def shorter(w):
        prefix = RolloutNoise(eps=noise.eps[: cut + 1], xi=noise.xi[:cut])
        return unroll(task, lambda o, e: policy.sample(w, o, e), state, prefix, gamma=GAMMA, q=q)[0]

    np.testing.assert_allclose(full_then_cut(params), shorter(params), rtol=1e-12)
    for a, b in zip(
        jax.tree.leaves(jax.grad(full_then_cut)(params)), jax.tree.leaves(jax.grad(shorter)(params))
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task_name", "remat"),  # every step, a remainder chunk, chunks that divide; the ODE once
    [("lqr", 1), ("lqr", 7), ("lqr", 10), ("pendulum", 4)],
)
def test_rematerialized_unroll_has_the_plain_gradient(task_name, remat):
    """The checkpointed nested scan computes the plain scan's J_n and gradient (float64, relative
    error < 1e-10), with and without a critic's bootstrap."""
    task = envs.make(task_name)
    policy = GaussianPolicy.for_dynamics(task, hidden=(8,), init_std=0.3)
    params = jax.tree.map(lambda x: x.astype(jnp.float64), policy.init(jax.random.key(0)))
    states = jax.vmap(task.reset)(jax.random.split(jax.random.key(1), 3))
    n = 40 if task_name == "lqr" else 10  # pendulum: chunks of 4, 4 and a remainder of 2
    k_eps, k_xi = jax.random.split(jax.random.key(2))
    noise = RolloutNoise(
        eps=jax.random.normal(k_eps, (3, n + 1, *policy.eps_shape)),
        xi=jax.random.normal(k_xi, (3, n, *task.noise_shape)),
    )

    def q(obs, a):
        return -jnp.sum(obs**2) + 0.1 * jnp.sum(a)

    def objective(w, chunk):
        def one(s, e):
            pol = lambda o, x: policy.sample(w, o, x)
            return unroll(task, pol, s, e, gamma=GAMMA, q=q, remat=chunk)[0]

        return jnp.mean(jax.vmap(one)(states, noise))

    value_and_grad = jax.jit(jax.value_and_grad(objective), static_argnums=1)
    plain_value, plain_grad = value_and_grad(params, None)
    value, grad = value_and_grad(params, remat)
    np.testing.assert_allclose(value, plain_value, rtol=1e-10)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(plain_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14 * np.max(np.abs(b)))


def test_remat_settings():
    from mbpo.unroll import remat_steps

    assert remat_steps("off", 1000) is None and remat_steps("auto", 32) is None
    assert remat_steps("auto", 1000) == 32 and remat_steps("sqrt", 64) == 8
    assert remat_steps("5", 64) == 5
    with pytest.raises(ValueError, match="remat='half'.*sqrt"):
        remat_steps("half", 10)


def test_bad_remat_setting_is_named_before_any_compile():
    from mbpo.agents.unroll_trainer import UnrollTrainerConfig

    with pytest.raises(ValueError, match="remat='0'"):
        UnrollTrainerConfig(env="lqr", remat="0")
