"""mbpo.optim: the one gradient step, its guard against non-finite values, Polyak averaging."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbpo.optim import TrainState, gradient_step, guarded, nan_if_loss_nonfinite, polyak


def _quadratic(w, a):
    """0.5 a |w|^2: gradient a w."""
    return 0.5 * a * jnp.sum(w**2)


def test_a_step_descends_a_loss_and_ascends_an_objective_by_the_closed_form():
    w = jnp.array([1.0, -2.0])
    sgd = optax.sgd(0.1)
    down = gradient_step(_quadratic, w, sgd.init(w), sgd, 3.0)
    np.testing.assert_allclose(down.params, w - 0.1 * 3.0 * w, rtol=1e-6)
    assert down.value == pytest.approx(0.5 * 3.0 * 5.0)
    assert down.grad_norm == pytest.approx(3.0 * np.sqrt(5.0))
    up = gradient_step(_quadratic, w, sgd.init(w), sgd, 3.0, maximize=True)
    np.testing.assert_allclose(up.params, w + 0.1 * 3.0 * w, rtol=1e-6)


def test_auxiliary_output_comes_back():
    w = jnp.array([2.0])
    sgd = optax.sgd(1.0)
    step = gradient_step(lambda w: (jnp.sum(w), {"half": w / 2}), w, sgd.init(w), sgd, has_aux=True)
    np.testing.assert_allclose(step.aux["half"], [1.0])


def test_a_non_finite_loss_with_a_finite_gradient_is_skipped_and_counted():
    # At scale = inf the loss is inf while its gradient (0) is finite: the guard must look at the
    # loss too (optax.apply_if_finite alone looks at the gradient).
    def loss(w, scale):
        return jnp.sum(w) * 0.0 + scale

    part = TrainState.create(jnp.array([1.0, 2.0]), guarded(optax.sgd(0.5), max_grad_norm=1e9))
    np.testing.assert_array_equal(nan_if_loss_nonfinite(jnp.inf, jnp.ones(2)), [np.nan, np.nan])
    skipped, _ = part.step(loss, jnp.inf)
    np.testing.assert_array_equal(skipped.params, part.params)
    assert int(skipped.skipped) == 1
    taken, step = part.step(lambda w, s: jnp.sum(w) * s, 1.0)
    np.testing.assert_allclose(taken.params, part.params - 0.5)
    assert int(taken.skipped) == 0 and step.grad_norm == pytest.approx(np.sqrt(2.0))


def test_the_guard_clips_the_global_norm():
    part = TrainState.create(jnp.zeros(2), guarded(optax.sgd(1.0), max_grad_norm=1.0))
    moved, step = part.step(lambda w: jnp.dot(w, jnp.array([3.0, 4.0])))
    np.testing.assert_allclose(moved.params, [-0.6, -0.8], rtol=1e-6)  # the gradient at norm 1
    assert step.grad_norm == pytest.approx(5.0)  # the norm before clipping


def test_polyak_and_the_target_it_tracks():
    target = {"a": jnp.array([1.0, 2.0]), "b": {"c": jnp.array(-3.0)}}
    online = {"a": jnp.array([5.0, -2.0]), "b": {"c": jnp.array(1.0)}}
    for tau, want in [
        (1.0, online),
        (0.0, target),
        (0.25, {"a": np.array([2.0, 1.0]), "b": {"c": np.array(-2.0)}}),
    ]:
        got = polyak(target, online, tau)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-15)
    part = TrainState.create(jnp.array([4.0]), optax.sgd(1.0), target=True)
    part = part.apply_gradients(jnp.array([2.0]))  # params 2, target still 4
    np.testing.assert_allclose(part.track(0.25).target, [3.5])
    assert TrainState.create(jnp.zeros(1), optax.sgd(1.0)).target is None
