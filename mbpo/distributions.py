"""Reparameterized distributions: samples as pure, differentiable functions of explicit noise.

Each sampler takes its base noise (uniform or Gumbel) as an argument, so a sample
x = g(eps, theta) is a deterministic function of the parameters theta and `jax.grad` through it
gives the reparameterization gradient (reference: "Derivative Estimation for Stochastic
Optimization", section "The Reparameterization Trick"). Drawing the noise is the caller's job,
which also makes common random numbers across parameter values trivial.

The normal log-density comes in three forms: elementwise from (loc, scale)
(:func:`normal_log_prob`), summed from a standardized point and std (the policies'), summed from
a mean and variance (the Gaussian models'). The truncated normal and Kumaraswamy functions are
elementwise and broadcast their arguments.
The Gumbel-softmax functions are written for one categorical vector with `k` categories on the
last axis and a scalar temperature; `vmap` them for batches. Every function keeps the floating
dtype of its inputs (float32 or float64).
"""

import math
from typing import NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
from jax.scipy import special
from jaxtyping import Array, ArrayLike, Bool, Float

from mbpo.types import Scalar

# Arguments that broadcast against each other (``*batch`` is any shape, scalars included).
Batch: TypeAlias = Float[ArrayLike, "*batch"]
BatchOut: TypeAlias = Float[Array, "*batch"]

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


def _as_floats(*args: Float[ArrayLike, "..."]) -> tuple[Float[Array, "..."], ...]:
    """Casts the arguments to their common floating dtype, letting Python scalars adopt it.

    Without this, a Python float passed to `special.ndtr` or `jnp.where` becomes a strong float64
    under x64 and would promote float32 noise to float64.
    """
    dtype = jnp.result_type(float, *args)
    return tuple(jnp.asarray(arg, dtype) for arg in args)


def normal_log_prob(x: Batch, loc: Batch, scale: Batch) -> BatchOut:
    """Elementwise log density of the univariate normal N(loc, scale^2).

    log p(x; mu, sigma) = -((x - mu) / sigma)^2 / 2 - log sigma - log(2 pi) / 2

    Args:
      x: points at which to evaluate the density.
      loc: mean mu.
      scale: standard deviation sigma > 0.

    Returns:
      log p(x; mu, sigma), broadcast over the arguments.
    """
    x, loc, scale = _as_floats(x, loc, scale)
    z = (x - loc) / scale
    return -0.5 * z**2 - jnp.log(scale) - _HALF_LOG_TWO_PI


def standardized_normal_log_prob(z: Float[Array, " d"], std: Float[Array, " d"]) -> Scalar:
    """log N(x; mu, diag std^2) from the standardized point z = (x - mu) / std (for a sample
    x = mu + std eps, z is its noise eps): sum_i -z_i^2 / 2 - log std_i - log(2 pi) / 2. The
    policies' form: a sample's density needs no division by std."""
    return jnp.sum(-0.5 * z**2 - jnp.log(std) - 0.5 * jnp.log(2 * jnp.pi))


def diagonal_normal_log_prob(
    y: Float[Array, " d"], mean: Float[Array, " d"], var: Float[Array, " d"]
) -> Scalar:
    """log N(y; mean, diag var), summed over the components: the Gaussian models' form, whose
    networks give a variance."""
    return -0.5 * jnp.sum((y - mean) ** 2 / var + jnp.log(2 * jnp.pi * var))


class _StandardInterval(NamedTuple):
    """A truncation interval [low, high] in standard units z = (x - loc) / scale.

    When the interval lies mostly above the mean, it is reflected (z -> -z) into the lower tail,
    where Phi is small and keeps its relative precision; Phi(alpha) near 1 would lose it to
    cancellation in Phi(beta) - Phi(alpha).
    """

    reflected: Bool[Array, "*batch"]
    """Whether alpha, beta are the reflected bounds -(high - loc) / scale, -(low - loc) / scale."""
    alpha: BatchOut
    """Lower bound of the (possibly reflected) standardized interval."""
    beta: BatchOut
    """Upper bound of the (possibly reflected) standardized interval."""
    log_mass: BatchOut
    """log Z = log(Phi(beta) - Phi(alpha)), the log probability of the interval under N(0, 1)."""


def _standard_interval(loc: Batch, scale: Batch, low: Batch, high: Batch) -> _StandardInterval:
    lower = (low - loc) / scale
    upper = (high - loc) / scale
    reflected = lower + upper > 0
    alpha = jnp.where(reflected, -upper, lower)
    beta = jnp.where(reflected, -lower, upper)
    log_phi_alpha = special.log_ndtr(alpha)
    log_phi_beta = special.log_ndtr(beta)
    log_mass = log_phi_beta + jnp.log(-jnp.expm1(log_phi_alpha - log_phi_beta))
    return _StandardInterval(reflected, alpha, beta, log_mass)


def _floats_and_interval(
    loc: Batch, scale: Batch, low: Batch, high: Batch
) -> tuple[BatchOut, BatchOut, _StandardInterval]:
    loc, scale, low, high = _as_floats(loc, scale, low, high)
    return loc, scale, _standard_interval(loc, scale, low, high)


def _mills_ratio(z: BatchOut, interval: _StandardInterval) -> BatchOut:
    """phi(z) / Z, evaluated in log space so that tiny Z does not overflow."""
    return jnp.exp(normal_log_prob(z, 0.0, 1.0) - interval.log_mass)


def truncated_normal_sample(
    u: Batch,
    loc: Batch,
    scale: Batch,
    low: Batch,
    high: Batch,
) -> BatchOut:
    """Truncated normal sample on [low, high] by the inverse CDF of uniform noise.

    x = mu + sigma Phi^{-1}(Phi(alpha) + u (Phi(beta) - Phi(alpha))),  u ~ Uniform(0, 1),
    alpha = (low - mu) / sigma,  beta = (high - mu) / sigma,

    (reference, "The Truncated Normal Distribution", written there for mu = 0, sigma = 1). The
    map is the quantile function, increasing in u. Intervals that lie mostly above the mean are
    computed in the reflected lower tail, so that deep tails such as [10 sigma, 11 sigma] stay
    finite. The bounds must be finite.

    Args:
      u: uniform noise in [0, 1].
      loc: mean mu of the untruncated normal.
      scale: standard deviation sigma > 0 of the untruncated normal.
      low: finite lower bound.
      high: finite upper bound, > low.

    Returns:
      The sample x in [low, high], differentiable in loc, scale, low and high.
    """
    u, loc, scale, low, high = _as_floats(u, loc, scale, low, high)
    interval = _standard_interval(loc, scale, low, high)
    u_reflected = jnp.where(interval.reflected, 1.0 - u, u)
    phi_alpha = special.ndtr(interval.alpha)
    z = special.ndtri(phi_alpha + u_reflected * (special.ndtr(interval.beta) - phi_alpha))
    z = jnp.where(interval.reflected, -z, z)
    # Rounding in ndtri can step a few ulps outside the interval.
    return jnp.clip(loc + scale * z, low, high)


def truncated_normal_log_prob(
    x: Batch,
    loc: Batch,
    scale: Batch,
    low: Batch,
    high: Batch,
) -> BatchOut:
    """Log density of the normal N(mu, sigma^2) truncated to [low, high].

    log p(x) = log N(x; mu, sigma^2) - log(Phi(beta) - Phi(alpha))  for low <= x <= high,
    and -inf outside, with alpha = (low - mu) / sigma, beta = (high - mu) / sigma.

    Args:
      x: points at which to evaluate the density.
      loc, scale, low, high: as in :func:`truncated_normal_sample`.

    Returns:
      log p(x), broadcast over the arguments.
    """
    x, loc, scale, low, high = _as_floats(x, loc, scale, low, high)
    interval = _standard_interval(loc, scale, low, high)
    log_density = normal_log_prob(x, loc, scale) - interval.log_mass
    return jnp.where((x >= low) & (x <= high), log_density, -jnp.inf)


def truncated_normal_mean(loc: Batch, scale: Batch, low: Batch, high: Batch) -> BatchOut:
    """Mean of the normal N(mu, sigma^2) truncated to [low, high].

    E[x] = mu + sigma (phi(alpha) - phi(beta)) / Z,  Z = Phi(beta) - Phi(alpha),
    alpha = (low - mu) / sigma,  beta = (high - mu) / sigma
    (Johnson, Kotz and Balakrishnan, Continuous Univariate Distributions, vol. 1, sec. 10.1).

    Args:
      loc, scale, low, high: as in :func:`truncated_normal_sample`.

    Returns:
      E[x], broadcast over the arguments.
    """
    loc, scale, interval = _floats_and_interval(loc, scale, low, high)
    shift = _mills_ratio(interval.alpha, interval) - _mills_ratio(interval.beta, interval)
    return loc + scale * jnp.where(interval.reflected, -shift, shift)


def truncated_normal_variance(loc: Batch, scale: Batch, low: Batch, high: Batch) -> BatchOut:
    """Variance of the normal N(mu, sigma^2) truncated to [low, high].

    Var[x] = sigma^2 [1 + (alpha phi(alpha) - beta phi(beta)) / Z
                        - ((phi(alpha) - phi(beta)) / Z)^2],
    Z = Phi(beta) - Phi(alpha),  alpha = (low - mu) / sigma,  beta = (high - mu) / sigma
    (Johnson, Kotz and Balakrishnan, vol. 1, sec. 10.1). For an interval narrow against sigma or
    far in a tail, the three terms cancel to a small number and lose about
    log10(sigma^2 / Var[x]) digits; float32 is then inaccurate (2.6% at [10 sigma, 11 sigma]).
    The arguments are those of :func:`truncated_normal_sample`; Var[x] broadcasts over them.
    """
    loc, scale, interval = _floats_and_interval(loc, scale, low, high)
    ratio_alpha = _mills_ratio(interval.alpha, interval)
    ratio_beta = _mills_ratio(interval.beta, interval)
    return scale**2 * (
        1.0
        + interval.alpha * ratio_alpha
        - interval.beta * ratio_beta
        - (ratio_alpha - ratio_beta) ** 2
    )


def kumaraswamy_sample(u: Batch, a: Batch, b: Batch) -> BatchOut:
    """Kumaraswamy(a, b) sample on [0, 1] by the inverse CDF of uniform noise.

    F(x) = 1 - (1 - x^a)^b,  so  x = F^{-1}(u) = (1 - (1 - u)^{1/b})^{1/a},  u ~ Uniform(0, 1)

    (Kumaraswamy 1980; Nalisnick and Smyth 2017. The reference's "The Kumaraswamy Distribution"
    prints x = 1 - (1 - u^a)^{1/b}, which is not the inverse of this CDF.) Evaluated with log1p
    and expm1 so that u near 0 or 1 keeps its precision.

    Args:
      u: uniform noise in [0, 1].
      a: shape a > 0.
      b: shape b > 0.

    Returns:
      The sample x in [0, 1], differentiable in a and b.
    """
    u, a, b = _as_floats(u, a, b)
    return jnp.exp(jnp.log(-jnp.expm1(jnp.log1p(-u) / b)) / a)


def kumaraswamy_log_prob(x: Batch, a: Batch, b: Batch) -> BatchOut:
    """Log density of Kumaraswamy(a, b).

    log p(x; a, b) = log a + log b + (a - 1) log x + (b - 1) log(1 - x^a)  for 0 < x < 1,
    and -inf outside (reference, "The Kumaraswamy Distribution").

    Args:
      x: points at which to evaluate the density.
      a: shape a > 0.
      b: shape b > 0.

    Returns:
      log p(x; a, b), broadcast over the arguments.
    """
    x, a, b = _as_floats(x, a, b)
    inside = (x > 0) & (x < 1)
    # Outside the support, log x and log(1 - x^a) would be nan, and so would their gradients.
    x_inside = jnp.where(inside, x, 0.5)
    log_x = jnp.log(x_inside)
    log_density = (
        jnp.log(a) + jnp.log(b) + (a - 1) * log_x + (b - 1) * jnp.log(-jnp.expm1(a * log_x))
    )
    return jnp.where(inside, log_density, -jnp.inf)


def kumaraswamy_moment(n: float, a: Batch, b: Batch) -> BatchOut:
    """Raw moment E[x^n] of Kumaraswamy(a, b).

    E[x^n] = b B(1 + n / a, b) = b Gamma(1 + n / a) Gamma(b) / Gamma(1 + b + n / a)
    (Jones 2009, "Kumaraswamy's distribution: A beta-type distribution with some tractability
    advantages", eq. 3).

    Args:
      n: order of the moment, n > -a.
      a: shape a > 0.
      b: shape b > 0.

    Returns:
      E[x^n], broadcast over a and b.
    """
    a, b = _as_floats(a, b)
    return jnp.exp(jnp.log(b) + special.betaln(1.0 + n / a, b))


def gumbel_noise(u: Batch) -> BatchOut:
    """Standard Gumbel noise from uniform noise by the inverse CDF.

    g = -log(-log u),  u ~ Uniform(0, 1)  gives  g ~ Gumbel(0, 1)
    (reference, "The Gumbel-Softmax Distribution").

    Args:
      u: uniform noise in (0, 1).

    Returns:
      Gumbel(0, 1) noise g with the shape of u.
    """
    (u,) = _as_floats(u)
    return -jnp.log(-jnp.log(u))


def gumbel_softmax_sample(
    g: Float[ArrayLike, " k"],
    logits: Float[ArrayLike, " k"],
    temperature: Float[ArrayLike, ""],
) -> Float[Array, " k"]:
    """Gumbel-softmax (Concrete) sample on the probability simplex.

    z_i = exp((log pi_i + g_i) / tau) / sum_j exp((log pi_j + g_j) / tau),  g_j ~ Gumbel(0, 1)

    (reference, "The Gumbel-Softmax Distribution"; Jang, Gu and Poole 2017; Maddison, Mnih and
    Teh 2017). As tau -> 0 it tends to the one-hot vector of argmax_i (log pi_i + g_i), an exact
    sample of Categorical(pi) by the Gumbel-max trick.

    Args:
      g: Gumbel(0, 1) noise, one per category (see `gumbel_noise`).
      logits: log pi, unnormalized (any additive constant cancels).
      temperature: tau > 0.

    Returns:
      The relaxed one-hot sample z, with z_i > 0 and sum_i z_i = 1.
    """
    g, logits, temperature = _as_floats(g, logits, temperature)
    return jax.nn.softmax((logits + g) / temperature, axis=-1)


def gumbel_softmax_straight_through(
    g: Float[ArrayLike, " k"],
    logits: Float[ArrayLike, " k"],
    temperature: Float[ArrayLike, ""],
) -> Float[Array, " k"]:
    """Straight-through Gumbel-softmax: a one-hot sample with the relaxed sample's gradient.

    forward:  one_hot(argmax_i z_i),  backward:  d z / d(logits, tau),
    with z the Gumbel-softmax sample (Jang, Gu and Poole 2017, sec. 2.2). The forward value is an
    exact Categorical(pi) sample; the gradient is biased.

    Args:
      g: Gumbel(0, 1) noise, one per category.
      logits: log pi, unnormalized.
      temperature: tau > 0 of the relaxation that supplies the gradient.

    Returns:
      The one-hot sample, carrying the gradient of `gumbel_softmax_sample`.
    """
    soft = gumbel_softmax_sample(g, logits, temperature)
    hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), soft.shape[-1], dtype=soft.dtype)
    return soft + jax.lax.stop_gradient(hard - soft)


def gumbel_softmax_log_prob(
    x: Float[ArrayLike, " k"],
    logits: Float[ArrayLike, " k"],
    temperature: Float[ArrayLike, ""],
) -> Scalar:
    """Log density of the Gumbel-softmax (Concrete) distribution on the simplex.

    p(x; pi, tau) = (k - 1)! tau^{k-1} prod_i [pi_i x_i^{-tau-1} / sum_j pi_j x_j^{-tau}]

    with respect to Lebesgue measure on the first k - 1 coordinates (x_k = 1 - sum_{i<k} x_i)
    (Maddison, Mnih and Teh 2017, "The Concrete Distribution", Definition 1).

    Args:
      x: a point in the interior of the simplex, x_i > 0, sum_i x_i = 1.
      logits: log pi, unnormalized (any additive constant cancels).
      temperature: tau > 0.

    Returns:
      log p(x; pi, tau), a scalar.
    """
    x, logits, temperature = _as_floats(x, logits, temperature)
    k = jnp.shape(x)[-1]
    log_x = jnp.log(x)
    return (
        math.lgamma(k)
        + (k - 1) * jnp.log(temperature)
        + jnp.sum(logits - (temperature + 1.0) * log_x, axis=-1)
        - k * jax.nn.logsumexp(logits - temperature * log_x, axis=-1)
    )
