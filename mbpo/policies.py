"""Policies with explicit noise: a = d(s, eps; w), with log-density and noise-from-action.

Three families, as in the reference text ("Stochastic Value Gradient", "Soft Actor-Critic"):

* :class:`DeterministicPolicy`: a = d(s; w), squashed into the action box; no noise.
* :class:`GaussianPolicy`: a = d(s; w) + sigma(s; w) eps, eps ~ N(0, I), mean squashed into the box.
* :class:`TanhGaussianPolicy`: a = c + h tanh(mu(s; w) + sigma(s; w) eps), inside the box (SAC).

A policy object is static configuration (hashable, safe to close over in ``jax.jit``); its
parameters ``w`` are a separate pytree from ``init``. ``sample(w, obs, eps)`` is a differentiable
function of ``w`` and ``obs``; ``noise_from_action`` inverts it (noise inference, Heess et al.
2015).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from mbpo.distributions import standardized_normal_log_prob
from mbpo.networks import MLP, check_activation
from mbpo.types import Action, Array, Noise, Observation, Params, PRNGKey, Scalar

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclasses.dataclass(frozen=True)
class _PolicyBase:
    """Shared configuration.

    Attributes:
      observation_size: size of the observation.
      action_size: size of the action.
      action_low, action_high: the action box (tuples; +-inf where unbounded: no squashing).
      hidden: hidden layer sizes of the network; ``()`` gives a linear policy.
      activation: hidden activation (see ``mbpo.networks.ACTIVATIONS``).
      use_bias: whether the network has biases (False with ``hidden=()`` gives a = W s, as in LQR).
      layer_norm: LayerNorm before each hidden activation (``mbpo.networks.MLP``).
    """

    observation_size: int
    action_size: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    use_bias: bool = True
    layer_norm: bool = False

    def __post_init__(self):
        if self.observation_size < 1 or self.action_size < 1:
            raise ValueError(
                f"observation_size and action_size must be >= 1, got {self.observation_size}, "
                f"{self.action_size}"
            )
        if len(self.action_low) != self.action_size or len(self.action_high) != self.action_size:
            raise ValueError(
                f"action bounds must have {self.action_size} entries, got {self.action_low}, "
                f"{self.action_high}"
            )
        if any(not lo < hi for lo, hi in zip(self.action_low, self.action_high)):
            raise ValueError(
                f"action bounds need low < high, got {self.action_low}, {self.action_high}"
            )
        check_activation(self.activation)

    @property
    def bounded(self) -> bool:
        return all(math.isfinite(v) for v in self.action_low + self.action_high)

    def _center_half_width(self, dtype) -> tuple[Array, Array]:
        low, high = np.asarray(self.action_low), np.asarray(self.action_high)
        return jnp.asarray((high + low) / 2, dtype), jnp.asarray((high - low) / 2, dtype)

    def _squash(self, u: Array) -> Array:
        """Maps R -> the action box by c + h tanh(u) (identity for unbounded actions)."""
        if not self.bounded:
            return u
        c, h = self._center_half_width(u.dtype)
        return c + h * jnp.tanh(u)

    def _net(self, out: int) -> MLP:
        return MLP(
            self.hidden,
            out,
            self.activation,
            self.use_bias,
            final_scale=0.1 if self.hidden else 1.0,
            layer_norm=self.layer_norm,
        )

    @classmethod
    def for_dynamics(cls, dynamics, **kwargs):
        """A policy sized for ``dynamics`` with its action bounds."""
        low, high = dynamics.action_bounds
        return cls(
            observation_size=dynamics.observation_size,
            action_size=dynamics.action_size,
            action_low=tuple(float(v) for v in low),
            action_high=tuple(float(v) for v in high),
            **kwargs,
        )


@dataclasses.dataclass(frozen=True)
class DeterministicPolicy(_PolicyBase):
    """a = d(s; w) = c + h tanh(net(s; w)) in a bounded box, net(s; w) otherwise."""

    @property
    def eps_shape(self) -> tuple[int, ...]:
        return (0,)

    def init(self, key: PRNGKey) -> Params:
        return self._net(self.action_size).init(key, jnp.zeros(self.observation_size))

    def mean(self, params: Params, obs: Observation) -> Action:
        return self._squash(self._net(self.action_size).apply(params, obs))

    def sample(self, params: Params, obs: Observation, eps: Noise) -> Action:
        return self.mean(params, obs)

    def log_prob(self, params: Params, obs: Observation, action: Action) -> Scalar:
        raise NotImplementedError(
            "a deterministic policy has no density; use GaussianPolicy or TanhGaussianPolicy"
        )

    def noise_from_action(self, params: Params, obs: Observation, action: Action) -> Noise:
        return jnp.zeros((0,), action.dtype)


@dataclasses.dataclass(frozen=True)
class GaussianPolicy(_PolicyBase):
    """a = d(s; w) + sigma(s; w) eps.

    Attributes:
      state_dependent_std: sigma(s; w) from a network head; otherwise one learned log-std per
      action.
      init_std: initial standard deviation.
    """

    state_dependent_std: bool = False
    init_std: float = 0.5

    @property
    def eps_shape(self) -> tuple[int, ...]:
        return (self.action_size,)

    def init(self, key: PRNGKey) -> Params:
        out = 2 * self.action_size if self.state_dependent_std else self.action_size
        net = self._net(out).init(key, jnp.zeros(self.observation_size))
        log_std = jnp.zeros(self.action_size) + math.log(
            self.init_std
        )  # not weakly typed: no retrace
        return {"net": net, "log_std": log_std}

    def _mean_std(self, params: Params, obs: Observation) -> tuple[Array, Array]:
        out = self._net(
            2 * self.action_size if self.state_dependent_std else self.action_size
        ).apply(params["net"], obs)
        if self.state_dependent_std:
            out, log_std = jnp.split(out, 2)
            log_std = params["log_std"] + log_std
        else:
            log_std = params["log_std"]
        return out, jnp.exp(jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX))

    def mean(self, params: Params, obs: Observation) -> Action:
        return self._squash(self._mean_std(params, obs)[0])

    def std(self, params: Params, obs: Observation) -> Action:
        return self._mean_std(params, obs)[1]

    def sample(self, params: Params, obs: Observation, eps: Noise) -> Action:
        u, std = self._mean_std(params, obs)
        return self._squash(u) + std * eps

    def log_prob(self, params: Params, obs: Observation, action: Action) -> Scalar:
        eps = self.noise_from_action(params, obs, action)
        return standardized_normal_log_prob(eps, self.std(params, obs))

    def sample_and_log_prob(
        self, params: Params, obs: Observation, eps: Noise
    ) -> tuple[Action, Scalar]:
        """(a, log pi(a|s; w)) for a = sample(w, s, eps), the density computed from eps (no
        inversion)."""
        u, std = self._mean_std(params, obs)
        return self._squash(u) + std * eps, standardized_normal_log_prob(eps, std)

    def noise_from_action(self, params: Params, obs: Observation, action: Action) -> Noise:
        """eps = (a - d(s; w)) / sigma(s; w)."""
        u, std = self._mean_std(params, obs)
        return (action - self._squash(u)) / std

    def latent(self, params: Params, obs: Observation, eps: Noise) -> Array:
        """z, the Gaussian variable of the action drawn with ``eps``: the action itself here
        (pre-squash u for :class:`TanhGaussianPolicy`). Ratios pi_w(a|s) / pi_w'(a|s) are
        ``latent_log_prob`` differences at a stored z, exact where tanh saturates."""
        return self.sample(params, obs, eps)

    def latent_log_prob(self, params: Params, obs: Observation, z: Array) -> Scalar:
        """log N(z; mean(s; w), sigma(s; w)^2): log pi(a|s; w) up to the Jacobian of a(z), which
        does not depend on w."""
        u, std = self._mean_std(params, obs)
        return standardized_normal_log_prob((z - self._squash(u)) / std, std)


@dataclasses.dataclass(frozen=True)
class TanhGaussianPolicy(GaussianPolicy):
    """a = c + h tanh(u), u = mu(s; w) + sigma(s; w) eps; needs a bounded action box.

    log pi(a|s) = log N(u; mu, sigma^2) - sum_i log(h_i (1 - tanh(u_i)^2)).
    """

    state_dependent_std: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not self.bounded:
            raise ValueError(
                f"TanhGaussianPolicy needs finite action bounds, got low={self.action_low}, "
                f"high={self.action_high}"
            )

    def mean(self, params: Params, obs: Observation) -> Action:
        return self._squash(self._mean_std(params, obs)[0])

    def sample(self, params: Params, obs: Observation, eps: Noise) -> Action:
        u, std = self._mean_std(params, obs)
        return self._squash(u + std * eps)

    def _pre_squash(self, action: Action) -> Array:
        c, h = self._center_half_width(action.dtype)
        y = jnp.clip((action - c) / h, -1 + 1e-6, 1 - 1e-6)
        return jnp.arctanh(y)

    def _log_det(self, u: Array) -> Array:
        """log |da/du| = log h + log(1 - tanh(u)^2) = log h + 2 (log 2 - u - softplus(-2u))
        (stable)."""
        _, h = self._center_half_width(u.dtype)
        return jnp.log(h) + 2 * (jnp.log(2.0) - u - jax.nn.softplus(-2 * u))

    def log_prob(self, params: Params, obs: Observation, action: Action) -> Scalar:
        u_mean, std = self._mean_std(params, obs)
        u = self._pre_squash(action)
        return standardized_normal_log_prob((u - u_mean) / std, std) - jnp.sum(self._log_det(u))

    def sample_and_log_prob(
        self, params: Params, obs: Observation, eps: Noise
    ) -> tuple[Action, Scalar]:
        """(a, log pi(a|s; w)) from eps directly: exact even where tanh saturates (SAC's actor
        loss)."""
        u_mean, std = self._mean_std(params, obs)
        u = u_mean + std * eps
        return self._squash(u), standardized_normal_log_prob(eps, std) - jnp.sum(self._log_det(u))

    def noise_from_action(self, params: Params, obs: Observation, action: Action) -> Noise:
        """eps = (atanh((a - c) / h) - mu(s; w)) / sigma(s; w)."""
        u_mean, std = self._mean_std(params, obs)
        return (self._pre_squash(action) - u_mean) / std

    def latent(self, params: Params, obs: Observation, eps: Noise) -> Array:
        """u = mu(s; w) + sigma(s; w) eps, the pre-squash Gaussian variable of the action."""
        u_mean, std = self._mean_std(params, obs)
        return u_mean + std * eps

    def latent_log_prob(self, params: Params, obs: Observation, z: Array) -> Scalar:
        """log N(u; mu(s; w), sigma(s; w)^2) at u = ``z``."""
        u_mean, std = self._mean_std(params, obs)
        return standardized_normal_log_prob((z - u_mean) / std, std)


Policy = DeterministicPolicy | GaussianPolicy | TanhGaussianPolicy
POLICIES: dict[str, type] = {
    "deterministic": DeterministicPolicy,
    "gaussian": GaussianPolicy,
    "tanh_gaussian": TanhGaussianPolicy,
}
