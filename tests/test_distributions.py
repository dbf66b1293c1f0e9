"""Tests of mbpo.distributions in float64.

Statistical checks pass when a Monte Carlo mean lies within 4 standard errors (SE) of its exact
value; gradients of reparameterized estimates, drawn with common random numbers, are compared with
central finite differences of the closed-form expectation.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from mbpo import distributions
from tests.conftest import central_difference

# The project's float64 fixture: set and restored around each test of this module.
pytestmark = pytest.mark.usefixtures("x64")

NUM_SAMPLES = 100_000
TOLERANCE_SE = 4.0
# Bound on the error of `central_difference` (step 1e-6) in float64: roundoff ~1e-16 / 1e-6 plus
# truncation ~1e-12 times the third derivative. It matters only where the exact gradient and its
# SE are both ~0 (a bound far in a tail).
FINITE_DIFFERENCE_ERROR = 1e-9

# (loc, scale, low, high): inside, mostly above the mean (reflected), far in the upper tail, and
# far in the lower tail, where Phi(beta) - Phi(alpha) would cancel to 0 without the reflection.
TRUNCATED_NORMAL_CASES = [
    (0.3, 1.5, -1.0, 2.0),
    (-2.0, 0.5, -1.0, 3.0),
    (0.0, 1.0, 10.0, 11.0),
    (1.0, 2.0, -20.0, -19.0),
]
KUMARASWAMY_CASES = [(0.5, 0.5), (2.0, 3.0), (5.0, 1.5)]


def uniform_noise(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), shape, dtype=jnp.float64)


def assert_mean_within_se(
    draws: jax.Array, expected: float | np.ndarray, what: str, slack: float = 0.0
) -> None:
    """|mean(draws) - expected| <= 4 SE + slack, SE = std(draws) / sqrt(n), over the first axis."""
    draws = np.asarray(draws)
    mean = draws.mean(axis=0)
    standard_error = draws.std(axis=0, ddof=1) / math.sqrt(draws.shape[0])
    error = np.abs(mean - expected)
    assert np.all(error <= TOLERANCE_SE * standard_error + slack), (
        f"{what}: Monte Carlo {mean} vs exact {expected}, "
        f"error {error / standard_error} SE > {TOLERANCE_SE} SE"
    )


def trapezoid_mass(log_density: jax.Array, grid: jax.Array) -> float:
    return float(jnp.trapezoid(jnp.exp(log_density), grid))


# Jitted once at import and reused by every parametrized case (Python floats trace as weak
# scalars): op-by-op dispatch of the special functions would otherwise dominate the run time.
truncated_normal_sample = jax.jit(distributions.truncated_normal_sample)
truncated_normal_log_prob = jax.jit(distributions.truncated_normal_log_prob)
truncated_normal_mean = jax.jit(distributions.truncated_normal_mean)
truncated_normal_variance = jax.jit(distributions.truncated_normal_variance)
truncated_normal_sample_gradient = jax.jit(
    jax.vmap(
        jax.grad(distributions.truncated_normal_sample, argnums=(0, 1, 2, 3, 4)),
        (0, None, None, None, None),
    )
)
"""Per draw: d x / d(u, loc, scale, low, high)."""
kumaraswamy_sample = jax.jit(distributions.kumaraswamy_sample)
kumaraswamy_log_prob = jax.jit(distributions.kumaraswamy_log_prob)
kumaraswamy_moment = jax.jit(distributions.kumaraswamy_moment, static_argnums=0)
kumaraswamy_sample_gradient = jax.jit(
    jax.vmap(jax.grad(distributions.kumaraswamy_sample, argnums=(0, 1, 2)), (0, None, None))
)
"""Per draw: d x / d(u, a, b)."""
gumbel_softmax_sample = jax.jit(jax.vmap(distributions.gumbel_softmax_sample, (0, None, None)))
gumbel_softmax_log_prob = jax.jit(
    jnp.vectorize(distributions.gumbel_softmax_log_prob, signature="(k),(k),()->()")
)


@pytest.mark.parametrize("loc, scale, low, high", TRUNCATED_NORMAL_CASES)
def test_truncated_normal_closed_forms_match_scipy(loc, scale, low, high):
    reference = scipy.stats.truncnorm((low - loc) / scale, (high - loc) / scale, loc, scale)
    x = np.linspace(low, high, 7)
    np.testing.assert_allclose(
        truncated_normal_mean(loc, scale, low, high), reference.mean(), rtol=1e-12
    )
    # The tail cases lose about log10(sigma^2 / Var) digits to cancellation (see the docstring).
    np.testing.assert_allclose(
        truncated_normal_variance(loc, scale, low, high), reference.var(), rtol=1e-9
    )
    np.testing.assert_allclose(
        truncated_normal_log_prob(x, loc, scale, low, high), reference.logpdf(x), rtol=1e-10
    )


@pytest.mark.parametrize("loc, scale, low, high", TRUNCATED_NORMAL_CASES)
def test_truncated_normal_samples_match_moments(loc, scale, low, high):
    x = truncated_normal_sample(uniform_noise(0, (NUM_SAMPLES,)), loc, scale, low, high)
    assert jnp.all((x >= low) & (x <= high))
    mean = float(truncated_normal_mean(loc, scale, low, high))
    variance = float(truncated_normal_variance(loc, scale, low, high))
    assert_mean_within_se(x, mean, "E[x]")
    # With the exact mean, (x - E[x])^2 is an unbiased per-draw estimate of Var[x].
    assert_mean_within_se((x - mean) ** 2, variance, "Var[x]")


@pytest.mark.parametrize("loc, scale, low, high", TRUNCATED_NORMAL_CASES)
def test_truncated_normal_log_prob_integrates_to_one(loc, scale, low, high):
    grid = jnp.linspace(low, high, 20_001)
    log_density = truncated_normal_log_prob(grid, loc, scale, low, high)
    assert trapezoid_mass(log_density, grid) == pytest.approx(1.0, abs=1e-6)
    outside = jnp.array([low - 1e-9, high + 1e-9])
    assert jnp.all(truncated_normal_log_prob(outside, loc, scale, low, high) == -jnp.inf)


@pytest.mark.parametrize("loc, scale, low, high", TRUNCATED_NORMAL_CASES)
def test_truncated_normal_sample_is_inverse_cdf(loc, scale, low, high):
    """The quantile function x(u) has dx/du = 1 / p(x)."""
    u = uniform_noise(1, (NUM_SAMPLES,))
    dx_du = truncated_normal_sample_gradient(u, loc, scale, low, high)[0]
    log_density = truncated_normal_log_prob(
        truncated_normal_sample(u, loc, scale, low, high), loc, scale, low, high
    )
    np.testing.assert_allclose(dx_du, jnp.exp(-log_density), rtol=1e-7)


@pytest.mark.parametrize("loc, scale, low, high", TRUNCATED_NORMAL_CASES)
def test_truncated_normal_reparameterized_gradient(loc, scale, low, high):
    """d E[x] / d(loc, scale, low, high) from common random numbers vs differences of the mean."""
    u = uniform_noise(2, (NUM_SAMPLES,))
    gradient = jnp.stack(truncated_normal_sample_gradient(u, loc, scale, low, high)[1:], axis=-1)
    exact = central_difference(
        lambda params: truncated_normal_mean(*params), np.array([loc, scale, low, high])
    )
    assert_mean_within_se(gradient, exact, "grad E[x]", FINITE_DIFFERENCE_ERROR)


@pytest.mark.parametrize("a, b", KUMARASWAMY_CASES)
def test_kumaraswamy_samples_match_moments(a, b):
    x = kumaraswamy_sample(uniform_noise(3, (NUM_SAMPLES,)), a, b)
    assert jnp.all((x >= 0) & (x <= 1))
    for n in (1, 2, 3):
        assert_mean_within_se(x**n, float(kumaraswamy_moment(n, a, b)), f"E[x^{n}]")


def test_kumaraswamy_moment_matches_beta_special_cases():
    """Kumaraswamy(1, b) = Beta(1, b) and Kumaraswamy(a, 1) = Beta(a, 1)."""
    for a, b in [(1.0, 3.5), (2.5, 1.0)]:
        for n in (1, 2):
            np.testing.assert_allclose(
                kumaraswamy_moment(n, a, b), scipy.stats.beta(a, b).moment(n), rtol=1e-12
            )


@pytest.mark.parametrize("a, b", [(1.0, 1.0), (2.0, 3.0), (5.0, 1.5)])
def test_kumaraswamy_log_prob_integrates_to_one(a, b):
    grid = jnp.linspace(0.0, 1.0, 20_001)[1:-1]
    # The trapezoid misses the two end intervals and the sqrt edge at 1 when b = 1.5.
    assert trapezoid_mass(kumaraswamy_log_prob(grid, a, b), grid) == pytest.approx(1.0, abs=1e-4)
    outside = jnp.array([-0.5, 0.0, 1.0, 1.5])
    assert jnp.all(kumaraswamy_log_prob(outside, a, b) == -jnp.inf)


@pytest.mark.parametrize("a, b", KUMARASWAMY_CASES)
def test_kumaraswamy_sample_is_inverse_cdf(a, b):
    """The quantile function x(u) has dx/du = 1 / p(x)."""
    u = uniform_noise(4, (NUM_SAMPLES,))
    dx_du = kumaraswamy_sample_gradient(u, a, b)[0]
    log_density = kumaraswamy_log_prob(kumaraswamy_sample(u, a, b), a, b)
    # Rare u within ~1e-5 of 0 or 1 leave about 1e-6 relative error at a = b = 0.5.
    np.testing.assert_allclose(dx_du, jnp.exp(-log_density), rtol=1e-5)


@pytest.mark.parametrize("a, b", KUMARASWAMY_CASES)
def test_kumaraswamy_reparameterized_gradient(a, b):
    """d E[x] / d(a, b) from common random numbers vs differences of b B(1 + 1/a, b)."""
    u = uniform_noise(5, (NUM_SAMPLES,))
    gradient = jnp.stack(kumaraswamy_sample_gradient(u, a, b)[1:], axis=-1)
    exact = central_difference(lambda params: kumaraswamy_moment(1, *params), np.array([a, b]))
    assert_mean_within_se(gradient, exact, "grad E[x]", FINITE_DIFFERENCE_ERROR)


def gumbel_noise(seed: int, shape: tuple[int, ...]) -> jax.Array:
    return distributions.gumbel_noise(uniform_noise(seed, shape))


def test_gumbel_noise_moments():
    """Gumbel(0, 1) has mean Euler's gamma and variance pi^2 / 6."""
    g = gumbel_noise(6, (NUM_SAMPLES,))
    assert_mean_within_se(g, np.euler_gamma, "E[g]")
    assert_mean_within_se((g - np.euler_gamma) ** 2, math.pi**2 / 6, "Var[g]")


def test_gumbel_softmax_argmax_frequencies_match_softmax():
    """Gumbel-max: argmax_i z_i ~ Categorical(softmax(logits)), whatever the temperature."""
    logits = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4])) + 2.0
    g = gumbel_noise(7, (NUM_SAMPLES, 4))
    for temperature in (0.05, 1.0):
        z = gumbel_softmax_sample(g, logits, temperature)
        one_hot = jax.nn.one_hot(jnp.argmax(z, axis=-1), 4)
        probabilities = jax.nn.softmax(logits)
        assert_mean_within_se(one_hot, probabilities, f"P(argmax = i), tau = {temperature}")
        np.testing.assert_allclose(z.sum(axis=-1), 1.0, rtol=1e-12)


def test_gumbel_softmax_concentrates_on_one_hot_as_temperature_vanishes():
    z = gumbel_softmax_sample(gumbel_noise(8, (NUM_SAMPLES, 3)), jnp.array([0.5, -1.0, 0.0]), 1e-3)
    # max_i z_i < 1 - 1e-6 needs the top two perturbed logits within tau log(1e6) ~ 0.014 of each
    # other; the logistic density of their difference is at most 1/4, so probability <~ 0.007.
    assert jnp.mean(z.max(axis=-1) > 1 - 1e-6) > 0.97


def test_gumbel_softmax_straight_through_is_one_hot_with_soft_gradient():
    g = gumbel_noise(9, (100, 3))
    logits = jnp.array([0.5, -1.0, 0.0])
    weights = jnp.array([1.0, -2.0, 3.0])
    straight_through = jax.vmap(distributions.gumbel_softmax_straight_through, (0, None, None))

    def weighted_sum(sample, logits):
        return jnp.sum(sample(g, logits, 0.5) @ weights)

    hard = straight_through(g, logits, 0.5)
    relaxed = gumbel_softmax_sample(g, logits, 0.5)
    np.testing.assert_array_equal(hard, jax.nn.one_hot(jnp.argmax(relaxed, axis=-1), 3))
    gradient = jax.jit(jax.grad(weighted_sum, argnums=1), static_argnums=0)
    np.testing.assert_allclose(
        gradient(straight_through, logits), gradient(gumbel_softmax_sample, logits), rtol=1e-12
    )


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_gumbel_softmax_density_two_categories(temperature):
    """For k = 2, logit(x_1) = (l_1 - l_2 + L) / tau with L ~ Logistic(0, 1): the density in
    y = logit(x_1) integrates to 1 and equals tau times the logistic density at
    tau y - l_1 + l_2."""
    logits = jnp.array([0.7, -0.4])
    y = jnp.linspace(-60.0, 60.0, 24_001)
    x = jnp.stack([jax.nn.sigmoid(y), jax.nn.sigmoid(-y)], axis=-1)
    log_jacobian = jnp.log(x[:, 0]) + jnp.log(x[:, 1])  # dx_1 / dy = x_1 x_2
    log_density_y = gumbel_softmax_log_prob(x, logits, temperature) + log_jacobian
    assert trapezoid_mass(log_density_y, y) == pytest.approx(1.0, abs=1e-8)
    logistic = scipy.stats.logistic.logpdf(temperature * y - (logits[0] - logits[1]))
    np.testing.assert_allclose(
        log_density_y, logistic + math.log(temperature), rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_gumbel_softmax_density_three_categories_integrates_to_one(temperature):
    """With x = softmax(y_1, y_2, 0), dx_1 dx_2 = x_1 x_2 x_3 dy_1 dy_2; checks the constant
    (k - 1)! tau^(k - 1) beyond k = 2."""
    axis = jnp.linspace(-80.0, 80.0, 801)
    y1, y2 = jnp.meshgrid(axis, axis, indexing="ij")
    log_x = jax.nn.log_softmax(jnp.stack([y1, y2, jnp.zeros_like(y1)], axis=-1), axis=-1)
    log_density = gumbel_softmax_log_prob(jnp.exp(log_x), jnp.array([0.3, -0.5, 1.0]), temperature)
    integrand = jnp.exp(log_density + log_x.sum(axis=-1))
    mass = jnp.trapezoid(jnp.trapezoid(integrand, axis, axis=1), axis)
    assert float(mass) == pytest.approx(1.0, abs=1e-6)


LOGITS = np.array([0.1, 0.2, 0.3])
ELEMENTWISE_FUNCTIONS = [
    (distributions.normal_log_prob, (0.2, 1.5)),
    (distributions.truncated_normal_sample, (0.2, 1.5, -1.0, 2.0)),
    (distributions.truncated_normal_log_prob, (0.2, 1.5, -1.0, 2.0)),
    (distributions.kumaraswamy_sample, (2.0, 3.0)),
    (distributions.kumaraswamy_log_prob, (2.0, 3.0)),
    (distributions.gumbel_noise, ()),
    (distributions.gumbel_softmax_sample, (LOGITS, 0.5)),
    (distributions.gumbel_softmax_straight_through, (LOGITS, 0.5)),
    (distributions.gumbel_softmax_log_prob, (LOGITS, 0.5)),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("function, params", ELEMENTWISE_FUNCTIONS)
def test_functions_keep_dtype_under_jit_and_vmap(function, params, dtype):
    """Python-float parameters adopt the dtype of the noise (or point); nothing is promoted."""
    noise = jax.random.uniform(jax.random.key(10), (5, 3), dtype=dtype, minval=0.05, maxval=0.3)
    params = tuple(p.astype(dtype) if isinstance(p, np.ndarray) else p for p in params)
    out = jax.jit(jax.vmap(function, (0, *[None] * len(params))))(noise, *params)
    assert out.dtype == dtype
    assert jnp.all(jnp.isfinite(out))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_closed_forms_keep_dtype(dtype):
    loc = jnp.asarray(0.2, dtype)
    assert truncated_normal_mean(loc, 1.5, -1.0, 2.0).dtype == dtype
    assert truncated_normal_variance(loc, 1.5, -1.0, 2.0).dtype == dtype
    assert kumaraswamy_moment(2, jnp.asarray(2.0, dtype), 3.0).dtype == dtype


def test_the_three_forms_of_the_normal_log_density_agree_with_scipy():
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=3), np.exp(rng.normal(size=3))
    x = mean + std * rng.normal(size=3)
    want = scipy.stats.norm.logpdf(x, mean, std).sum()
    got = (
        distributions.normal_log_prob(x, mean, std).sum(),
        distributions.standardized_normal_log_prob((x - mean) / std, std),
        distributions.diagonal_normal_log_prob(x, mean, std**2),
    )
    np.testing.assert_allclose(got, [want] * 3, rtol=1e-12)
