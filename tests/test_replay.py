"""The ring buffer (FIFO overwrite, sampling from filled slots, jit/vmap) and the basepoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo.dynamics import from_function
from mbpo.replay import basepoints, ring_buffer, uniform_policy


def _items(start, num):
    values = jnp.arange(start, start + num, dtype=jnp.float32)
    return {"x": values, "v": jnp.stack([values, -values], -1)}


def test_insert_wraps_around_and_overwrites_the_oldest():
    buf = ring_buffer(5)
    state = buf.init({"x": jnp.zeros(()), "v": jnp.zeros(2)})
    state = buf.insert(state, _items(0, 3))
    assert int(state.size) == 3 and int(state.position) == 3
    state = buf.insert(state, _items(3, 4))  # 3, 4 go to slots 3, 4; 5, 6 overwrite slots 0, 1
    assert int(state.size) == 5 and int(state.position) == 2
    np.testing.assert_array_equal(state.data["x"], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(state.data["v"][:, 1], [-5, -6, -2, -3, -4])


def test_masked_insert_keeps_only_the_marked_items_in_order():
    buf = ring_buffer(5)
    state = buf.insert(buf.init({"x": jnp.zeros(()), "v": jnp.zeros(2)}), _items(0, 3))
    mask = jnp.array([True, False, True, False, True])
    state = jax.jit(buf.insert)(state, _items(10, 5), mask)  # keeps 10, 12, 14 at slots 3, 4, 0
    assert int(state.size) == 5 and int(state.position) == 1
    np.testing.assert_array_equal(state.data["x"], [14, 1, 2, 10, 12])
    empty = buf.insert(state, _items(20, 2), jnp.zeros(2, bool))
    jax.tree.map(np.testing.assert_array_equal, empty, state)


def test_sample_draws_only_filled_slots_uniformly():
    buf = ring_buffer(100)
    state = buf.insert(buf.init({"x": jnp.zeros(()), "v": jnp.zeros(2)}), _items(1, 10))
    drawn = np.asarray(buf.sample(state, jax.random.key(0), 20_000)["x"])
    assert set(np.unique(drawn)) == set(range(1, 11))  # never an empty slot (zeros)
    counts = np.bincount(drawn.astype(int), minlength=11)[1:]
    # Each of 10 slots: binomial(20000, 0.1), sd = 42.4; allow 5 sd.
    assert np.all(np.abs(counts - 2000) < 5 * np.sqrt(20_000 * 0.1 * 0.9))


def test_jit_and_vmap_over_seeds():
    buf = ring_buffer(8)
    example = {"x": jnp.zeros(()), "v": jnp.zeros(2)}
    states = jax.vmap(lambda _: buf.init(example))(jnp.arange(3))
    batches = jax.vmap(lambda s: _items(0, 3) | {"x": jnp.arange(3.0) + 10 * s})(jnp.arange(3.0))
    states = jax.jit(jax.vmap(buf.insert))(states, batches)
    np.testing.assert_array_equal(states.data["x"][:, :3], [[0, 1, 2], [10, 11, 12], [20, 21, 22]])
    samples = jax.jit(jax.vmap(lambda s, k: buf.sample(s, k, 4)))(
        states, jax.random.split(jax.random.key(1), 3)
    )
    assert samples["x"].shape == (3, 4)
    for seed in range(3):
        assert set(np.asarray(samples["x"][seed]).tolist()) <= {
            10.0 * seed,
            10.0 * seed + 1,
            10.0 * seed + 2,
        }


def test_bad_capacity_and_oversized_insert_are_refused():
    with pytest.raises(ValueError, match="capacity must be an int >= 1, got 0"):
        ring_buffer(0)
    buf = ring_buffer(2)
    with pytest.raises(ValueError, match="cannot insert 3 items into a buffer of capacity 2"):
        buf.insert(buf.init({"x": jnp.zeros(())}), {"x": jnp.zeros(3)})


def _falling_ball():
    """x' = x - 1 - a; done once x < 0; reset x in [5, 6]."""
    return from_function(
        lambda s, a, xi: s - 1.0 - a,
        lambda s, a, s_next: -jnp.sum(a**2),
        lambda key: jax.random.uniform(key, (1,), minval=5.0, maxval=6.0),
        action_size=1,
        action_low=0.0,
        action_high=1.0,
        done=lambda s: (s[0] < 0).astype(jnp.float32),
    )


def test_basepoints_cover_the_box_and_mark_steps_after_termination():
    dynamics = _falling_ball()
    data = basepoints(dynamics, jax.random.key(0), 1000, segment=10, num_envs=20)
    assert data.obs.shape == (1000, 1) and data.action.shape == (1000, 1)
    np.testing.assert_allclose(data.next_obs, data.obs - 1 - data.action, rtol=1e-6)
    assert 0.0 <= float(data.action.min()) and float(data.action.max()) <= 1.0
    assert (
        abs(float(data.action.mean()) - 0.5) < 0.05
    )  # uniform on [0, 1]: mean 0.5, sd of the mean 0.009
    # x falls by >= 1 per step, so it is below 0 within 7 steps; from the first such step on,
    # every transition of the segment is marked done (x keeps falling: done = next x < 0).
    done = np.asarray(data.done).reshape(-1, 10)
    assert np.all(np.diff(done, axis=1) >= 0) and done[:, -1].all() and not done[:, 0].any()
    np.testing.assert_array_equal(done, np.asarray(data.next_obs).reshape(-1, 10) < 0)


def test_uniform_policy_needs_a_bounded_box():
    unbounded = from_function(
        lambda s, a, xi: s + a,
        lambda s, a, s2: -jnp.sum(s**2),
        lambda k: jnp.zeros(1),
        action_size=1,
        action_low=-jnp.inf,
        action_high=jnp.inf,
    )
    with pytest.raises(ValueError, match="bounded action box"):
        uniform_policy(unbounded)
