"""mbpo.agents.env_batch: running observation moments merged in closed form; resets of the
members that finished, and of those only."""

import jax
import jax.numpy as jnp
import numpy as np

import envs
from mbpo.agents.env_batch import normalize, normalizer_init, normalizer_update, reset_finished


def test_merged_batches_have_the_moments_of_all_their_observations(x64):
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (5, 17, 1, 40)]
    state = normalizer_init(4)
    for batch in batches:
        state = normalizer_update(state, jnp.asarray(batch))
    everything = np.concatenate(batches)
    np.testing.assert_allclose(state.mean, everything.mean(0), rtol=1e-12)
    np.testing.assert_allclose(state.var, everything.var(0), rtol=1e-12)
    assert int(state.count) == len(everything)
    # Any leading axes are one batch.
    stacked = normalizer_update(normalizer_init(4), jnp.asarray(everything[:40].reshape(8, 5, 4)))
    np.testing.assert_allclose(stacked.mean, everything[:40].mean(0), rtol=1e-12)


def test_normalize_standardizes_clips_and_treats_the_statistics_as_constants():
    state = normalizer_update(normalizer_init(1), jnp.array([[1.0], [3.0]]))  # mean 2, var 1
    np.testing.assert_allclose(normalize(state, jnp.array([4.0])), [2.0], rtol=1e-5)
    np.testing.assert_allclose(normalize(state, jnp.array([100.0])), [10.0])  # clipped
    np.testing.assert_allclose(normalize(state, jnp.array([4.0]), enabled=False), [4.0])
    grad = jax.grad(lambda s: normalize(s, jnp.array([4.0]))[0], allow_int=True)(state)
    assert float(grad.mean[0]) == 0.0 and float(grad.var[0]) == 0.0


def test_only_members_that_are_done_timed_out_or_not_finite_are_reset():
    dynamics = envs.make("pendulum")
    states = jax.vmap(dynamics.reset)(jax.random.split(jax.random.key(0), 5))
    states = states.replace(
        t=jnp.array([3, 200, 7, 2, 1]),  # member 1 at the time limit
        done=jnp.array([0.0, 0.0, 1.0, 0.0, 0.0]),  # member 2 done
        reward=jnp.array([0.0, 0.0, 0.0, jnp.nan, 0.0]),  # member 3 not finite
    )
    fresh = reset_finished(dynamics, states, jax.random.key(1), episode_length=200)
    np.testing.assert_array_equal(fresh.t, [3, 0, 0, 0, 1])
    kept = np.array([True, False, False, False, True])
    np.testing.assert_array_equal(fresh.obs[kept], states.obs[kept])
    assert not np.any(np.all(np.asarray(fresh.obs[~kept]) == np.asarray(states.obs[~kept]), -1))
    assert np.all(np.isfinite(fresh.reward))
