"""Estimators against LQR closed forms (float64).

Exact expectations of SVG(n) gradients: with a linear policy, linear dynamics and quadratic reward
and critic, the per-sample gradient is a quadratic polynomial of the standard-normal noise z
(s_0, xi_{0:n}, eps_{0:n}), so the symmetric cubature E[g(z)] = (1/2d) sum_i g(+-sqrt(d) e_i) is
exact.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs import lqr as lqr_lib
from mbpo import estimators
from mbpo.policies import DeterministicPolicy, GaussianPolicy
from mbpo.unroll import RolloutNoise, rollout, unroll

pytestmark = pytest.mark.usefixtures("x64")
GAMMA = 0.9
K0 = np.array([[1.0, 1.5]])
SIGMA = 0.4


def _grad(f):
    """jax.grad of f, jitted: one compiled program instead of op-by-op dispatch of its scan."""
    return jax.jit(jax.grad(f))


def _policy(stochastic):
    cls = GaussianPolicy if stochastic else DeterministicPolicy
    return cls(2, 1, (-np.inf,), (np.inf,), hidden=(), use_bias=False)


def _params(K, stochastic, sigma=SIGMA):
    net = {"params": {"Dense_0": {"kernel": -jnp.asarray(K).T}}}
    return {"net": net, "log_std": jnp.log(jnp.array([sigma]))} if stochastic else net


def _gain(params, stochastic):
    net = params["net"] if stochastic else params
    return -net["params"]["Dense_0"]["kernel"].T


def _closed_form_jn(task, params, n, stochastic, q_gain=K0, q_sigma=None):
    """E[sum_{t<n} gamma^t r_t + gamma^n Q_{K0}(s_n, a_n)] under the policy ``params``, exactly."""
    K = _gain(params, stochastic)
    sigma = jnp.exp(params["log_std"][0]) if stochastic else 0.0
    q_sigma = (SIGMA if stochastic else 0.0) if q_sigma is None else q_sigma
    P = lqr_lib.value_matrix(task, jnp.asarray(q_gain), GAMMA)
    c = lqr_lib.value_offset(task, jnp.asarray(q_gain), GAMMA, q_sigma)
    AB = jnp.concatenate([task.A, task.B], axis=1)
    H = jax.scipy.linalg.block_diag(task.Q, task.R) + GAMMA * AB.T @ P @ AB
    q_const = GAMMA * (jnp.trace(P @ task.W @ task.W.T) + c)
    M = task.A - task.B @ K
    N = task.W @ task.W.T + sigma**2 * task.B @ task.B.T
    Sigma = task.S0 @ task.S0.T
    total = 0.0
    for t in range(n):
        total -= GAMMA**t * (
            jnp.trace((task.Q + K.T @ task.R @ K) @ Sigma) + sigma**2 * jnp.trace(task.R)
        )
        Sigma = M @ Sigma @ M.T + N
    G = jnp.concatenate([jnp.eye(2), -K], axis=0)
    expected_q = -jnp.trace(G.T @ H @ G @ Sigma) - sigma**2 * H[2, 2] - q_const
    return total + GAMMA**n * expected_q


def _q_fn(task, sigma):
    return lambda obs, a: lqr_lib.q_value(task, jnp.asarray(K0), GAMMA, obs, a, sigma)


def _unpack(z, task, n, eps_dim):
    s0 = task.S0 @ z[:2]
    xi = z[2 : 2 + 2 * n].reshape(n, 2)
    eps = z[2 + 2 * n :].reshape(n + 1, eps_dim)
    return task.reset(jax.random.key(0)).replace(x=s0, obs=s0), RolloutNoise(eps=eps, xi=xi)


def _exact_expected_gradient(grad_fn, dim):
    points = np.sqrt(dim) * np.concatenate([np.eye(dim), -np.eye(dim)])
    grads = jax.jit(jax.vmap(grad_fn))(jnp.asarray(points))  # grad_fn: a plain jax.grad
    return jax.tree.map(lambda g: g.mean(axis=0), grads)


@pytest.mark.parametrize("n", [0, 1, 5])
def test_svg_n_with_exact_critic_equals_closed_form_gradient(n):
    task = envs.make("lqr")
    policy = _policy(stochastic=True)
    params = _params(K0 * 0.8, stochastic=True, sigma=0.3)  # away from the critic's own policy
    q = _q_fn(task, SIGMA)
    dim = 2 + 2 * n + (n + 1)

    def grad_at(z):
        state, noise = _unpack(z, task, n, 1)
        return jax.grad(
            lambda w: unroll(
                task, lambda o, e: policy.sample(w, o, e), state, noise, gamma=GAMMA, q=q
            )[0]
        )(params)

    svg = _exact_expected_gradient(grad_at, dim)
    exact = _grad(lambda w: _closed_form_jn(task, w, n, stochastic=True))(params)
    for got, want in zip(jax.tree.leaves(svg), jax.tree.leaves(exact)):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bpo_gradient_equals_closed_form():
    """BPO over a long horizon on noiseless LQR equals the Fazel et al. closed-form gradient."""
    task = envs.make("lqr")
    s0 = jnp.array([0.8, -0.5])
    noiseless = task.replace(W=jnp.zeros((2, 2)), S0=jnp.stack([s0, jnp.zeros(2)], axis=1))
    policy = _policy(stochastic=False)
    params = _params(K0, stochastic=False)
    horizon = 400  # gamma^400 ~ 5e-19: the truncation is far below the tolerance
    state = task.reset(jax.random.key(0)).replace(x=s0, obs=s0)
    noise = RolloutNoise(eps=jnp.zeros((horizon, 0)), xi=jnp.zeros((horizon, 2)))
    est = estimators.bpo()
    grad = _grad(
        lambda w: estimators.surrogate(
            est,
            noiseless,
            lambda o, e: policy.sample(w, o, e),
            jax.tree.map(lambda x: x[None], state),
            jax.tree.map(lambda x: x[None], noise),
            gamma=GAMMA,
        )[0]
    )(params)
    closed = lqr_lib.return_gradient(noiseless, jnp.asarray(K0), GAMMA)  # d J / d K
    got = -grad["params"]["Dense_0"]["kernel"].T  # kernel = -K^T
    np.testing.assert_allclose(got, closed, rtol=1e-6)


def _zero_step_gradient(task, policy, params, states, q):
    """The gradient in w of DPMB-R(0)'s surrogate: the mean over ``states`` of q(s, d(s; w))."""
    n = states.obs.shape[0]
    noise = RolloutNoise(eps=jnp.zeros((n, 1, 0)), xi=jnp.zeros((n, 0, 2)))

    def surrogate(w):
        policy_fn = lambda o, e: policy.sample(w, o, e)
        return estimators.surrogate(
            estimators.dpmb_r(0), task, policy_fn, states, noise, gamma=GAMMA, q=q
        )[0]

    return _grad(surrogate)(params)


def test_svg0_with_deterministic_policy_is_the_dpg_actor_gradient():
    task = envs.make("lqr")
    policy = _policy(stochastic=False)
    params = _params(K0 * 1.2, stochastic=False)
    q = _q_fn(task, 0.0)
    states = jax.vmap(task.reset)(jax.random.split(jax.random.key(0), 16))
    grad = _zero_step_gradient(task, policy, params, states, q)

    def dpg(s):  # grad_w d(s; w) grad_a q(s, a) at a = d(s; w)
        a, vjp = jax.vjp(lambda w: policy.mean(w, s), params)
        return vjp(jax.grad(q, argnums=1)(s, a))[0]

    manual = jax.tree.map(lambda g: g.mean(0), jax.vmap(dpg)(states.obs))
    for got, want in zip(jax.tree.leaves(grad), jax.tree.leaves(manual)):
        np.testing.assert_allclose(got, want, rtol=1e-10)


def test_dpg_over_the_discounted_state_distribution_is_the_policy_gradient():
    """Silver et al. 2014: grad J = sum_t gamma^t E[grad_w d grad_a Q_K]; with states whose second
    moment is Sigma_K = sum_t gamma^t E[s_t s_t^T], SVG(0) with the exact critic is exactly grad
    J."""
    task = envs.make("lqr")
    K = jnp.asarray(K0)
    policy = _policy(stochastic=False)
    params = _params(K0, stochastic=False)
    M = task.A - task.B @ K
    Sigma0 = task.S0 @ task.S0.T
    Sigma_K = lqr_lib._solve_discounted_lyapunov(
        M, Sigma0 + GAMMA * task.W @ task.W.T / (1 - GAMMA), GAMMA
    )
    L = jnp.linalg.cholesky(Sigma_K)
    states = jax.vmap(lambda s: task.reset(jax.random.key(0)).replace(x=s, obs=s))(
        L.T
    )  # sum s s^T = Sigma_K
    grad = _zero_step_gradient(task, policy, params, states, _q_fn(task, 0.0))
    np.testing.assert_allclose(  # the sum over the two states: twice the mean
        -2 * grad["params"]["Dense_0"]["kernel"].T,
        lqr_lib.return_gradient(task, K, GAMMA),
        rtol=1e-8,
    )


@pytest.mark.parametrize("n", [1, 4])
def test_stopped_dynamics_gradient_is_the_critic_only_n_step_gradient(n):
    task = envs.make("lqr")
    policy = _policy(stochastic=True)
    params = _params(K0, stochastic=True)
    q = _q_fn(task, SIGMA)
    state = task.reset(jax.random.key(1))
    noise = RolloutNoise(
        eps=jax.random.normal(jax.random.key(2), (n + 1, 1)),
        xi=jax.random.normal(jax.random.key(3), (n, 2)),
    )
    grad = _grad(
        lambda w: unroll(
            task,
            lambda o, e: policy.sample(w, o, e),
            state,
            noise,
            gamma=GAMMA,
            q=q,
            dynamics_gradient="stop",
        )[0]
    )(params)
    # The states of the same rollout, as data; then each term's gradient through its own action
    # only.
    _, traj = rollout(
        task, lambda o, e: policy.sample(params, o, e), state, RolloutNoise(noise.eps[:n], noise.xi)
    )
    s_n = traj.next_obs[-1]

    def manual(w):
        r = jax.vmap(lambda s, e: task.stage_reward(s, policy.sample(w, s, e)))(
            traj.obs, noise.eps[:n]
        )
        return jnp.sum(GAMMA ** jnp.arange(n) * r) + GAMMA**n * q(
            s_n, policy.sample(w, s_n, noise.eps[n])
        )

    want = _grad(manual)(params)
    for got, ref in zip(jax.tree.leaves(grad), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    pathwise = _grad(
        lambda w: unroll(task, lambda o, e: policy.sample(w, o, e), state, noise, gamma=GAMMA, q=q)[
            0
        ]
    )(params)
    assert not np.allclose(jax.tree.leaves(pathwise)[1], jax.tree.leaves(want)[1])


def _kernel(tree):
    """The linear policy's kernel in ``tree`` (its parameters or a gradient of them)."""
    return (tree["params"] if "params" in tree else tree["net"]["params"])["Dense_0"]["kernel"]


def _per_sample_gradients(loss, params, num, seed):
    keys = jax.random.split(jax.random.key(seed), num)
    grads = jax.jit(jax.vmap(lambda k: jax.grad(loss)(params, k)))(keys)
    return np.asarray(_kernel(grads)).reshape(num, -1)


def _closed_form_kernel_gradient(task, params, stochastic):
    """The gradient of the closed-form J_{N_SF} with respect to the policy's kernel, flattened."""
    exact = _grad(lambda w: _closed_form_jn(task, w, N_SF, stochastic=stochastic))(params)
    return np.asarray(_kernel(exact)).ravel()


def _assert_within_4_se(samples, want):
    mean = samples.mean(0)
    se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
    assert np.all(np.abs(mean - want) < 4 * se), (mean, want, se)
    # The check is informative: a bias of 40% of the gradient's norm would be caught.
    assert np.all(se < 0.1 * np.linalg.norm(want)), (se, want)


N_SF = 4


def _random_start(task, key):
    k0, k1, k2 = jax.random.split(key, 3)
    return task.reset(k0), k1, k2


def test_dpmb_sf_agrees_with_closed_form_within_4_se():
    task = envs.make("lqr")
    policy = _policy(stochastic=False)
    params = _params(K0 * 0.8, stochastic=False)
    q = _q_fn(task, 0.0)
    est = estimators.dpmb_sf(N_SF)

    def loss(w, key):
        state, _, k_xi = _random_start(task, key)
        noise = RolloutNoise(eps=jnp.zeros((N_SF + 1, 0)), xi=jax.random.normal(k_xi, (N_SF, 2)))
        return unroll(
            task,
            lambda o, e: policy.sample(w, o, e),
            state,
            noise,
            gamma=GAMMA,
            q=q,
            dynamics_gradient=est.dynamics_gradient,
        )[0]

    samples = _per_sample_gradients(loss, params, 40000, seed=0)
    want = _closed_form_kernel_gradient(task, params, stochastic=False)
    _assert_within_4_se(samples, want)


def test_reparameterized_svg_agrees_with_closed_form_within_4_se():
    task = envs.make("lqr")
    policy = _policy(stochastic=True)
    params = _params(K0 * 0.8, stochastic=True)
    q = _q_fn(task, SIGMA)

    def loss(w, key):
        state, k_eps, k_xi = _random_start(task, key)
        noise = RolloutNoise(
            eps=jax.random.normal(k_eps, (N_SF + 1, 1)), xi=jax.random.normal(k_xi, (N_SF, 2))
        )
        return unroll(task, lambda o, e: policy.sample(w, o, e), state, noise, gamma=GAMMA, q=q)[0]

    samples = _per_sample_gradients(loss, params, 20000, seed=1)
    want = _closed_form_kernel_gradient(task, params, stochastic=True)
    _assert_within_4_se(samples, want)


def test_model_free_score_function_agrees_with_closed_form_within_4_se():
    """REINFORCE on J_n: grad log pi(a_t|s_t) times the discounted return-to-go minus gamma^t
    V(s_t)."""
    task = envs.make("lqr")
    policy = _policy(stochastic=True)
    params = _params(K0 * 0.8, stochastic=True)
    q = _q_fn(task, SIGMA)
    v = lambda s: lqr_lib.value(task, jnp.asarray(K0), GAMMA, s, SIGMA)

    def loss(w, key):
        state, k_eps, k_xi = _random_start(task, key)
        eps = jax.random.normal(k_eps, (N_SF + 1, 1))
        noise = RolloutNoise(eps=eps[:N_SF], xi=jax.random.normal(k_xi, (N_SF, 2)))
        final, traj = rollout(
            task, lambda o, e: policy.sample(w, o, e), state, noise, dynamics_gradient="stop"
        )
        obs = jnp.concatenate([traj.obs, final.obs[None]])
        actions = jax.lax.stop_gradient(
            jnp.concatenate([traj.action, policy.sample(w, final.obs, eps[N_SF])[None]])
        )
        log_pi = jax.vmap(policy.log_prob, in_axes=(None, 0, 0))(w, obs, actions)
        weighted = jnp.concatenate(
            [GAMMA ** jnp.arange(N_SF) * traj.reward, GAMMA**N_SF * q(obs[-1], actions[-1])[None]]
        )
        to_go = jnp.cumsum(weighted[::-1])[::-1]
        baseline = GAMMA ** jnp.arange(N_SF + 1) * jax.vmap(v)(obs)
        return estimators.score_surrogate(log_pi, to_go - baseline)

    samples = _per_sample_gradients(loss, params, 40000, seed=2)
    want = _closed_form_kernel_gradient(task, params, stochastic=True)
    _assert_within_4_se(samples, want)


@pytest.mark.parametrize("n", [1, 4])
def test_v_critic_surrogate_with_the_exact_value_equals_closed_form_gradient(n):
    """SHAC's surrogate sum_{t<n} gamma^t r_t + gamma^n v(s_n), with v the exact value of the
    gain K0, against the gradient of its closed-form expectation."""
    task = envs.make("lqr")
    policy = _policy(stochastic=True)
    params = _params(K0 * 0.8, stochastic=True, sigma=0.3)
    P = lqr_lib.value_matrix(task, jnp.asarray(K0), GAMMA)
    c = lqr_lib.value_offset(task, jnp.asarray(K0), GAMMA, SIGMA)

    def v(obs, action):  # the bootstrap ignores the action: a state-value critic
        return lqr_lib.value(task, jnp.asarray(K0), GAMMA, obs, SIGMA)

    def closed_form(w):
        K = _gain(w, True)
        sigma = jnp.exp(w["log_std"][0])
        M, N = task.A - task.B @ K, task.W @ task.W.T + sigma**2 * task.B @ task.B.T
        Sigma, total = task.S0 @ task.S0.T, 0.0
        for t in range(n):
            stage = jnp.trace((task.Q + K.T @ task.R @ K) @ Sigma) + sigma**2 * jnp.trace(task.R)
            total -= GAMMA**t * stage
            Sigma = M @ Sigma @ M.T + N
        return total + GAMMA**n * (-jnp.trace(P @ Sigma) - c)

    def grad_at(z):
        state, noise = _unpack(z, task, n, 1)
        sample = policy.sample
        return jax.grad(
            lambda w: unroll(task, lambda o, e: sample(w, o, e), state, noise, gamma=GAMMA, q=v)[0]
        )(params)

    got = _exact_expected_gradient(grad_at, 2 + 2 * n + (n + 1))
    want = _grad(closed_form)(params)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-6)
