"""Exploration and target-smoothing noise for deterministic policies (DDPG, TD3).

The reference text's "Deep Deterministic Policy Gradient" discretizes the Ornstein-Uhlenbeck SDE
dN_t = theta (mu - N_t) dt + sigma dW_t with Euler-Maruyama:

    N_{t+1} = N_t + theta (mu - N_t) dt + sigma sqrt(dt) eps_t,    eps_t ~ N(0, I),

and TD3 ("Twin Delayed DDPG") smooths the target action with clipped Gaussian noise:

    a~ = clip(d(s'; w_target) + clip(sigma eps, -c, c), low, high).

Noise is in units of the action box's half-width h, so one setting fits every task.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from mbpo.types import Action, Array, Float


@dataclasses.dataclass(frozen=True)
class OrnsteinUhlenbeck:
    """The OU process's parameters (Lillicrap et al. 2016 use theta 0.15, sigma 0.2).

    Attributes:
      theta: mean-reversion rate (> 0).
      sigma: diffusion scale (>= 0).
      dt: Euler-Maruyama time step (> 0).
      mu: long-run mean.
    """

    theta: float = 0.15
    sigma: float = 0.2
    dt: float = 1e-2
    mu: float = 0.0

    def __post_init__(self):
        if not (self.theta > 0 and self.sigma >= 0 and self.dt > 0):
            raise ValueError(
                f"need theta > 0, sigma >= 0, dt > 0; got theta={self.theta}, sigma={self.sigma}, "
                f"dt={self.dt}"
            )

    @property
    def stationary_std(self) -> float:
        """sigma / sqrt(2 theta), the standard deviation of the continuous-time stationary law."""
        return self.sigma / math.sqrt(2 * self.theta)

    def step(self, noise: Float[Array, ...], eps: Float[Array, ...]) -> Float[Array, ...]:
        """N_{t+1} = N_t + theta (mu - N_t) dt + sigma sqrt(dt) eps_t."""
        return (
            noise + self.theta * (self.mu - noise) * self.dt + self.sigma * math.sqrt(self.dt) * eps
        )


def perturb(action: Action, noise: Action, low: Array, high: Array) -> Action:
    """clip(a + h noise, low, high), with h the half-width of the box (noise in half-widths)."""
    return jnp.clip(action + (high - low) / 2 * noise, low, high)


def smoothed_target_action(
    target_action: Action, eps: Action, low: Array, high: Array, *, std: float, clip: float
) -> Action:
    """TD3's target policy smoothing: clip(d(s'; w_target) + h clip(std eps, -c, c), low, high)."""
    return perturb(target_action, jnp.clip(std * eps, -clip, clip), low, high)


# --- behaviour policies of the online model-free algorithms: one small object per kind ----------
# Each takes the policy's deterministic action (or its sample), standard normal ``eps`` and its own
# per-environment state, and returns the exploring action and the next state; ``reset`` clears the
# state of environments whose episode ended.


@dataclasses.dataclass(frozen=True)
class PolicySample:
    """a ~ pi(.|s): the stochastic policy explores by itself (SAC). Stateless."""

    def init(self, num_envs: int, action_size: int, dtype) -> tuple:
        return ()

    def __call__(self, policy, params, obs, eps, state, low, high):
        return policy.sample(params, obs, eps), state

    def reset(self, state, finished):
        return state


@dataclasses.dataclass(frozen=True)
class GaussianExploration:
    """clip(d(s) + h std eps): uncorrelated Gaussian noise in half-widths (TD3). Stateless."""

    std: float

    def init(self, num_envs: int, action_size: int, dtype) -> tuple:
        return ()

    def __call__(self, policy, params, obs, eps, state, low, high):
        return perturb(policy.mean(params, obs), self.std * eps, low, high), state

    def reset(self, state, finished):
        return state


@dataclasses.dataclass(frozen=True)
class OUExploration:
    """clip(d(s) + h N_t) with N_t an Ornstein-Uhlenbeck process per environment (DDPG), reset to
    0 when an episode ends."""

    process: OrnsteinUhlenbeck

    def init(self, num_envs: int, action_size: int, dtype) -> Float[Array, "B act"]:
        return jnp.zeros((num_envs, action_size), dtype)

    def __call__(self, policy, params, obs, eps, state, low, high):
        state = self.process.step(state, eps)
        return perturb(policy.mean(params, obs), state, low, high), state

    def reset(self, state, finished):
        return jnp.where(finished[:, None], 0.0, state)


Exploration = PolicySample | GaussianExploration | OUExploration
