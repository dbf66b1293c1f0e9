"""A stochastic linear-quadratic task with closed forms, the ground truth for gradient tests.

    s_{t+1} = A s_t + B a_t + W xi_t,    xi_t ~ N(0, I),    s_0 ~ N(0, S0 S0^T),
    r(s, a) = -(s^T Q s + a^T R a).

For a linear policy a = -K s + sigma eps (eps ~ N(0, I)), write M = A - B K and N = W W^T + sigma^2
B B^T.
The value is V_K(s) = -s^T P_K s - c_K with

    P_K = Q + K^T R K + gamma M^T P_K M,    c_K = (sigma^2 tr R + gamma tr(P_K N)) / (1 - gamma),

the expected discounted return is J(K) = -(tr(P_K Sigma_0) + c_K), and (Fazel et al. 2018, Lemma 1,
with discounting and noise)

    grad_K J = -2 ((R + gamma B^T P_K B) K - gamma B^T P_K A) Sigma_K,
    Sigma_K = sum_t gamma^t E[s_t s_t^T] = Sigma_0 + gamma M Sigma_K M^T + gamma N / (1 - gamma).

The optimal gain solves the discounted Riccati equation
P = Q + gamma A^T P A - gamma^2 A^T P B (R + gamma B^T P B)^{-1} B^T P A,  K* = gamma (R + gamma B^T
P B)^{-1} B^T P A.
Finite horizons n use Sigma_{t+1} = M Sigma_t M^T + N and J_n(K) = -sum_{t<n} gamma^t (tr((Q + K^T R
K) Sigma_t) + sigma^2 tr R).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mbpo.dynamics.base import Dynamics
from mbpo.types import Array, Float


class LQR(Dynamics):
    """The linear-Gaussian dynamics with quadratic reward; all matrices are pytree leaves."""

    A: Float[Array, "n n"]
    B: Float[Array, "n m"]
    Q: Float[Array, "n n"]
    R: Float[Array, "m m"]
    W: Float[Array, "n n"]
    S0: Float[Array, "n n"]

    @property
    def observation_size(self) -> int:
        return self.A.shape[0]

    @property
    def action_size(self) -> int:
        return self.B.shape[1]

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return (self.W.shape[1],)

    @property
    def action_bounds(self):
        return np.full(self.action_size, -np.inf), np.full(self.action_size, np.inf)

    def stage_reward(self, s, a):
        """r(s, a) = -(s^T Q s + a^T R a)."""
        return -(s @ self.Q @ s + a @ self.R @ a)

    def mean_next(self, s, a):
        return self.A @ s + self.B @ a

    def _reset(self, key):
        s = self.S0 @ jax.random.normal(key, (self.S0.shape[1],), self.S0.dtype)
        return s, s

    def _step(self, x, action, xi):
        x_next = self.mean_next(x, action) + self.W @ xi
        return x_next, x_next, self.stage_reward(x, action), jnp.zeros((), x.dtype)

    def _reward(self, x, action, x_next):
        return self.stage_reward(x, action)

    def _infer_noise(self, x, action, x_next):
        """xi = W^-1 (s' - A s - B a)."""
        return jnp.linalg.solve(self.W, x_next - self.mean_next(x, action))

    def _log_prob(self, x, action, x_next):
        cov = self.W @ self.W.T
        diff = x_next - self.mean_next(x, action)
        chol = jnp.linalg.cholesky(cov)
        z = jax.scipy.linalg.solve_triangular(chol, diff, lower=True)
        return (
            -0.5 * z @ z
            - jnp.sum(jnp.log(jnp.diag(chol)))
            - 0.5 * diff.shape[0] * jnp.log(2 * jnp.pi)
        )


def make(
    *,
    A=((1.0, 0.1), (0.0, 1.0)),
    B=((0.0,), (0.1,)),
    Q=((1.0, 0.0), (0.0, 0.1)),
    R=((0.1,),),
    noise_std: float = 0.1,
    init_std: float = 1.0,
) -> LQR:
    """An LQR task; the default is a discretized double integrator (dt = 0.1)."""
    A, B, Q, R = (jnp.asarray(m, dtype=float) for m in (A, B, Q, R))
    n, m = B.shape
    if A.shape != (n, n) or Q.shape != (n, n) or R.shape != (m, m):
        raise ValueError(
            f"inconsistent LQR shapes: A {A.shape}, B {B.shape}, Q {Q.shape}, R {R.shape}"
        )
    if noise_std <= 0 or init_std <= 0:
        raise ValueError(f"noise_std and init_std must be > 0, got {noise_std}, {init_std}")
    eye = jnp.eye(n)
    return LQR(A=A, B=B, Q=Q, R=R, W=noise_std * eye, S0=init_std * eye)


def _solve_discounted_lyapunov(M, C, gamma):
    """X = C + gamma M X M^T, by a direct solve on vec(X) (n is small here)."""
    n = M.shape[0]
    lhs = jnp.eye(n * n) - gamma * jnp.kron(M, M)
    return jnp.linalg.solve(lhs, C.reshape(-1)).reshape(n, n)


def _noise_cov(lqr: LQR, policy_std) -> Array:
    return lqr.W @ lqr.W.T + policy_std**2 * lqr.B @ lqr.B.T


def value_matrix(lqr: LQR, K, gamma: float) -> Array:
    """P_K with V_K(s) = -s^T P_K s - c_K for the policy a = -K s (+ noise)."""
    M = lqr.A - lqr.B @ K
    return _solve_discounted_lyapunov(M.T, lqr.Q + K.T @ lqr.R @ K, gamma)


def value_offset(lqr: LQR, K, gamma: float, policy_std=0.0) -> Array:
    """c_K, the state-independent part of -V_K."""
    P = value_matrix(lqr, K, gamma)
    return (
        policy_std**2 * jnp.trace(lqr.R) + gamma * jnp.trace(P @ _noise_cov(lqr, policy_std))
    ) / (1 - gamma)


def value(lqr: LQR, K, gamma: float, s, policy_std=0.0) -> Array:
    """V_K(s), the expected discounted return from s under a = -K s + policy_std eps."""
    return -(s @ value_matrix(lqr, K, gamma) @ s) - value_offset(lqr, K, gamma, policy_std)


def q_value(lqr: LQR, K, gamma: float, s, a, policy_std=0.0) -> Array:
    """Q_K(s, a) = r(s, a) + gamma E[V_K(A s + B a + W xi)], the exact critic of the policy K."""
    P = value_matrix(lqr, K, gamma)
    mean = lqr.mean_next(s, a)
    expected_v = (
        -(mean @ P @ mean)
        - jnp.trace(P @ lqr.W @ lqr.W.T)
        - value_offset(lqr, K, gamma, policy_std)
    )
    return lqr.stage_reward(s, a) + gamma * expected_v


def expected_return(lqr: LQR, K, gamma: float, horizon: int | None = None, policy_std=0.0) -> Array:
    """E[sum_{t<horizon} gamma^t r_t] for a = -K s + policy_std eps; horizon None is infinite."""
    Sigma0 = lqr.S0 @ lqr.S0.T
    if horizon is None:
        return -(
            jnp.trace(value_matrix(lqr, K, gamma) @ Sigma0)
            + value_offset(lqr, K, gamma, policy_std)
        )
    M = lqr.A - lqr.B @ K
    N = _noise_cov(lqr, policy_std)
    cost = lqr.Q + K.T @ lqr.R @ K
    action_noise_cost = policy_std**2 * jnp.trace(lqr.R)

    def body(Sigma, t):
        return M @ Sigma @ M.T + N, gamma**t * (jnp.trace(cost @ Sigma) + action_noise_cost)

    _, costs = jax.lax.scan(body, Sigma0, jnp.arange(horizon, dtype=Sigma0.dtype))
    return -jnp.sum(costs)


def return_gradient(lqr: LQR, K, gamma: float, policy_std=0.0) -> Array:
    """grad_K J(K) for the infinite horizon, by the closed form in the module docstring."""
    P = value_matrix(lqr, K, gamma)
    M = lqr.A - lqr.B @ K
    Sigma0 = lqr.S0 @ lqr.S0.T
    Sigma_K = _solve_discounted_lyapunov(
        M, Sigma0 + gamma * _noise_cov(lqr, policy_std) / (1 - gamma), gamma
    )
    E = (lqr.R + gamma * lqr.B.T @ P @ lqr.B) @ K - gamma * lqr.B.T @ P @ lqr.A
    return -2 * E @ Sigma_K


def riccati(lqr: LQR, gamma: float, iterations: int = 5000) -> tuple[Array, Array]:
    """(K*, P*): the optimal gain and value matrix of the discounted problem (Riccati iteration)."""
    A, B, Q, R = lqr.A, lqr.B, lqr.Q, lqr.R

    def gain(P):
        return gamma * jnp.linalg.solve(R + gamma * B.T @ P @ B, B.T @ P @ A)

    def body(_, P):
        return Q + gamma * A.T @ P @ A - gamma * A.T @ P @ B @ gain(P)

    P = jax.lax.fori_loop(0, iterations, body, Q)
    return gain(P), P
