"""Conditional flows: exact inverses, log-determinants, normalized densities, fitting (float64)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.scipy.stats import norm

import envs
from mbpo.flows import (
    AffineCoupling,
    BoxSquash,
    ConditionalFlow,
    FlowPolicy,
    SplineCoupling,
    _fit,
    fit_flow,
    flow_dynamics,
    rational_quadratic_spline,
)

pytestmark = pytest.mark.usefixtures("x64")
CONTEXT = 2
NET = {"hidden": (8,), "init_scale": 2.0}  # a large last-layer init: visibly non-trivial maps
# Each test program runs once or twice: compiling it unoptimized halves the time to compile.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def init_f64(model, seed):
    """float64 parameters (flax initializes float32 even with x64 enabled)."""
    params = _jit(model.init)(jax.random.key(seed))
    return jax.tree.map(lambda x: np.asarray(x, np.float64), params)


def _normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).normal(size=shape))


def _flow(dim, **kwargs):
    config = {
        "num_layers": 2,
        "kinds": ("spline", "coupling"),
        "num_bins": 6,
        "tail_bound": 2.5,
        **NET,
    }
    return ConditionalFlow(dim=dim, context_dim=CONTEXT, **(config | kwargs))


def _subject(dim, kind):
    """One affine coupling, one spline coupling (their parity varies with D) or a whole flow."""
    spline = {"num_bins": 5, "tail_bound": 2.0}
    subject = {
        "affine": AffineCoupling(dim=dim, context_dim=CONTEXT, parity=dim % 2, **NET),
        "spline": SplineCoupling(
            dim=dim, context_dim=CONTEXT, parity=(dim + 1) % 2, **spline, **NET
        ),
        "flow": _flow(dim),
    }[kind]
    return subject, init_f64(subject, 1)


@functools.cache
def _round_trips(dim, kind):
    """Forward, inverse and Jacobian at 6 points v (scale 3: many in the identity tails |v| > B of
    the splines), as float64 numpy arrays; one compilation per subject."""
    subject, params = _subject(dim, kind)

    def one(params, v, c):
        x, log_det = subject.forward(params, v, c)
        z, inverse_log_det = subject.inverse(params, x, c)
        jac = jax.jacfwd(lambda u: subject.forward(params, u, c)[0])(v)
        return {
            "v": v,
            "x": x,
            "z": z,
            "log_det": log_det,
            "inverse_log_det": inverse_log_det,
            "forward_of_inverse": subject.forward(params, subject.inverse(params, v, c)[0], c)[0],
            "slogdet": jnp.stack(jnp.linalg.slogdet(jac)),
        }

    v, c = _normal(0, (6, dim), 3.0), _normal(1, (6, CONTEXT))
    return {k: np.asarray(a) for k, a in _jit(jax.vmap(one, (None, 0, 0)))(params, v, c).items()}


CASES = [(dim, kind) for dim in (1, 2, 3) for kind in ("affine", "spline", "flow")]


@pytest.mark.parametrize("dim, kind", CASES)
def test_inverse_is_exact_both_ways(dim, kind):
    r = _round_trips(dim, kind)
    np.testing.assert_allclose(r["z"], r["v"], atol=1e-10)
    np.testing.assert_allclose(r["inverse_log_det"], -r["log_det"], atol=1e-10)
    np.testing.assert_allclose(r["forward_of_inverse"], r["v"], atol=1e-10)
    assert (
        np.abs(r["x"] - r["v"]).max() > 0.05
    )  # the scaled-up init makes the map visibly non-trivial


@pytest.mark.parametrize("dim, kind", CASES)
def test_log_det_is_that_of_the_jacobian(dim, kind):
    r = _round_trips(dim, kind)
    np.testing.assert_array_equal(
        r["slogdet"][:, 0], 1.0
    )  # orientation preserving: increasing maps
    np.testing.assert_allclose(r["log_det"], r["slogdet"][:, 1], rtol=1e-10, atol=1e-12)
    # The inverse's log-det is minus this one at the image point (test_inverse_is_exact_both_ways).


def test_zero_network_output_is_the_identity_spline():
    v = jnp.array([-2.5, -0.7, 0.0, 0.4, 1.9, 2.5])  # inside the tail bound 2 and outside it
    for inverse in (False, True):
        x, log_det = rational_quadratic_spline(
            v, jnp.zeros((6, 3 * 4 - 1)), tail_bound=2.0, inverse=inverse
        )
        np.testing.assert_allclose(x, v, atol=1e-14)
        np.testing.assert_allclose(log_det, 0.0, atol=1e-14)


def test_box_squash_log_det_and_inverse():
    squash = BoxSquash(low=(-1.0, 0.0), high=(1.0, 4.0))
    y = jnp.array([0.3, -1.2])
    x, log_det = squash.forward(y)
    np.testing.assert_allclose(
        log_det, jnp.linalg.slogdet(jax.jacfwd(lambda u: squash.forward(u)[0])(y))[1], rtol=1e-12
    )
    back, inverse_log_det = squash.inverse(x)
    np.testing.assert_allclose(back, y, atol=1e-12)
    np.testing.assert_allclose(inverse_log_det, -log_det, atol=1e-12)
    with pytest.raises(ValueError, match="finite bounds"):
        BoxSquash(low=(-math.inf,), high=(1.0,))


def _density(flow, params, c, points):
    return np.exp(np.asarray(_jit(jax.vmap(flow.log_prob, (None, 0, None)))(params, points, c)))


def test_one_d_density_integrates_to_one():
    flow = _flow(1, kinds=("spline",))
    params = init_f64(flow, 3)
    c = _normal(4, (CONTEXT,))
    # f is increasing, so [f(-10), f(10)] holds all but 2 Phi(-10) ~ 1.5e-23 of the mass.
    lo, hi = np.asarray(
        jax.vmap(lambda z: flow.sample(params, c, z))(jnp.array([[-10.0], [10.0]]))
    )[:, 0]
    grid = np.linspace(lo, hi, 40_001)
    density = _density(flow, params, c, jnp.asarray(grid)[:, None])
    assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-6)
    # ... and is far from Gaussian: at least two local maxima (the spline makes it multimodal).
    peaks = np.sum((density[1:-1] > density[:-2]) & (density[1:-1] > density[2:]))
    assert peaks >= 2, peaks


def test_two_d_density_integrates_to_one():
    flow = _flow(2, init_scale=1.0)
    params = init_f64(flow, 5)
    c = _normal(6, (CONTEXT,))
    # f is a homeomorphism: the image of the square [-8, 8]^2 (all but ~1e-15 of the base mass)
    # lies inside the image of the square's boundary, hence inside that curve's bounding box.
    t, side = jnp.linspace(-8.0, 8.0, 4001), jnp.full(4001, 8.0)
    edge = jnp.concatenate(
        [jnp.stack(pair, -1) for pair in [(t, -side), (t, side), (-side, t), (side, t)]]
    )
    image = _jit(jax.vmap(flow.sample, (None, None, 0)))(params, c, edge)
    (x_lo, y_lo), (x_hi, y_hi) = np.asarray(image.min(0)), np.asarray(image.max(0))
    n = 801
    xs, ys = np.linspace(x_lo, x_hi, n), np.linspace(y_lo, y_hi, n)
    points = jnp.asarray(np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2))
    density = _density(flow, params, c, points).reshape(n, n)
    total = np.trapezoid(np.trapezoid(density, ys, axis=1), xs)
    assert abs(total - 1.0) < 1e-3, total


@functools.partial(_jit, static_argnums=1)
def _bimodal(key, n):
    """x | c ~ (N(c_0 + 1, 0.2^2) + N(c_0 - 1 + c_1, 0.2^2)) / 2, c ~ N(0, I): modes that move with
    c."""
    k_c, k_b, k_n = jax.random.split(key, 3)
    c = jax.random.normal(k_c, (n, CONTEXT))
    upper = jax.random.bernoulli(k_b, 0.5, (n,))
    mode = jnp.where(upper, c[:, 0] + 1.0, c[:, 0] - 1.0 + c[:, 1])
    return (mode + 0.2 * jax.random.normal(k_n, (n,)))[:, None], c


def test_fitted_flow_beats_a_fitted_gaussian_on_a_bimodal_conditional():
    """Held-out log-likelihood: the mixture's entropy is ~0.9 nats below a Gaussian's of its
    variance,
    so a fitted 1-D spline flow should win by a wide margin; we ask for 0.4 nats per sample (it wins
    by 0.73 with these seeds)."""
    x_train, c_train = _bimodal(jax.random.key(0), 512)
    x_test, c_test = _bimodal(jax.random.key(1), 512)
    common = {"dim": 1, "context_dim": CONTEXT, "hidden": (16, 16)}
    models = {  # the Gaussian on minibatches, the flow on the full batch: both paths of fit_flow
        "gaussian": (ConditionalFlow(num_layers=0, **common), 128),
        "flow": (ConditionalFlow(num_layers=1, num_bins=8, tail_bound=3.0, **common), None),
    }
    held_out = {}
    for name, (flow, batch_size) in models.items():
        fit = fit_flow(
            flow,
            init_f64(flow, 2),
            x_train,
            c_train,
            steps=200,
            learning_rate=1e-2,
            batch_size=batch_size,
        )
        assert fit.loss_t.shape == (200,)
        # It learned: the loss fell.
        assert float(fit.loss_t[-20:].mean()) < float(fit.loss_t[:20].mean()) - 0.2, name
        log_prob = _jit(jax.vmap(flow.log_prob, (None, 0, 0)))(fit.params, x_test, c_test)
        held_out[name] = float(jnp.mean(log_prob))
    print(held_out)
    assert held_out["flow"] > held_out["gaussian"] + 0.4, held_out

    # New data, learning rate and key: the jitted fit is not traced again.
    size = _fit._cache_size()
    fit_flow(
        flow,
        init_f64(flow, 3),
        x_test,
        c_test,
        steps=200,
        learning_rate=1e-3,
        key=jax.random.key(1),
    )
    assert _fit._cache_size() == size


def test_flow_policy_is_a_policy():
    task = envs.make("pendulum")
    policy = FlowPolicy.for_dynamics(task, hidden=(8,), init_scale=2.0)
    params = init_f64(policy, 0)
    assert policy.eps_shape == (1,) and policy.flow.context_dim == 3

    @_jit
    def check(obs, eps):
        a = policy.sample(params, obs, eps)
        jac = jax.jacfwd(lambda e: policy.sample(params, obs, e))(eps)
        return {
            "a": a,
            "eps": policy.noise_from_action(params, obs, a),
            "log_prob": policy.log_prob(params, obs, a),
            "want": jnp.sum(norm.logpdf(eps)) - jnp.linalg.slogdet(jac)[1],
            "mean": policy.mean(params, obs),
            "at_zero": policy.sample(params, obs, jnp.zeros(1)),
        }

    eps = _normal(0, (6, 1), 1.5)
    r = jax.vmap(check)(_normal(1, (6, 3)), eps)
    assert np.all(np.abs(r["a"]) < 2.0)
    np.testing.assert_allclose(r["eps"], eps, atol=1e-8)
    np.testing.assert_allclose(r["log_prob"], r["want"], rtol=1e-9)
    np.testing.assert_array_equal(r["mean"], r["at_zero"])


def test_flow_policy_without_layers_is_the_tanh_gaussian():
    """num_layers=0: a = c + h tanh(m(s) + sigma(s) eps), the SAC policy."""
    policy = FlowPolicy(3, 2, (-1.0, 0.0), (1.0, 4.0), hidden=(8,), num_layers=0, init_scale=1.0)
    params = init_f64(policy, 0)
    obs, eps = _normal(0, (3,)), _normal(1, (2,))
    (layer,) = policy.flow.layers
    m = layer.forward(params[0], jnp.zeros(2), obs)[0]
    sigma = layer.forward(params[0], jnp.ones(2), obs)[0] - m
    c, h = jnp.array([0.0, 2.0]), jnp.array([1.0, 2.0])
    np.testing.assert_allclose(
        policy.sample(params, obs, eps), c + h * jnp.tanh(m + sigma * eps), rtol=1e-12
    )


def residual_dynamics():
    flow = ConditionalFlow(
        dim=2,
        context_dim=3,
        num_layers=2,
        hidden=(8,),
        kinds=("coupling", "spline"),
        init_scale=2.0,
    )
    return flow_dynamics(
        lambda s, a, p: p["A"] @ s + p["B"] @ a,
        lambda s, a, s_next: -jnp.sum(s_next**2),
        lambda key: jax.random.normal(key, (2,)),
        flow=flow,
        flow_params=init_f64(flow, 0),
        mean_params={"A": 0.9 * jnp.eye(2), "B": jnp.array([[0.0], [0.5]])},
        action_size=1,
    )


def test_flow_dynamics_density_and_gradient():
    """log p(s'|s, a) = log N(xi) - log |det ds'/dxi|, and d r / d phi_f flows through the flow."""
    dynamics = residual_dynamics()
    assert dynamics.has_log_prob and dynamics.has_noise_inference and dynamics.noise_shape == (2,)
    state, a = dynamics.reset(jax.random.key(1)), jnp.array([0.3])

    @_jit
    def check(dynamics, xi):
        next_state = dynamics.step(state, a, xi)
        jac = jax.jacfwd(lambda e: dynamics.step(state, a, e).x)(xi)
        return {
            "log_prob": dynamics.log_prob(state, a, next_state),
            "want": jnp.sum(norm.logpdf(xi)) - jnp.linalg.slogdet(jac)[1],
            "reward": dynamics.reward(state, a, next_state),
            "step_reward": next_state.reward,
            "grad": ravel_pytree(
                jax.grad(lambda d: d.step(state, a, xi).reward)(dynamics).params["flow"]
            )[0],
        }

    r = jax.vmap(check, (None, 0))(dynamics, _normal(0, (4, 2)))
    np.testing.assert_allclose(r["log_prob"], r["want"], rtol=1e-10)
    np.testing.assert_allclose(r["reward"], r["step_reward"], rtol=1e-12)
    assert np.abs(r["grad"]).max() > 1e-3


def test_bad_configuration_raises_naming_the_value():
    with pytest.raises(ValueError, match="dim must be an int >= 1, got 0"):
        ConditionalFlow(dim=0, context_dim=2)
    with pytest.raises(ValueError, match="num_bins must be an int >= 2, got 1"):
        ConditionalFlow(dim=1, context_dim=2, num_bins=1)
    with pytest.raises(ValueError, match="context_dim must be an int >= 1, got 0"):
        ConditionalFlow(dim=1, context_dim=0)
    with pytest.raises(ValueError, match=r"kinds must be .* got \('planar',\)"):
        ConditionalFlow(dim=1, context_dim=2, kinds=("planar",))
    with pytest.raises(ValueError, match="tail_bound must be > 0, got -1.0"):
        ConditionalFlow(dim=1, context_dim=2, tail_bound=-1.0)
    with pytest.raises(ValueError, match="num_bins must be an int >= 2, got 1"):
        SplineCoupling(dim=2, context_dim=1, num_bins=1)
    with pytest.raises(ValueError, match="num_bins must be an int >= 2, got 1"):
        FlowPolicy(3, 1, (-1.0,), (1.0,), num_bins=1)
    with pytest.raises(ValueError, match="flow has dim 3, but reset returns a state of shape"):
        flow_dynamics(
            lambda s, a, p: s,
            lambda s, a, s_next: 0.0,
            lambda key: jnp.zeros(2),
            flow=ConditionalFlow(dim=3, context_dim=4),
            flow_params=None,
            action_size=1,
        )


def test_wrong_shapes_raise_naming_the_shape():
    flow = _flow(2)
    params = init_f64(flow, 0)
    with pytest.raises(
        ValueError, match=r"the context has shape \(3,\), but this flow expects shape \(2,\)"
    ):
        flow.forward(params, jnp.zeros(2), jnp.zeros(3))
    with pytest.raises(ValueError, match=r"x has shape \(4, 2\)"):
        flow.log_prob(params, jnp.zeros((4, 2)), jnp.zeros(2))
    with pytest.raises(ValueError, match=r"context must have shape \(5, 2\), got \(5, 1\)"):
        fit_flow(flow, params, jnp.zeros((5, 2)), jnp.zeros((5, 1)))


def test_flow_policy_sample_and_log_prob_agrees_with_the_inverse(x64):
    from mbpo.flows import FlowPolicy

    policy = FlowPolicy(
        observation_size=3,
        action_size=2,
        action_low=(-2.0, -1.0),
        action_high=(2.0, 1.0),
        hidden=(8,),
    )
    params = policy.init(jax.random.key(0))
    obs, eps = (
        jax.random.normal(jax.random.key(1), (3,)),
        jax.random.normal(jax.random.key(2), (2,)),
    )
    action, log_pi = policy.sample_and_log_prob(params, obs, eps)
    np.testing.assert_allclose(action, policy.sample(params, obs, eps), rtol=1e-12)
    np.testing.assert_allclose(log_pi, policy.log_prob(params, obs, action), rtol=1e-9)
