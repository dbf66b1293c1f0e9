"""Conditional normalizing flows with an exact inverse: expressive policies and dynamics noise.

A flow is a bijection x = f(z; c, w) = (f_K o ... o f_1)(z), z ~ N(0, I) of size D, conditioned on
a context c (the state s for a policy, (s, a) for a dynamics residual). Change of variables gives

    log p(x | c; w) = log N(z; 0, I) - sum_k log |det df_k / dz_{k-1}|,    z = f^-1(x; c, w),

and the inverse z_0 = (f_1^-1 o ... o f_K^-1)(x) is the noise inference of the reference text
("Noise Inference in SVG"): for a policy a = f(eps; s, w) it recovers eps from an observed action,
for dynamics s' = mu(s, a) + f(xi; (s, a), phi) it recovers xi from an observed transition.

Layers (each ``forward(params, z, c) -> (x, log|det dx/dz|)`` and ``inverse(params, x, c) ->
(z, log|det dz/dx|)``, both exact):

* :class:`AffineCoupling` (RealNVP, Dinh et al. 2017): x_T = z_T exp(l) + t with
  (t, l) = net(z_I, c) and a tanh-bounded log-scale l; the coordinates T and I alternate by layer.
  With no conditioning half (``parity=None``) it is the conditional Gaussian x = m(c) + sigma(c) z.
* :class:`SplineCoupling` (Durkan et al. 2019, "Neural Spline Flows"): each x_i, i in T, is a
  monotone rational-quadratic spline of z_i on [-B, B] with K bins and identity tails, its knots
  and derivatives from net(z_I, c). For D = 1 the spline depends on c only; this is what lets a
  1-D action or state be multimodal (an affine coupling is degenerate for D = 1).
* :class:`BoxSquash`: x = c + h tanh(y) into a bounded box (the action bounds of a policy).

:class:`ConditionalFlow` stacks them; :class:`FlowPolicy` is a policy a = c + h tanh(f(eps; s, w));
:func:`flow_dynamics` is a dynamics s' = mu(s, a) + f(xi; (s, a), phi); :func:`fit_flow` fits either
by maximum likelihood.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple, Unpack

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbpo.cli import check_int, check_sizes
from mbpo.distributions import normal_log_prob
from mbpo.dynamics.function import (
    FunctionDynamics,
    Options,
    make_function_dynamics,
    options_with,
    without_params,
)
from mbpo.networks import MLP, check_activation
from mbpo.policies import _PolicyBase
from mbpo.types import Action, Array, Float, Noise, Observation, Params, PRNGKey, Scalar

LAYER_KINDS = ("coupling", "spline")
# Lower bounds on the spline's bin widths, heights and knot derivatives (Durkan et al. 2019).
MIN_BIN_SIZE, MIN_DERIVATIVE = 1e-3, 1e-3
# softplus(_DERIVATIVE_OFFSET) + MIN_DERIVATIVE = 1: a zero network output is the identity spline.
_DERIVATIVE_OFFSET = math.log(math.expm1(1.0 - MIN_DERIVATIVE))

Vector = Float[Array, " D"]
Context = Float[Array, " C"]
LogDet = Float[Array, ""]


def _check_shape(name: str, value: Array, shape: tuple[int, ...]) -> None:
    """Raises ValueError naming ``value`` (at trace time) when its shape is not ``shape``."""
    if tuple(jnp.shape(value)) != shape:
        raise ValueError(
            f"{name} has shape {tuple(jnp.shape(value))}, but this flow expects shape {shape} "
            "(batch with jax.vmap, not by adding a leading axis)"
        )


# --- layers ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class _Conditioned:
    """Sizes of a map of x (size ``dim``) conditioned on c (size ``context_dim``) through MLPs of
    ``hidden`` sizes, ``activation`` and ``use_bias``, whose last layer starts at ``init_scale``."""

    dim: int
    context_dim: int
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    use_bias: bool = True
    init_scale: float = 0.01

    def __post_init__(self):
        check_int("dim", self.dim, 1)
        check_int("context_dim", self.context_dim, 1)
        check_activation(self.activation)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Coupling(_Conditioned):
    """A layer that transforms the coordinates T given the coordinates I and the context c.

    Attributes:
      dim: D, the size of z and x.
      context_dim: C, the size of c (>= 1).
      parity: T = {i : i = parity mod 2} and I the rest when D > 1; None (or D = 1): T is every
        coordinate and the conditioner sees c only.
      hidden, activation, use_bias: the conditioner MLP.
      init_scale: scale of the conditioner's last layer at init; 0 starts at the identity map.
    """

    parity: int | None = 0

    @property
    def transformed(self) -> np.ndarray:
        if self.parity is None or self.dim == 1:
            return np.arange(self.dim)
        return np.arange(self.parity % 2, self.dim, 2)

    @property
    def conditioning(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.dim), self.transformed)

    @property
    def params_per_coordinate(self) -> int:
        raise NotImplementedError

    def _net(self) -> MLP:
        out = len(self.transformed) * self.params_per_coordinate
        return MLP(self.hidden, out, self.activation, self.use_bias, final_scale=self.init_scale)

    def init(self, key: PRNGKey) -> Params:
        return self._net().init(key, jnp.zeros(len(self.conditioning) + self.context_dim))

    def _theta(self, params: Params, v: Vector, c: Context) -> Float[Array, "T P"]:
        # v_I is the same before and after the layer, so forward and inverse see the same theta.
        out = self._net().apply(params, jnp.concatenate([v[self.conditioning], c]))
        return out.reshape(len(self.transformed), self.params_per_coordinate)

    def _map(self, theta: Float[Array, "T P"], v: Float[Array, " T"], inverse: bool):
        """The elementwise bijection of v_T and its log |derivative|, both of shape (T,)."""
        raise NotImplementedError

    def _apply(self, params: Params, v: Vector, c: Context, inverse: bool) -> tuple[Vector, LogDet]:
        _check_shape("the flow variable", v, (self.dim,))
        _check_shape("the context", c, (self.context_dim,))
        y, log_det = self._map(self._theta(params, v, c), v[self.transformed], inverse)
        return v.at[self.transformed].set(y), jnp.sum(log_det)

    def forward(self, params: Params, z: Vector, c: Context) -> tuple[Vector, LogDet]:
        """x = f(z; c) and log |det dx/dz|."""
        return self._apply(params, z, c, inverse=False)

    def inverse(self, params: Params, x: Vector, c: Context) -> tuple[Vector, LogDet]:
        """z = f^-1(x; c) and log |det dz/dx|."""
        return self._apply(params, x, c, inverse=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AffineCoupling(_Coupling):
    """x_T = z_T exp(l) + t, (t, l~) = net(z_I, c), l = L tanh(l~ / L) + l_0 (RealNVP).

    Attributes:
      max_log_scale: L, the bound on |l - l_0| that keeps exp(l) away from 0 and infinity.
      log_scale_offset: l_0, the log-scale at a zero network output (log of the initial std).
    """

    max_log_scale: float = 3.0
    log_scale_offset: float = 0.0

    @property
    def params_per_coordinate(self) -> int:
        return 2

    def _map(self, theta, v, inverse):
        shift = theta[:, 0]
        log_scale = (
            self.max_log_scale * jnp.tanh(theta[:, 1] / self.max_log_scale) + self.log_scale_offset
        )
        if inverse:
            return (v - shift) * jnp.exp(-log_scale), -log_scale
        return v * jnp.exp(log_scale) + shift, log_scale


@dataclasses.dataclass(frozen=True, kw_only=True)
class SplineCoupling(_Coupling):
    """x_i = g(z_i; theta_i) for i in T, g a monotone rational-quadratic spline on [-B, B] with
    K bins and identity outside, theta_i = net(z_I, c) (Durkan et al. 2019).

    Attributes:
      num_bins: K >= 2.
      tail_bound: B > 0.
    """

    num_bins: int = 8
    tail_bound: float = 3.0

    def __post_init__(self):
        super().__post_init__()
        check_int("num_bins", self.num_bins, 2)
        if not self.tail_bound > 0:
            raise ValueError(f"tail_bound must be > 0, got {self.tail_bound!r}")

    @property
    def params_per_coordinate(self) -> int:
        return 3 * self.num_bins - 1

    def _map(self, theta, v, inverse):
        return rational_quadratic_spline(v, theta, tail_bound=self.tail_bound, inverse=inverse)


def _knots(raw: Float[Array, "T K"], bound: float) -> Float[Array, "T K+1"]:
    """K bins of sizes >= MIN_BIN_SIZE * 2B covering [-B, B]: the K + 1 knot positions."""
    k = raw.shape[-1]
    sizes = MIN_BIN_SIZE + (1 - MIN_BIN_SIZE * k) * jax.nn.softmax(raw, axis=-1)
    knots = jnp.cumsum(sizes, axis=-1)
    knots = jnp.concatenate([jnp.zeros_like(knots[:, :1]), knots], axis=-1)
    return (2 * knots - 1).at[:, -1].set(1.0) * bound


def rational_quadratic_spline(
    v: Float[Array, " T"], theta: Float[Array, "T P"], *, tail_bound: float, inverse: bool
) -> tuple[Float[Array, " T"], Float[Array, " T"]]:
    """The monotone rational-quadratic spline of Durkan et al. (2019), elementwise, and its inverse.

    With knots (x_k, y_k), k = 0..K, and derivatives d_k (d_0 = d_K = 1, so the identity tails
    outside [-B, B] join with a continuous derivative), on bin k with xi = (x - x_k) / w_k,
    s_k = h_k / w_k:

        g(x) = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)],
        g'(x) = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2] / [denominator]^2;

    the inverse solves the quadratic in xi for the root in [0, 1].

    Args:
      v: the inputs (x for the forward map, y = g(x) for the inverse).
      theta: per input, K unnormalized widths, K unnormalized heights, K - 1 unnormalized
        interior derivatives (all zero gives the identity).
      tail_bound: B.
      inverse: whether to compute g^-1.

    Returns:
      g(v) (or g^-1(v)) and log |dg/dx| (or log |dg^-1/dy|), elementwise.
    """
    k = (theta.shape[-1] + 1) // 3
    x_knots = _knots(theta[:, :k], tail_bound)
    y_knots = _knots(theta[:, k : 2 * k], tail_bound)
    inner = MIN_DERIVATIVE + jax.nn.softplus(theta[:, 2 * k :] + _DERIVATIVE_OFFSET)
    ones = jnp.ones_like(inner[:, :1])
    derivatives = jnp.concatenate([ones, inner, ones], axis=-1)

    inside = jnp.abs(v) <= tail_bound
    # Evaluate the spline at a point inside [-B, B] everywhere, so that the branch jnp.where drops
    # has finite values and gradients.
    u = jnp.clip(v, -tail_bound, tail_bound)
    knots_in = y_knots if inverse else x_knots
    bin_k = jnp.sum(u[:, None] >= knots_in[:, 1:-1], axis=-1)[:, None]

    def at(a, offset=0):
        return jnp.take_along_axis(a, bin_k + offset, axis=-1)[:, 0]

    x_k, w_k = at(x_knots), at(x_knots, 1) - at(x_knots)
    y_k, h_k = at(y_knots), at(y_knots, 1) - at(y_knots)
    d_k, d_k1 = at(derivatives), at(derivatives, 1)
    s_k = h_k / w_k
    curvature = d_k1 + d_k - 2 * s_k
    if inverse:
        dy = u - y_k
        a = h_k * (s_k - d_k) + dy * curvature
        b = h_k * d_k - dy * curvature
        c = -s_k * dy
        xi = 2 * c / (-b - jnp.sqrt(jnp.maximum(b**2 - 4 * a * c, 0.0)))
        out = x_k + xi * w_k
    else:
        xi = (u - x_k) / w_k
        out = y_k + h_k * (s_k * xi**2 + d_k * xi * (1 - xi)) / (s_k + curvature * xi * (1 - xi))
    one_minus = xi * (1 - xi)
    log_slope = (
        2 * jnp.log(s_k)
        + jnp.log(d_k1 * xi**2 + 2 * s_k * one_minus + d_k * (1 - xi) ** 2)
        - 2 * jnp.log(s_k + curvature * one_minus)
    )
    log_det = -log_slope if inverse else log_slope
    return jnp.where(inside, out, v), jnp.where(inside, log_det, 0.0)


@dataclasses.dataclass(frozen=True)
class BoxSquash:
    """x = c + h tanh(y) into the box [low, high], c = (high + low) / 2, h = (high - low) / 2.

    log |det dx/dy| = sum_i log(h_i (1 - tanh(y_i)^2)); the inverse clips (x - c) / h to within
    one float epsilon of +-1, so that actions on the boundary keep a finite density.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self):
        if len(self.low) != len(self.high) or not all(
            math.isfinite(lo) and math.isfinite(hi) and lo < hi
            for lo, hi in zip(self.low, self.high)
        ):
            raise ValueError(
                f"BoxSquash needs finite bounds with low < high, got low={self.low}, "
                f"high={self.high}"
            )

    def _center_half_width(self, dtype) -> tuple[Array, Array]:
        low, high = np.asarray(self.low), np.asarray(self.high)
        return jnp.asarray((high + low) / 2, dtype), jnp.asarray((high - low) / 2, dtype)

    @staticmethod
    def _log_det(y: Array, h: Array) -> LogDet:
        # log(1 - tanh(y)^2) = 2 (log 2 - y - softplus(-2y)), stable for large |y|.
        return jnp.sum(jnp.log(h) + 2 * (jnp.log(2.0) - y - jax.nn.softplus(-2 * y)))

    def forward(self, y: Vector) -> tuple[Vector, LogDet]:
        c, h = self._center_half_width(y.dtype)
        return c + h * jnp.tanh(y), self._log_det(y, h)

    def inverse(self, x: Vector) -> tuple[Vector, LogDet]:
        c, h = self._center_half_width(x.dtype)
        eps = jnp.finfo(x.dtype).eps
        y = jnp.arctanh(jnp.clip((x - c) / h, -1 + eps, 1 - eps))
        return y, -self._log_det(y, h)


# --- the flow ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class ConditionalFlow(_Conditioned):
    """x = f(z; c, w) = (f_K o ... o f_1)(z), z ~ N(0, I_D), a stack of coupling layers.

    Layer k (k = 0..num_layers-1) is ``kinds[k % len(kinds)]`` and transforms the coordinates
    i = k (mod 2) given the others and c; with ``loc_scale`` a last layer x = m(c) + sigma(c) y
    (an :class:`AffineCoupling` with no conditioning half) sets location and scale, so the splines
    work on a standardized variable and ``num_layers=0`` is the conditional Gaussian
    N(m(c), diag sigma(c)^2).

    Attributes:
      dim: D >= 1, the size of x (an action, a state residual).
      context_dim: C >= 1, the size of c (a state, or a state and an action).
      num_layers: coupling layers before the location-scale layer, >= 0.
      hidden: the conditioner MLPs' hidden sizes.
      num_bins: K >= 2, bins of each spline.
      tail_bound: B > 0: splines act on [-B, B] (in standardized units), identity outside.
      kinds: the layer kinds, cycled; each in ``LAYER_KINDS`` ("coupling": affine, "spline").
      loc_scale: whether to end with the conditional location-scale layer.
      init_std: sigma(c) at a zero network output.
      max_log_scale: L > 0, bound on the affine log-scales' deviation from their offset.
      activation, use_bias: the conditioner MLPs.
      init_scale: scale of the conditioners' last layer at init (>= 0; 0 gives x = sigma_0 z).
    """

    num_layers: int = 2
    num_bins: int = 8
    tail_bound: float = 3.0
    kinds: tuple[str, ...] = ("spline",)
    loc_scale: bool = True
    init_std: float = 1.0
    max_log_scale: float = 3.0

    def __post_init__(self):
        super().__post_init__()
        check_int("num_layers", self.num_layers, 0)
        check_int("num_bins", self.num_bins, 2)
        check_sizes(hidden=self.hidden)
        if not self.kinds or any(kind not in LAYER_KINDS for kind in self.kinds):
            raise ValueError(
                f"kinds must be a non-empty tuple of {LAYER_KINDS}, got {self.kinds!r}"
            )
        if not self.tail_bound > 0:
            raise ValueError(f"tail_bound must be > 0, got {self.tail_bound!r}")
        if not self.max_log_scale > 0:
            raise ValueError(f"max_log_scale must be > 0, got {self.max_log_scale!r}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std!r}")
        if not self.init_scale >= 0:
            raise ValueError(f"init_scale must be >= 0, got {self.init_scale!r}")

    @property
    def layers(self) -> tuple[AffineCoupling | SplineCoupling, ...]:
        """The layers f_1, ..., f_K in the order z -> x."""
        net = {
            "dim": self.dim,
            "context_dim": self.context_dim,
            "hidden": self.hidden,
            "activation": self.activation,
            "use_bias": self.use_bias,
            "init_scale": self.init_scale,
        }
        layers = []
        for k in range(self.num_layers):
            if self.kinds[k % len(self.kinds)] == "spline":
                layers.append(
                    SplineCoupling(
                        parity=k % 2, num_bins=self.num_bins, tail_bound=self.tail_bound, **net
                    )
                )
            else:
                layers.append(AffineCoupling(parity=k % 2, max_log_scale=self.max_log_scale, **net))
        if self.loc_scale:
            offset = math.log(self.init_std)
            layers.append(
                AffineCoupling(
                    parity=None, max_log_scale=self.max_log_scale, log_scale_offset=offset, **net
                )
            )
        return tuple(layers)

    def init(self, key: PRNGKey) -> Params:
        """Parameters w: one conditioner's parameters per layer."""
        layers = self.layers
        return tuple(layer.init(k) for layer, k in zip(layers, jax.random.split(key, len(layers))))

    def forward(self, params: Params, z: Vector, c: Context) -> tuple[Vector, LogDet]:
        """x = f(z; c, w) and log |det dx/dz| = sum_k log |det df_k/dz_{k-1}|."""
        _check_shape("z", z, (self.dim,))
        _check_shape("the context", c, (self.context_dim,))
        log_det = jnp.zeros((), z.dtype)
        for layer, p in zip(self.layers, params):
            z, ld = layer.forward(p, z, c)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, params: Params, x: Vector, c: Context) -> tuple[Vector, LogDet]:
        """z = (f_1^-1 o ... o f_K^-1)(x; c, w) and log |det dz/dx|."""
        _check_shape("x", x, (self.dim,))
        _check_shape("the context", c, (self.context_dim,))
        log_det = jnp.zeros((), x.dtype)
        for layer, p in reversed(list(zip(self.layers, params))):
            x, ld = layer.inverse(p, x, c)
            log_det = log_det + ld
        return x, log_det

    def log_prob(self, params: Params, x: Vector, c: Context) -> Scalar:
        """log p(x | c; w) = log N(f^-1(x); 0, I) + log |det df^-1/dx|."""
        z, log_det = self.inverse(params, x, c)
        return jnp.sum(normal_log_prob(z, 0.0, 1.0)) + log_det

    def sample(self, params: Params, c: Context, z: Vector) -> Vector:
        """x = f(z; c, w) for base noise z ~ N(0, I)."""
        return self.forward(params, z, c)[0]


# --- a policy ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FlowPolicy(_PolicyBase):
    """a = c + h tanh(f(eps; s, w)), eps ~ N(0, I): a :class:`ConditionalFlow` policy.

    In an unbounded action space a = f(eps; s, w). With ``num_layers=0`` this is the
    :class:`mbpo.policies.TanhGaussianPolicy`; spline layers make pi(a|s) multimodal, also for a
    1-D action. ``noise_from_action`` is the exact inverse, ``log_prob`` the change of variables.

    Attributes (besides those of the other policies):
      num_layers, num_bins, tail_bound, kinds, max_log_scale, init_scale: of the
        :class:`ConditionalFlow`.
      init_std: the initial std of f before the squashing.
    """

    num_layers: int = 2
    num_bins: int = 8
    tail_bound: float = 3.0
    kinds: tuple[str, ...] = ("spline",)
    init_std: float = 0.5
    max_log_scale: float = 3.0
    init_scale: float = 0.01

    def __post_init__(self):
        super().__post_init__()
        _ = self.flow  # building the flow validates its configuration

    @property
    def flow(self) -> ConditionalFlow:
        return ConditionalFlow(
            dim=self.action_size,
            context_dim=self.observation_size,
            num_layers=self.num_layers,
            hidden=self.hidden,
            num_bins=self.num_bins,
            tail_bound=self.tail_bound,
            kinds=self.kinds,
            init_std=self.init_std,
            max_log_scale=self.max_log_scale,
            activation=self.activation,
            use_bias=self.use_bias,
            init_scale=self.init_scale,
        )

    @property
    def squash(self) -> BoxSquash | None:
        return BoxSquash(self.action_low, self.action_high) if self.bounded else None

    @property
    def eps_shape(self) -> tuple[int, ...]:
        return (self.action_size,)

    def init(self, key: PRNGKey) -> Params:
        return self.flow.init(key)

    def sample(self, params: Params, obs: Observation, eps: Noise) -> Action:
        y = self.flow.sample(params, obs, eps)
        return y if self.squash is None else self.squash.forward(y)[0]

    def mean(self, params: Params, obs: Observation) -> Action:
        """The action at eps = 0 (the median of each coordinate when the flow is elementwise)."""
        return self.sample(params, obs, jnp.zeros(self.eps_shape, obs.dtype))

    def log_prob(self, params: Params, obs: Observation, action: Action) -> Scalar:
        """log pi(a|s) = log p_f(y | s; w) - log |det da/dy|, y = atanh((a - c) / h)."""
        if self.squash is None:
            return self.flow.log_prob(params, action, obs)
        y, log_det = self.squash.inverse(action)
        return self.flow.log_prob(params, y, obs) + log_det

    def sample_and_log_prob(
        self, params: Params, obs: Observation, eps: Noise
    ) -> tuple[Action, Scalar]:
        """(a, log pi(a|s; w)) from eps by the forward pass: log N(eps) - log|det dy/deps| -
        log|det da/dy| (no inversion; exact where the squashing saturates)."""
        y, log_det = self.flow.forward(params, eps, obs)
        log_pi = jnp.sum(normal_log_prob(eps, 0.0, 1.0)) - log_det
        if self.squash is None:
            return y, log_pi
        action, squash_log_det = self.squash.forward(y)
        return action, log_pi - squash_log_det

    def noise_from_action(self, params: Params, obs: Observation, action: Action) -> Noise:
        """eps = f^-1(atanh((a - c) / h); s, w), exact."""
        y = action if self.squash is None else self.squash.inverse(action)[0]
        return self.flow.inverse(params, y, obs)[0]


# --- dynamics with a flow residual -------------------------------------------------------------
def flow_dynamics(
    mean: Callable[[Array, Action, Params], Array],
    reward: Callable[[Array, Action, Array], Scalar],
    reset: Callable[[PRNGKey], Array],
    *,
    flow: ConditionalFlow,
    flow_params: Params,
    action_size: int,
    mean_params: Params = None,
    **options: Unpack[Options],
) -> FunctionDynamics:
    """Dynamics s' = mu(s, a; phi_mu) + f(xi; (s, a), phi_f), xi ~ N(0, I), f a conditional flow.

    The residual flow has D = the state size and context (s, a). Exact by construction:

        log p(s' | s, a) = log p_f(s' - mu(s, a) | (s, a)),
        xi = f^-1(s' - mu(s, a); (s, a))                      (noise inference).

    The parameters ``{"mean": phi_mu, "flow": phi_f}`` are the dynamics' ``params`` leaf, so they
    can be differentiated, vmapped or replaced by a fitted set (:func:`fit_flow`).

    Args:
      mean: (s, a, phi_mu) -> mu(s, a), the mean (or nominal) transition.
      reward: (s, a, s') -> r.
      reset: key -> s_0, a state vector of shape (D,).
      flow: the residual flow, with ``dim`` = D and ``context_dim`` = D + ``action_size``.
      flow_params: its parameters phi_f.
      action_size: size of a.
      mean_params: phi_mu.
      options: ``action_low``, ``action_high``, ``observation``, ``done``, ``name``
        ("flow_noise"), as in :func:`mbpo.dynamics.from_function`.

    Returns:
      A :class:`mbpo.dynamics.FunctionDynamics` with ``log_prob``, ``reward`` and ``infer_noise``.
    """
    state = jax.eval_shape(reset, jax.random.key(0))
    if flow.dim != math.prod(state.shape) or len(state.shape) != 1:
        raise ValueError(
            f"the flow has dim {flow.dim}, but reset returns a state of shape {state.shape}"
        )
    if flow.context_dim != flow.dim + action_size:
        raise ValueError(
            f"the flow has context_dim {flow.context_dim}; a residual flow's context is (s, a) of "
            f"size {flow.dim} + {action_size}"
        )

    def residual(s, a, s_next, p):
        return s_next - mean(s, a, p["mean"]), jnp.concatenate([s, a])

    def transition(s, a, xi, p):
        return mean(s, a, p["mean"]) + flow.sample(p["flow"], jnp.concatenate([s, a]), xi)

    def log_prob(s, a, s_next, p):
        return flow.log_prob(p["flow"], *residual(s, a, s_next, p))

    def infer_noise(s, a, s_next, p):
        return flow.inverse(p["flow"], *residual(s, a, s_next, p))[0]

    return make_function_dynamics(
        transition=transition,
        reward=without_params(reward),
        reset=reset,
        action_size=action_size,
        params={"mean": mean_params, "flow": flow_params},
        noise_shape=(flow.dim,),
        log_prob=log_prob,
        infer_noise=infer_noise,
        **options_with(options, name="flow_noise", builder="flow_dynamics"),
    )


# --- maximum likelihood ------------------------------------------------------------------------
class FlowFit(NamedTuple):
    """What :func:`fit_flow` returns.

    Attributes:
      params: the fitted w.
      loss_t: the minibatch mean negative log-likelihood before each step, shape (steps,).
    """

    params: Params
    loss_t: Float[Array, " steps"]


class _FitCarry(NamedTuple):
    params: Params
    opt_state: optax.OptState
    key: PRNGKey


def fit_flow(
    flow: ConditionalFlow,
    params: Params,
    x: Float[Array, "N D"],
    context: Float[Array, "N C"],
    *,
    steps: int = 1000,
    learning_rate: float = 1e-3,
    batch_size: int | None = None,
    key: PRNGKey | None = None,
) -> FlowFit:
    """Maximum likelihood: w <- Adam steps on -(1/B) sum_i log p(x_i | c_i; w).

    One jitted ``lax.scan`` over the steps; the same routine fits a policy density (behaviour
    cloning: x = actions, c = observations, with the flow of a :class:`FlowPolicy` on the
    pre-squash actions) and a dynamics residual (x = s' - mu(s, a), c = (s, a)).

    Args:
      flow: the flow.
      params: initial w (e.g. ``flow.init(key)``).
      x: N samples of size D.
      context: their N contexts of size C.
      steps: Adam steps, >= 1.
      learning_rate: Adam's step size, > 0.
      batch_size: minibatch size drawn uniformly with replacement each step; None: full batch.
      key: for the minibatches (default ``jax.random.key(0)``).

    Returns:
      A :class:`FlowFit` (fitted parameters and the loss before each step).
    """
    x, context = jnp.asarray(x), jnp.asarray(context)
    if x.ndim != 2 or x.shape[1] != flow.dim:
        raise ValueError(f"x must have shape (N, {flow.dim}), got {x.shape}")
    if context.shape != (x.shape[0], flow.context_dim):
        raise ValueError(
            f"context must have shape ({x.shape[0]}, {flow.context_dim}), got {context.shape}"
        )
    check_int("steps", steps, 1)
    if batch_size is not None:
        check_int("batch_size", batch_size, 1)
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    key = jax.random.key(0) if key is None else key
    return _fit(flow, params, x, context, learning_rate, key, steps=steps, batch_size=batch_size)


@functools.partial(jax.jit, static_argnames=("flow", "steps", "batch_size"))
def _fit(flow, params, x, context, learning_rate, key, *, steps, batch_size) -> FlowFit:
    optimizer = optax.adam(learning_rate)

    def loss(w, x_b, c_b):
        return -jnp.mean(jax.vmap(flow.log_prob, (None, 0, 0))(w, x_b, c_b))

    def step(carry: _FitCarry, _) -> tuple[_FitCarry, Scalar]:
        key, sub = jax.random.split(carry.key)
        if batch_size is None:
            x_b, c_b = x, context
        else:
            idx = jax.random.randint(sub, (batch_size,), 0, x.shape[0])
            x_b, c_b = x[idx], context[idx]
        value, grad = jax.value_and_grad(loss)(carry.params, x_b, c_b)
        updates, opt_state = optimizer.update(grad, carry.opt_state, carry.params)
        return _FitCarry(optax.apply_updates(carry.params, updates), opt_state, key), value

    carry = _FitCarry(params, optimizer.init(params), key)
    carry, loss_t = jax.lax.scan(step, carry, None, length=steps)
    return FlowFit(carry.params, loss_t)
