"""Critics: q ensembles, Polyak averaging, and TD targets against hand-written loops (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo.critics import QCritic, lambda_returns, n_step_targets, q_loss, td0_targets

pytestmark = pytest.mark.usefixtures("x64")
GAMMA = 0.9
T = 9


@pytest.fixture
def trajectory():
    """r_t, discount_t = gamma (1 - done_t) with two terminations, v(s_{t+1}), as float64 numpy."""
    rng = np.random.default_rng(0)
    r_t = rng.normal(size=T)
    done_t = np.zeros(T)
    done_t[[2, 6]] = 1.0
    return r_t, GAMMA * (1 - done_t), rng.normal(size=T)


def _td0_loop(r_t, discount_t, v_tp1):
    return np.array([r_t[t] + discount_t[t] * v_tp1[t] for t in range(len(r_t))])


def _lambda_loop(r_t, discount_t, v_tp1, lambda_):
    g = np.zeros(len(r_t))
    for t in reversed(range(len(r_t))):
        tail = v_tp1[t] if t == len(r_t) - 1 else (1 - lambda_) * v_tp1[t] + lambda_ * g[t + 1]
        g[t] = r_t[t] + discount_t[t] * tail
    return g


def _monte_carlo_loop(r_t, discount_t, v_tp1):
    """G_t = sum_{k >= t} (prod_{t <= j < k} discount_j) r_k + (prod_{j >= t} discount_j) v(s_T)."""
    out = []
    for t in range(len(r_t)):
        total, weight = 0.0, 1.0
        for k in range(t, len(r_t)):
            total += weight * r_t[k]
            weight *= discount_t[k]
        out.append(total + weight * v_tp1[-1])
    return np.array(out)


def _n_step_loop(r_t, discount_t, v_tp1, n):
    out = []
    for t in range(len(r_t)):
        total, weight, k = 0.0, 1.0, t
        while k < min(t + n, len(r_t)):
            total += weight * r_t[k]
            weight *= discount_t[k]
            k += 1
        out.append(total + weight * v_tp1[k - 1])  # v(s_{t+n}), or v(s_T) where truncated
    return np.array(out)


def _critic():
    return QCritic(observation_size=3, action_size=2, num_q=2, hidden=(8,))


def test_q_critic_shapes_and_min():
    critic = _critic()
    params = critic.init(jax.random.key(0))
    obs, a = jnp.array([0.1, -0.2, 0.3]), jnp.array([0.5, -1.0])
    q = critic.q(params, obs, a)
    assert q.shape == (2,)
    assert abs(float(q[0] - q[1])) > 1e-6  # the twin heads are initialized independently
    assert critic.min_q(params, obs, a) == jnp.min(q)
    assert critic.mean_q(params, obs, a) == pytest.approx(float(jnp.mean(q)))
    single = QCritic(3, 2, num_q=1, hidden=(8,))
    shape = jax.eval_shape(lambda k: single.q(single.init(k), obs, a), jax.random.key(0)).shape
    assert shape == (1,)


def test_q_critic_bad_configuration_raises():
    with pytest.raises(ValueError, match="num_q must be >= 1, got 0"):
        QCritic(3, 2, num_q=0)
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        QCritic(3, 2, activation="nope")


def test_td0_targets(trajectory):
    np.testing.assert_allclose(
        td0_targets(*map(jnp.asarray, trajectory)), _td0_loop(*trajectory), rtol=1e-12
    )


@pytest.mark.parametrize("lambda_", [0.0, 0.3, 0.8, 1.0])
def test_lambda_returns_match_the_backward_recursion(trajectory, lambda_):
    got = lambda_returns(*map(jnp.asarray, trajectory), lambda_)
    np.testing.assert_allclose(got, _lambda_loop(*trajectory, lambda_), rtol=1e-12)


def test_lambda_returns_limits(trajectory):
    args = tuple(map(jnp.asarray, trajectory))
    np.testing.assert_allclose(lambda_returns(*args, 0.0), _td0_loop(*trajectory), rtol=1e-12)
    np.testing.assert_allclose(
        lambda_returns(*args, 1.0), _monte_carlo_loop(*trajectory), rtol=1e-12
    )


@pytest.mark.parametrize("n", [1, 2, 3, T - 1])
def test_n_step_targets(trajectory, n):
    got = n_step_targets(*map(jnp.asarray, trajectory), n)
    np.testing.assert_allclose(got, _n_step_loop(*trajectory, n), rtol=1e-12)


@pytest.mark.parametrize("n", [T, T + 5])
def test_n_step_beyond_the_trajectory_is_the_monte_carlo_return(trajectory, n):
    args = tuple(map(jnp.asarray, trajectory))
    np.testing.assert_allclose(n_step_targets(*args, n), lambda_returns(*args, 1.0), rtol=1e-12)
    np.testing.assert_allclose(n_step_targets(*args, n), _monte_carlo_loop(*trajectory), rtol=1e-12)


def test_n_step_with_n_1_is_td0(trajectory):
    args = tuple(map(jnp.asarray, trajectory))
    np.testing.assert_allclose(n_step_targets(*args, 1), td0_targets(*args), rtol=1e-12)


TARGETS = {
    "td0": td0_targets,
    "lambda": lambda r, d, v, **kw: lambda_returns(r, d, v, 0.7, **kw),
    "n_step": lambda r, d, v, **kw: n_step_targets(r, d, v, 3, **kw),
}


@pytest.mark.parametrize("name", list(TARGETS))
def test_stop_target_gradients(trajectory, name):
    r_t, discount_t, v_tp1 = map(jnp.asarray, trajectory)
    target = TARGETS[name]

    def grad(stop):
        return jax.grad(lambda v: jnp.sum(target(r_t, discount_t, v, stop_target_gradients=stop)))(
            v_tp1
        )

    np.testing.assert_array_equal(grad(True), np.zeros(T))
    assert np.abs(np.asarray(grad(False))).max() > 0.1
    if name == "td0":
        np.testing.assert_allclose(grad(False), discount_t, rtol=1e-15)


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_shape_errors(name):
    target = TARGETS[name]
    r = jnp.zeros(4)
    with pytest.raises(ValueError, match=r"equal shape \(T,\), got \(4,\), \(3,\), \(4,\)"):
        target(r, jnp.zeros(3), r)
    with pytest.raises(ValueError, match=r"got \(4,\), \(4,\), \(4, 1\)"):
        target(r, r, jnp.zeros((4, 1)))
    with pytest.raises(ValueError, match=r"got \(2, 4\)"):
        target(jnp.zeros((2, 4)), jnp.zeros((2, 4)), jnp.zeros((2, 4)))


def test_bad_lambda_and_n_raise(trajectory):
    args = tuple(map(jnp.asarray, trajectory))
    with pytest.raises(ValueError, match=r"lambda_ must be in \[0, 1\], got 1.5"):
        lambda_returns(*args, 1.5)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        n_step_targets(*args, 0)


def test_q_loss_by_hand():
    """A linear twin critic (hidden=()) set by hand: q_i(s, a) = w_i . [s; a] + b_i."""
    critic = QCritic(observation_size=2, action_size=1, num_q=2, hidden=())
    w = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, 3.0]])
    b = np.array([0.1, -0.4])
    params = {
        "params": {
            "Dense_0": {"kernel": jnp.asarray(w[:, :, None]), "bias": jnp.asarray(b[:, None])}
        }
    }
    obs = np.array([[1.0, 2.0], [-1.0, 0.5], [0.0, 0.0]])
    action = np.array([[0.5], [-1.0], [2.0]])
    y = np.array([0.3, -1.0, 2.0])
    loss = 0.0
    for i in range(3):
        for k in range(2):
            q = w[k] @ np.concatenate([obs[i], action[i]]) + b[k]
            loss += 0.5 * (q - y[i]) ** 2
    loss /= 6
    got = q_loss(critic, params, jnp.asarray(obs), jnp.asarray(action), jnp.asarray(y))
    assert float(got) == pytest.approx(loss, rel=1e-12)
    np.testing.assert_array_equal(
        jax.grad(lambda t: q_loss(critic, params, obs, action, t))(jnp.asarray(y)), np.zeros(3)
    )
